"""The fleet when Ray's head loses its GCS (run by tests/test_fleet_ray.py inside a network namespace,
after tests/fleet_ray_cases.py; never collected alone): a cluster of its own, since its head is killed.

Without GCS fault tolerance (spec/scale-out.md §5.4) the agents die within
``gcs_rpc_server_reconnect_timeout_s`` (3 s here: ``RAY_gcs_rpc_server_reconnect_timeout_s``, set before
the cluster starts, so every Ray process reads it) and every computer of every node goes with them. What
must hold: the replicas, which are not Ray drivers, keep answering (health, a computer's record),
creates fail with a clear JSON 429, no Chromium, Xvfb or bubblewrap process of any node is left, and
the replica's own sweeper ends the computers' records as ``node_lost`` (no controller is left to).

This pytest process is no Ray driver either (a driver dies with the GCS): the controller is started by a
short driver of its own, as ``opencone ray up`` does.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from opencone.testing import loopback_up

TESTS = Path(__file__).parent
IN_NETNS = os.environ.get("OPENCONE_TEST_NETNS") == "1"
RECONNECT_TIMEOUT_S = 3
NODE_LOST_S = 5  # the replica's sweeper (fleet/replica_sweep.py): with the controller gone, it ends the records
if not IN_NETNS:  # Ray outside a private network namespace would probe cloud-metadata addresses
    pytest.skip("runs only inside tests/test_fleet_ray.py's network namespace", allow_module_level=True)

loopback_up()
pytestmark = pytest.mark.timeout(180)

from conftest import wait_until  # noqa: E402

from opencone.testing import Server, start_server  # noqa: E402

LEFTOVERS = ("chrom", "xvfb", "bwrap")  # what a node's computers run (process names, lower case)


def _ours() -> list[psutil.Process]:
    """Every process this test started, at any depth (the cluster's, the agents', their computers')."""
    return psutil.Process(os.getpid()).children(recursive=True)


def _alive(procs: list[psutil.Process]) -> list[str]:
    """Those still running, each with its parent (who left it)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                chain = " < ".join(f"{a.pid}:{a.name()}" for a in p.parents()[:4])
                out.append(f"{p.pid}:{p.name()} < {chain}")
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[tuple[Server, Any]]:
    from ray.cluster_utils import Cluster

    os.environ["RAY_gcs_rpc_server_reconnect_timeout_s"] = str(RECONNECT_TIMEOUT_S)  # for every Ray process
    tmp = tmp_path_factory.mktemp("gcs")
    url = postgres.create_database("gcs")
    token, key = secrets.token_hex(16), f"test-{secrets.token_hex(8)}"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "memory": 1 << 30, "object_store_memory": 80 << 20})
    server: Server | None = None
    try:
        cluster.add_node(num_cpus=1, memory=2 << 30, object_store_memory=80 << 20,
                         resources={"opencone_browser_slots": 2})
        driver = textwrap.dedent(f"""
            import ray
            from opencone.fleet import ray as fleet_ray
            ray.init(address={cluster.address!r}, namespace="opencone", log_to_driver=False)
            status = fleet_ray.start(database_url={url!r}, token={token!r}, data_dir={str(tmp / "nodes")!r},
                                     agent_env={{"OPENCONE_POOL_SIZE": "1", "OPENCONE_EGRESS_ALLOW": "127.0.0.1",
                                                 "OPENCONE_NODE_HEARTBEAT_SECONDS": "1"}})
            assert len(status["agents"]) == 1, status
        """)
        up = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=150)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-4000:]
        server = start_server(tmp / "replica", api_key=key, env={
            "OPENCONE_FLEET": "ray", "OPENCONE_DATABASE_URL": url, "OPENCONE_FLEET_INTERNAL_TOKEN": token,
            "OPENCONE_FLEET_HEARTBEAT_TTL_SECONDS": "5", "OPENCONE_FLEET_NODE_LOST_SECONDS": str(NODE_LOST_S)})
        yield server, cluster
    finally:
        if server is not None:
            server.stop()
        try:
            cluster.shutdown()
        finally:
            for p in _ours():  # what a dead head left behind (this test's own processes, not PostgreSQL)
                with contextlib.suppress(psutil.Error):
                    if p.name() != "postgres":
                        p.kill()


def test_head_lost_replicas_answer_creates_refused_nothing_left(fleet: tuple[Server, Any]) -> None:
    server, _cluster = fleet
    client = server.client()
    cid = client.computers.create(kind="browser").id
    assert client.computers.click(cid, x=5, y=5).status == "success"
    mine = [p for p in _ours() if any(k in p.name().lower() for k in LEFTOVERS)]
    assert any("chrom" in p.name().lower() for p in mine), [p.name() for p in _ours()]
    gcs = [p for p in _ours() if p.name() == "gcs_server"]
    assert len(gcs) == 1, [p.name() for p in _ours()]
    gcs[0].send_signal(signal.SIGKILL)

    # the replica is not a Ray driver: it answers, and a computer's record is there
    with server.http() as h:
        assert h.get("/health").status_code == 200
        assert h.get(f"/computers/{cid}").json()["id"] == cid
    # the agents go within the reconnect timeout, and their computers with them
    assert wait_until(lambda: not _alive(mine), 90, 0.5), _alive(mine)
    assert not _alive([p for p in _ours() if any(k in p.name().lower() for k in LEFTOVERS)])
    with server.http() as h:
        assert h.get("/health").json()["status"] == "ok"
        r = h.get(f"/computers/{cid}")
        assert r.status_code == 200 and r.json()["id"] == cid, r.text  # the record, answered from PostgreSQL
        r = h.post("/computers", json={})
        assert r.status_code == 429 and "no node" in r.json()["detail"], r.text  # says why, as JSON

        # no controller is left to say so, and the replica's sweeper does: the computer is node_lost
        def ended() -> tuple[str, str | None]:
            body = h.get(f"/computers/{cid}").json()
            return body["status"], body.get("termination_reason")

        assert wait_until(lambda: ended() == ("terminated", "node_lost"), 60, 0.5), ended()
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
