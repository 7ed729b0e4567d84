"""Saved environments and recordings through a replica (fleet mode).

Both live where they were made, in their node's own data directory and store, as on a single server (so
the storage cap is a node's, for each organisation): a persistent computer's environment is saved on its
node when it ends, a recording is written by its computer's node. A replica finds the node (fleet/owned.py:
the ``fleet_objects`` row, else the ready nodes asked once) and forwards; the node's own tenancy decides
what the organisation sees. Lists are merged over the ready nodes.

- a create with ``environment_id`` is placed on the node holding it (``environment_hint``) when that node
  has room; when it is full, or ``node_hint`` names another node, the computer is placed as any create
  and the environment is moved to its node first (``move_environment``: streamed node to node, the
  ``fleet_objects`` row pointed at the new node, the old copy dropped: one node holds it). Its node not
  ready: 503 (its archive cannot be read); a persistent computer made from it still running on its
  node: 409 (that one saves back there when it ends).
- ``/computers/{id}/recording`` and ``/recording/timeline`` go to the computer's node while it lives
  AND after it ended (a kept recording outlives its computer on that node).
- video answers are relayed as bytes with the node's status and headers: a ``Range`` request gets the
  node's 206 and ``Content-Range``.
"""

from __future__ import annotations

import contextlib
import logging
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert

from opencone.api.auth import current_org, current_org_or_token
from opencone.core.errors import Conflict, InvalidInput, LimitReached, NotFound, ServiceError
from opencone.core.store.models import ComputerRecord, FleetObject
from opencone.fleet import owned, placement, registry
from opencone.fleet import replica as r

log = logging.getLogger(__name__)

ENV_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # an environment's id is its first computer's id
REC_ID = re.compile(r"^rec_[0-9a-f]{1,64}$")  # as core/recording.py makes them
MAX_QUERY = {"context_id": 256, "computer_id": 128}  # what a single server's routes allow


class NodeNotReady(ServiceError):
    """The node holding the object is known, and not ready (lost, stopping, silent)."""

    status = 503


def _check_query(request: Request, *names: str) -> None:
    for name in names:
        value = request.query_params.get(name)
        if value is not None and len(value) > MAX_QUERY[name]:
            raise InvalidInput(f"{name} is at most {MAX_QUERY[name]} characters", field=name)


async def _known_node(fleet: r.Fleet, org: str, object_id: str, kind: str) -> str | None:
    """The node that held ``object_id`` for ``org`` by the fleet's tables (even if it is not ready now):
    its ``fleet_objects`` row, or for an environment the record of the computer that first saved it."""
    async with fleet.sessions() as s, registry.guarded(s):
        row = (await s.execute(select(FleetObject.node_id, FleetObject.org_id)
                               .where(FleetObject.id == object_id))).first()
        if row is None and kind == "environment":
            row = (await s.execute(select(ComputerRecord.node_id, ComputerRecord.org_id)
                                   .where(ComputerRecord.id == object_id, ComputerRecord.persistent))).first()
        await s.commit()
    return row.node_id if row is not None and row.org_id == org and row.node_id else None


async def holder(fleet: r.Fleet, org: str, kind: str, object_id: str, probe: str, what: str,
                 field: str | None = None) -> registry.NodeInfo:
    """The ready node holding ``object_id``; 404 when none has it for ``org``, 503 when the node that
    has it is not ready."""
    node = await owned.locate(fleet, org, kind, object_id, probe)
    if node is not None:
        return node
    known = await _known_node(fleet, org, object_id, kind)
    if known is not None:
        async with fleet.sessions() as s:
            info = await registry.get_node(s, known)
        if info is None or info.state != registry.READY:
            raise NodeNotReady(f"{what} {object_id} is on node {known}, which is not ready "
                               f"({info.state if info else 'gone'}); retry when it is back (it is not "
                               "copied to another node)", node_id=known)
    extra = {"field": field} if field else {}
    raise NotFound(f"no {what} {object_id!r}", **extra)


# -- environments ---------------------------------------------------------------------------------
def _env_probe(env_id: str) -> str:
    return "/environments/" + quote(env_id, safe="")


async def environment_node(fleet: r.Fleet, org: str, env_id: str, field: str | None = None) -> registry.NodeInfo:
    if not ENV_ID.match(env_id):
        raise NotFound(f"no saved environment {env_id!r}", **({"field": field} if field else {}))
    return await holder(fleet, org, "environment", env_id, _env_probe(env_id), "saved environment", field)


async def environment_hint(fleet: r.Fleet, org: str, kind: str, env_id: str, hint: str | None) -> str:
    """The placement hint of a create from ``env_id``: the node holding it when it can take a ``kind``
    computer now (the fast path); else, when it is full or ``hint`` names another node, the node the
    computer is placed on, the environment moved there first (``move_environment``). 503 when the holder
    is not ready: its archive cannot be read."""
    node = await environment_node(fleet, org, env_id, field="environment_id")
    kind_ = registry.check_kind(kind)
    knobs = {k: v for k, v in fleet.placing.items() if k in ("heartbeat_ttl", "memory_reserve_mb")}
    now = datetime.now(UTC)
    if node.heartbeat_at is None or now - node.heartbeat_at >= knobs["heartbeat_ttl"]:
        raise NodeNotReady(f"node {node.id}, which holds environment {env_id}, has not reported lately; "
                           "retry in a few seconds (its archive cannot be read meanwhile)", node_id=node.id)
    names_holder = hint is not None and placement.resolve_hint([node], hint) is not None
    if hint is None or names_holder:
        if placement.eligible(node, kind_, now=now, **knobs):
            return node.id
        if names_holder:  # put there or nowhere, as any create with a hint
            raise LimitReached(f"node {node.id} (node_hint), which holds environment {env_id}, cannot take another "
                               f"{kind} computer now ({node.free(kind_)} free slots); delete one of its computers, "
                               "retry, or leave node_hint out to have the environment copied to a node with room",
                               node_id=node.id)
    target = await _move_target(fleet, kind, node, env_id, hint)
    return await move_environment(fleet, org, env_id, node, target)


async def _move_target(fleet: r.Fleet, kind: str, holder: registry.NodeInfo, env_id: str,
                       hint: str | None) -> registry.NodeInfo:
    """Where a create from ``env_id`` goes when not on its holder: the node ``hint`` names, else the
    placer's first choice among the others (a 429 when none can take the computer)."""
    nodes = await owned.ready_nodes(fleet)
    if hint is not None:
        target = placement.resolve_hint(nodes, hint)
        if target is None:
            raise InvalidInput(f"node_hint {hint!r} names no ready node; ready: "
                               f"{', '.join(n.id for n in nodes) or 'none'}", field="node_hint")
        if not placement.choose([target], kind, **fleet.placing):
            raise LimitReached(f"node {target.id} (node_hint) cannot take another {kind} computer now; "
                               "delete one of its computers or retry", node_id=target.id)
        return target
    order = placement.choose(nodes, kind, exclude=frozenset({holder.id}), **fleet.placing)
    if not order:
        raise LimitReached(f"node {holder.id}, which holds environment {env_id}, cannot take another {kind} "
                           f"computer now ({holder.free(registry.check_kind(kind))} free slots), and no other node "
                           "can either; delete a computer or retry", node_id=holder.id)
    return next(n for n in nodes if n.id == order[0])


# -- moving an environment --------------------------------------------------------------------------
MOVE_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(:key))")


async def move_environment(fleet: r.Fleet, org: str, env_id: str, source: registry.NodeInfo,
                           target: registry.NodeInfo) -> str:
    """Move ``env_id`` from ``source`` to ``target``; the id of the node holding it afterwards.

    One move of an environment at a time in the whole fleet (an advisory lock in PostgreSQL, held for
    the move's transaction); a move that finds the environment already moved by another replica leaves it
    where it is. The archive streams from node to node through this replica (never whole in its memory),
    the ``fleet_objects`` row is pointed at ``target`` and ``source`` drops its copy, so exactly one node
    holds it. ``source`` refuses (409) while a persistent computer made from the environment runs there: it
    saves back there at its end; the copy on ``target`` is then dropped again."""
    released = False
    try:
        async with registry.guarded(), fleet.engine.begin() as db:
            await db.execute(MOVE_LOCK, {"key": f"environment:{env_id}"})
            row = (await db.execute(select(FleetObject.node_id).where(FleetObject.id == env_id))).first()
            if row is not None and row.node_id != source.id:
                return row.node_id  # moved meanwhile by another create (which then finds that node as it is)
            await _copy(fleet, org, env_id, source, target)
            try:
                await db.execute(insert(FleetObject).values(
                    id=env_id, kind="environment", org_id=org, node_id=target.id, created_at=datetime.now(UTC),
                ).on_conflict_do_update(index_elements=["id"], set_={"node_id": target.id}))
                await _agent(fleet, org, source, "DELETE", env_id, f"drop environment {env_id}")
                released = True
            except BaseException:
                with contextlib.suppress(Exception):  # the move undone: the source keeps the only copy
                    await _agent(fleet, org, target, "DELETE", env_id, "undo its copy")
                raise
    except BaseException:
        if released:  # the commit failed after the source dropped its copy: only the log knows where it is
            log.error("environment %s is on node %s only, but the fleet's record of the move could not be "
                      "written (it still names node %s)", env_id, target.id, source.id)
        raise
    log.info("environment %s moved from node %s to node %s", env_id, source.id, target.id)
    return target.id


async def _copy(fleet: r.Fleet, org: str, env_id: str, source: registry.NodeInfo,
                target: registry.NodeInfo) -> None:
    """The archive streamed from ``source``'s export into ``target``'s import, chunk by chunk."""
    url = f"{source.url}/environments/{quote(env_id, safe='')}/archive"
    try:
        out = await fleet.http.send(fleet.http.build_request("GET", url, headers=fleet.agent_headers(org)),
                                    stream=True)
    except httpx.TransportError as exc:
        raise NodeNotReady(f"node {source.id}, which holds environment {env_id}, does not answer; retry in a "
                           "few seconds", node_id=source.id) from exc
    try:
        if out.status_code != 200:
            await out.aread()
            raise _refused(out, source, f"export environment {env_id}")
        # the holder's length passed on: the target refuses an archive over its cap before reading it
        headers = {k: out.headers[k] for k in ("content-length", "x-opencone-environment") if k in out.headers}
        await _agent(fleet, org, target, "PUT", env_id, f"take environment {env_id}", out.aiter_raw(),
                     {"content-type": "application/x-tar", **headers})
    finally:
        await out.aclose()


async def _agent(fleet: r.Fleet, org: str, node: registry.NodeInfo, method: str, env_id: str, what: str,
                 content: Any = None, headers: dict[str, str] | None = None) -> None:
    """One archive request to ``node``'s agent; a refusal raised as the client's answer."""
    url = f"{node.url}/environments/{quote(env_id, safe='')}/archive"
    try:
        resp = await fleet.http.request(method, url, content=content,
                                        headers=fleet.agent_headers(org, **(headers or {})))
    except httpx.TransportError as exc:
        raise NodeNotReady(f"node {node.id} does not answer (to {what}); retry in a few seconds",
                           node_id=node.id) from exc
    if resp.status_code not in (200, 204):
        raise _refused(resp, node, what)


def _refused(resp: httpx.Response, node: registry.NodeInfo, what: str) -> ServiceError:
    """A node's refusal to hand over or take an environment, as the client's answer."""
    try:
        detail = str(resp.json().get("detail") or resp.text)
    except ValueError:
        detail = resp.text
    message = f"node {node.id} could not {what}: {detail[:500]}"
    if resp.status_code == 404:
        return NotFound(message, field="environment_id")
    if resp.status_code == 413:
        return LimitReached(message + "; delete saved environments or recordings", node_id=node.id)
    if resp.status_code in (409, 422):  # in use there, or nothing to copy: the environment's state, not the request
        return Conflict(message, field="environment_id", node_id=node.id)
    return NodeNotReady(message, node_id=node.id)


async def saved_environments(request: Request, org: str) -> list[dict[str, object]]:
    """``GET /environments`` (and ``/computers?type=persistent``): every ready node's, merged."""
    _check_query(request, "context_id")
    return await owned.gather_lists(request, org, "/environments")


# -- recordings -----------------------------------------------------------------------------------
def _rec_id(rec_id: str) -> str:
    if not REC_ID.match(rec_id):
        raise InvalidInput(f"{rec_id[:80]!r} is not a recording id (rec_ and up to 64 hex digits)",
                           field="recording_id")
    return rec_id


async def _recording(request: Request, org: str, rec_id: str, rest: str) -> Response:
    fleet = r._fleet(request)
    node = await holder(fleet, org, "recording", _rec_id(rec_id), f"/recordings/{rec_id}/timeline", "recording")
    return await owned.forward_to(request, org, node, f"/recordings/{rec_id}{rest}")


async def _computer_recording(request: Request, org: str, computer_id: str, rest: str) -> Response:
    """A computer's latest recording: from its node while it lives and after it ended."""
    fleet = r._fleet(request)
    path = r.agent_path(computer_id, rest)
    route = await fleet.route(org, computer_id)
    if route.row.status != r.TERMINATED and route.url is not None:
        return await r._forward(request, route, path, org)
    node_id = route.row.node_id
    async with fleet.sessions() as s:
        node = await registry.get_node(s, node_id) if node_id else None
    if node is None or node.state != registry.READY or not node.url:
        raise NodeNotReady(f"the recordings of computer {computer_id} are on node {node_id}, which is not ready "
                           f"({node.state if node else 'gone'}); retry when it is back", node_id=node_id)
    return await owned.forward_to(request, org, node, path)


def install(app: FastAPI) -> None:
    """The environment and recording routes of a replica (before its /computers/{id}/… catch-all)."""

    @app.get("/environments")
    async def list_environments(request: Request, org: str = Depends(current_org)) -> Response:
        return JSONResponse(await saved_environments(request, org))

    @app.api_route("/environments/{environment_id}", methods=["GET", "DELETE"])
    async def environment(request: Request, environment_id: str, org: str = Depends(current_org)) -> Response:
        node = await environment_node(r._fleet(request), org, environment_id)
        return await owned.forward_to(request, org, node, _env_probe(environment_id))

    @app.get("/recordings")
    async def list_recordings(request: Request, org: str = Depends(current_org_or_token)) -> Response:
        _check_query(request, "computer_id")
        found = await owned.gather_lists(request, org, "/recordings", sort_key=lambda x: x.get("started_at") or "")
        return JSONResponse(found)

    @app.get("/recordings/{recording_id}")
    async def recording(request: Request, recording_id: str, org: str = Depends(current_org_or_token)) -> Response:
        return await _recording(request, org, recording_id, "")

    @app.get("/recordings/{recording_id}/timeline")
    async def recording_timeline(request: Request, recording_id: str,
                                 org: str = Depends(current_org_or_token)) -> Response:
        return await _recording(request, org, recording_id, "/timeline")

    @app.delete("/recordings/{recording_id}")
    async def delete_recording(request: Request, recording_id: str, org: str = Depends(current_org)) -> Response:
        return await _recording(request, org, recording_id, "")

    @app.get("/computers/{computer_id}/recording")
    async def computer_recording(request: Request, computer_id: str,
                                 org: str = Depends(current_org_or_token)) -> Response:
        return await _computer_recording(request, org, computer_id, "recording")

    @app.get("/computers/{computer_id}/recording/timeline")
    async def computer_recording_timeline(request: Request, computer_id: str,
                                          org: str = Depends(current_org_or_token)) -> Response:
        return await _computer_recording(request, org, computer_id, "recording/timeline")
