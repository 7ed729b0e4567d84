"""Where a new computer goes: a pure choice over the nodes' last reports, then one atomic reservation.

The choice is best-of-K (E2B's placement, and the "power of two choices"): draw K eligible nodes at random
and take the least loaded, scored ``(live + reserved) / capacity + alpha * load``. Random draws keep many
replicas that read the same stale rows from all piling onto the one emptiest node; comparing K keeps the
spread even. The reservation is one conditional UPDATE, so two replicas can never take a node's last slot
twice: the database, not the replicas' view, decides.

Every function takes an ``AsyncSession`` or an ``AsyncConnection``; a replica passes a connection in
AUTOCOMMIT (fleet/replica.py), so each statement is one round trip with no BEGIN/COMMIT around it: a
create costs a read of the nodes, the reservation, and one statement that writes the computer's record
and turns its slot live (``confirm(..., record=...)``).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, bindparam, case, exists, insert, select, update

from opencone.core.store.models import ComputerRecord, NodeRecord
from opencone.fleet.registry import READY, Db, Kind, NodeInfo, check_kind, guarded, list_nodes, node_info

if TYPE_CHECKING:
    from opencone.config import Settings

HEARTBEAT_TTL = timedelta(seconds=10)  # a node silent longer than this gets no new computers
# free memory a node must keep to take one more computer of a kind (MiB): a browser context is ~24-67 MiB,
# a desktop ~90 MiB plus its browser (research/feasibility.md), with headroom for the node's own work
MEMORY_RESERVE_MB: Mapping[str, int] = {"browser": 256, "desktop": 512}
ALPHA = 0.25  # weight of the load average (per core) against the slot fill ratio


def resolve_hint(nodes: Iterable[NodeInfo], hint: str) -> NodeInfo | None:
    """The node a placement hint names: its id, its Ray node id, or "node-" + that id."""
    for node in nodes:
        if hint in (node.id, node.ray_node_id) or node.id == f"node-{hint}":
            return node
    return None


def eligible(node: NodeInfo, kind: Kind, *, now: datetime, heartbeat_ttl: timedelta = HEARTBEAT_TTL,
             memory_reserve_mb: Mapping[str, int] = MEMORY_RESERVE_MB) -> bool:
    """Whether ``node`` may take one more computer of ``kind`` by its last report."""
    return (node.state == READY
            and node.heartbeat_at is not None and now - node.heartbeat_at < heartbeat_ttl
            and node.free(kind) > 0
            and node.free_mem_mb >= memory_reserve_mb.get(kind, 0))


def score(node: NodeInfo, kind: Kind, alpha: float = ALPHA) -> float:
    """Lower is better: how full the node's slots of ``kind`` are, plus its load."""
    return node.used(kind) / max(1, node.capacity(kind)) + alpha * node.load


def choose(nodes: Sequence[NodeInfo], kind: str, *, k: int = 2, hint: str | None = None,
           exclude: frozenset[str] = frozenset(), rng: random.Random | None = None, now: datetime | None = None,
           heartbeat_ttl: timedelta = HEARTBEAT_TTL, memory_reserve_mb: Mapping[str, int] = MEMORY_RESERVE_MB,
           alpha: float = ALPHA) -> list[str]:
    """Ids of the nodes to try, in order: each the best of ``k`` drawn from those not yet listed.
    With ``hint``, only the node it names (a computer put next to a given worker goes there or nowhere);
    ``exclude``: nodes that just refused (their agent said it is full)."""
    kind_ = check_kind(kind)
    at = now or datetime.now(UTC)
    rng = rng or random.Random()
    pool = [n for n in nodes if n.id not in exclude
            and eligible(n, kind_, now=at, heartbeat_ttl=heartbeat_ttl, memory_reserve_mb=memory_reserve_mb)]
    if hint is not None:
        target = resolve_hint(pool, hint)
        return [target.id] if target is not None else []
    order: list[str] = []
    while pool:
        drawn = rng.sample(pool, min(max(1, k), len(pool)))
        best = min(drawn, key=lambda n: score(n, kind_, alpha))
        order.append(best.id)
        pool.remove(best)
    return order


def _columns(kind: Kind) -> tuple[Table, Any, Any, Any]:
    table: Table = NodeRecord.__table__  # type: ignore[assignment]
    return table, table.c[f"live_{kind}"], table.c[f"reserved_{kind}"], table.c[f"capacity_{kind}"]


@functools.cache
def _statements(kind: Kind) -> dict[str, Any]:
    """Each statement built once, with bind parameters: building a Core expression costs more than
    running it on a PostgreSQL next door (profiled: most of a create's time in the replica)."""
    table, live, reserved, capacity = _columns(kind)
    node = table.c.id == bindparam("node_id")
    give_back = case((reserved > 0, reserved - 1), else_=0)
    confirm = update(table).where(node).values({reserved: give_back, live: live + 1})
    computers: Table = ComputerRecord.__table__  # type: ignore[assignment]
    written = (insert(computers).values({c: bindparam(f"rec_{c.name}", type_=c.type) for c in computers.c})
               .returning(computers.c.id).cte("written"))
    return {
        "reserve": update(table).where(node, table.c.state == READY, live + reserved < capacity)
        .values({reserved: reserved + 1, table.c.reserved_at: bindparam("now", type_=table.c.reserved_at.type)})
        .returning(*table.c),
        "release": update(table).where(node).values({reserved: give_back}),
        "confirm": confirm,
        "confirm_record": confirm.where(exists(select(written.c.id))).add_cte(written),
        "columns": [c.name for c in computers.c],
    }


async def reserve(session: Db, node_id: str, kind: str, *, now: datetime | None = None) -> bool:
    """Take one slot of ``kind`` on ``node_id`` if it still has one: one atomic statement (commits)."""
    return await _take(session, node_id, check_kind(kind), now or datetime.now(UTC)) is not None


async def _take(session: Db, node_id: str, kind: Kind, now: datetime) -> NodeInfo | None:
    """``reserve``, answering with the node's row as the reservation left it (or None)."""
    async with guarded(session):
        row = (await session.execute(_statements(kind)["reserve"], {"node_id": node_id, "now": now})).first()
        await session.commit()
    return node_info(row) if row is not None else None


async def release(session: Db, node_id: str, kind: str) -> None:
    """Give back a reservation (the create failed or was refused)."""
    async with guarded(session):
        await session.execute(_statements(check_kind(kind))["release"], {"node_id": node_id})
        await session.commit()


async def confirm(session: Db, node_id: str, kind: str, *, record: Mapping[str, Any] | None = None) -> None:
    """The create succeeded: its reservation becomes a live computer in the same statement, so the slot is
    never seen free between the agent's answer and its next heartbeat. With ``record`` (columns of the
    ``computers`` row, absent ones NULL; PostgreSQL only) that same statement inserts the row: a
    data-modifying CTE, one round trip, all or nothing (a row that cannot be written leaves the slot
    reserved, for the caller's release)."""
    stmts = _statements(check_kind(kind))
    params: dict[str, Any] = {"node_id": node_id}
    if record is not None:
        if unknown := set(record) - set(stmts["columns"]):
            raise ValueError(f"not columns of computers: {sorted(unknown)}")
        params.update({f"rec_{name}": record.get(name) for name in stmts["columns"]})  # absent: NULL
    async with guarded(session):
        await session.execute(stmts["confirm" if record is None else "confirm_record"], params)
        await session.commit()


async def place(session: Db, kind: str, *, hint: str | None = None, exclude: frozenset[str] = frozenset(),
                k: int = 2, rng: random.Random | None = None, now: datetime | None = None,
                heartbeat_ttl: timedelta = HEARTBEAT_TTL, memory_reserve_mb: Mapping[str, int] = MEMORY_RESERVE_MB,
                nodes: Sequence[NodeInfo] | None = None) -> NodeInfo | None:
    """Choose a node and reserve a slot there, trying the next choice when another replica took the last
    slot first. The node as its reservation left it (the caller then confirms or releases), or None: no
    node can take it. ``nodes``: the ready nodes as the caller last read them (a replica's read of a
    moment ago, instead of one more here: the choice may be stale, the reservation never is)."""
    at = now or datetime.now(UTC)
    kind_ = check_kind(kind)
    if nodes is None:
        nodes = await list_nodes(session, states=[READY])
    for node_id in choose(nodes, kind_, k=k, hint=hint, exclude=exclude, rng=rng, now=at,
                          heartbeat_ttl=heartbeat_ttl, memory_reserve_mb=memory_reserve_mb):
        taken = await _take(session, node_id, kind_, at)
        if taken is not None:
            return taken
    return None


def settings_kwargs(settings: Settings) -> dict[str, Any]:
    """The placement options a server's settings give (``place(..., **settings_kwargs(settings))``)."""
    return {"k": settings.fleet_placement_k,
            "heartbeat_ttl": timedelta(seconds=settings.fleet_heartbeat_ttl_seconds),
            "memory_reserve_mb": {"browser": settings.fleet_browser_memory_mb,
                                  "desktop": settings.fleet_desktop_memory_mb}}
