"""OpenEnv under ``/openenv`` on a fleet replica (routes/openenv.py, api/openenv_sessions.py).

An episode is a computer plus its state on the node that reset it (its step count, its dialect
adapters), so it stays on that node:

- HTTP: a reset without a known ``episode_id`` makes its computer on a node as a create does (the
  placer's order, the next node on 429/503); the episode id in its answer is claimed for that node
  (``fleet_objects``, kind ``openenv``) and its computer's fleet record written before the answer
  leaves. ``/step``, ``/state``, ``/close`` and a reset of a known episode go to the node holding it;
  an episode no node holds for the organisation is answered by any node (its own 404).
- the WebSocket ``/openenv/ws`` is one episode for the life of the connection: it is relayed frame by
  frame (replica.py's relay) to ONE node, chosen by the placer when the socket opens, where its
  resets run; the computers its observations name get their fleet records as they pass.
- ``/schema``, ``/metadata``, ``/health`` are the node's handlers, answered here.

The bodies are validated here with the node's own models, so a bad one gets the same 422 without a hop.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Query, Request, WebSocket
from fastapi.responses import Response

from opencone.api.openenv_sessions import ResetParams
from opencone.api.routes import openenv as oe
from opencone.fleet import owned, registry
from opencone.fleet import replica as r
from opencone.fleet.replica_notte import Made, forward_anywhere, forward_placing, inspector, recording

KIND = "openenv"
HELD_SECONDS = 5.0  # an episode's node remembered this long (as a computer's route is)
COMPUTER_IN_FRAME = re.compile(r'"computer_id": ?"([A-Za-z0-9_-]{1,128})"')


def _object_id(org: str, episode_id: str) -> str:
    """The fleet_objects id of an episode: a client may name its own, so two organisations' "run-1"
    must not be one row."""
    return "openenv_" + hashlib.sha256(f"{org}\0{episode_id}".encode()).hexdigest()[:48]


async def _holder(request: Request, org: str, episode_id: str) -> registry.NodeInfo | None:
    """The node holding the episode: remembered for a few seconds, as routes are (a step is two
    database reads fewer; an episode never moves, and a node that went away answers 503 meanwhile)."""
    state = request.app.state
    if getattr(state, "openenv_held", None) is None:
        state.openenv_held = {}
    held: dict[tuple[str, str], tuple[float, registry.NodeInfo]] = state.openenv_held
    hit = held.get((org, episode_id))
    if hit is not None and time.monotonic() - hit[0] < HELD_SECONDS:
        return hit[1]
    probe = f"{oe.PREFIX}/state?episode_id={quote(episode_id, safe='')}"
    node = await owned.locate(r._fleet(request), org, KIND, _object_id(org, episode_id), probe)
    if node is not None:
        if len(held) > 100_000:
            held.clear()
        held[(org, episode_id)] = (time.monotonic(), node)
    return node


async def _to_episode(request: Request, org: str, episode_id: str | None, path: str) -> Response:
    body = await request.body() if request.method == "POST" else None
    node = await _holder(request, org, episode_id) if episode_id else None
    if node is None:  # (no episode named, or none held: the node's own 422/404)
        return await forward_anywhere(request, org, path, body)
    return await owned.forward_to(request, org, node, path, content=body)


async def _reset(request: Request, body: ResetParams | None = None, org: str = Depends(oe.openenv_org)) -> Response:
    raw = await request.body()
    path = f"{oe.PREFIX}/reset"
    params = body or ResetParams()
    made = _made(request, org)
    if params.episode_id:
        node = await _holder(request, org, params.episode_id)
        if node is not None:  # the episode again, where it lives (a new computer there)
            return await owned.forward_to(request, org, node, path, content=raw,
                                          inspect=inspector(node, [], made))
    return await forward_placing(request, org, params.kind, path, raw, made)


def _made(request: Request, org: str) -> Made:
    """What a reset made: its computer's fleet record, and where its episode lives."""
    record = recording(request, org, lambda out: out["observation"]["computer_id"])

    async def made(node: registry.NodeInfo, out: dict[str, Any]) -> None:
        await record(node, out)
        episode = (out.get("observation") or {}).get("episode_id")
        if isinstance(episode, str):
            await owned.claim(r._fleet(request), KIND, _object_id(org, episode), org, node.id)
    return made


async def _step(request: Request, body: oe.StepParams, org: str = Depends(oe.openenv_org)) -> Response:
    return await _to_episode(request, org, body.episode_id, f"{oe.PREFIX}/step")


async def _state(request: Request, episode_id: str | None = Query(default=None, max_length=255),
                 org: str = Depends(oe.openenv_org)) -> Response:
    return await _to_episode(request, org, episode_id, f"{oe.PREFIX}/state")


async def _close(request: Request, body: oe.EpisodeRef, org: str = Depends(oe.openenv_org)) -> Response:
    return await _to_episode(request, org, body.episode_id, f"{oe.PREFIX}/close")


# -- the WebSocket: one node for the life of the socket ------------------------------------------
async def _socket(ws: WebSocket) -> None:
    fleet = r._fleet(ws)
    org = await oe._org(ws)
    if org is None:
        await r._deny(ws, 401, "missing or invalid API key; send 'Authorization: Bearer <key>', ?token=<key>, "
                               "or Basic auth with the key as password (ws://opencone:<key>@host/openenv/ws)")
        return
    ready = await owned.ready_nodes(fleet)
    # the placer's order; a full fleet's socket still goes to a node, whose reset then says so
    # (CAPACITY_REACHED), as a full single server's does
    nodes = owned.placing_order(fleet, ready, "browser") or ([owned.pick_any(ready)] if ready else [])
    query = r._forward_query(ws, fleet.key_for(org))
    failure: Exception | None = None
    for node in nodes:
        try:
            upstream = await r.connect_upstream("ws" + node.url[4:] + f"{oe.PREFIX}/ws" + query,
                                                fleet.agent_headers(org))
        except r.UPSTREAM_ERRORS as exc:
            failure = exc
            continue
        await r.pump(ws, upstream, _watch(fleet, org, node))
        return
    if failure is None:
        await r._deny(ws, 503, "no node of the fleet is ready; retry in a few seconds")
    else:
        await r.deny_upstream(ws, failure, "no node of the fleet answers; retry in a few seconds")


def _watch(fleet: r.Fleet, org: str, node: registry.NodeInfo) -> r.Watch:
    """The computers the socket's observations name get their fleet records before the client sees them
    (the id read by a pattern: an observation may carry a screenshot, not worth parsing whole)."""
    seen: set[str] = set()

    async def watch(frame: str | bytes) -> None:
        found = COMPUTER_IN_FRAME.search(frame) if isinstance(frame, str) else None
        if found is not None and found[1] not in seen:
            seen.add(found[1])
            with contextlib.suppress(Exception):  # (the node's heartbeat records it anyway, a little later)
                await owned.record_made(fleet, org, node, found[1])
    return watch


def install(app: FastAPI) -> None:
    """OpenEnv's routes on a replica (before the /computers catch-all)."""
    tags = ["openenv"]
    app.add_api_route(f"{oe.PREFIX}/reset", _reset, methods=["POST"], tags=tags)
    app.add_api_route(f"{oe.PREFIX}/step", _step, methods=["POST"], tags=tags)
    app.add_api_route(f"{oe.PREFIX}/state", _state, methods=["GET"], tags=tags)
    app.add_api_route(f"{oe.PREFIX}/close", _close, methods=["POST"], tags=tags, status_code=204)
    for name in ("schema", "metadata", "health"):  # the node's own handlers: nothing of an episode in them
        app.add_api_route(f"{oe.PREFIX}/{name}", getattr(oe, name), methods=["GET"], tags=tags)
    app.add_api_websocket_route(f"{oe.PREFIX}/ws", _socket)
