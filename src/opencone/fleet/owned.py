"""Objects a node made, found from any replica: agent tasks, stored responses, saved environments,
recordings, OpenEnv sessions (fleet mode only).

A computer's node is in its fleet record (``computers.node_id``); the other objects live in their node's
own store, as on a single server, and the ``fleet_objects`` table says which node holds each. A replica
writes a row when it sees the object made (``claim``; a task start's idempotency key before its task is
made, moved with ``move_claim`` when its node refuses: fleet/replica_agent.py); a request about an id it
has no row for asks the ready nodes once (``locate``: the node that answers 200 holds it) and writes the
row then, so an object made in a way no replica saw (a task's computer, a save at a computer's end) is
still found.

Each request goes to the node for the request's organisation (its derived key, fleet/agent_routes.py):
the node's own tenancy decides what the organisation may see, as on a single server; the table only
says where to ask.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from starlette.background import BackgroundTask

from opencone.core.errors import LimitReached, NotFound
from opencone.core.store.models import ComputerRecord, FleetObject
from opencone.fleet import placement, registry

if TYPE_CHECKING:
    from opencone.fleet.replica import Fleet

KINDS = ("task", "response", "environment", "recording", "openenv",
         "task_key")  # task_key: the node that has the task of a start's idempotency key (replica_agent.py)
Inspect = Callable[[int, bytes], Awaitable[None]]


async def claim(fleet: Fleet, kind: str, object_id: str, org: str, node_id: str) -> bool:
    """Write where ``object_id`` lives (a no-op when a row is there: ids are unique across the fleet).
    True when this call wrote it: of claims made at once, on any replicas, exactly one wins."""
    async with fleet.sessions() as s, registry.guarded(s):
        won = (await s.execute(insert(FleetObject).values(
            id=object_id, kind=kind, org_id=org, node_id=node_id, created_at=datetime.now(UTC),
        ).on_conflict_do_nothing(index_elements=["id"]).returning(FleetObject.id))).first() is not None
        await s.commit()
    return won


async def claimed(fleet: Fleet, object_id: str, org: str) -> str | None:
    """The node a row names for ``org`` (None: no row, or another organisation's)."""
    async with fleet.sessions() as s, registry.guarded(s):
        row = (await s.execute(select(FleetObject.node_id).where(
            FleetObject.id == object_id, FleetObject.org_id == org))).first()
        await s.commit()
    return row.node_id if row is not None else None


async def move_claim(fleet: Fleet, object_id: str, from_node: str, to_node: str | None) -> bool:
    """Point a row at ``to_node`` (None: delete it) if it still names ``from_node``; True when it did.
    Conditioned on the old node, so of replicas moving one claim at once only the first moves it (the
    others read where it went)."""
    table = FleetObject.__table__
    where = (table.c.id == object_id) & (table.c.node_id == from_node)
    stmt = delete(table).where(where) if to_node is None else update(table).where(where).values(node_id=to_node)
    async with fleet.sessions() as s, registry.guarded(s):
        done = (await s.execute(stmt.returning(table.c.id))).first() is not None
        await s.commit()
    return done


async def ready_nodes(fleet: Fleet) -> list[registry.NodeInfo]:
    async with fleet.sessions() as s:
        return [n for n in await registry.list_nodes(s, states=[registry.READY]) if n.url]


async def locate(fleet: Fleet, org: str, kind: str, object_id: str, probe: str) -> registry.NodeInfo | None:
    """The node holding ``object_id`` for ``org``: from the table, else the node that answers ``GET probe``
    with 200 (then written to the table). None: no node has it for this organisation."""
    async with fleet.sessions() as s, registry.guarded(s):
        row = (await s.execute(select(FleetObject.node_id, FleetObject.org_id).where(
            FleetObject.id == object_id))).first()
        await s.commit()
    if row is not None:
        if row.org_id != org:
            return None
        async with fleet.sessions() as s:
            node = await registry.get_node(s, row.node_id)
        return node if node is not None and node.state == registry.READY else None
    nodes = await ready_nodes(fleet)

    async def holds(node: registry.NodeInfo) -> bool:
        try:
            resp = await fleet.http.get(node.url + probe, headers=fleet.agent_headers(org))
        except httpx.TransportError:
            return False
        return resp.status_code == 200

    found = await asyncio.gather(*(holds(n) for n in nodes))
    for node, ok in zip(nodes, found, strict=True):
        if ok:
            await claim(fleet, kind, object_id, org, node.id)
            return node
    return None


def pick_any(nodes: Sequence[registry.NodeInfo]) -> registry.NodeInfo:
    """A node for work that needs no particular one (a model call): the least loaded of two drawn."""
    if not nodes:
        raise LimitReached("no node of the fleet is ready; retry in a few seconds")
    drawn = random.sample(list(nodes), min(2, len(nodes)))
    return min(drawn, key=lambda n: n.load)


def placing_order(fleet: Fleet, nodes: Sequence[registry.NodeInfo], kind: str, hint: str | None = None,
                  exclude: frozenset[str] = frozenset()) -> list[registry.NodeInfo]:
    """Nodes to try, in order, for work that makes a ``kind`` computer on the node itself (a task, an
    OpenEnv reset): the placer's choice over the last reports; the node's own slot limit refuses (429)
    when it is full, and the next is tried."""
    by_id = {n.id: n for n in nodes}
    return [by_id[i] for i in placement.choose(nodes, kind, hint=hint, exclude=exclude, **fleet.placing)]


async def forward_to(request: Request, org: str, node: registry.NodeInfo, path: str, *,
                     content: bytes | None = None, inspect: Inspect | None = None) -> Response:
    """``request`` sent to ``node`` at ``path`` for ``org``; JSON answers rewritten (and shown to
    ``inspect`` first), streams relayed as bytes. An unreachable node: 503."""
    from opencone.fleet import replica as r

    fleet = r._fleet(request)
    body: Any = content
    if body is None and request.method not in ("GET", "HEAD", "DELETE"):
        body = await request.body()
    req = fleet.http.build_request(request.method, node.url + path + r._forward_query(request, fleet.key_for(org)),
                                   headers=r._headers_for_agent(request, fleet, org), content=body)
    try:
        resp = await fleet.http.send(req, stream=True)
    except httpx.TransportError as exc:
        raise r.NodeUnreachable(f"node {node.id} does not answer; retry in a few seconds", node_id=node.id) from exc
    headers = r._answer_headers(resp)
    if "json" in resp.headers.get("content-type", ""):
        try:
            data = await resp.aread()
        except httpx.TransportError as exc:
            raise r.NodeUnreachable(f"node {node.id} stopped answering; retry", node_id=node.id) from exc
        finally:
            await resp.aclose()
        if inspect is not None:
            await inspect(resp.status_code, data)
        public = r._public_base(request, fleet.settings)
        return Response(fleet.rewrite(data, node.url, node.id, public, r.presented_key(request, True), org),
                        resp.status_code, headers=headers)
    return StreamingResponse(r._relay_bytes(resp), resp.status_code, headers=r._answer_headers(resp, as_is=True),
                             background=BackgroundTask(resp.aclose))


async def forward_owned(request: Request, org: str, kind: str, object_id: str, path: str, probe: str,
                        what: str) -> Response:
    """A request about an object of ``kind`` sent to the node holding it; a 404 naming ``what`` if none."""
    node = await locate(_fleet_of(request), org, kind, object_id, probe)
    if node is None:
        raise NotFound(f"no {what} {object_id!r}")
    return await forward_to(request, org, node, path)


async def gather_lists(request: Request, org: str, path: str,
                       sort_key: Callable[[dict[str, Any]], Any] | None = None) -> list[dict[str, Any]]:
    """``GET path`` (a JSON list) asked of every ready node for ``org``, merged (unreachable nodes left out)."""
    from opencone.fleet import replica as r

    fleet = r._fleet(request)
    public = r._public_base(request, fleet.settings)
    key = r.presented_key(request, False)

    async def of_node(node: registry.NodeInfo) -> list[dict[str, Any]]:
        try:
            resp = await fleet.http.get(node.url + path, headers=fleet.agent_headers(org),
                                        params=list(request.query_params.multi_items()))
            resp.raise_for_status()
        except httpx.HTTPError:
            return []
        items = json.loads(fleet.rewrite(resp.content, node.url, node.id, public, key, org))
        return items if isinstance(items, list) else []

    parts = await asyncio.gather(*(of_node(n) for n in await ready_nodes(fleet)))
    merged = [item for part in parts for item in part]
    return sorted(merged, key=sort_key or (lambda c: c.get("created_at") or ""))


async def record_made(fleet: Fleet, org: str, node: registry.NodeInfo, computer_id: str) -> None:
    """The fleet record of a computer ``node`` made itself (a task's, a reset's), written at once so the
    next request about it finds its node (the node's heartbeat would write it too, a little later)."""
    resp = await fleet.http.get(f"{node.url}/computers/{computer_id}", headers=fleet.agent_headers(org))
    if resp.status_code != 200:
        return
    out = resp.json()
    d = out.get("display") or {}

    def when(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None

    async with fleet.sessions() as s, registry.guarded(s):
        await s.execute(insert(ComputerRecord).values(
            id=out["id"], org_id=org, kind=out.get("kind", "browser"), status=out.get("status", "ready"),
            created_at=when(out.get("created_at")), last_activity_at=when(out.get("last_activity_at")),
            max_lifetime_seconds=out["max_lifetime_seconds"],
            inactivity_timeout_seconds=out["inactivity_timeout_seconds"],
            idle_timeout_enabled=out["idle_timeout_enabled"], display_width=d.get("width", 0),
            display_height=d.get("height", 0), display_scale=d.get("scale", 1.0),
            persistent=bool(out.get("persistent")), environment_id=out.get("environment_id"),
            context_id=out.get("context_id"), options={}, node_id=node.id,
            # already ended (a one-shot Notte operation's session): how, as the node says it
            termination_reason=out.get("termination_reason"), terminated_at=when(out.get("terminated_at")),
        ).on_conflict_do_nothing(index_elements=["id"]))
        await s.commit()
    fleet.forget(computer_id)


def _fleet_of(request: Request) -> Fleet:
    return request.app.state.fleet  # type: ignore[no-any-return]
