"""The store on PostgreSQL: what placement costs, and a create on a PostgreSQL server beside a SQLite one.

1. Placement (fleet/placement.py) over 50 nodes rows in a throwaway PostgreSQL (tests/postgres.py):
   ``place()`` + ``confirm()`` (a read of the ready nodes, the atomic reservation, the confirmation: three
   round trips) for one client, and for two "replicas" with 8 creates in flight each; beside the floor:
   ``SELECT 1`` on the same engine, and the reservation's one conditional UPDATE alone.
2. The API: browser create (from a warm pool) and delete through the tzafon SDK on a server whose store is
   PostgreSQL, beside the same on SQLite, samples interleaved.

    .venv/bin/python bench/bench_store.py [--samples 200] [--creates 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text, update

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import loadavg, start_server, summary  # noqa: E402
from postgres import PostgresServer  # noqa: E402

from opencone.core.store.db import make_engine, migrate, sessionmaker  # noqa: E402
from opencone.core.store.models import NodeRecord  # noqa: E402
from opencone.fleet import placement, registry  # noqa: E402


def ms(values: list[float]) -> dict[str, Any]:
    return {k: (round(v * 1000, 3) if isinstance(v, float) else v) for k, v in summary(values).items()}


async def bench_placement(pg: PostgresServer, samples: int) -> dict[str, Any]:
    url = pg.create_database("bench")
    engine = make_engine(url)
    await migrate(engine)
    sessions = sessionmaker(engine)
    big = samples * 40  # slots enough that no node fills during the run
    async with sessions() as s:
        for i in range(50):
            await registry.upsert_node(s, registry.NodeInfo(id=f"node-{i}", url="http://x", capacity_browser=big,
                                                            free_mem_mb=8000))
    out: dict[str, Any] = {}

    async def timed(fn: Any, n: int) -> list[float]:
        took = []
        async with sessions() as s:
            for _ in range(n):
                t0 = time.perf_counter()
                await fn(s)
                took.append(time.perf_counter() - t0)
        return took

    async def select_one(s: Any) -> None:
        await s.execute(text("SELECT 1"))
        await s.commit()

    async def bare_update(s: Any) -> None:
        await s.execute(update(NodeRecord).where(NodeRecord.id == "node-1")
                        .values(reserved_browser=NodeRecord.reserved_browser))
        await s.commit()

    rng = random.Random(1)

    async def place_confirm(s: Any) -> None:
        node = await placement.place(s, "browser", rng=rng)
        assert node is not None
        await placement.confirm(s, node.id, "browser")

    await timed(place_confirm, 10)  # warm-up
    out["floor_select_1"] = ms(await timed(select_one, samples))
    out["floor_one_update"] = ms(await timed(bare_update, samples))
    out["place_confirm_1_client"] = ms(await timed(place_confirm, samples))

    async def replica(seed: int) -> list[float]:
        eng = make_engine(url)
        sm = sessionmaker(eng)
        r = random.Random(seed)
        took: list[float] = []

        async def worker() -> None:
            async with sm() as s:
                for _ in range(samples // 8):
                    t0 = time.perf_counter()
                    node = await placement.place(s, "browser", rng=r)
                    assert node is not None
                    await placement.confirm(s, node.id, "browser")
                    took.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(8)))
        took.append(-(time.perf_counter() - t0))  # (the wall time, marked negative, taken out below)
        await eng.dispose()
        return took

    a, b = await asyncio.gather(replica(2), replica(3))
    walls = [-x for x in a + b if x < 0]
    both = [x for x in a + b if x >= 0]
    out["place_confirm_2_replicas_x8"] = ms(both)
    out["placements_per_s_2_replicas_x8"] = round(len(both) / max(walls), 1)
    async with sessions() as s:
        rows = await registry.list_nodes(s)
    out["over_capacity_nodes"] = sum(1 for n in rows if n.live_browser > n.capacity_browser)
    await engine.dispose()
    return out


def bench_api(pg: PostgresServer, creates: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    env = {"OPENCONE_POOL_SIZE": "2"}
    sqlite = start_server(tmp / "sqlite", env=env)
    postgres = start_server(tmp / "pg", env={**env, "OPENCONE_DATABASE_URL": pg.create_database("api")})
    try:
        times: dict[str, dict[str, list[float]]] = {"sqlite": {"create": [], "delete": []},
                                                    "postgresql": {"create": [], "delete": []}}
        servers = {"sqlite": sqlite, "postgresql": postgres}
        for srv in servers.values():
            srv.wait_warm(2)
        for i in range(creates + 2):
            for name, srv in servers.items():
                client = srv.client()
                srv.wait_warm(1, timeout=120)  # each create takes a warm browser: the same work on both
                t0 = time.perf_counter()
                comp = client.computers.create()
                t1 = time.perf_counter()
                client.computers.delete(comp.id)
                t2 = time.perf_counter()
                if i >= 2:  # warm-up
                    times[name]["create"].append(t1 - t0)
                    times[name]["delete"].append(t2 - t1)
        return {name: {op: ms(v) for op, v in ops.items()} for name, ops in times.items()}
    finally:
        sqlite.stop()
        postgres.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--creates", type=int, default=20)
    args = ap.parse_args()
    pg = PostgresServer()
    try:
        result = {"load_before": loadavg()}
        result["placement"] = asyncio.run(bench_placement(pg, args.samples))
        if args.creates:
            result["api"] = bench_api(pg, args.creates)
        result["load_after"] = loadavg()
    finally:
        pg.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
