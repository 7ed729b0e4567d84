"""The fleet's placer and registry (fleet/placement.py, fleet/registry.py), without Ray or browsers:
50 simulated nodes in a real (throwaway) PostgreSQL, two API "replicas" (each its own engine and
sessions, several creates in flight each) placing at once against it."""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from postgres import PostgresServer
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from opencone.core.store.db import make_engine, migrate, sessionmaker
from opencone.core.store.models import ComputerRecord, NodeRecord, Organization
from opencone.fleet import placement, registry
from opencone.fleet.registry import DatabaseUnavailable, NodeInfo

aio = pytest.mark.asyncio(loop_scope="session")  # the engine fixture is made on the session loop

CAPACITY = 20
LONG_TTL = timedelta(minutes=30)  # the run's nodes report once: their rows must not go stale under a slow CI


def node(i: int, **kw: object) -> NodeInfo:
    fields: dict[str, object] = dict(id=f"node-r{i:02d}", ray_node_id=f"r{i:02d}", url=f"http://10.0.0.{i}:9000",
                                     capacity_browser=CAPACITY, capacity_desktop=2, free_mem_mb=8000, load=0.1)
    fields.update(kw)
    return NodeInfo(**fields)  # type: ignore[arg-type]


@pytest.fixture()
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(postgres_url)
    await migrate(eng)
    yield eng
    await eng.dispose()


async def register(sessions: async_sessionmaker, nodes: list[NodeInfo],  # type: ignore[type-arg]
                   now: datetime | None = None) -> None:
    async with sessions() as s:
        for n in nodes:
            await registry.upsert_node(s, n, now=now)


# -- the pure choice --

def test_choose_skips_what_cannot_take_a_computer() -> None:
    now = datetime.now(UTC)
    fresh = now - timedelta(seconds=1)
    nodes = [node(1, heartbeat_at=fresh),
             node(2, heartbeat_at=now - timedelta(seconds=11)),  # stale heartbeat
             node(3, heartbeat_at=fresh, state="draining"),
             node(4, heartbeat_at=fresh, state="dead"),
             node(5, heartbeat_at=fresh, free_mem_mb=100),  # below the browser reserve
             node(6, heartbeat_at=fresh, live_browser=15, reserved_browser=5),  # full, counting reservations
             node(7, heartbeat_at=fresh, free_mem_mb=300),  # a browser fits, a desktop does not
             node(8, heartbeat_at=None)]
    assert sorted(placement.choose(nodes, "browser", now=now)) == ["node-r01", "node-r07"]
    assert sorted(placement.choose(nodes, "desktop", now=now)) == ["node-r01", "node-r06"]  # its desktops are free
    assert placement.choose(nodes, "browser", now=now, exclude=frozenset({"node-r01"})) == ["node-r07"]
    with pytest.raises(ValueError, match="unknown computer kind"):
        placement.choose(nodes, "laptop", now=now)


def test_choose_prefers_the_emptier_of_k_and_honours_a_hint() -> None:
    now = datetime.now(UTC)
    nodes = [node(i, heartbeat_at=now, live_browser=i) for i in range(10)]
    rng = random.Random(7)
    # with K = all nodes the order is exactly by fill ratio
    assert placement.choose(nodes, "browser", k=10, now=now, rng=rng) == [n.id for n in nodes]
    # best-of-2: the fullest node is never first (it loses every comparison it is drawn into)
    firsts = collections.Counter(placement.choose(nodes, "browser", k=2, now=now, rng=rng)[0] for _ in range(300))
    assert "node-r09" not in firsts and firsts.most_common(1)[0][0] in ("node-r00", "node-r01", "node-r02")
    # load counts too: an equally filled but busier node comes later
    busy = [node(1, heartbeat_at=now, load=3.0), node(2, heartbeat_at=now, load=0.0)]
    assert placement.choose(busy, "browser", k=2, now=now) == ["node-r02", "node-r01"]
    # a hint names a node by id, Ray node id or "node-" + Ray node id; only that node, or none
    for hint in ("node-r05", "r05"):
        assert placement.choose(nodes, "browser", hint=hint, now=now) == ["node-r05"]
    assert placement.choose(nodes, "browser", hint="r05", exclude=frozenset({"node-r05"}), now=now) == []
    assert placement.choose(nodes, "browser", hint="nowhere", now=now) == []


# -- against PostgreSQL --

@aio
async def test_two_replicas_spread_evenly_and_never_oversubscribe(engine: AsyncEngine, postgres_url: str) -> None:
    now = datetime.now(UTC)
    special = {
        0: dict(),  # the refuser: its agent answers 429 to every create (its own hard limit)
        1: dict(heartbeat_at=now - timedelta(hours=1)),
        2: dict(state="draining"),
        3: dict(free_mem_mb=64),
        4: dict(capacity_browser=0),
    }
    nodes = [node(i, **special.get(i, {})) for i in range(50)]
    sessions = sessionmaker(engine)
    await register(sessions, nodes, now=now)
    async with sessions() as s:  # a stale row: registered an hour ago, never heard of since
        await s.execute(NodeRecord.__table__.update().where(NodeRecord.id == "node-r01")
                        .values(heartbeat_at=now - timedelta(hours=1)))
        await s.commit()
    refuser, skipped = "node-r00", {"node-r01", "node-r02", "node-r03", "node-r04"}
    usable = [n.id for n in nodes if n.id != refuser and n.id not in skipped]

    placed: collections.Counter[str] = collections.Counter()  # what the simulated agents accepted
    violations: list[str] = []
    refusals = 0

    async def create(replica: async_sessionmaker, rng: random.Random) -> str | None:  # type: ignore[type-arg]
        nonlocal refusals
        exclude: set[str] = set()
        async with replica() as s:
            while True:
                chosen = await placement.place(s, "browser", exclude=frozenset(exclude), rng=rng,
                                               heartbeat_ttl=LONG_TTL)
                if chosen is None:
                    return None
                if chosen.id == refuser:  # the agent refuses: give the slot back, try elsewhere
                    refusals += 1
                    await placement.release(s, chosen.id, "browser")
                    exclude.add(chosen.id)
                    continue
                placed[chosen.id] += 1
                if placed[chosen.id] > CAPACITY:
                    violations.append(chosen.id)
                await placement.confirm(s, chosen.id, "browser")
                return chosen.id

    async def replica(n_creates: int, workers: int, seed: int) -> list[str | None]:
        eng = make_engine(postgres_url)  # a replica: its own engine, pool and sessions
        try:
            sessions_r = sessionmaker(eng)
            rng = random.Random(seed)
            queue = list(range(n_creates))
            out: list[str | None] = []

            async def worker() -> None:
                while queue:
                    queue.pop()
                    out.append(await create(sessions_r, rng))
            await asyncio.gather(*(worker() for _ in range(workers)))
            return out
        finally:
            await eng.dispose()

    # half the usable slots, from two replicas at once: an even spread
    half = len(usable) * CAPACITY // 2
    a, b = await asyncio.gather(replica(half // 2, 6, 1), replica(half - half // 2, 6, 2))
    assert None not in a + b and len(a) + len(b) == half
    assert set(placed) <= set(usable), f"placed on a node that should be skipped: {set(placed) - set(usable)}"
    counts = [placed[n] for n in usable]
    assert min(counts) >= CAPACITY // 2 - 5 and max(counts) <= CAPACITY // 2 + 5, f"uneven spread: {sorted(counts)}"
    assert refusals >= 1, "the refusing node was never tried (it is as empty as any)"

    # then more creates than slots are left: every slot fills, none twice, and the rest find no node
    rest = len(usable) * CAPACITY - half
    a, b = await asyncio.gather(replica(rest // 2 + 15, 6, 3), replica(rest - rest // 2 + 15, 6, 4))
    assert not violations, f"oversubscribed: {violations}"
    assert sum(1 for x in a + b if x is not None) == rest and (a + b).count(None) == 30
    async with sessions() as s:
        rows = {r.id: r for r in (await s.execute(select(NodeRecord))).scalars()}
    for nid in usable:
        assert rows[nid].live_browser == CAPACITY == placed[nid] and rows[nid].reserved_browser == 0
    for nid in skipped | {refuser}:
        assert rows[nid].live_browser == 0 and rows[nid].reserved_browser == 0


@aio
async def test_hint_places_there_or_nowhere(engine: AsyncEngine) -> None:
    sessions = sessionmaker(engine)
    await register(sessions, [node(1), node(2, capacity_browser=1), node(3, state="draining")])
    async with sessions() as s:
        for _ in range(3):
            chosen = await placement.place(s, "browser", hint="r01")
            assert chosen is not None and chosen.id == "node-r01"
        chosen = await placement.place(s, "browser", hint="node-r02")
        assert chosen is not None and chosen.id == "node-r02"
        assert await placement.place(s, "browser", hint="r02") is None  # its one slot is reserved
        assert await placement.place(s, "browser", hint="r03") is None  # draining
        assert await placement.place(s, "browser", hint="r99") is None  # unknown
        assert (await registry.get_node(s, "node-r01")).reserved_browser == 3  # type: ignore[union-attr]


@aio
async def test_registry_heartbeat_death_and_routing(engine: AsyncEngine, postgres_url: str) -> None:
    sessions = sessionmaker(engine)
    t0 = datetime.now(UTC)
    await register(sessions, [node(1, incarnation=1), node(2, incarnation=1)], now=t0)
    async with sessions() as s:
        s.add(Organization(id="org", name="org", created_at=t0))
        await s.flush()
        for i, nid in enumerate(["node-r01", "node-r01", "node-r02", None]):
            s.add(ComputerRecord(id=f"c{i}", org_id="org", kind="browser", status="running", created_at=t0,
                                 last_activity_at=t0, max_lifetime_seconds=60, inactivity_timeout_seconds=60,
                                 idle_timeout_enabled=True, display_width=8, display_height=8, options={},
                                 node_id=nid))
        await s.commit()

        # a heartbeat updates the report; a late one of an earlier incarnation does not
        assert await registry.heartbeat(s, "node-r01", live_browser=2, live_desktop=0, free_mem_mb=5000, load=0.5,
                                        incarnation=1, now=t0)
        assert not await registry.heartbeat(s, "node-r01", live_browser=9, live_desktop=9, free_mem_mb=1, load=9,
                                            incarnation=0, now=t0)
        assert not await registry.heartbeat(s, "node-zz", live_browser=0, live_desktop=0, free_mem_mb=1, load=0)
        n1 = await registry.get_node(s, "node-r01")
        assert n1 is not None and (n1.live_browser, n1.free_mem_mb, n1.load) == (2, 5000, 0.5)

        # a reservation nobody confirmed (its replica died) is cleared by a heartbeat a minute later, not sooner
        assert await placement.reserve(s, "node-r02", "browser", now=t0)
        await registry.heartbeat(s, "node-r02", live_browser=1, live_desktop=0, free_mem_mb=5000, load=0,
                                 now=t0 + timedelta(seconds=5))
        assert (await registry.get_node(s, "node-r02")).reserved_browser == 1  # type: ignore[union-attr]
        await registry.heartbeat(s, "node-r02", live_browser=1, live_desktop=0, free_mem_mb=5000, load=0,
                                 now=t0 + timedelta(seconds=61))
        assert (await registry.get_node(s, "node-r02")).reserved_browser == 0  # type: ignore[union-attr]

        # routing: computer -> its node
        assert (await registry.node_for_computer(s, "c2")).id == "node-r02"  # type: ignore[union-attr]
        assert await registry.node_for_computer(s, "c3") is None and await registry.node_for_computer(s, "x") is None

        # death: that node's computers end with the reason, replicas hear their ids; nothing else changes
        listener = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
        heard: asyncio.Queue[str] = asyncio.Queue()
        await listener.add_listener(registry.COMPUTERS_CHANNEL, lambda *args: heard.put_nowait(args[3]))
        try:
            assert await registry.mark_dead(s, "node-r01", "node_lost") == ["c0", "c1"]
            assert await asyncio.wait_for(heard.get(), 10) == "c0,c1"
        finally:
            await listener.close()
        rows = {r.id: r for r in (await s.execute(select(ComputerRecord))).scalars()}
        assert [(rows[c].status, rows[c].termination_reason) for c in ("c0", "c1")] == [("terminated", "node_lost")] * 2
        assert rows["c0"].terminated_at is not None
        assert rows["c2"].status == rows["c3"].status == "running"
        assert (await registry.get_node(s, "node-r01")).state == "dead"  # type: ignore[union-attr]
        # a dead node's agent cannot heartbeat it back, nor can it be marked ready; placement skips it
        assert not await registry.heartbeat(s, "node-r01", live_browser=0, live_desktop=0, free_mem_mb=1, load=0)
        assert not await registry.set_state(s, "node-r01", "ready")
        assert await registry.mark_dead(s, "node-r01", "node_lost") == []  # (again: nothing left to end)

        # a new incarnation of node 2's agent ends what the old one ran; draining stops placement there
        assert await registry.end_computers(s, "node-r02", "node_agent_restarted") == ["c2"]
        assert await registry.set_state(s, "node-r02", "draining")
        assert await placement.place(s, "browser") is None
        assert [n.id for n in await registry.list_nodes(s, states=["draining"])] == ["node-r02"]

        # re-registering a node (a new agent) makes it ready again with its new report
        await registry.upsert_node(s, node(1, incarnation=2, live_browser=0))
        assert (await registry.get_node(s, "node-r01")).state == "ready"  # type: ignore[union-attr]
        assert (await placement.place(s, "browser")).id == "node-r01"  # type: ignore[union-attr]

        # the stale-heartbeat sweep: nodes not heard of for over 5 minutes (seen from 10 minutes on) are dead
        assert await registry.sweep_stale(s, now=datetime.now(UTC) + timedelta(minutes=4)) == {}
        swept = await registry.sweep_stale(s, now=datetime.now(UTC) + timedelta(minutes=10))
        assert set(swept) == {"node-r01", "node-r02"}
        assert {n.state for n in await registry.list_nodes(s)} == {"dead"}


@aio
async def test_database_down_is_a_clear_unavailable_error() -> None:
    pg = PostgresServer()  # its own server: stopping the shared one would break the other tests
    try:
        url = pg.create_database()
        eng = make_engine(url)
        await migrate(eng)
        sessions = sessionmaker(eng)
        await register(sessions, [node(1)])
        async with sessions() as s:
            assert (await placement.place(s, "browser")) is not None
        pg.stop()
        async with sessions() as s:
            with pytest.raises(DatabaseUnavailable) as caught:
                await placement.place(s, "browser")
            assert caught.value.status == 503 and "unavailable" in caught.value.message
            with pytest.raises(DatabaseUnavailable):
                await registry.heartbeat(s, "node-r01", live_browser=0, live_desktop=0, free_mem_mb=1, load=0)
        pg.start()  # back: the pool reconnects, placement works again
        async with sessions() as s:
            assert (await placement.place(s, "browser")) is not None
        await eng.dispose()
    finally:
        pg.close()


@aio
async def test_record_and_confirm_are_one_statement(engine: AsyncEngine, postgres_url: str) -> None:
    """A replica's create on a bare AUTOCOMMIT connection: the record and the slot's confirmation are
    written together or not at all."""
    sessions = sessionmaker(engine)
    t0 = datetime.now(UTC)
    await register(sessions, [node(1, capacity_browser=2)], now=t0)
    async with sessions() as s:
        s.add(Organization(id="org", name="org", created_at=t0))
        await s.commit()
    row = dict(id="c1", org_id="org", kind="browser", status="ready", created_at=t0, last_activity_at=t0,
               max_lifetime_seconds=60, inactivity_timeout_seconds=60, idle_timeout_enabled=True,
               display_width=8, display_height=8, display_scale=1.0, persistent=False, options={},
               node_id="node-r01")
    direct = make_engine(postgres_url, autocommit=True)
    try:
        async with direct.connect() as db:
            chosen = await placement.place(db, "browser", heartbeat_ttl=LONG_TTL)
            assert chosen is not None and chosen.id == "node-r01"
            await placement.confirm(db, "node-r01", "browser", record=row)
            # the same id again (a row that cannot be written): nothing of the statement lands
            assert await placement.reserve(db, "node-r01", "browser")
            with pytest.raises(IntegrityError):
                await placement.confirm(db, "node-r01", "browser", record=row)
            with pytest.raises(ValueError, match="not columns"):
                await placement.confirm(db, "node-r01", "browser", record={**row, "id": "c2", "colour": "red"})
            n1 = await registry.get_node(db, "node-r01")
            assert n1 is not None and (n1.live_browser, n1.reserved_browser) == (1, 1)
            await placement.release(db, "node-r01", "browser")
        async with sessions() as s:
            rec = await s.get(ComputerRecord, "c1")
            assert rec is not None and (rec.node_id, rec.created_at, rec.options, rec.terminated_at) == (
                "node-r01", t0, {}, None)
            assert (await registry.get_node(s, "node-r01")).reserved_browser == 0  # type: ignore[union-attr]
    finally:
        await direct.dispose()
