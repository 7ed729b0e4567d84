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
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import wait_until
from fleet_direct import DirectFleet, start_direct_fleet
from mcp_helpers import MODES, create, mcp_client, ok, ref_of, round_trip, shot, text
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from opencone.fleet import replica_ops
from opencone.fleet.agent_routes import PREFIX
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



# -- merge against the parser's way (what merge did before its line-by-line rewrite) -----------------------
def reference_merge(texts: dict[str, str], failed: Callable[[str], None] = lambda node_id: None) -> bytes:
    """Every text parsed by prometheus_client.parser, relabelled, rendered again by generate_latest."""
    merged: dict[str, Metric] = {}
    for node_id, body in texts.items():
        try:
            families = list(text_string_to_metric_families(body))
        except ValueError:
            failed(node_id)
            continue
        for family in families:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            elif into.type != family.type:
                continue
            for s in family.samples:
                labels = dict(s.labels)
                if "node" in labels:
                    labels["exported_node"] = labels.pop("node")
                labels["node"] = node_id
                into.add_sample(s.name, labels, s.value, s.timestamp, s.exemplar)

    class Families:
        def collect(self) -> list[Metric]:
            return list(merged.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families())  # type: ignore[arg-type]
    return generate_latest(registry)


def meaning(text: bytes) -> list[tuple[Any, ...]]:
    """A merged text as the parser reads it: families in order, each with its samples in order (labels
    sorted: their order in a line means nothing; NaN made comparable)."""
    return [(f.name, f.type, f.documentation,
             [(s.name, tuple(sorted(s.labels.items())), s.value if s.value == s.value else "NaN", s.timestamp)
              for s in f.samples])
            for f in text_string_to_metric_families(text.decode())]


def same_as_reference(texts: dict[str, str]) -> tuple[bytes, list[str]]:
    failed: list[str] = []
    out = merge(texts, failed.append)
    expected_failed: list[str] = []
    expected = reference_merge(texts, expected_failed.append)
    assert failed == expected_failed
    got = meaning(out)
    names = [f[0] for f in got]
    assert len(names) == len(set(names)), "a family's HELP/TYPE once, its samples together"
    assert got == meaning(expected)
    return out, failed


@pytest.fixture(scope="module")
def node_texts(fleet: DirectFleet) -> dict[str, str]:
    """Both nodes' own /metrics after a create and a click (so histograms have samples)."""
    created = fleet.client().computers.create(kind="browser")
    try:
        with fleet.http() as h:
            assert h.post(f"/computers/{created.id}/click", json={"x": 10, "y": 10}).status_code == 200
        texts = {}
        for node in fleet.nodes:
            resp = httpx.get(node.url + PREFIX + "/metrics", headers={"authorization": f"Bearer {fleet.token}"},
                             timeout=30)
            assert resp.status_code == 200, resp.text
            texts[node.node_id] = resp.text
        return texts
    finally:
        fleet.client().computers.delete(created.id)


def test_merge_of_real_node_texts_means_what_the_parser_path_means(node_texts: dict[str, str]) -> None:
    assert any("_bucket{" in t and 'action="click"' in t for t in node_texts.values())
    for node_id, body in node_texts.items():
        assert replica_ops._relabelled(body, node_id) is not None, "a node's own text takes the line-by-line way"
    many = {f"{node_id}-{i}": body for i in range(10) for node_id, body in node_texts.items()}
    out, failed = same_as_reference(many)
    assert failed == []
    assert out.decode().count("# TYPE opencone_action_seconds histogram") == 1


def test_merge_costs_a_fraction_of_the_parser_path(node_texts: dict[str, str]) -> None:
    """CPU time (this process's), best of 5, over 50 copies of the nodes' texts: at least 3x less."""
    texts = {f"n{i}": text for i in range(25) for text in node_texts.values()}

    def cpu(fn: Callable[[dict[str, str]], bytes]) -> float:
        runs = []
        for _ in range(5):
            t0 = time.process_time()
            fn(texts)
            runs.append(time.process_time() - t0)
        return min(runs)

    new, old = cpu(merge), cpu(reference_merge)
    assert new * 3 < old, (new, old)


HEAD = "# HELP opencone_x Things.\n# TYPE opencone_x gauge\n"
ESCAPED = HEAD + (r'opencone_x{path="a\"b}c,d",msg="one\ntwo",back="c:\\dir\\",odd="node=\"x\",y=\"}\""} 1.5' + "\n"
                  r'opencone_x{node="in\"ner",kind="a"} 2' + "\n" + 'opencone_x{kind="t"} 3.0 1700000000000\n')
OTHERS = (
    "# HELP opencone_req_total Requests.\n# TYPE opencone_req_total counter\n"
    'opencone_req_total{code="200",exported_node="old"} 4.0\nopencone_req_total{code="500"} 1e+03\n'
    "# HELP opencone_lat Latency.\n# TYPE opencone_lat summary\n"
    'opencone_lat{quantile="0.5"} NaN\nopencone_lat_count 0.0\nopencone_lat_sum 0.0\n'
    "# HELP opencone_h A histogram.\n# TYPE opencone_h histogram\n"
    'opencone_h_bucket{le="0.1",node="x"} 1.0\nopencone_h_bucket{le="+Inf",node="x"} 2.0\n'
    'opencone_h_count{node="x"} 2.0\nopencone_h_sum{node="x"} -Inf\n'
    "# HELP opencone_u Untyped.\n# TYPE opencone_u untyped\nopencone_u .5\n"
    "# HELP opencone_empty No samples yet.\n# TYPE opencone_empty gauge\n"
    "# HELP opencone_nohelp \n# TYPE opencone_nohelp gauge\nopencone_nohelp +5\n"
)
ONE_NODE = ("# HELP opencone_only_here One node's, with a \\\\ backslash and a \\n newline in its help.\n"
            "# TYPE opencone_only_here gauge\n"
            'opencone_only_here{a="1",b="2",c="3"} 7\n')
FAST_CASES: dict[str, dict[str, str]] = {
    "escapes, a timestamp, a node label of its own": {"n1": ESCAPED, "n2": ESCAPED},
    "every type, empty help, a family with no samples": {"n1": OTHERS, "n2": OTHERS + ONE_NODE},
    "a family only on one node, first and last": {"n1": ONE_NODE + ESCAPED, "n2": ESCAPED + OTHERS},
    "a type that disagrees: the first seen kept": {
        "n1": ESCAPED + OTHERS, "n2": HEAD.replace("gauge", "untyped") + "opencone_x 5\n" + OTHERS,
        "n3": "# HELP opencone_lat Latency, a gauge here.\n# TYPE opencone_lat gauge\nopencone_lat 1\n" + ESCAPED},
    "a counter and a gauge of one parser name": {
        "n1": OTHERS, "n2": "# HELP opencone_req Requests.\n# TYPE opencone_req gauge\nopencone_req 2.0\n"},
    "a node id to escape, blank lines, no final newline": {
        'n"1\\': ESCAPED, "n\n2": "\n" + OTHERS + "\n" + ONE_NODE[:-1]},
    "garbage": {"n1": ESCAPED, "n2": "<html>502 Bad Gateway</html>\n", "n3": HEAD + 'opencone_x{kind="a" 1\n',
                "n4": HEAD + 'opencone_x{a="1",a="2"} 1\n', "n5": HEAD + "opencone_x 1_000\n", "n6": OTHERS,
                "n7": HEAD + 'opencone_x{__reserved="1"} 1\n'},
    "nothing": {"n1": "", "n2": OTHERS},
}
UNUSUAL: dict[str, str] = {  # each parses, but not in the shape read line by line: the parser's way
    "# EOF": OTHERS + "# EOF\n",
    "a comment": "# a comment\n" + OTHERS,
    "CRLF": OTHERS.replace("\n", "\r\n"),
    "TYPE without HELP": "# TYPE opencone_t gauge\nopencone_t 1\n",
    "a sample before any family": "opencone_stray 1\n" + OTHERS,
    "a sample of another name": HEAD + "opencone_y 1\n",
    "an escape the parser keeps": HEAD + 'opencone_x{p="a\\tb"} 1\n',
    "node and exported_node": HEAD + 'opencone_x{node="a",exported_node="b"} 1\n',
    "a counter not named _total": "# HELP opencone_c C.\n# TYPE opencone_c counter\nopencone_c 1\n",
    "a family twice": HEAD + "opencone_x 1\n" + HEAD.replace("Things", "Other things") + "opencone_x 2\n",
    "spaces": HEAD + 'opencone_x{kind="a"}  1\n',
    "a trailing comma": HEAD + 'opencone_x{kind="a",} 1\n',
    "a float timestamp": HEAD + "opencone_x 1 1700000000000.5\n",
    "OpenMetrics info": "# HELP opencone_i Info.\n# TYPE opencone_i info\nopencone_i_info{v=\"1\"} 1\n",
    "HELP without TYPE": OTHERS + "# HELP opencone_z Z.\n",
    "HELP without TYPE, last": OTHERS + "# HELP opencone_z Z.",
    "help with two spaces": "# HELP opencone_x  Things.\n# TYPE opencone_x gauge\nopencone_x 1\n",
}


@pytest.mark.parametrize("case", list(FAST_CASES))
def test_merge_means_what_the_parser_path_means(case: str) -> None:
    texts = FAST_CASES[case]
    out, failed = same_as_reference(texts)
    for node_id, body in texts.items():
        if node_id not in failed:  # what parses here is read line by line, not through the parser
            assert replica_ops._relabelled(body, node_id) is not None, node_id
    if case == "garbage":
        assert failed == ["n2", "n3", "n4", "n5", "n7"]


@pytest.mark.parametrize("case", list(UNUSUAL))
def test_merge_of_an_unusual_text_is_the_parser_paths(case: str) -> None:
    texts = {"n1": OTHERS, "n2": UNUSUAL[case], "n3": "garbage\n"}
    assert replica_ops._relabelled(UNUSUAL[case], "n2") is None
    failed: list[str] = []
    assert merge(texts, failed.append) == reference_merge(texts)  # byte for byte: the whole merge parsed
    assert failed == ["n3"]



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
