"""The fleet's nodes table: agents register and heartbeat, replicas read it to place and route.

Every function runs its statements in the caller's ``AsyncSession`` (or ``AsyncConnection``) and commits
them (one transaction each), so pass one that is not inside ``begin()``. Times come from the caller's clock
(UTC), never the database's, so SQLite (local tests) and PostgreSQL agree. A database that cannot be
reached raises ``DatabaseUnavailable`` (a 503 at the edge), whatever the driver's own error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Table, bindparam, case, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from opencone.core.store.db import DatabaseUnavailable, unavailable
from opencone.core.store.models import ComputerRecord, NodeRecord

Db = AsyncSession | AsyncConnection  # a replica's placement runs on a bare AUTOCOMMIT connection
Kind = Literal["browser", "desktop"]
KINDS: tuple[Kind, ...] = ("browser", "desktop")
READY, DRAINING, DEAD = "ready", "draining", "dead"
STATES = (READY, DRAINING, DEAD)
# NOTIFY channel: payload = comma-separated ids of computers the fleet just ended (mark_dead, end_computers,
# a replica's delete, a node's write of a computer's end); every replica LISTENs and drops them from its routes
COMPUTERS_CHANNEL = "opencone_computers"
# NOTIFY channel (a trigger on nodes, migration 0008): a node's row as JSON when its report changes (heartbeat,
# state, address, capacity), or {"id": ..., "deleted": true}; replicas keep their view of the nodes from it
NODES_CHANNEL = "opencone_nodes"
NOTIFY_MAX_BYTES = 7900  # PostgreSQL caps a payload at 8000 bytes
# a reservation not confirmed or released in this long belongs to a create that died with its replica
RESERVATION_TTL = timedelta(seconds=60)


@contextlib.asynccontextmanager
async def guarded(session: Db | None = None) -> AsyncIterator[None]:
    """Turn "the database is unreachable", whatever raised it, into ``DatabaseUnavailable`` (re-exported
    here for the fleet), rolling ``session`` back."""
    try:
        yield
    except Exception as exc:
        if not unavailable(exc):
            raise
        if session is not None:
            with contextlib.suppress(Exception):
                await session.rollback()
        if isinstance(exc, DatabaseUnavailable):  # (the engine's own translation: core/store/db.py)
            raise
        raise DatabaseUnavailable(reason=type(exc).__name__) from exc


@dataclass(frozen=True)
class NodeInfo:
    """One row of ``nodes``, as agents write it and replicas read it."""

    id: str
    url: str
    ray_node_id: str | None = None
    incarnation: int = 0
    state: str = READY
    capacity_browser: int = 0
    capacity_desktop: int = 0
    live_browser: int = 0
    live_desktop: int = 0
    reserved_browser: int = 0
    reserved_desktop: int = 0
    free_mem_mb: int = 0
    load: float = 0.0
    heartbeat_at: datetime | None = None
    created_at: datetime | None = None

    def capacity(self, kind: Kind) -> int:
        return int(getattr(self, f"capacity_{kind}"))

    def used(self, kind: Kind) -> int:
        """Slots taken: live computers plus creates in flight."""
        return int(getattr(self, f"live_{kind}")) + int(getattr(self, f"reserved_{kind}"))

    def free(self, kind: Kind) -> int:
        return max(0, self.capacity(kind) - self.used(kind))

    def public(self) -> dict[str, Any]:
        """What ``GET /nodes`` shows (no internal URL: it is where the internal token goes)."""
        out = dataclasses.asdict(self)
        out.pop("url")
        for key in ("heartbeat_at", "created_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


_FIELDS = [f.name for f in dataclasses.fields(NodeInfo)]
_NODES: Table = NodeRecord.__table__  # type: ignore[assignment]
# built once (a replica reads the nodes at every create): an expression costs more to build than to run
_ALL_NODES = select(_NODES).order_by(_NODES.c.id)
_NODES_IN = _ALL_NODES.where(_NODES.c.state.in_(bindparam("states", expanding=True)))


def node_info(row: Any) -> NodeInfo:
    """A NodeRecord, or a row of the nodes table, as a NodeInfo."""
    return NodeInfo(**{name: getattr(row, name) for name in _FIELDS})


def node_from_notify(payload: str) -> NodeInfo | str:
    """A NOTIFY on ``NODES_CHANNEL`` as the node's new row, or the id of a node deleted. Raises ValueError
    on a payload that is not one (a replica then reads the table instead)."""
    data = json.loads(payload)
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise ValueError("not a node row")
    if data.get("deleted"):
        return data["id"]

    def when(value: Any) -> datetime | None:  # row_to_json: the naive UTC the store writes (UTCDateTime)
        return datetime.fromisoformat(value).replace(tzinfo=UTC) if isinstance(value, str) else None

    fields = {name: data[name] for name in _FIELDS if name in data}
    for name in ("heartbeat_at", "created_at"):
        fields[name] = when(fields.get(name))
    return NodeInfo(**fields)


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ValueError(f"unknown computer kind {kind!r}; one of {', '.join(KINDS)}")
    return kind  # type: ignore[return-value]


async def upsert_node(session: AsyncSession, node: NodeInfo, *, now: datetime | None = None) -> NodeInfo:
    """Register ``node`` (an agent's start): insert it, or overwrite what an earlier incarnation wrote.
    Reservations in flight are kept (their replicas release them); the heartbeat is now."""
    at = _now(now)
    async with guarded(session):
        row = await session.get(NodeRecord, node.id, with_for_update=True, populate_existing=True)
        values = {name: getattr(node, name) for name in _FIELDS if name not in ("id", "created_at")}
        values["heartbeat_at"] = at
        if row is None:
            row = NodeRecord(id=node.id, created_at=node.created_at or at, reserved_at=None, **values)
            session.add(row)
        else:
            for name, value in values.items():
                if name not in ("reserved_browser", "reserved_desktop"):
                    setattr(row, name, value)
        await session.commit()
        return node_info(row)


async def heartbeat(session: AsyncSession, node_id: str, *, live_browser: int, live_desktop: int,
                    free_mem_mb: int, load: float, incarnation: int | None = None,
                    now: datetime | None = None) -> bool:
    """An agent's periodic report. False when the row is gone, dead, or belongs to another incarnation
    (the agent must re-register, or stop: its node was declared dead)."""
    at = _now(now)
    table: Table = NodeRecord.__table__  # type: ignore[assignment]
    stale = table.c.reserved_at.is_(None) | (table.c.reserved_at < at - RESERVATION_TTL)
    stmt = (update(table)
            .where(table.c.id == node_id, table.c.state != DEAD)
            .values(live_browser=live_browser, live_desktop=live_desktop, free_mem_mb=free_mem_mb, load=load,
                    heartbeat_at=at,
                    # reservations nobody confirmed or released for a minute were left by a dead replica
                    reserved_browser=case((stale, 0), else_=table.c.reserved_browser),
                    reserved_desktop=case((stale, 0), else_=table.c.reserved_desktop))
            .returning(table.c.id))
    if incarnation is not None:
        stmt = stmt.where(table.c.incarnation == incarnation)
    async with guarded(session):
        found = (await session.execute(stmt)).first() is not None
        await session.commit()
    return found


async def set_state(session: AsyncSession, node_id: str, state: str) -> bool:
    """Mark a node ready or draining (no new computers there); False when it is unknown or dead.
    Use ``mark_dead`` to declare it dead."""
    if state not in (READY, DRAINING):
        raise ValueError(f"state must be {READY!r} or {DRAINING!r}")
    async with guarded(session):
        result = await session.execute(update(NodeRecord).where(NodeRecord.id == node_id, NodeRecord.state != DEAD)
                                       .values(state=state).returning(NodeRecord.id))
        found = result.first() is not None
        await session.commit()
    return found


def _dialect(db: Db) -> str:
    return db.dialect.name if isinstance(db, AsyncConnection) else db.bind.dialect.name


async def notify_ended(session: Db, ids: Sequence[str]) -> None:
    """Tell every replica (LISTEN opencone_computers) that these computers ended: ids only, in chunks under
    PostgreSQL's payload cap; sent when the transaction commits. No-op on other databases."""
    if _dialect(session) != "postgresql" or not ids:
        return
    chunk: list[str] = []
    size = 0
    for cid in ids:
        if chunk and size + len(cid) + 1 > NOTIFY_MAX_BYTES:
            await session.execute(text("SELECT pg_notify(:c, :p)"), {"c": COMPUTERS_CHANNEL, "p": ",".join(chunk)})
            chunk, size = [], 0
        chunk.append(cid)
        size += len(cid) + 1
    await session.execute(text("SELECT pg_notify(:c, :p)"), {"c": COMPUTERS_CHANNEL, "p": ",".join(chunk)})


async def end_computers(session: AsyncSession, node_id: str, reason: str, *,
                        now: datetime | None = None) -> list[str]:
    """Terminate every computer still recorded on ``node_id``, with termination reason ``reason`` (e.g.
    ``node_agent_restarted``: a new agent incarnation ends what the old one ran). Their ids."""
    at = _now(now)
    async with guarded(session):
        ids = await _end(session, node_id, reason, at)
        await session.commit()
    return ids


async def _end(session: AsyncSession, node_id: str, reason: str, at: datetime) -> list[str]:
    result = await session.execute(
        update(ComputerRecord)
        .where(ComputerRecord.node_id == node_id, ComputerRecord.status != "terminated")
        .values(status="terminated", termination_reason=reason, terminated_at=at)
        .returning(ComputerRecord.id))
    ids = sorted(result.scalars().all())
    await notify_ended(session, ids)
    return ids


async def mark_dead(session: AsyncSession, node_id: str, reason: str = "node_lost", *,
                    now: datetime | None = None) -> list[str]:
    """Declare ``node_id`` dead (no placement, no heartbeat brings it back: a new agent registers again)
    and terminate its computers with ``reason``, in one transaction. Their ids; nothing else is touched."""
    at = _now(now)
    async with guarded(session):
        await session.execute(update(NodeRecord).where(NodeRecord.id == node_id)
                              .values(state=DEAD, reserved_browser=0, reserved_desktop=0))
        ids = await _end(session, node_id, reason, at)
        await session.commit()
    return ids


async def list_nodes(session: Db, *, states: Sequence[str] | None = None) -> list[NodeInfo]:
    """Every node (or those in ``states``), by id. Rows of the table, not ORM objects: a replica reads
    them at every create."""
    stmt, params = (_ALL_NODES, {}) if states is None else (_NODES_IN, {"states": list(states)})
    async with guarded(session):
        infos = [node_info(row) for row in (await session.execute(stmt, params)).all()]
        await session.commit()  # ends the read transaction: the next read sees fresh rows
    return infos


async def get_node(session: Db, node_id: str) -> NodeInfo | None:
    async with guarded(session):
        row = (await session.execute(select(_NODES).where(_NODES.c.id == node_id))).first()
        info = node_info(row) if row is not None else None
        await session.commit()
    return info


async def node_for_computer(session: AsyncSession, computer_id: str) -> NodeInfo | None:
    """The node computer ``computer_id`` runs on, or None (unknown, or not placed on a node)."""
    stmt = (select(NodeRecord).join(ComputerRecord, ComputerRecord.node_id == NodeRecord.id)
            .where(ComputerRecord.id == computer_id))
    async with guarded(session):
        row = (await session.execute(stmt)).scalar_one_or_none()
        info = node_info(row) if row is not None else None
        await session.commit()
    return info


async def sweep_stale(session: AsyncSession, *, older_than: timedelta = timedelta(minutes=5),
                      reason: str = "node_lost", now: datetime | None = None) -> dict[str, list[str]]:
    """The cross-check beside Ray's verdict: nodes whose heartbeat is older than ``older_than`` are declared
    dead and their computers ended. ``{node_id: [computer ids]}`` of what it ended."""
    at = _now(now)
    async with guarded(session):
        stale = (await session.execute(select(NodeRecord.id).where(
            NodeRecord.state != DEAD, NodeRecord.heartbeat_at < at - older_than))).scalars().all()
        await session.commit()
    return {node_id: await mark_dead(session, node_id, reason, now=at) for node_id in stale}


async def declare_lost(session: AsyncSession, node: NodeInfo, reason: str = "node_lost", *,
                       now: datetime | None = None) -> list[str] | None:
    """``mark_dead`` for a node seen silent (a replica's sweeper, fleet/replica_sweep.py), only if its row
    still holds the report ``node`` was read with (same incarnation, same heartbeat) and is not dead yet:
    the row dead and its computers ended with ``reason`` (NOTIFY'd), in one transaction. The ids ended, or
    None when the row moved on (it beat, it registered again, another replica declared it first): then
    nothing is touched, so replicas deciding at once declare a node once and end its computers once."""
    at = _now(now)
    async with guarded(session):
        declared = (await session.execute(
            update(_NODES)
            .where(_NODES.c.id == node.id, _NODES.c.state != DEAD, _NODES.c.incarnation == node.incarnation,
                   _NODES.c.heartbeat_at == node.heartbeat_at)
            .values(state=DEAD, reserved_browser=0, reserved_desktop=0)
            .returning(_NODES.c.id))).first()
        if declared is None:
            await session.rollback()
            return None
        ids = await _end(session, node.id, reason, at)  # the row lock taken above holds off its heartbeat
        await session.commit()
    return ids
