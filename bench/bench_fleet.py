"""Fleet benchmark: what an API replica adds on top of the node agent, creates at 1 and 20 clients
over three nodes, and the time from a node's death to its computers' ``node_lost``.

Run by hand (as root: Ray runs in a private network namespace, as in tests/test_fleet_ray.py), never in CI:

    .venv/bin/python bench/bench_fleet.py            # 60 clicks, 20 screenshots, 200 CDP round trips, ...
    .venv/bin/python bench/bench_fleet.py --quick

A local Ray cluster (ray.cluster_utils: a head with no CPUs, three worker nodes with real browsers, three
with a driver factory that starts none), a throwaway PostgreSQL (tests/postgres.py), one replica.
Every figure is measured twice in the same run, interleaved: through the replica (client → replica →
agent) and straight to the agent's internal route (client → agent, the floor: what a single server
answers); the difference is the replica's hop.

- create: a browser from the node's warm pool (``node_hint`` pins it to the measured node)
- click, screenshot: ``POST /computers/{id}/click`` and ``/screenshot``
- CDP round trip: one ``Runtime.evaluate`` over the computer's CDP WebSocket, already open
- create without a browser: the same interleaving on a node whose driver starts none (the replica's own
  cost without a browser launch's noise: placement, the reservation, the record)
- creates at 1 and 20 concurrent clients: on the three nodes without browsers (the fleet's own cost:
  placement, the reservation, the agent's create, the record)
- node death: ``cluster.remove_node(allow_graceful=False)`` until a retrieve says ``node_lost``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]

from _common import start_server, summary  # noqa: E402

HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_timeout_ms": 1500,
          "health_check_failure_threshold": 4}


def _ms(values: list[float]) -> dict[str, Any]:
    s = summary([v * 1000 for v in values])
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in s.items()}


def _row(name: str, replica: list[float], direct: list[float]) -> dict[str, Any]:
    r, d = _ms(replica), _ms(direct)
    return {"op": name, "replica_ms": r, "direct_ms": d,
            "added_p50_ms": round(r["p50"] - d["p50"], 2), "ratio_p50": round(r["p50"] / d["p50"], 2)}


class Rows(list):  # type: ignore[type-arg]
    """Each figure printed as soon as it is measured (a later failure loses none)."""

    def append(self, row: dict[str, Any]) -> None:
        super().append(row)
        print(json.dumps(row), flush=True)


async def _cdp_round_trips(url: str, headers: dict[str, str], n: int) -> list[float]:
    import websockets

    out = []
    async with websockets.connect(url, additional_headers=headers, max_size=None, ping_interval=None) as ws:
        for i in range(n):
            t0 = time.perf_counter()
            await ws.send(json.dumps({"id": i + 1, "method": "Browser.getVersion"}))
            while json.loads(await ws.recv()).get("id") != i + 1:
                pass
            out.append(time.perf_counter() - t0)
    return out


def run(quick: bool) -> None:
    import ray
    from postgres import PostgresServer
    from ray.cluster_utils import Cluster

    from opencone.fleet import ray as fleet_ray

    n_click, n_shot, n_cdp, n_create = (15, 5, 50, 3) if quick else (60, 20, 200, 8)
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    pg = PostgresServer()
    url = pg.create_database("bench")
    db = url.split("@/")[1].split("?")[0]
    token, key = secrets.token_hex(16), f"bench-{secrets.token_hex(8)}"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "memory": 1 << 30, "object_store_memory": 80 << 20,
        "_system_config": HEALTH})
    real = [cluster.add_node(num_cpus=1, memory=4 << 30, object_store_memory=80 << 20,
                             resources={"opencone_browser_slots": 16}) for _ in range(3)]
    ray.init(address=cluster.address, namespace="opencone", log_to_driver=False)
    server = None
    rows = Rows()
    try:
        fleet_ray.start(database_url=url, token=token, data_dir=str(tmp / "nodes"), agent_env={
            "OPENCONE_POOL_SIZE": "2", "OPENCONE_EGRESS_ALLOW": "127.0.0.1", "OPENCONE_NODE_HEARTBEAT_SECONDS": "1",
            "PYTHONPATH": str(ROOT / "tests")})
        server = start_server(tmp / "replica", api_key=key, env={
            "OPENCONE_FLEET": "ray", "OPENCONE_DATABASE_URL": url, "OPENCONE_FLEET_INTERNAL_TOKEN": token})
        node = f"node-{real[0].node_id}"
        agent = pg.psql(f"SELECT url FROM nodes WHERE id = '{node}'", db).strip()
        pub = httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {key}"}, timeout=60)
        internal = httpx.Client(base_url=agent, headers={"authorization": f"Bearer {token}"}, timeout=60)

        def warm() -> None:
            deadline = time.monotonic() + 60
            while internal.get("/health").json().get("warm_browsers", 0) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)

        # create: through the replica (pinned to the node) beside the agent's own create, interleaved
        via, direct, made = [], [], []
        for _ in range(n_create):
            warm()
            t0 = time.perf_counter()
            made.append(pub.post("/computers", json={"node_hint": node}).json()["id"])
            via.append(time.perf_counter() - t0)
            warm()
            t0 = time.perf_counter()
            made.append(internal.post("/computers", json={}).json()["id"])
            direct.append(time.perf_counter() - t0)
        rows.append(_row("create (warm pool)", via, direct))
        cid = made[0]
        for name, path, n in (("click", "click", n_click), ("screenshot", "screenshot", n_shot)):
            via, direct = [], []
            body = {"x": 50, "y": 50} if path == "click" else {}
            for _ in range(n):
                t0 = time.perf_counter()
                assert pub.post(f"/computers/{cid}/{path}", json=body).json()["status"] == "success"
                via.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                assert internal.post(f"/computers/{cid}/{path}", json=body).json()["status"] == "success"
                direct.append(time.perf_counter() - t0)
            rows.append(_row(name, via, direct))
        ws_pub = "ws" + server.base_url[4:] + f"/computers/{cid}/cdp"
        ws_agent = "ws" + agent[4:] + f"/computers/{cid}/cdp"
        via = asyncio.run(_cdp_round_trips(ws_pub, {"authorization": f"Bearer {key}"}, n_cdp))
        direct = asyncio.run(_cdp_round_trips(ws_agent, {"authorization": f"Bearer {token}"}, n_cdp))
        rows.append(_row("CDP round trip (Browser.getVersion)", via, direct))
        for c in made:
            internal.delete(f"/computers/{c}")

        # creates at 1 and 20 clients over three nodes without browsers (the real ones drained)
        pg.psql("UPDATE nodes SET state = 'draining' WHERE state = 'ready'", db)
        fakes = [cluster.add_node(num_cpus=1, memory=2 << 30, object_store_memory=80 << 20,
                                  resources={"opencone_browser_slots": 1000},
                                  env_vars={"OPENCONE_FLEET_TEST_FACTORY": "fleet_null_driver:factory"})
                 for _ in range(3)]
        fleet_ray.start(database_url=url, token=token)
        deadline = time.monotonic() + 60
        while len([n for n in pub.get("/nodes").json() if n["state"] == "ready"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)

        # the replica's own cost of a create, without a browser's noise: interleaved with the agent's create
        fake_url = pg.psql(f"SELECT url FROM nodes WHERE id = 'node-{fakes[0].node_id}'", db).strip()
        fake_agent = httpx.Client(base_url=fake_url, headers={"authorization": f"Bearer {token}"}, timeout=60)
        hint = {"node_hint": f"node-{fakes[0].node_id}"}
        via, direct, ours, theirs = [], [], [], []
        for i in range(20 + (100 if quick else 300)):
            t0 = time.perf_counter()
            r = pub.post("/computers", json=hint)
            t1 = time.perf_counter()
            d = fake_agent.post("/computers", json={})
            assert r.status_code == d.status_code == 200
            ours.append(r.json()["id"])
            theirs.append(d.json()["id"])
            if i >= 20:  # after a warm-up (connections, statement caches)
                via.append(t1 - t0)
                direct.append(time.perf_counter() - t1)
        rows.append(_row("create (no browser, one node)", via, direct))
        for c in ours:  # the node empty again for the spread below
            pub.delete(f"/computers/{c}")
        for c in theirs:
            fake_agent.delete(f"/computers/{c}")
        fake_agent.close()

        def one(_: int) -> float:
            t0 = time.perf_counter()
            assert pub.post("/computers", json={}).status_code == 200
            return time.perf_counter() - t0

        for clients, n in ((1, 50 if quick else 200), (20, 100 if quick else 600)):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                times = list(pool.map(one, range(n)))
            wall = time.perf_counter() - t0
            rows.append({"op": f"create, no browser, {clients} clients", "replica_ms": _ms(times),
                         "creates_per_s": round(n / wall, 1)})
        per_node = pg.psql("SELECT node_id, count(*) FROM computers WHERE status <> 'terminated' "
                           "GROUP BY node_id", db)
        rows.append({"op": "spread over the three nodes", "counts": per_node.split()})

        # a node's death, to its computers' node_lost (a real node, back from draining for this)
        victim = real[1]
        pg.psql(f"UPDATE nodes SET state = 'ready' WHERE id = 'node-{victim.node_id}'", db)
        lost = pub.post("/computers", json={"node_hint": f"node-{victim.node_id}"}).json()["id"]
        t0 = time.perf_counter()
        cluster.remove_node(victim, allow_graceful=False)
        while pub.get(f"/computers/{lost}").json().get("termination_reason") != "node_lost":
            time.sleep(0.05)
        rows.append({"op": "node death -> node_lost", "seconds": round(time.perf_counter() - t0, 2),
                     "health_checks": HEALTH})
        for f in fakes:
            ray.get(ray.get_actor(f"opencone:node:{f.node_id}", namespace="opencone").stop.remote(), timeout=60)
    finally:
        if server is not None:
            server.stop()
        try:
            fleet_ray.stop()
        finally:
            ray.shutdown()
            cluster.shutdown()
            pg.close()
    print(json.dumps({"loadavg": os.getloadavg(), "cores": os.cpu_count()}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if os.environ.get("OPENCONE_BENCH_NETNS") != "1":
        env = {**os.environ, "OPENCONE_BENCH_NETNS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        sys.exit(subprocess.call(["unshare", "-n", sys.executable, __file__, *sys.argv[1:]], env=env))
    from opencone.testing import loopback_up

    loopback_up()
    run(args.quick)


if __name__ == "__main__":
    main()
