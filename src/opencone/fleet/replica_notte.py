"""The Notte session API of both eras on a fleet replica (routes/notte.py, routes/notte_seed.py).

A Notte session is a browser computer plus what the node that made it remembers about it (the ids of
its last observation, why it was closed), so everything about a session goes to that computer's node:

- a start (``/sessions/start``; ``/session/start`` and a seed-era operation without a ``session_id``)
  makes the computer on a node: the placer's order, the next node when one answers 429/503; the
  session id is the computer id, whose fleet record is written before the answer leaves
  (``owned.record_made``), so the next request through any replica finds it;
- every other request names its session (in the path now, in the body in the seed era) and is sent
  to that computer's node (``fleet.route``: another organisation's session is as unknown as none);
- a request naming no session the fleet knows, or one a node must refuse, is answered by any ready
  node, so its 400/404/422 reads exactly as a single server's;
- ``GET /sessions/`` asks every node for the organisation's sessions and pages the merge, newest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import HTTPConnection

from opencone.api.auth import current_org, presented_key
from opencone.api.routes import notte_seed
from opencone.api.wire import notte as w
from opencone.core.computers import _view_of
from opencone.core.errors import Conflict, LimitReached, NotFound, ServiceError
from opencone.fleet import owned, registry
from opencone.fleet import replica as r

PAGE_OPS = ("observe", "execute", "scrape", "screenshot")
LOST = ("node_lost", "node_agent_restarted")  # a computer's ends that took its node's memory of the session
NODE_PAGE = 100  # a node's largest page of GET /sessions/
Made = Callable[[registry.NodeInfo, dict[str, Any]], Awaitable[None]]


# -- shared with replica_openenv.py ---------------------------------------------------------------
async def forward_placing(request: Request, org: str, kind: str, path: str, body: bytes, made: Made) -> Response:
    """A request that makes a ``kind`` computer on the node it reaches: tried on the placer's nodes in
    order, the next one when a node is full (429/503) or out of reach; ``made`` is shown the node and
    its 200 answer before the answer is sent (to write where what it made lives)."""
    fleet = r._fleet(request)
    refusals: list[str] = []
    for node in owned.placing_order(fleet, await owned.ready_nodes(fleet), kind):
        status: list[int] = []
        try:
            answer = await owned.forward_to(request, org, node, path, content=body,
                                            inspect=inspector(node, status, made))
        except r.NodeUnreachable:
            refusals.append(f"{node.id}: unreachable")
            continue
        if status and status[0] in (429, 503):
            refusals.append(f"{node.id}: {status[0]}")
            continue
        return answer
    raise LimitReached(f"no node of the fleet can take a {kind} computer now (all full or refusing"
                       f"{': ' + '; '.join(refusals) if refusals else ''}); end one or retry")


def inspector(node: registry.NodeInfo, status: list[int], made: Made) -> owned.Inspect:
    async def inspect(code: int, data: bytes) -> None:
        status.append(code)
        if code == 200:
            with contextlib.suppress(ValueError):
                parsed = json.loads(data)
                if isinstance(parsed, dict):
                    await made(node, parsed)
    return inspect


def recording(request: HTTPConnection, org: str, find: Callable[[dict[str, Any]], Any]) -> Made:
    """A ``made`` that writes the fleet record of the computer ``find`` names in the answer."""
    async def made(node: registry.NodeInfo, out: dict[str, Any]) -> None:
        with contextlib.suppress(KeyError, TypeError):
            cid = find(out)
            if isinstance(cid, str):
                await owned.record_made(r._fleet(request), org, node, cid)
    return made


async def forward_anywhere(request: Request, org: str, path: str, body: bytes | None = None) -> Response:
    """A request no particular node holds (it names nothing the fleet knows, or it is bad): any ready
    node answers it, in its own words (its 404 or 422 is a single server's)."""
    fleet = r._fleet(request)
    return await owned.forward_to(request, org, owned.pick_any(await owned.ready_nodes(fleet)), path, content=body)


# -- routing a session ----------------------------------------------------------------------------
async def _route(request: Request, org: str, session_id: str) -> r.Route | None:
    """The session's computer's route, or None when the fleet has no such computer for ``org``."""
    if not r.COMPUTER_ID.match(session_id):
        return None
    try:
        return await r._fleet(request).route(org, session_id)
    except NotFound:
        return None


async def _to_session(request: Request, org: str, session_id: str, path: str, body: bytes | None = None) -> Response:
    if not r.COMPUTER_ID.match(session_id):  # no session has it, and it must not reach a node's path
        raise NotFound(f"no session {session_id!r}")
    route = await _route(request, org, session_id)
    if route is None:
        return await forward_anywhere(request, org, path, body)
    if _lost(route) or route.url is None:
        return _lost_answer(request, route, path)
    answer = await r._forward(request, route, path, org)
    if answer.status_code in (409, 503):  # the node may have just gone: the fleet's verdict, read again
        fresh = await _route(request, org, session_id)
        if fresh is not None and _lost(fresh):
            return _lost_answer(request, fresh, path)
    return answer


def _lost(route: r.Route) -> bool:
    """Whether the session ended with its node (lost, or its agent restarted: its state went with it)."""
    return route.row.status == r.TERMINATED and route.row.termination_reason in LOST


def _lost_answer(request: Request, route: r.Route, path: str) -> Response:
    """A session whose node is gone, answered from its fleet record: it ended in error."""
    view = _view_of(route.row)
    session = w.current_session(view, None, datetime.now(UTC), r._public_base(request, r._fleet(request).settings),
                                None)
    if request.method == "GET" and path == f"/sessions/{view.id}":
        return JSONResponse(session)
    if path == f"/sessions/{view.id}/stop":
        raise Conflict(f"session {view.id} is already stopped (error: {session['error']})")
    raise Conflict(f"session {view.id} is error ({session['error']}); start a new session")


# -- the current era ------------------------------------------------------------------------------
async def _start(request: Request, org: str = Depends(current_org)) -> Response:
    return await forward_placing(request, org, "browser", "/sessions/start", await request.body(),
                                 recording(request, org, lambda out: out["session_id"]))


async def _list(request: Request, page: int = Query(1, ge=1, le=100_000), page_size: int = Query(10, ge=1, le=100),
                only_active: bool = Query(True), org: str = Depends(current_org)) -> Response:
    """Every node's sessions of the organisation, newest first, paged as one server pages them."""
    fleet = r._fleet(request)
    public = r._public_base(request, fleet.settings)
    key = presented_key(request, False)
    first = (page - 1) * page_size
    wanted = first + page_size + 1  # one more than the page: whether there is a next one

    async def of_node(node: registry.NodeInfo) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for at in range(1, 100_000):  # a node keeps a bounded number of sessions: a few pages at most
            try:
                resp = await fleet.http.get(node.url + "/sessions/", headers=fleet.agent_headers(org), params={
                    "page": at, "page_size": NODE_PAGE, "only_active": "true" if only_active else "false"})
                resp.raise_for_status()
                got = json.loads(fleet.rewrite(resp.content, node.url, node.id, public, key, org))
            except (httpx.HTTPError, ValueError):
                return items  # an unreachable node's sessions are not listed, as its computers are not
            items += got.get("items") or []
            if not got.get("has_next") or len(items) >= wanted:
                return items
        return items

    parts = await asyncio.gather(*(of_node(n) for n in await owned.ready_nodes(fleet)))
    merged = sorted((s for part in parts for s in part), key=_newest_first)
    return JSONResponse({"items": merged[first:first + page_size], "page": page, "page_size": page_size,
                         "has_next": len(merged) > first + page_size, "has_previous": page > 1})


def _newest_first(session: dict[str, Any]) -> tuple[float, str]:
    try:
        at = datetime.fromisoformat(str(session.get("created_at")).replace("Z", "+00:00")).timestamp()
    except ValueError:
        at = 0.0
    return -at, str(session.get("session_id"))


async def _status(session_id: str, request: Request, org: str = Depends(current_org)) -> Response:
    return await _to_session(request, org, session_id, f"/sessions/{session_id}")


async def _stop(session_id: str, request: Request, org: str = Depends(current_org)) -> Response:
    return await _to_session(request, org, session_id, f"/sessions/{session_id}/stop")


async def _page(session_id: str, op: str, request: Request, org: str = Depends(current_org)) -> Response:
    if op not in PAGE_OPS:
        raise NotFound(f"no such endpoint; a session's page takes {', '.join(PAGE_OPS)}", allowed=list(PAGE_OPS))
    return await _to_session(request, org, session_id, f"/sessions/{session_id}/page/{op}")


# -- the seed era: the session in the body --------------------------------------------------------
def _seed_session(out: dict[str, Any]) -> Any:
    """The session id of a seed-era answer: a start's own, an operation's ``session``'s."""
    return out.get("session", out)["session_id"]


async def _seed(request: Request, path: str, model: type[w.SeedSessionIn], org: str) -> Response:
    body = await request.body()
    try:
        parsed = await notte_seed._body(request, model)  # the seed era's own 400s for a bad body
    except ServiceError:
        return await forward_anywhere(request, org, path, body)
    if parsed.session_id is None and path != "/session/close":
        return await forward_placing(request, org, "browser", path, body, recording(request, org, _seed_session))
    if parsed.session_id is None or path == "/session/start":
        return await forward_anywhere(request, org, path, body)  # (the node's refusal, as a server says it)
    route = await _route(request, org, parsed.session_id)
    if route is None:
        return await forward_anywhere(request, org, path, body)
    if not _lost(route) and route.url is not None:
        answer = await r._forward(request, route, path, org)
        if answer.status_code not in (400, 503):
            return answer
        fresh = await _route(request, org, parsed.session_id)  # the node may have just gone
        if fresh is None or not _lost(fresh):
            return answer
        route = fresh
    view = _view_of(route.row)  # ended with its node: answered from its fleet record, as the seed era says it
    session = w.seed_session(view, None, datetime.now(UTC))
    if path == "/session/close":
        return JSONResponse(session)  # (close is idempotent: the session as it ended)
    raise notte_seed.Refused(f"session {view.id} is error ({session['error']}); start a new session")


def _seed_route(path: str, model: type[w.SeedSessionIn]) -> Callable[..., Awaitable[Response]]:
    async def handler(request: Request, org: str = Depends(current_org)) -> Response:
        return await _seed(request, path, model, org)
    return handler


def install(app: FastAPI) -> None:
    """The Notte routes of both eras, on a replica (before the /computers catch-all)."""
    tags = ["notte"]
    app.add_api_route("/sessions/start", _start, methods=["POST"], tags=tags)
    app.add_api_route("/sessions/", _list, methods=["GET"], tags=tags)
    app.add_api_route("/sessions/{session_id}", _status, methods=["GET"], tags=tags)
    app.add_api_route("/sessions/{session_id}/stop", _stop, methods=["DELETE"], tags=tags)
    app.add_api_route("/sessions/{session_id}/page/{op}", _page, methods=["POST"], tags=tags)
    seed = {"/session/start": w.SeedSessionIn, "/session/close": w.SeedSessionIn, "/env/observe": w.SeedObserveIn,
            "/env/step": w.SeedStepIn, "/env/scrape": w.SeedScrapeIn}
    for path, model in seed.items():
        app.add_api_route(path, _seed_route(path, model), methods=["POST"], tags=["notte (seed era)"])
