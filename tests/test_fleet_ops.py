"""/metrics, /status, GET / and /mcp through a fleet replica (fleet/replica_ops.py, fleet/replica_mcp.py),
against two node servers started without Ray (tests/fleet_direct.py).

/metrics is read with Prometheus' own parser: the replica's figures and every node's, each node's samples
labelled with its id; a node that stops answering is left out and counted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import wait_until
from fleet_direct import DirectFleet, start_direct_fleet
from mcp_helpers import MODES, create, mcp_client, ok, ref_of, round_trip, shot, text
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from opencone.fleet.replica_ops import merge

pytestmark = pytest.mark.timeout(300)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[DirectFleet]:
    fleet = start_direct_fleet(tmp_path_factory.mktemp("fleet-ops"), postgres, nodes=2, browser_slots=2,
                               desktop_slots=0)
    yield fleet
    fleet.stop()


def scrape(fleet: DirectFleet, key: str | None = None) -> tuple[str, Samples]:
    with fleet.http(key) as h:
        resp = h.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = list(text_string_to_metric_families(resp.text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), "a family's HELP/TYPE appears once"
    return resp.text, {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def node_ids(fleet: DirectFleet) -> list[str]:
    return [n.node_id for n in fleet.nodes]


def test_metrics_merge_both_nodes_and_count_a_create(fleet: DirectFleet) -> None:
    _, before = scrape(fleet)
    created = fleet.client().computers.create(kind="browser")
    try:
        where = fleet.node_of(created.id)
        _, after = scrape(fleet)
        # each node's own figures, labelled with its id: the live gauge moved on the computer's node only
        for node in node_ids(fleet):
            assert ("opencone_uptime_seconds", (("node", node),)) in after, node
            live = value(after, "opencone_computers", kind="browser", node=node, status="ready")
            assert live == (1.0 if node == where else 0.0), (node, where, live)
        # no node sample without its node label
        for name, labels in after:
            if not name.startswith(("opencone_replica_", "opencone_fleet_")):
                assert "node" in dict(labels), name
        # the replica's own: the create, its time, and the forwarded request
        assert value(after, "opencone_replica_creates_total", outcome="created") == \
            value(before, "opencone_replica_creates_total", outcome="created") + 1
        assert value(after, "opencone_replica_create_seconds_count", outcome="created") >= 1
        assert value(after, "opencone_replica_requests_total", route="create", code="2xx") >= 1
        assert value(after, "opencone_computer_creates_total", kind="browser", node=where, pool="hit") + \
            value(after, "opencone_computer_creates_total", kind="browser", node=where, pool="miss") >= 1
        # an action forwarded to the node is counted by its route kind
        fleet.client().computers.screenshot(created.id)
        _, later = scrape(fleet)
        assert value(later, "opencone_replica_requests_total", route="action", code="2xx") >= 1
    finally:
        fleet.client().computers.delete(created.id)



def test_an_open_events_relay_is_counted_while_it_is_open(fleet: DirectFleet) -> None:
    created = fleet.client().computers.create(kind="browser")
    try:
        with fleet.http() as h, h.stream("GET", f"/computers/{created.id}/events") as events:
            assert events.status_code == 200
            assert value(scrape(fleet)[1], "opencone_replica_relays_open", kind="events") == 1.0
        assert wait_until(lambda: value(scrape(fleet)[1], "opencone_replica_relays_open", kind="events") == 0.0)
    finally:
        fleet.client().computers.delete(created.id)

def test_metrics_and_status_take_an_operator_key(fleet: DirectFleet) -> None:
    base = fleet.replicas[0].base_url
    other = fleet.new_org_key("ops-tenant")
    for path in ("/metrics", "/status"):
        bare = httpx.get(base + path, timeout=30)
        assert bare.status_code == 401, bare.text
        assert "API key" in bare.json()["detail"]
        assert httpx.get(base + path, headers={"authorization": "Bearer oc_nope"}, timeout=30).status_code == 401
        assert httpx.get(base + path, params={"token": fleet.key}, timeout=30).status_code == 401
        tenant = httpx.get(base + path, headers={"authorization": f"Bearer {other}"}, timeout=30)
        assert tenant.status_code == 403, tenant.text
        assert "default organisation" in tenant.json()["detail"]


def test_status_shows_the_fleet(fleet: DirectFleet) -> None:
    other = fleet.new_org_key("status-tenant")
    mine = fleet.client().computers.create(kind="browser")
    theirs = fleet.client(other).computers.create(kind="browser")
    try:
        with fleet.http() as h:
            st = h.get("/status").json()
        assert st["role"] == "fleet-replica"
        nodes = {n["id"]: n for n in st["nodes"]}
        assert set(node_ids(fleet)) <= set(nodes)
        for node in node_ids(fleet):
            n = nodes[node]
            assert n["state"] == "ready" and n["reachable"] is True
            assert n["slots"]["browser"]["capacity"] == 2 and n["free_memory_bytes"] > 0
            assert [p["pool"] for p in n["pools"]] == ["browser", "desktop"]
        used = {node: nodes[node]["slots"]["browser"]["used"] for node in node_ids(fleet)}
        assert sum(used.values()) >= 2
        assert used[fleet.node_of(mine.id)] >= 1 and used[fleet.node_of(theirs.id)] >= 1
        comps = st["computers"]
        assert comps["by_kind"]["browser"] >= 2 and comps["live"] >= 2
        assert len(comps["by_org"]) >= 2  # the operator sees every organisation's, as on a single server
        assert comps["by_node"][fleet.node_of(mine.id)] >= 1
        # the CLI against the replica: --json is that answer, the table names the nodes
        env = {**os.environ, "OPENCONE_API_KEY": fleet.key}
        base = fleet.replicas[0].base_url
        out = subprocess.run([sys.executable, "-m", "opencone", "status", "--url", base, "--json"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert {n["id"] for n in json.loads(out.stdout)["nodes"]} >= set(node_ids(fleet))
        table = subprocess.run([sys.executable, "-m", "opencone", "status", "--url", base], env={
            **env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=60)
        assert table.returncode == 0, table.stderr
        assert "fleet" in table.stdout and all(node in table.stdout for node in node_ids(fleet)), table.stdout
    finally:
        fleet.client(other).computers.delete(theirs.id)
        fleet.client().computers.delete(mine.id)


def test_root_leads_somewhere(fleet: DirectFleet) -> None:
    base = fleet.replicas[0].base_url
    page = httpx.get(base + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/live" in page.text and "/docs" in page.text
    links = httpx.get(base + "/", headers={"accept": "application/json"}, timeout=30).json()["links"]
    for name in ("live", "docs", "status", "metrics"):
        assert httpx.get(links[name], timeout=30).status_code in (200, 401), name
    assert httpx.get(links["live"], timeout=30).status_code == 200
    assert httpx.get(links["docs"], timeout=30).status_code == 200


def test_a_node_that_does_not_answer_is_left_out_and_counted(fleet: DirectFleet) -> None:
    """Last of the module's metrics tests: one node frozen (SIGSTOP), so its scrape times out."""
    frozen = fleet.nodes[1]
    _, before = scrape(fleet)
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        _, during = scrape(fleet)
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
    assert ("opencone_uptime_seconds", (("node", frozen.node_id),)) not in during
    assert ("opencone_uptime_seconds", (("node", fleet.nodes[0].node_id),)) in during
    assert value(during, "opencone_fleet_node_scrape_errors_total", node=frozen.node_id) == \
        value(before, "opencone_fleet_node_scrape_errors_total", node=frozen.node_id) + 1
    _, after = scrape(fleet)  # back: answered again
    assert ("opencone_uptime_seconds", (("node", frozen.node_id),)) in after


# -- MCP through the replica ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(MODES))
async def test_mcp_tools_reach_computers_on_the_fleet(fleet: DirectFleet, site: str, mode: str) -> None:
    replica = fleet.replicas[0]
    async with mcp_client(replica, mode) as c:
        assert c.session.protocol_version == MODES[mode]
        cid = await create(c, f"{site}/mcp.html")
        # made on a node, with its fleet record: REST through the replica sees the same computer
        assert fleet.node_of(cid) in node_ids(fleet)
        with fleet.http() as h:
            assert h.get(f"/computers/{cid}").json()["status"] == "ready"
        assert cid in {v["computer_id"] for v in json.loads(text(await ok(c, "computer_list")))}
        assert isinstance(json.loads(text(await ok(c, "environment_list"))), list)  # the nodes' lists, merged
        snap = text(await ok(c, "snapshot", computer_id=cid))
        await ok(c, "click", computer_id=cid, ref=ref_of(snap, 'button "Go"'))
        assert '"go"' in text(await ok(c, "read_page", computer_id=cid))  # the page saw the click
        pixels, note = await shot(c, cid)
        assert pixels.shape == (768, 1024, 3) and "1024x768 screen" in note
        await ok(c, "click", computer_id=cid, x=500, y=20)  # by x,y: the screen's size read through REST
        assert "closed" in text(await ok(c, "computer_close", computer_id=cid))
        with fleet.http() as h:
            ended = h.get(f"/computers/{cid}").json()
        assert ended["status"] == "terminated" and ended["termination_reason"] == "deleted"
        after = await c.call_tool("click", {"computer_id": cid, "x": 5, "y": 5})
        assert after.is_error and "terminated" in text(after)


async def test_mcp_round_trip_through_the_replica(fleet: DirectFleet, site: str) -> None:
    """What every MCP transport's test runs (typing seen in the screenshot's pixels), here via a replica."""
    async with mcp_client(fleet.replicas[0]) as c:
        await round_trip(c, site)


async def test_mcp_another_organisation_sees_nothing(fleet: DirectFleet, site: str) -> None:
    other = fleet.new_org_key("mcp-tenant")
    mine = fleet.client().computers.create(kind="browser")
    try:
        async with mcp_client(fleet.replicas[0], key=other) as c:
            assert mine.id not in text(await ok(c, "computer_list"))
            for tool, args in (("computer_get", {}), ("screenshot", {}), ("click", {"x": 5, "y": 5}),
                               ("navigate", {"url": site}), ("computer_close", {})):
                answer = await c.call_tool(tool, {"computer_id": mine.id, **args})
                assert answer.is_error and "no computer" in text(answer), (tool, text(answer))
            for hostile in ("../computers", "a/b", "%2e%2e", mine.id + "/../" + mine.id):
                answer = await c.call_tool("computer_get", {"computer_id": hostile})
                assert answer.is_error and "no computer" in text(answer), (hostile, text(answer))
        with fleet.http() as h:
            assert h.get(f"/computers/{mine.id}").json()["status"] == "ready"  # untouched
    finally:
        fleet.client().computers.delete(mine.id)


def test_mcp_on_the_replica_takes_a_key_and_perform_refuses_bad_input(fleet: DirectFleet) -> None:
    base = fleet.replicas[0].base_url
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    for headers in ({}, {"authorization": "Bearer not-a-key"}, {"authorization": "Bearer " + "k" * 5000}):
        r = httpx.post(f"{base}/mcp", json=hello, timeout=30,
                       headers={**headers, "accept": "application/json, text/event-stream"})
        assert r.status_code == 401, (headers, r.status_code, r.text)
    mine = fleet.client().computers.create(kind="browser")
    try:
        with fleet.http() as h:
            for body, status, says in (
                ({"actions": [{"kind": "evaluate", "expression": "1"}]}, 422, "not enabled"),  # an opt-in group
                ({"actions": [{"kind": "set_viewport", "width": 800, "height": 600}]}, 422, "not one the MCP"),
                ({"actions": [{"kind": "nope"}]}, 422, "actions"),
                ({"actions": []}, 422, "actions"),
                ({"actions": "click"}, 422, "actions"),
            ):
                r = h.post(f"/computers/{mine.id}/perform", json=body)
                assert r.status_code == status, (body, r.status_code, r.text)
                assert r.headers["content-type"].startswith("application/problem+json"), r.text
                assert says in r.json()["detail"], (body, r.text)
            good = h.post(f"/computers/{mine.id}/perform", json={"actions": [{"kind": "screenshot"}]}).json()
            assert good["ok"] is True and good["image"] and good["display"]["width"] > 0
    finally:
        fleet.client().computers.delete(mine.id)


def test_merge_labels_every_sample_and_leaves_out_a_text_that_does_not_parse() -> None:
    """fleet/replica_ops.merge alone: a node's own ``node`` label kept as ``exported_node``, HELP/TYPE once."""
    good = ('# HELP opencone_x Things.\n# TYPE opencone_x gauge\nopencone_x{node="inner",kind="a"} 2.0\n'
            'opencone_x{kind="b"} 3.0\n')
    failed: list[str] = []
    text = merge({"n1": good, "n2": good, "n3": 'opencone_x{kind="a" 1\n'}, failed.append).decode()
    assert failed == ["n3"]
    assert text.count("# TYPE opencone_x gauge") == 1
    samples = {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
               for s in f.samples}
    assert samples == {(("exported_node", "inner"), ("kind", "a"), ("node", "n1")): 2.0,
                       (("kind", "b"), ("node", "n1")): 3.0,
                       (("exported_node", "inner"), ("kind", "a"), ("node", "n2")): 2.0,
                       (("kind", "b"), ("node", "n2")): 3.0}



async def test_counting_sees_refusals_and_unreachable_nodes() -> None:
    """fleet/replica_ops.Counting alone, around a small ASGI app answering as the replica does when the
    fleet is full (429) and when a computer's node does not answer (503 naming the node)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from opencone.fleet.replica_ops import Counting, ReplicaMetrics

    app = FastAPI()

    @app.post("/computers")
    async def full() -> JSONResponse:
        return JSONResponse({"detail": "no node of the fleet can take a browser computer now"}, 429)

    @app.post("/computers/{cid}/click")
    async def gone(cid: str) -> JSONResponse:
        return JSONResponse({"detail": "the node does not answer", "node_id": "n1"}, 503)

    @app.post("/computers/{cid}/type")
    async def database(cid: str) -> JSONResponse:
        return JSONResponse({"detail": "the fleet database is unavailable"}, 503)  # no node named

    metrics = ReplicaMetrics()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=Counting(app, metrics)), base_url="http://r") as h:
        assert (await h.post("/computers")).status_code == 429
        assert (await h.post("/computers/c1/click")).status_code == 503
        assert (await h.post("/computers/c1/type")).status_code == 503
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(generate_latest(metrics.registry).decode()) for s in f.samples}
    assert got[("opencone_replica_placement_refusals_total", ())] == 1.0
    assert got[("opencone_replica_creates_total", (("outcome", "refused"),))] == 1.0
    assert got[("opencone_replica_node_unreachable_total", (("route", "action"),))] == 1.0
    assert got[("opencone_replica_requests_total", (("code", "5xx"), ("route", "action")))] == 2.0
