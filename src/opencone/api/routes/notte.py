"""The current Notte session API (what ``notte-sdk`` speaks), on opencone's computers.

``POST /sessions/start``, ``GET /sessions/{id}``, ``DELETE /sessions/{id}/stop``,
``GET /sessions/`` (paginated) and ``POST /sessions/{id}/page/{observe,execute,scrape,
screenshot}``. ``idle_timeout_minutes`` (alias ``timeout_minutes``) is the computer's
inactivity timeout, ``max_duration_minutes`` its maximum lifetime; ``cdp_url`` is the
computer's own CDP endpoint (with the caller's key, as Playwright's ``connect_over_cdp``
needs it in the URL) and ``viewer_url`` its live view. Executing an action that fails
inside the page is a 200 with ``success: false`` and the reason, as Notte answers it;
a request that is not one is a 422.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from opencone.api.auth import current_org, presented_key
from opencone.api.deps import base_url, runtime
from opencone.api.errors import problems
from opencone.api.json_body import JsonBody
from opencone.api.notte_sessions import SETTLE_MS, Failed, Observed, canonical, now, sessions_of
from opencone.api.wire import notte as w
from opencone.core import actions as a
from opencone.core.clock import iso
from opencone.core.computers import ComputerView
from opencone.core.errors import Conflict, InvalidInput
from opencone.core.runtime import Runtime
from opencone.drivers.base import Display

router = APIRouter(tags=["notte"])
_SESSION = {200: {"model": w.SessionOut}}
_PAGE = problems(401, 404, 409, 413, 422)


def _answer(request: Request, view: ComputerView, state: w.SessionState) -> dict[str, Any]:
    rt = runtime(request)
    return w.current_session(view, state, now(rt), base_url(request), presented_key(request, allow_query=False))


@router.post("/sessions/start", responses={**_SESSION, **problems(401, 413, 422, 429, 503)})
async def start(request: Request, body: w.SessionStartIn | None = None, org: str = Depends(current_org)) -> JsonBody:
    rt = runtime(request)
    body = body or w.SessionStartIn()
    display = None
    if body.viewport_width or body.viewport_height:
        display = Display(body.viewport_width or rt.settings.default_width,
                          body.viewport_height or rt.settings.default_height)
    view, state = await sessions_of(rt).start(rt, org, body.idle_timeout_minutes or w.IDLE_DEFAULT,
                                              body.max_duration_minutes or w.DURATION_DEFAULT, display)
    return JsonBody(_answer(request, view, state))


@router.get("/sessions/", responses={200: {"model": w.SessionListOut}, **problems(401, 422)})
async def list_sessions(request: Request, page: int = Query(1, ge=1, le=100_000),
                        page_size: int = Query(10, ge=1, le=100), only_active: bool = Query(True),
                        org: str = Depends(current_org)) -> JsonBody:
    rt = runtime(request)
    notte = sessions_of(rt)
    items = []
    for state in reversed(notte.sessions(org)):  # newest first
        view = await rt.computers.get(org, state.id)
        if only_active and view.status == "terminated":
            continue
        items.append(_answer(request, view, state))
    first = (page - 1) * page_size
    return JsonBody({"items": items[first:first + page_size], "page": page, "page_size": page_size,
                     "has_next": len(items) > first + page_size, "has_previous": page > 1})


@router.get("/sessions/{session_id}", responses={**_SESSION, **problems(401, 404)})
async def status(session_id: str, request: Request, org: str = Depends(current_org)) -> JsonBody:
    """The session as it is; reading it is not an access (it does not keep it from idling out)."""
    view, state = await sessions_of(runtime(request)).view(runtime(request), org, session_id)
    return JsonBody(_answer(request, view, state))


@router.delete("/sessions/{session_id}/stop", responses={**_SESSION, **problems(401, 404, 409, 422)})
async def stop(session_id: str, request: Request, close_reason: Literal["manual", "error"] = Query("manual"),
               org: str = Depends(current_org)) -> JsonBody:
    rt = runtime(request)
    notte = sessions_of(rt)
    view, state = await notte.view(rt, org, session_id)
    life = w.lifecycle(view, state)
    if life.status != "active":
        raise Conflict(f"session {session_id} is already stopped ({life.status}, {life.close_reason})")
    view = await notte.close(rt, org, session_id, close_reason)
    return JsonBody(_answer(request, view, state))


def _observation(rt: Runtime, seen: Observed) -> dict[str, Any]:
    snap, ctx = seen.snapshot, seen.context or {}
    vw, vh = ctx.get("viewport_width", 0), ctx.get("viewport_height", 0)
    bboxes = [{"x": e.box[0], "y": e.box[1], "width": e.box[2], "height": e.box[3],
               "scroll_x": ctx.get("scroll_x", 0), "scroll_y": ctx.get("scroll_y", 0),
               "viewport_width": vw, "viewport_height": vh, "notte_id": e.id} for e in seen.entries if e.box]
    stamp = iso(now(rt))
    return {
        "metadata": {"title": snap["title"], "url": snap["url"], "timestamp": stamp,
                     "viewport": {"scroll_x": int(ctx.get("scroll_x", 0)), "scroll_y": int(ctx.get("scroll_y", 0)),
                                  "viewport_width": vw, "viewport_height": vh,
                                  "total_width": ctx.get("page_width", vw), "total_height": ctx.get("page_height", vh)},
                     "tabs": [{"tab_id": 0, "title": snap["title"], "url": snap["url"]}]},
        "screenshot": {"raw": w.screenshot_b64(seen.image), "bboxes": bboxes},
        "space": w.current_space(seen.entries, snap["title"], snap["url"]),
        "started_at": stamp, "ended_at": stamp,
    }


@router.post("/sessions/{session_id}/page/observe", responses={200: {"model": w.ObservationOut}, **_PAGE})
async def observe(session_id: str, request: Request, body: w.ObserveIn | None = None,
                  org: str = Depends(current_org)) -> JsonBody:
    rt = runtime(request)
    body = body or w.ObserveIn()
    notte = sessions_of(rt)
    _, state = await notte.access(rt, org, session_id)
    seen = await notte.observe(rt, org, state, url=body.url, screenshot=True, limit=body.max_nb_actions,
                               context=True)
    return JsonBody(_observation(rt, seen))


@router.post("/sessions/{session_id}/page/screenshot", responses={200: {"description": "The page as a base64 JPEG"},
                                                                  **problems(401, 404, 409)})
async def screenshot(session_id: str, request: Request, org: str = Depends(current_org)) -> JsonBody:
    rt = runtime(request)
    notte = sessions_of(rt)
    await notte.access(rt, org, session_id)
    report = (await notte.run(rt, org, session_id, [a.Screenshot()]))[-1]
    return JsonBody({"raw": w.screenshot_b64(report.outcome.image), "bboxes": []})


@router.post("/sessions/{session_id}/page/scrape", responses={200: {"model": w.ScrapeOut}, **_PAGE})
async def scrape(session_id: str, request: Request, body: w.ScrapeIn | None = None,
                 org: str = Depends(current_org)) -> JsonBody:
    rt = runtime(request)
    body = body or w.ScrapeIn()
    if body.instructions or body.response_format:
        raise InvalidInput("structured scraping (instructions, response_format) needs a model, which opencone's "
                           "Notte API does not run; scrape the markdown instead", field="instructions")
    if body.selector:
        raise InvalidInput("scraping one element (selector) is not supported; scrape the page", field="selector")
    notte = sessions_of(rt)
    await notte.access(rt, org, session_id)
    md = await notte.markdown(rt, org, session_id, main_only=body.only_main_content, images=body.scrape_images,
                              links=body.scrape_links)
    images = md.get("images")
    return JsonBody({"markdown": md["markdown"], "structured": None,
                     "images": None if images is None else [{"id": f"F{i}", "url": x["url"], "category": None}
                                                            for i, x in enumerate(images, 1)]})


def _element(notte: Any, state: w.SessionState, act: w.ExecuteIn) -> tuple[a.Element, w.Entry | None]:
    """An action's element: its id in the last observation (``B1``), or a ref, or a selector."""
    if act.id:
        entry = state.actions.get(act.id)
        if entry is not None:
            return notte.element(state, entry), entry
        try:
            return a.Element(ref=act.id), None
        except ValueError:
            raise Failed(f"no element {act.id!r} in the session's last observation; observe the page first "
                         f"(its ids: {', '.join(list(state.actions)[:20]) or 'none'})") from None
    selector = act.selector
    if isinstance(selector, dict):
        selector = (selector.get("playwright_selector") or (f"css={selector['css_selector']}"
                    if selector.get("css_selector") else None) or (f"xpath={selector['xpath_selector']}"
                    if selector.get("xpath_selector") else None))
    if not selector:
        raise InvalidInput(f"a {act.type} action needs an id (from observe) or a selector", field="action.id")
    return canonical(a.Element, selector=selector), None  # type: ignore[return-value]


async def _actions(rt: Runtime, org: str, state: w.SessionState, act: w.ExecuteIn) -> list[a.Action]:
    notte = sessions_of(rt)
    value = act.value
    match act.type:
        case "goto":
            return [canonical(a.Navigate, url=_need(act, "url", act.url))]
        case "goto_new_tab":
            return [canonical(a.NewTab, url=_need(act, "url", act.url))]
        case "go_back" | "go_forward" | "reload":
            return [a.History(op={"go_back": "back", "go_forward": "forward"}.get(act.type, "reload"))]
        case "wait":
            return [canonical(a.Wait, ms=act.time_ms if act.time_ms is not None else 1000)]
        case "press_key":
            return [canonical(a.PressKeys, keys=[_need(act, "key", act.key)])]
        case "scroll_down" | "scroll_up":
            view = await rt.computers.get(org, state.id)
            amount = act.amount if act.amount is not None else round(view.display.pixel_height * 0.8)
            dy = amount if act.type == "scroll_down" else -amount
            if act.id or act.selector:
                return [a.Scroll(element=_element(notte, state, act)[0], dy=dy)]
            return [canonical(a.Scroll, dy=dy)]
        case "click":
            return [a.Click(element=_element(notte, state, act)[0]), *_enter(act), a.Wait(ms=SETTLE_MS)]
        case "fill" | "multi_factor_fill" | "fallback_fill":
            element = _element(notte, state, act)[0]
            text = str(_need(act, "value", value))
            fill = canonical(a.Fill, element=element, text=text) if act.clear_before_fill \
                else canonical(a.TypeText, element=element, text=text)
            return [fill, *_enter(act)]
        case "select_dropdown_option":
            return [canonical(a.SelectOption, element=_element(notte, state, act)[0],
                              values=[str(_need(act, "value", value))])]
        case "check":
            element, entry = _element(notte, state, act)
            if entry is not None and entry.checked is not None and entry.checked == bool(value):
                return []  # already as asked
            return [a.Click(element=element)]
        case "switch_tab" | "close_tab":
            tabs = (await notte.run(rt, org, state.id, [a.ListTabs()]))[-1].outcome.result["tabs"]
            if act.type == "close_tab":
                main = next((t for t in tabs if t["is_main"]), tabs[0])
                return [a.CloseTab(tab_id=main["tab_id"])]
            index = act.tab_index or 0
            if index >= len(tabs):
                raise Failed(f"no tab {index}: the session has {len(tabs)}")
            return [a.SwitchTab(tab_id=tabs[index]["tab_id"])]
        case "scrape" | "completion" | "help":
            return []
    raise Failed(f"the {act.type!r} action is not supported by opencone's Notte API")


def _need(act: w.ExecuteIn, name: str, value: Any) -> Any:
    if value is None:
        raise InvalidInput(f"a {act.type} action needs {name}", field=f"action.{name}")
    return value


def _enter(act: w.ExecuteIn) -> list[a.Action]:
    return [a.PressKeys(keys=["Enter"]), a.Wait(ms=SETTLE_MS)] if act.press_enter else []


@router.post("/sessions/{session_id}/page/execute", responses={200: {"model": w.ExecutionOut}, **_PAGE})
async def execute(session_id: str, act: w.ExecuteIn, request: Request, org: str = Depends(current_org)) -> JsonBody:
    rt = runtime(request)
    notte = sessions_of(rt)
    _, state = await notte.access(rt, org, session_id)
    started = iso(now(rt))
    data = None
    try:
        actions = await _actions(rt, org, state, act)
        if actions:
            await notte.run(rt, org, session_id, actions)
        if act.type == "scrape":
            md = await notte.markdown(rt, org, session_id, main_only=bool(getattr(act, "only_main_content", True)),
                                      images=False)
            data = {"markdown": md["markdown"], "structured": None}
        success, message = True, f"executed {act.type}"
    except Failed as exc:
        success, message = False, exc.message
    return JsonBody({"action": act.model_dump(exclude_unset=True), "success": success, "message": message,
                     "data": data, "exception": None, "started_at": started, "ended_at": iso(now(rt))})
