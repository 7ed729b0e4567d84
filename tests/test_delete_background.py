"""DELETE answers before its computer's teardown is done; ``Server-Timing`` on every answer.

The teardown's last step is the computer's row written as terminated. This test holds SQLite's
write lock from outside (``BEGIN IMMEDIATE`` on the server's own database file), so that step
cannot happen until it lets go: a DELETE that answers meanwhile did not wait for its teardown.
An ordering, not a stopwatch: nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tzafon
from conftest import Server, start_server, wait_until
from playwright.sync_api import sync_playwright
from test_events import Subscriber

from opencone.api.server_timing import parse


def app_ms(headers: httpx.Headers | dict[str, str]) -> float:
    """The server's own time for a request, from its ``Server-Timing`` header (which must parse)."""
    value = headers.get("server-timing")
    assert value, f"no Server-Timing header in {dict(headers)}"
    timing = parse(value)
    assert "app" in timing and timing["app"] >= 0, value
    return timing["app"]


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "0"})  # every browser is a computer's
    yield srv
    srv.stop()


def row_status(db: Path, computer_id: str) -> str:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        (status,) = conn.execute("select status from computers where id = ?", (computer_id,)).fetchone()
    return str(status)


def test_delete_answers_while_its_teardown_cannot_finish(bare: Server) -> None:
    client = bare.client()
    comp = client.computers.create()
    events = Subscriber(client, comp.id)
    assert bare.chromium_pids()
    db = bare.data_dir / "opencone.db"
    lock = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        lock.execute("begin immediate")  # no write from the server gets through until the rollback below
        answer = client.computers.with_raw_response.delete(comp.id)
        assert answer.status_code == 204
        app_ms(answer.headers)
        # answered, and the teardown is still running: its row is not written yet
        assert client.computers.retrieve(comp.id).status == "terminated"
        assert events.wait_for(lambda e: e["type"] == "terminated")["reason"] == "deleted"
        # the kill needs no database: the browser goes while the row still waits
        assert wait_until(lambda: bare.chromium_pids() == set(), 4), "the browser outlived its computer"
        assert lock.execute("select status from computers where id = ?", (comp.id,)).fetchone()[0] != "terminated"
    finally:
        lock.execute("rollback")
        lock.close()
    assert wait_until(lambda: row_status(db, comp.id) == "terminated", 10)
    assert events.finish()[-1]["type"] == "terminated"
    assert client.computers.retrieve(comp.id).model_extra["termination_reason"] == "deleted"


def test_a_wave_of_deletes_frees_the_slots_at_once_and_ends_every_browser(tmp_path: Path) -> None:
    """At ``max_computers``, creates right after a wave of deletes get the freed slots (a slot is
    free from its computer's end, not from its teardown), and no browser outlives the wave."""
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "0", "OPENCONE_MAX_COMPUTERS": "3"})
    try:
        client = srv.client()
        ids = [client.computers.create().id for _ in range(3)]
        with pytest.raises(tzafon.RateLimitError):
            client.computers.create()
        for cid in ids:
            assert client.computers.with_raw_response.delete(cid).status_code == 204
        again = [client.computers.create().id for _ in range(3)]
        assert sorted(c.id for c in client.computers.list()) == sorted(again)
        for cid in again:
            client.computers.delete(cid)
        assert wait_until(lambda: srv.chromium_pids() == set(), 10), "a browser outlived its computer"
        db = srv.data_dir / "opencone.db"
        assert wait_until(lambda: all(row_status(db, cid) == "terminated" for cid in ids + again), 10)
    finally:
        srv.stop()


def test_server_timing_on_json_answers_streams_and_websockets(server: Server, cid: str, site: str) -> None:
    with server.http() as http:
        for answer in (httpx.get(f"{server.base_url}/health"), http.get("/computers"),
                       http.get(f"/computers/{cid}"), http.get("/computers/comp_nope"),
                       httpx.get(f"{server.base_url}/computers"),  # 401
                       http.post(f"/computers/{cid}/click", json={"x": 5, "y": 5}),  # a hot route (api/hot_actions.py)
                       http.post("/computers", json={"kind": "nope"})):  # 422
            assert answer.headers["content-type"].split(";")[0].endswith("json"), answer.text  # (problem+json too)
            app_ms(answer.headers)
        assert answer.status_code == 422 and answer.json()["detail"]
    # a stream gets its time to headers, and streams on as before
    events = Subscriber(server.client(), cid)
    app_ms(events.headers)
    assert server.client().computers.click(cid, x=6, y=6).status == "success"
    events.wait_for(lambda e: e["type"] == "action_completed")
    # a WebSocket (the CDP endpoint) is passed through untouched
    with sync_playwright() as pw:
        browser = pw.chromium.connect_over_cdp(f"{server.base_url}/computers/{cid}/cdp?token={server.api_key}")
        try:
            page = browser.contexts[0].pages[0]
            page.goto(f"{site}/page2.html")
            assert "Second page" in page.content()
        finally:
            browser.close()
