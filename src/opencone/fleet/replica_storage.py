"""Saved environments and recordings through a replica (fleet mode).

Both live where they were made, in their node's own data directory and store, as on a single server (so
the storage cap is a node's, for each organisation): a persistent computer's environment is saved on its
node when it ends, a recording is written by its computer's node. A replica finds the node (fleet/owned.py:
the ``fleet_objects`` row, else the ready nodes asked once) and forwards; the node's own tenancy decides
what the organisation sees. Lists are merged over the ready nodes.

- a create with ``environment_id`` is placed on the node holding it (``environment_hint``); that node
  full: 429, not ready: 503. Environments are not copied between nodes (yet).
- ``/computers/{id}/recording`` and ``/recording/timeline`` go to the computer's node while it lives
  AND after it ended (a kept recording outlives its computer on that node).
- video answers are relayed as bytes with the node's status and headers: a ``Range`` request gets the
  node's 206 and ``Content-Range``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from opencone.api.auth import current_org, current_org_or_token
from opencone.core.errors import InvalidInput, LimitReached, NotFound, ServiceError
from opencone.core.store.models import ComputerRecord, FleetObject
from opencone.fleet import owned, placement, registry
from opencone.fleet import replica as r

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
    """The placement hint of a create from ``env_id``: the node holding it, if it can take a ``kind``
    computer now (429 when it is full, 503 when it is not ready)."""
    node = await environment_node(fleet, org, env_id, field="environment_id")
    if hint is not None and placement.resolve_hint([node], hint) is None:
        raise InvalidInput(f"environment {env_id} is saved on node {node.id}; node_hint {hint!r} names another "
                           "node (leave node_hint out)", field="node_hint")
    knobs = {k: v for k, v in fleet.placing.items() if k in ("heartbeat_ttl", "memory_reserve_mb")}
    if not placement.eligible(node, registry.check_kind(kind), now=datetime.now(UTC), **knobs):
        if node.heartbeat_at is None or datetime.now(UTC) - node.heartbeat_at >= knobs["heartbeat_ttl"]:
            raise NodeNotReady(f"node {node.id}, which holds environment {env_id}, has not reported lately; "
                               "retry in a few seconds", node_id=node.id)
        raise LimitReached(f"node {node.id}, which holds environment {env_id}, cannot take another {kind} "
                           f"computer now ({node.free(registry.check_kind(kind))} free slots); delete one of "
                           "its computers or retry (environments are not copied between nodes)",
                           node_id=node.id)
    return node.id


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
