"""The seed-era Notte session API (what ``notte==1.2.1`` speaks), on opencone's computers.

``POST /session/start``, ``/session/close``, ``/env/observe``, ``/env/step``,
``/env/scrape``, each taking the ``SessionRequest`` fields (``session_id``,
``keep_alive``, ``session_timeout_minutes`` 1–30, ``screenshot``). Without a
``session_id`` an operation makes its own session; ``keep_alive: false`` closes the
session once the operation is done (close itself ignores it: the client sends its
start arguments with every call). Bad input, an unknown or ended session and a failed
operation are all a 400 with a JSON ``detail``, as the seed era said them; a 200 body
never has a top-level ``status`` or ``detail``, which the client would take for an error.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from opencone.api.auth import current_org
from opencone.api.deps import runtime
from opencone.api.errors import describe_validation, problem, problems
from opencone.api.json_body import JsonBody
from opencone.api.notte_sessions import SETTLE_MS, canonical, now, sessions_of
from opencone.api.wire import notte as w
from opencone.core import actions as a
from opencone.core.clock import iso
from opencone.core.errors import ServiceError
from opencone.core.runtime import Runtime

router = APIRouter(tags=["notte (seed era)"])
PATHS = r"^/(session/(start|close)|env/(observe|step|scrape))$"  # (api/guard.py says its refusals as 400s)
_M = TypeVar("_M", bound=BaseModel)


class Refused(ServiceError):
    status = 400


def refused(status: int, detail: str, errors: list[dict[str, str]]) -> Response:
    """A body api/guard.py refused, said as the seed era said bad input: 400 (413 stays 413)."""
    return problem(413 if status == 413 else 400, detail, extra={"errors": errors} if errors else None)


def _doc(model: type[BaseModel], out: type[BaseModel]) -> dict[str, Any]:
    return {"openapi_extra": {"requestBody": {"required": False, "content": {
        "application/json": {"schema": model.model_json_schema()}}}},
            "responses": {200: {"model": out}, **problems(400, 401, 413, 429, 503)}}


async def _body(request: Request, model: type[_M]) -> _M:
    raw = await request.body()
    try:
        return model.model_validate_json(raw if raw.strip() else b"{}")
    except ValidationError as exc:
        detail, items = describe_validation(list(exc.errors()))
        raise Refused(detail, errors=items) from None


def _refusing(exc: ServiceError) -> ServiceError:
    """The seed era's one answer to what was wrong with a request: 400 (a full server stays 429/503)."""
    return exc if exc.status in (401, 429, 503) else Refused(exc.message)


async def _open(rt: Runtime, org: str, body: w.SeedSessionIn) -> w.SessionState:
    """The session of an operation: the one named (checked for its idle time first), or a new one."""
    notte = sessions_of(rt)
    if body.session_id is None:
        _, state = await notte.start(rt, org, body.session_timeout_minutes, None, keep_alive=body.keep_alive)
        return state
    _, state = await notte.access(rt, org, body.session_id)
    return state


async def _after(rt: Runtime, org: str, body: w.SeedSessionIn, state: w.SessionState | None) -> dict[str, Any]:
    """Close the session unless kept alive, and say how it is."""
    notte = sessions_of(rt)
    if state is None:
        return {}
    if not body.keep_alive:
        await notte.close(rt, org, state.id)
    view, state = await notte.view(rt, org, state.id)
    return w.seed_session(view, state, now(rt))


def _metadata(rt: Runtime, title: str, url: str) -> dict[str, Any]:
    return {"title": title, "url": url, "timestamp": iso(now(rt))}


@router.post("/session/start", **_doc(w.SeedSessionIn, w.SeedSessionOut))
async def start(request: Request, org: str = Depends(current_org)) -> JsonBody:
    rt = runtime(request)
    body = await _body(request, w.SeedSessionIn)
    if body.session_id is not None:
        raise Refused("session_id must not be given to start a session: an existing session cannot be started "
                      "again; give its session_id to observe, step or scrape instead")
    try:
        notte = sessions_of(rt)
        view, state = await notte.start(rt, org, body.session_timeout_minutes, None, keep_alive=body.keep_alive)
        if not body.keep_alive:
            view = await notte.close(rt, org, view.id)
    except ServiceError as exc:
        raise _refusing(exc) from None
    return JsonBody(w.seed_session(view, state, now(rt)))


@router.post("/session/close", **_doc(w.SeedSessionIn, w.SeedSessionOut))
async def close(request: Request, org: str = Depends(current_org)) -> JsonBody:
    rt = runtime(request)
    body = await _body(request, w.SeedSessionIn)
    if body.session_id is None:
        raise Refused("session_id is required to close a session")
    try:  # (keep_alive is not read: the client sends its start arguments with every call)
        notte = sessions_of(rt)
        view = await notte.close(rt, org, body.session_id)
        _, state = await notte.view(rt, org, body.session_id)
    except ServiceError as exc:
        raise _refusing(exc) from None
    return JsonBody(w.seed_session(view, state, now(rt)))


@router.post("/env/observe", **_doc(w.SeedObserveIn, w.SeedObserveOut))
async def observe(request: Request, org: str = Depends(current_org)) -> JsonBody:
    rt = runtime(request)
    body = await _body(request, w.SeedObserveIn)
    state = None
    try:
        state = await _open(rt, org, body)
        seen = await sessions_of(rt).observe(rt, org, state, url=body.url, screenshot=bool(body.screenshot),
                                             limit=body.max_nb_actions)
    except ServiceError as exc:
        await _close_quietly(rt, org, body, state)
        raise _refusing(exc) from None
    snap = seen.snapshot
    return JsonBody({
        "session": await _after(rt, org, body, state), "metadata": _metadata(rt, snap["title"], snap["url"]),
        "screenshot": w.screenshot_b64(seen.image), "data": None,
        "space": w.seed_space(seen.entries, snap["title"], snap["url"]),
    })


async def _close_quietly(rt: Runtime, org: str, body: w.SeedSessionIn, state: w.SessionState | None) -> None:
    """A failed operation on a session not kept alive closes it all the same."""
    if state is not None and not body.keep_alive:
        try:
            await sessions_of(rt).close(rt, org, state.id)
        except ServiceError:
            pass


def _step_actions(notte: Any, state: w.SessionState, body: w.SeedStepIn) -> list[a.Action]:
    """What an action id does: a special action (S1–S7), or one on an element of the last observation."""
    value = body.value
    match body.action_id:
        case "S1":
            if not value:
                raise Refused("S1 (goto) takes the URL as value")
            return [canonical(a.Navigate, url=value)]
        case "S2" | "S3":
            return []
        case "S4":
            return [a.History(op="back")]
        case "S5":
            return [a.History(op="forward")]
        case "S6":
            return [a.History(op="reload")]
        case "S7":
            try:
                seconds = float(value) if value else 1.0
            except ValueError:
                raise Refused(f"S7 (wait) takes a number of seconds as value, not {value!r}") from None
            return [canonical(a.Wait, ms=round(seconds * 1000))]
    entry = notte.entry(state, body.action_id)
    element = notte.element(state, entry)
    acts: list[a.Action]
    if entry.kind in ("input", "select"):
        if value is None:
            raise Refused(f"{entry.id} ({w.describe(entry)}) takes a value")
        acts = [a.SelectOption(element=element, values=[value]) if entry.kind == "select"
                else canonical(a.Fill, element=element, text=value)]
    else:
        acts = [a.Click(element=element)]
    if body.enter:
        acts.append(a.PressKeys(keys=["Enter"]))
    if entry.kind not in ("input", "select") or body.enter:
        acts.append(a.Wait(ms=SETTLE_MS))  # a navigation the click started commits before the next look
    return acts


@router.post("/env/step", **_doc(w.SeedStepIn, w.SeedObserveOut))
async def step(request: Request, org: str = Depends(current_org)) -> JsonBody:
    rt = runtime(request)
    body = await _body(request, w.SeedStepIn)
    notte = sessions_of(rt)
    state = None
    data = None
    try:
        state = await _open(rt, org, body)
        if body.action_id == "S8":  # terminate
            await notte.close(rt, org, state.id)
            view, state = await notte.view(rt, org, state.id)
            return JsonBody({"session": w.seed_session(view, state, now(rt)), "metadata": _metadata(rt, "", ""),
                             "screenshot": None, "data": None, "space": None})
        before = _step_actions(notte, state, body)
        seen = await notte.observe(rt, org, state, before=before, limit=body.max_nb_actions,
                                   screenshot=bool(body.screenshot) or body.action_id == "S3")
        if body.action_id == "S2":
            data = _data(await notte.markdown(rt, org, state.id, main_only=True, images=False))
    except ServiceError as exc:
        await _close_quietly(rt, org, body, state)
        raise _refusing(exc) from None
    snap = seen.snapshot
    return JsonBody({
        "session": await _after(rt, org, body, state), "metadata": _metadata(rt, snap["title"], snap["url"]),
        "screenshot": w.screenshot_b64(seen.image), "data": data,
        "space": w.seed_space(seen.entries, snap["title"], snap["url"]),
    })


def _data(md: dict[str, Any]) -> dict[str, Any]:
    images = md.get("images")
    return {"markdown": md["markdown"], "structured": None,
            "images": None if images is None else [{"id": f"F{i}", "url": img["url"], "category": None}
                                                   for i, img in enumerate(images, 1)]}


@router.post("/env/scrape", **_doc(w.SeedScrapeIn, w.SeedObserveOut))
async def scrape(request: Request, org: str = Depends(current_org)) -> JsonBody:
    rt = runtime(request)
    body = await _body(request, w.SeedScrapeIn)
    if body.session_id is None and not body.url:
        raise Refused("give a url to scrape, or the session_id of a session to scrape its page")
    notte = sessions_of(rt)
    state = None
    try:
        state = await _open(rt, org, body)
        before = [canonical(a.Navigate, url=body.url)] if body.url else []
        md = await notte.markdown(rt, org, state.id, main_only=body.only_main_content, images=body.scrape_images,
                                  before=before)
        image = None
        if body.screenshot:
            image = (await notte.run(rt, org, state.id, [a.Screenshot()]))[-1].outcome.image
    except ServiceError as exc:
        await _close_quietly(rt, org, body, state)
        raise _refusing(exc) from None
    return JsonBody({
        "session": await _after(rt, org, body, state), "metadata": _metadata(rt, md.get("title", ""), md["url"]),
        "screenshot": w.screenshot_b64(image), "data": _data(md), "space": None,
    })
