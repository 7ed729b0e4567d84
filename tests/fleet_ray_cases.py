"""The fleet on Ray (run by tests/test_fleet_ray.py inside a network namespace; never collected alone):
a local multi-node Ray cluster, a throwaway PostgreSQL, two API replicas.

Ray probes cloud-metadata addresses when a head starts, whatever its settings say, so this module runs
inside a private network namespace: collected normally, it is one test that runs the module again under
``unshare -n`` (loopback up, ``RAY_USAGE_STATS_ENABLED=0``, CI runs as root) and passes when that run
passes; inside the namespace (``OPENCONE_TEST_NETNS=1``) the real tests run. It skips, saying why,
without Ray, ``unshare``, root or PostgreSQL.

The cluster (``ray.cluster_utils.Cluster``): a head with no CPUs and three worker "nodes" with slot
resources (raylets on this machine), fast health checks so that a node's death is seen in seconds.
The controller starts one node agent per worker node; each runs today's app in node mode with real
Chromium, Xvfb and bubblewrap. The replicas are ``opencone serve`` processes with ``OPENCONE_FLEET=ray``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from opencone.testing import loopback_up

TESTS = Path(__file__).parent
IN_NETNS = os.environ.get("OPENCONE_TEST_NETNS") == "1"
BROWSER_SLOTS, DESKTOP_SLOTS = 4, 1
FAKE_SLOTS = 350  # each of three nodes whose computers are records only (fleet_null_driver)
# the replicas keep a route this long here (5 s by default): an end seen sooner than that was NOTIFY'd
ROUTE_TTL = "120"
# fast enough that a removed node is declared dead in seconds; loose enough that a loaded machine's
# slow raylet is not taken for a dead one
HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_timeout_ms": 1500,
          "health_check_failure_threshold": 4}

if not IN_NETNS:  # Ray outside a private network namespace would probe cloud-metadata addresses
    pytest.skip("runs only inside tests/test_fleet_ray.py's network namespace", allow_module_level=True)

loopback_up()
pytestmark = pytest.mark.timeout(240)

from conftest import wait_until  # noqa: E402

from opencone.testing import Server, start_server  # noqa: E402


class Fleet:
    def __init__(self, cluster: Any, nodes: list[Any], pg: Any, url: str, token: str, key: str,
                 a: Server, b: Server) -> None:
        self.cluster, self.nodes, self.pg, self.url, self.token, self.key, self.a, self.b = (
            cluster, nodes, pg, url, token, key, a, b)
        self.db = url.split("@/")[1].split("?")[0]
        self.replicas: list[Server] = [a, b]

    def sql(self, query: str) -> list[list[str]]:
        out = self.pg.psql(query, self.db)
        return [line.split("|") for line in out.splitlines() if line]

    def node_of(self, computer_id: str) -> str:
        return self.sql(f"SELECT node_id FROM computers WHERE id = '{computer_id}'")[0][0]

    def agent(self, ray_node_id: str) -> Any:
        import ray

        from opencone.fleet.ray.controller import NAMESPACE, agent_name

        return ray.get_actor(agent_name(ray_node_id), namespace=NAMESPACE)

    def agent_info(self, ray_node_id: str, timeout: float = 60) -> dict[str, Any]:
        import ray

        deadline = time.monotonic() + timeout
        while True:
            try:
                return ray.get(self.agent(ray_node_id).info.remote(), timeout=10)  # type: ignore[no-any-return]
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[Fleet]:
    import ray
    from ray.cluster_utils import Cluster

    from opencone.fleet import ray as fleet_ray

    tmp = tmp_path_factory.mktemp("fleet")
    url = postgres.create_database("fleet")
    token, key = secrets.token_hex(16), f"test-{secrets.token_hex(8)}"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "memory": 1 << 30, "object_store_memory": 80 << 20,
        "_system_config": HEALTH})
    nodes = [cluster.add_node(num_cpus=1, memory=4 << 30, object_store_memory=80 << 20,
                              resources={"opencone_browser_slots": BROWSER_SLOTS,
                                         "opencone_desktop_slots": DESKTOP_SLOTS}) for _ in range(3)]
    ray.init(address=cluster.address, namespace="opencone", log_to_driver=False)
    replicas: list[Server] = []
    try:
        status = fleet_ray.start(database_url=url, token=token, data_dir=str(tmp / "nodes"), agent_env={
            "OPENCONE_POOL_SIZE": "1", "OPENCONE_EGRESS_ALLOW": "127.0.0.1", "OPENCONE_NODE_HEARTBEAT_SECONDS": "1",
            "PYTHONPATH": str(TESTS)})
        assert len(status["agents"]) == 3, status
        env = {"OPENCONE_FLEET": "ray", "OPENCONE_DATABASE_URL": url, "OPENCONE_FLEET_INTERNAL_TOKEN": token,
               "OPENCONE_FLEET_PLACEMENT_K": "3", "OPENCONE_FLEET_ROUTE_TTL_SECONDS": ROUTE_TTL}
        for name in ("a", "b"):  # one after the other: the first migrates the database
            replicas.append(start_server(tmp / name, api_key=key, env=env))
        assert wait_until(lambda: len(_ready_nodes(replicas[0], key)) == 3, 20)
        fleet = Fleet(cluster, nodes, postgres, url, token, key, *replicas)
        fleet.replicas = replicas
        yield fleet
    finally:
        for server in replicas:
            server.stop()
        try:
            fleet_ray.stop()
        finally:
            ray.shutdown()
            cluster.shutdown()


def _ready_nodes(server: Server, key: str) -> list[dict[str, Any]]:
    with server.http(key) as h:
        return [n for n in h.get("/nodes").json() if n["state"] == "ready"]


class Heard:
    """The ids the fleet NOTIFYs on its channel, heard on a connection of the test's own (a thread with
    its own event loop)."""

    def __init__(self, url: str) -> None:
        import asyncpg

        from opencone.fleet.registry import COMPUTERS_CHANNEL

        self.ids: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def listen() -> Any:
            conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
            await conn.add_listener(COMPUTERS_CHANNEL, lambda *args: self.ids.extend(args[3].split(",")))
            return conn

        self._conn = asyncio.run_coroutine_threadsafe(listen(), self._loop).result(30)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._conn.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _sse(lines: Iterator[str]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(id, data) of every event of an SSE stream."""
    ident, data = None, []
    for line in lines:
        if not line:
            if data:
                yield ident, json.loads("\n".join(data))
            ident, data = None, []
        elif line.startswith("id:"):
            ident = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


# -- the fleet in use: create through A, drive through B -------------------------------------------
@pytest.fixture(scope="module")
def computers(fleet: Fleet) -> dict[str, list[str]]:
    """Six browsers and a desktop created through replica A."""
    client = fleet.a.client()
    browsers = [client.computers.create(kind="browser").id for _ in range(6)]
    desktop = client.computers.create(kind="desktop").id
    return {"browser": browsers, "desktop": [desktop]}


def test_creates_spread_over_the_nodes(fleet: Fleet, computers: dict[str, list[str]]) -> None:
    per_node: dict[str, int] = {}
    for cid in computers["browser"]:
        per_node[fleet.node_of(cid)] = per_node.get(fleet.node_of(cid), 0) + 1
    assert len(per_node) == 3 and max(per_node.values()) <= 3, per_node
    # what the agents hold is what the database says
    with fleet.b.http() as h:
        nodes = {n["id"]: n for n in h.get("/nodes").json()}
        listed = {c["id"] for c in h.get("/computers").json()}
    assert set(per_node) <= set(nodes)
    assert listed == set(computers["browser"]) | set(computers["desktop"])
    assert wait_until(lambda: sum(n["live_browser"] for n in _ready_nodes(fleet.b, fleet.key)) == 6, 10)


def test_drive_through_the_other_replica(fleet: Fleet, computers: dict[str, list[str]], site: str) -> None:
    client = fleet.b.client()
    cid = computers["browser"][0]
    assert client.computers.navigate(cid, url=f"{site}/playground.html").status == "success"
    assert client.computers.click(cid, x=100, y=100).status == "success"
    shot = client.computers.screenshot(cid)
    url = shot.result["screenshot_url"]
    assert url.startswith(fleet.b.base_url + "/files/node-"), url  # served by any replica, from its node
    jpeg = httpx.get(url.replace(fleet.b.base_url, fleet.a.base_url), timeout=30).content
    assert jpeg[:2] == b"\xff\xd8"
    desktop = computers["desktop"][0]
    out = client.computers.exec.sync(desktop, command="echo fleet-$((6*7))")
    assert out.exit_code == 0 and "fleet-42" in out.stdout
    body = client.computers.retrieve(cid).to_dict()
    assert fleet.token not in json.dumps(body) and fleet.b.base_url in json.dumps(body["endpoints"])


def test_cdp_through_a_replica(fleet: Fleet, computers: dict[str, list[str]], site: str) -> None:
    from playwright.sync_api import sync_playwright

    cid = computers["browser"][1]
    with sync_playwright() as pw:
        browser = pw.chromium.connect_over_cdp(f"{fleet.b.base_url}/computers/{cid}/cdp?token={fleet.key}")
        page = browser.contexts[0].pages[0]
        page.goto(f"{site}/playground.html")
        assert page.evaluate("6 * 7") == 42
        browser.close()


def test_events_resume_and_screencast(fleet: Fleet, computers: dict[str, list[str]]) -> None:
    cid = computers["browser"][2]
    client = fleet.b.client()
    headers = {"authorization": f"Bearer {fleet.key}"}
    seen: list[tuple[str | None, dict[str, Any]]] = []
    with httpx.stream("GET", f"{fleet.a.base_url}/computers/{cid}/events", headers=headers, timeout=30) as r:
        events = _sse(r.iter_lines())
        assert next(events)[1]["type"] == "subscribed"
        client.computers.click(cid, x=10, y=10)
        for ident, data in events:
            seen.append((ident, data))
            if data["type"] == "action_completed":
                break
    last = max(int(i) for i, _ in seen if i)
    client.computers.click(cid, x=20, y=20)  # while nobody listens
    with httpx.stream("GET", f"{fleet.b.base_url}/computers/{cid}/events",
                      headers={**headers, "last-event-id": str(last)}, timeout=30) as r:
        ident, first = next(e for e in _sse(r.iter_lines()) if e[0])
        assert int(ident) == last + 1, (ident, first)  # resumed after the last one read, through another replica
    with httpx.stream("GET", f"{fleet.b.base_url}/computers/{cid}/screencast?token={fleet.key}", timeout=30) as r:
        assert r.status_code == 200
        frame = next(d for _, d in _sse(r.iter_lines()) if "image_data" in d)
        assert frame["image_data"] and frame["metadata"]["width"] > 0


def test_an_end_reaches_the_other_replica_at_once(fleet: Fleet) -> None:
    """Replica B keeps where a computer lives (here for ROUTE_TTL s); an end written anywhere is
    NOTIFY'd, and B drops the route at once."""
    a, b = fleet.a.client(), fleet.b.client()
    heard = Heard(fleet.url)
    try:
        # deleted through A: A's end is NOTIFY'd, and B's next request sees it ended
        cid = a.computers.create(kind="browser").id
        assert b.computers.click(cid, x=5, y=5).status == "success"  # B holds its route, live
        a.computers.delete(cid)
        assert wait_until(lambda: cid in heard.ids, 20, 0.05), heard.ids
        assert wait_until(lambda: b.computers.retrieve(cid).status == "terminated", 20, 0.1)
        assert b.computers.retrieve(cid).to_dict()["termination_reason"] == "deleted"
        # an end its node does not know of (the controller's verdict on a node it could not reach, which
        # still runs the computer): B forwards to the node while its route lives, so only the NOTIFY can
        # make B answer as the record says before ROUTE_TTL
        cid = a.computers.create(kind="browser").id
        assert b.computers.click(cid, x=5, y=5).status == "success"
        fleet.sql(f"UPDATE computers SET status = 'terminated', termination_reason = 'node_lost', "
                  f"terminated_at = now() WHERE id = '{cid}'; SELECT pg_notify('opencone_computers', '{cid}')")

        def refused() -> bool:
            with fleet.b.http() as h:
                r = h.post(f"/computers/{cid}/click", json={"x": 5, "y": 5})
            return r.status_code == 409 and "node_lost" in r.json()["detail"]

        assert wait_until(refused, 30, 0.1)  # well within ROUTE_TTL: not by the route's expiry
        # the record back as it was, then deleted through A (the node's computer ends)
        fleet.sql(f"UPDATE computers SET status = 'ready', termination_reason = NULL, terminated_at = NULL "
                  f"WHERE id = '{cid}'; SELECT pg_notify('opencone_computers', '{cid}')")
        a.computers.delete(cid)
    finally:
        heard.close()


# -- failures ------------------------------------------------------------------------------------------
def _descendants(pid: int) -> list[psutil.Process]:
    return [*psutil.Process(pid).children(recursive=True)]


def test_node_death_ends_its_computers_only(fleet: Fleet, computers: dict[str, list[str]]) -> None:
    victim = fleet.nodes[0]
    ray_id, node_id = victim.node_id, f"node-{victim.node_id}"
    mine = [c for c in computers["browser"] + computers["desktop"] if fleet.node_of(c) == node_id]
    others = [c for c in computers["browser"] if fleet.node_of(c) != node_id]
    assert mine and others
    server = fleet.agent_info(ray_id)["server_pid"]
    procs = [psutil.Process(server), *_descendants(server)]
    assert any("chrom" in p.name() for p in procs), [p.name() for p in procs]
    ended: list[dict[str, Any]] = []

    def listen() -> None:
        with httpx.stream("GET", f"{fleet.a.base_url}/computers/{mine[0]}/events",
                          headers={"authorization": f"Bearer {fleet.key}"}, timeout=60) as r:
            for _, data in _sse(r.iter_lines()):
                if data["type"] == "terminated":
                    ended.append(data)

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    fleet.cluster.remove_node(victim, allow_graceful=False)
    client = fleet.b.client()
    assert wait_until(lambda: all(client.computers.retrieve(c).status == "terminated" for c in mine), 30, 0.2)
    lost_after = time.monotonic() - t0
    print(f"node death -> node_lost in {lost_after:.2f} s")
    assert all(client.computers.retrieve(c).to_dict()["termination_reason"] == "node_lost" for c in mine)
    reader.join(30)
    assert ended and ended[0]["reason"] == "node_lost", ended
    for cid in others:  # the rest of the fleet is untouched
        assert client.computers.click(cid, x=5, y=5).status == "success"
    # nothing of that node's computers is left running: Chromium, Xvfb, bubblewrap
    assert wait_until(lambda: not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 30), \
        [(p.pid, p.name()) for p in procs if p.is_running()]
    computers["browser"] = [c for c in computers["browser"] if c not in mine]
    computers["desktop"] = [c for c in computers["desktop"] if c not in mine]


def test_agent_restart_ends_its_old_computers(fleet: Fleet, computers: dict[str, list[str]]) -> None:
    victim = fleet.nodes[1]
    ray_id, node_id = victim.node_id, f"node-{victim.node_id}"
    client = fleet.a.client()
    mine = [c for c in computers["browser"] if fleet.node_of(c) == node_id]
    if not mine:
        mine = [client.computers.create(kind="browser", extra_body={"node_hint": ray_id}).id]
    before = fleet.agent_info(ray_id)
    ended: list[dict[str, Any]] = []

    def listen() -> None:
        with httpx.stream("GET", f"{fleet.b.base_url}/computers/{mine[0]}/events",
                          headers={"authorization": f"Bearer {fleet.key}"}, timeout=90) as r:
            ended.extend(data for _, data in _sse(r.iter_lines()) if data["type"] == "terminated")

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    time.sleep(0.5)
    os.kill(before["agent_pid"], signal.SIGKILL)  # the agent only: its node lives on
    after: dict[str, Any] = {}

    def restarted() -> bool:
        after.update(fleet.agent_info(ray_id))
        return after["agent_pid"] != before["agent_pid"] and after["incarnation"] == before["incarnation"] + 1

    assert wait_until(restarted, 90, 0.5), (before, after)
    for cid in mine:
        body = fleet.b.client().computers.retrieve(cid).to_dict()
        assert (body["status"], body["termination_reason"]) == ("terminated", "node_agent_restarted"), body
    reader.join(40)
    assert [e["reason"] for e in ended] == ["node_agent_restarted"], ended  # not the node's server_shutdown
    assert not psutil.pid_exists(before["server_pid"]) or psutil.Process(before["server_pid"]).status() == "zombie"
    assert wait_until(lambda: node_id in {n["id"] for n in _ready_nodes(fleet.a, fleet.key)}, 20)
    new = client.computers.create(kind="browser", extra_body={"node_hint": node_id})
    assert fleet.node_of(new.id) == node_id
    assert fleet.b.client().computers.click(new.id, x=5, y=5).status == "success"
    client.computers.delete(new.id)
    computers["browser"] = [c for c in computers["browser"] if c not in mine]


def test_placement_hint_and_bad_input(fleet: Fleet, computers: dict[str, list[str]]) -> None:
    mine, other = computers["browser"][0], "comp_0123456789abcdef"
    with fleet.a.http() as h:
        # the agents trust the token: a path that would lead one to another computer never leaves the replica
        r = h.post(f"/computers/{mine}/%2e%2e/{other}/click", json={"x": 1, "y": 1})
        assert r.status_code == 404, r.text
        r = h.post("/computers", json={"node_hint": "node-nope"})
        assert r.status_code == 422 and "node_hint" in r.json()["detail"]
        r = h.post("/computers", json={"node_hint": 7})
        assert r.status_code == 422
        r = h.post("/computers", json={"kind": "mainframe"})
        assert r.status_code == 422 and "kind" in r.text
        r = h.post("/computers", json={"max_lifetime_seconds": 0})
        assert r.status_code == 422 and "max_lifetime_seconds" in r.text
        assert h.get("/computers/comp_unknown").status_code == 404
    # the agents answer only their internal protocol, and only with the internal token
    url = fleet.sql("SELECT url FROM nodes WHERE state = 'ready' LIMIT 1")[0][0]
    assert httpx.get(url + "/node").status_code == 401
    assert httpx.get(url + "/node", headers={"authorization": f"Bearer {fleet.key}"}).status_code == 401
    assert httpx.get(url.replace("/internal/v1", "/computers")).status_code == 404
    info = httpx.get(url + "/node", headers={"authorization": f"Bearer {fleet.token}"}).json()
    assert info["protocol"] == 1 and info["capacity"] == {"browser": BROWSER_SLOTS, "desktop": DESKTOP_SLOTS}
    # GET /nodes is the operator's: a key of another organisation gets a 403
    env = {**os.environ, "OPENCONE_DATABASE_URL": fleet.url}
    other = subprocess.run([sys.executable, "-m", "opencone", "keys", "create", "--new-org", "tenant"],
                           env=env, capture_output=True, text=True, timeout=60, cwd=fleet.a.log_path.parent)
    assert other.returncode == 0, other.stderr
    with fleet.b.http(other.stdout.strip()) as h:
        assert h.get("/nodes").status_code == 403
        assert h.get(f"/computers/{mine}").status_code == 404  # another organisation's computer
    assert httpx.get(f"{fleet.b.base_url}/live").status_code == 200  # the live view's page, from any replica


def test_database_down_creates_503_live_computers_work(fleet: Fleet, computers: dict[str, list[str]]) -> None:
    cid = computers["browser"][-1]
    client = fleet.b.client()
    assert client.computers.click(cid, x=3, y=3).status == "success"  # the route is cached now
    fleet.pg.stop()
    try:
        with fleet.a.http() as h:
            r = h.post("/computers", json={})
            assert r.status_code == 503 and "database" in r.json()["detail"].lower(), r.text
        assert client.computers.click(cid, x=4, y=4).status == "success"
        assert client.computers.screenshot(cid).status == "success"
    finally:
        fleet.pg.start()


def test_a_replica_that_dies_loses_nothing(fleet: Fleet, computers: dict[str, list[str]],
                                           tmp_path: Path) -> None:
    cid = computers["browser"][-1]
    fleet.a.stop(signal.SIGKILL)
    env = {"OPENCONE_FLEET": "ray", "OPENCONE_DATABASE_URL": fleet.url, "OPENCONE_FLEET_INTERNAL_TOKEN": fleet.token,
           "OPENCONE_FLEET_PLACEMENT_K": "3", "OPENCONE_FLEET_ROUTE_TTL_SECONDS": ROUTE_TTL}
    fleet.a = start_server(tmp_path / "a2", api_key=fleet.key, env=env)  # a new replica: nothing to recover
    fleet.replicas.append(fleet.a)  # (stopped with the others)
    client = fleet.a.client()
    assert client.computers.retrieve(cid).status in ("ready", "running")
    assert client.computers.click(cid, x=6, y=6).status == "success"
    assert cid in {c.id for c in client.computers.list()}


# -- a thousand computers on fake-capacity nodes -----------------------------------------------------------
def test_a_thousand_creates_on_fake_capacity_nodes(fleet: Fleet, computers: dict[str, list[str]]) -> None:
    import ray

    fleet.sql("UPDATE nodes SET state = 'draining' WHERE state = 'ready'")  # no more real browsers
    fakes = [fleet.cluster.add_node(num_cpus=1, memory=2 << 30, object_store_memory=80 << 20,
                                    resources={"opencone_browser_slots": FAKE_SLOTS},
                                    env_vars={"OPENCONE_FLEET_TEST_FACTORY": "fleet_null_driver:factory"})
             for _ in range(3)]
    fake_ids = {f"node-{n.node_id}" for n in fakes}
    # the operator's command (the controller exists: it finds it, which then starts the new nodes' agents)
    env = {**os.environ, "OPENCONE_DATABASE_URL": fleet.url, "OPENCONE_FLEET_INTERNAL_TOKEN": fleet.token}
    up = subprocess.run([sys.executable, "-m", "opencone", "ray", "up", "--address", fleet.cluster.address],
                        env=env, capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    assert {n.node_id for n in fakes} <= set(json.loads(up.stdout[up.stdout.index("{"):])["agents"]), up.stdout
    assert wait_until(lambda: fake_ids <= {n["id"] for n in _ready_nodes(fleet.a, fleet.key)}, 30)
    keys = {"authorization": f"Bearer {fleet.key}"}
    clients = [httpx.Client(base_url=s.base_url, headers=keys, timeout=60) for s in (fleet.a, fleet.b)]
    # a computer that ends on its node by itself (its lifetime) ends in the fleet's records too
    heard = Heard(fleet.url)
    try:
        short = clients[0].post("/computers", json={"max_lifetime_seconds": 1}).json()["id"]
        assert wait_until(lambda: fleet.sql(f"SELECT status, termination_reason FROM computers WHERE id = '{short}'")
                          == [["terminated", "max_lifetime_reached"]], 15, 0.2)
        assert wait_until(lambda: short in heard.ids, 10, 0.05), heard.ids  # the node's write is NOTIFY'd
    finally:
        heard.close()

    def create(i: int) -> int:
        return clients[i % 2].post("/computers", json={}).status_code

    t0 = time.monotonic()
    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(create, range(1000)))
    took = time.monotonic() - t0
    print(f"1000 creates through 2 replicas, 20 clients: {took:.1f} s")
    assert codes.count(200) == 1000, {c: codes.count(c) for c in set(codes)}
    counts = dict(fleet.sql("SELECT node_id, count(*) FROM computers WHERE status <> 'terminated' "
                            "AND node_id IN (" + ",".join(f"'{n}'" for n in fake_ids) + ") GROUP BY node_id"))
    assert sum(int(v) for v in counts.values()) == 1000 and all(int(v) <= FAKE_SLOTS for v in counts.values()), counts
    # the agents hold exactly what the database says
    for node in fakes:
        url = fleet.sql(f"SELECT url FROM nodes WHERE id = 'node-{node.node_id}'")[0][0]
        live = httpx.get(url + "/node", headers={"authorization": f"Bearer {fleet.token}"}).json()["live"]
        assert live["browser"] == int(counts[f"node-{node.node_id}"]), (live, counts)
    # fill the fleet to 3 x 350, one create at a time: every slot is usable and none beyond. (Under
    # concurrency a nearly full node may refuse for a moment: its in-flight creates are counted twice,
    # as reserved and as live, until their confirm or the next heartbeat; a 429 says retry.)
    refused = 0
    while refused < 3:
        if create(0) == 200:
            refused = 0
        else:
            refused += 1
            time.sleep(1.5)  # a heartbeat later: what the nodes really hold
    final = dict(fleet.sql("SELECT node_id, count(*) FROM computers WHERE status <> 'terminated' "
                           "AND node_id IN (" + ",".join(f"'{n}'" for n in fake_ids) + ") GROUP BY node_id"))
    assert {int(v) for v in final.values()} == {FAKE_SLOTS} and len(final) == 3, final
    r = clients[1].post("/computers", json={})
    assert r.status_code == 429 and "no node" in r.json()["detail"], r.text
    for c in clients:
        c.close()
    for node in fakes:
        ray.get(fleet.agent(node.node_id).stop.remote(), timeout=60)
