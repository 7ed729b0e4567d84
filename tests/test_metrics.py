"""GET /metrics and GET /status against a real server, read with Prometheus' own text parser.

Every figure is checked moving: a create makes the live gauge 1 and counts a pool hit, a click adds
one to the click histogram, a failed action, a 404 and a 422 are counted by type, an events stream
is a subscriber while it is open, and a delete takes the gauge back to 0.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import wait_until
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from opencone.core.metrics import Metrics
from opencone.testing import Server, start_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("metrics"), env={"OPENCONE_POOL_SIZE": "1"})
    yield s
    s.stop()


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics: (name, sorted labels) -> value."""
    resp = server.http().get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def other_org_key(server: Server) -> str:
    out = subprocess.run([sys.executable, "-m", "opencone", "keys", "create", "--new-org", "metrics-tenant",
                          "--data-dir", str(server.data_dir)], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_metrics_and_status_take_an_operator_key(srv: Server) -> None:
    for path in ("/metrics", "/status"):
        bare = httpx.get(f"{srv.base_url}{path}", timeout=10)
        assert bare.status_code == 401 and bare.headers["content-type"] == "application/problem+json", bare.text
        assert "API key" in bare.json()["detail"]
        wrong = srv.http(key="oc_not-a-key").get(path)
        assert wrong.status_code == 401, wrong.text
        as_query = httpx.get(f"{srv.base_url}{path}", params={"token": srv.api_key}, timeout=10)
        assert as_query.status_code == 401, "a key in the URL is not taken here (it would sit in scrapers' logs)"
    tenant = other_org_key(srv)
    for path in ("/metrics", "/status"):
        refused = srv.http(key=tenant).get(path)
        assert refused.status_code == 403, refused.text
        assert "default organisation" in refused.json()["detail"]
        assert tenant[:8] not in refused.text
    # the tenant's key works for its own computers: only the server-wide views are closed to it
    assert srv.http(key=tenant).get("/computers").status_code == 200


def test_figures_move_with_what_happens(srv: Server, site: str) -> None:
    srv.wait_warm(1)
    before = scrape(srv)
    assert value(before, "opencone_computers", kind="browser", status="ready") == 0
    assert value(before, "opencone_pool_ready", pool="browser") == 1 == srv.health()["warm_browsers"]
    client = srv.client()
    comp = client.computers.create(kind="browser")
    try:
        after_create = scrape(srv)
        assert value(after_create, "opencone_computers", kind="browser", status="ready") == 1
        assert value(after_create, "opencone_computer_creates_total", kind="browser", pool="hit") == \
            value(before, "opencone_computer_creates_total", kind="browser", pool="hit") + 1
        assert value(after_create, "opencone_computer_create_seconds_count", kind="browser", pool="hit") == \
            value(before, "opencone_computer_create_seconds_count", kind="browser", pool="hit") + 1
        # a pool hit answers in well under the histogram's top bucket: its +Inf bucket holds it
        assert value(after_create, "opencone_computer_create_seconds_bucket", kind="browser", pool="hit",
                     le="+Inf") >= 1

        assert client.computers.click(comp.id, x=10, y=10).status == "success"
        after_click = scrape(srv)
        clicks = value(after_click, "opencone_action_seconds_count", action="click")
        assert clicks == value(after_create, "opencone_action_seconds_count", action="click") + 1
        assert 0 < value(after_click, "opencone_action_seconds_sum", action="click") < 20

        failed = client.computers.click(comp.id, x=5000, y=10)  # off the screen: an action error, HTTP 200
        assert failed.status == "error"
        assert client.computers.navigate(comp.id, url=f"{site}/playground.html").status == "success"
        missing = srv.http().get("/computers/comp_nope")
        bad = srv.http().post(f"/computers/{comp.id}/click", json={"x": "left"})
        assert (missing.status_code, bad.status_code) == (404, 422)
        ran = client.computers.exec.sync(comp.id, command="echo hi")
        assert ran.exit_code == 0
        later = scrape(srv)
        assert value(later, "opencone_action_errors_total", action="click") == 1
        assert value(later, "opencone_action_seconds_count", action="click") == clicks + 1  # the failed one too
        assert value(later, "opencone_action_seconds_count", action="navigate") >= 1
        assert value(later, "opencone_http_errors_total", status="404", error="NotFound") >= 1
        assert value(later, "opencone_http_errors_total", status="422", error="validation") >= 1
        assert value(later, "opencone_exec_runs_total") == value(after_click, "opencone_exec_runs_total") + 1
        assert value(later, "opencone_exec_running") == 0
        assert value(later, "process_resident_memory_bytes") > 10 * 2**20  # the server process itself
        assert value(later, "opencone_uptime_seconds") > 0

        # an open events stream is a subscriber while it is open
        opened = threading.Event()

        def follow() -> None:
            with srv.http() as h, h.stream("GET", f"/computers/{comp.id}/events") as r:
                for _line in r.iter_lines():
                    opened.set()
                    if stop.is_set():
                        return

        stop = threading.Event()
        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert opened.wait(10)
        assert value(scrape(srv), "opencone_event_subscribers") == 1
        stop.set()
        assert client.computers.click(comp.id, x=10, y=10).status == "success"  # events: the reader hangs up
        reader.join(10)
        assert wait_until(lambda: value(scrape(srv), "opencone_event_subscribers") == 0, 10)
    finally:
        client.computers.delete(comp.id)
    assert wait_until(lambda: value(scrape(srv), "opencone_computers", kind="browser", status="ready") == 0, 10)


def test_status_shows_the_whole_server(srv: Server) -> None:
    client = srv.client()
    tenant = other_org_key(srv)
    comp = client.computers.create(kind="browser")
    theirs = httpx.post(f"{srv.base_url}/computers", json={"kind": "browser"}, timeout=60,
                        headers={"authorization": f"Bearer {tenant}"}).json()
    try:
        st = srv.http().get("/status").json()
        ids = {c["id"]: c for c in st["computers"]["list"]}
        assert {comp.id, theirs["id"]} <= set(ids)
        assert st["computers"]["by_kind"]["browser"] >= 2
        assert st["computers"]["by_org"]["org_default"] >= 1 and len(st["computers"]["by_org"]) >= 2
        assert ids[comp.id]["org_id"] == "org_default" and ids[theirs["id"]]["org_id"] != "org_default"
        browser_pool = next(p for p in st["pools"] if p["pool"] == "browser")
        assert browser_pool["floor"] == 1 and browser_pool["ready"] >= 0
        assert st["host"]["cpus"] >= 1 and 0 < st["host"]["memory_available_bytes"] <= st["host"]["memory_total_bytes"]
        assert len(st["host"]["load"]) == 3
    finally:
        client.computers.delete(comp.id)
        httpx.delete(f"{srv.base_url}/computers/{theirs['id']}", headers={"authorization": f"Bearer {tenant}"})


def test_each_server_has_its_own_registry() -> None:
    # two servers in one process (a test's, an embedding's) must not share figures
    one, two = Metrics(), Metrics()
    one.observe_action("click", 0.002, True)
    one.observe_create("browser", True, 0.01)
    text_one, text_two = one.render().decode(), two.render().decode()
    assert 'opencone_action_seconds_count{action="click"} 1.0' in text_one
    assert 'action="click"' not in text_two
    assert not [n for n in REGISTRY._names_to_collectors if n.startswith("opencone_")]  # not the global one


def test_the_action_hook_counts_every_action() -> None:
    # the hook every action runs (computers.py): a perf_counter pair and observe_action; its cost is
    # printed (bench figures are in the report, never asserted)
    m = Metrics()
    m.observe_action("click", 0.001, True)
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        s = time.perf_counter()
        m.observe_action("click", time.perf_counter() - s, True)
    per_call = (time.perf_counter() - t0) / n
    assert 'opencone_action_seconds_count{action="click"} 20001.0' in m.render().decode()
    print(f"metrics: {per_call * 1e6:.2f} us per action")
