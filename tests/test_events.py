"""``GET /computers/{id}/events``: the SSE stream of everything that happens on a computer.

Subscribers read the stream as SDK users do, with
``client.computers.with_streaming_response.retrieve_events(id)`` and
``iter_lines()`` in a background thread. A second server with a tiny queue,
a short heartbeat and a 2 s ``expiring_soon`` threshold covers dropping,
heartbeats and expiry.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import Server, start_server
from tzafon import Lightcone

Event = dict[str, Any]


class Subscriber:
    """One event stream read by the official SDK in a thread; ``events`` are the parsed ``data:`` lines."""

    def __init__(self, client: Lightcone, computer_id: str) -> None:
        self.lines: list[str] = []
        self.events: list[Event] = []
        self.headers: dict[str, str] = {}
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._client, self._cid = client, computer_id
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.wait_for(lambda e: e["type"] == "subscribed")

    def _run(self) -> None:
        try:
            with self._client.computers.with_streaming_response.retrieve_events(self._cid) as resp:
                self.headers = dict(resp.headers)
                for line in resp.iter_lines():
                    self.lines.append(line)
                    if line.startswith("data:"):
                        self.events.append(json.loads(line[5:]))
        except BaseException as exc:  # reported by the test that reads it
            self.error = exc
        finally:
            self.done.set()

    def wait_for(self, pred: Callable[[Event], bool], timeout: float = 20) -> Event:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in list(self.events):
                if pred(ev):
                    return ev
            if self.done.is_set() and not any(pred(ev) for ev in self.events):
                break
            time.sleep(0.02)
        raise AssertionError(f"no such event; got {[e['type'] for e in self.events]} (error: {self.error!r})")

    def finish(self, timeout: float = 20) -> list[Event]:
        """Wait for the stream to end (the computer ended) and return its events."""
        assert self.done.wait(timeout), f"the stream did not end; got {[e['type'] for e in self.events]}"
        assert self.error is None, repr(self.error)
        return self.events

    def of(self, type_: str) -> list[Event]:
        return [e for e in self.events if e["type"] == type_]


def sequenced(events: list[Event]) -> list[Event]:
    return [e for e in events if "seq" in e]


def check_framing(lines: list[str]) -> None:
    """Every non-empty line is ``id: <int>`` or ``data: <JSON object with a type>``; no comment-only blocks."""
    for line in lines:
        if not line:
            continue
        field, _, value = line.partition(": ")
        assert field in ("id", "data"), line[:200]
        if field == "id":
            assert value.isdigit(), line
        else:
            obj = json.loads(value)
            assert isinstance(obj, dict) and isinstance(obj.get("type"), str), line[:200]
            assert obj["timestamp"].endswith("Z")


@pytest.fixture
def comp_id(client: Lightcone) -> Iterator[str]:
    cid = client.computers.create().id
    yield cid
    try:
        client.computers.delete(cid)
    except Exception:
        pass


def test_actions_exec_and_the_end_arrive_in_order(client: Lightcone, comp_id: str, site: str) -> None:
    sub = Subscriber(client, comp_id)
    assert sub.headers["content-type"].startswith("text/event-stream")
    assert sub.headers["cache-control"] == "no-cache" and sub.headers["x-accel-buffering"] == "no"

    nav = client.computers.navigate(comp_id, url=f"{site}/playground.html")
    click = client.computers.click(comp_id, x=110, y=70, extra_body={"request_id": "my-click"})
    shot = client.computers.screenshot(comp_id)
    res = client.computers.exec.sync(comp_id, command="printf hello; printf oops >&2; exit 3",
                                     extra_body={"request_id": "my-exec"})
    assert res.exit_code == 3
    dbg = client.computers.debug(comp_id, command="echo from-debug")
    client.computers.delete(comp_id)
    events = sub.finish()

    check_framing(sub.lines)
    seqs = [e["seq"] for e in sequenced(events)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert events[-1]["type"] == "terminated" and events[-1]["reason"] == "deleted"
    assert all(e["computer_id"] == comp_id for e in events)

    def pair(request_id: str) -> tuple[int, int, Event, Event]:
        idx = {e["type"]: i for i, e in enumerate(events) if e.get("request_id") == request_id}
        return idx["action_requested"], idx["action_completed"], events[idx["action_requested"]], \
            events[idx["action_completed"]]

    req_i, done_i, req, done = pair(nav.request_id)
    assert req["kind"] == "navigate" and req["action"]["url"] == f"{site}/playground.html"
    assert done["status"] == "success"
    navigated = [i for i, e in enumerate(events) if e["type"] == "navigated" and e["url"].endswith("/playground.html")]
    assert navigated and req_i < navigated[0] < done_i

    req_i2, done_i2, req, done = pair("my-click")
    assert click.request_id == "my-click" and done_i < req_i2 < done_i2
    assert req["action"] == {"kind": "click", "at": {"x": 110.0, "y": 70.0}, "button": "left", "count": 1}

    _, done_i3, _, done = pair(shot.request_id)
    assert done["result"]["screenshot_url"] == shot.result["screenshot_url"] == done["image_url"]

    # exec: started, output chunks (base64, split by stream), exit; in that order, after the screenshot
    mine = [e for e in events if e.get("request_id") == "my-exec"]
    assert [e["type"] for e in mine][0] == "exec_started" and mine[-1]["type"] == "exec_exit"
    assert events.index(mine[0]) > done_i3
    assert mine[0]["command"].startswith("printf hello") and mine[-1]["exit_code"] == 3
    out = {False: b"", True: b""}
    for e in mine[1:-1]:
        assert e["type"] == "exec_output"
        out[e["is_stderr"]] += base64.b64decode(e["data"])
    assert out == {False: b"hello", True: b"oops"}

    # the debug action is an action whose command's output also streams, under the action's request_id
    dbg_events = [e["type"] for e in events if e.get("request_id") == dbg.request_id]
    assert dbg_events[0] == "action_requested" and dbg_events[-1] == "action_completed"
    assert {"exec_started", "exec_output", "exec_exit"} <= set(dbg_events)
    assert next(e for e in events if e.get("request_id") == dbg.request_id and e["type"] == "action_completed")[
        "stdout"] == "from-debug\n"


def test_two_subscribers_get_the_same_events(client: Lightcone, comp_id: str) -> None:
    first, second = Subscriber(client, comp_id), Subscriber(client, comp_id)
    for i in range(5):
        client.computers.click(comp_id, x=10 + i, y=10)
    client.computers.batch(comp_id, actions=[{"type": "wait", "ms": 1}, {"type": "screenshot"}])
    client.computers.delete(comp_id)
    a, b = sequenced(first.finish()), sequenced(second.finish())
    assert a == b
    assert [e["type"] for e in a].count("action_completed") == 7
    assert a[-1]["type"] == "terminated"


def test_replay_from_a_seq_and_after_last_event_id(server: Server, client: Lightcone, comp_id: str) -> None:
    client.computers.click(comp_id, x=5, y=5)

    def first_events(n: int, **kw: Any) -> list[Event]:
        got: list[Event] = []
        with server.http() as http, http.stream("GET", f"/computers/{comp_id}/events", **kw) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data:") and "seq" in (ev := json.loads(line[5:])):
                    got.append(ev)
                    if len(got) == n:
                        return got
        raise AssertionError(got)

    created, requested = first_events(2, params={"from": 1})
    assert created["type"] == "created" and created["seq"] == 1 and created["kind"] == "browser"
    assert requested["type"] == "action_requested" and requested["seq"] == 2
    (completed,) = first_events(1, headers={"last-event-id": "2"})
    assert completed["type"] == "action_completed" and completed["seq"] == 3


def test_auth_token_other_organisations_and_ended_computers(server: Server, client: Lightcone) -> None:
    cid = client.computers.create().id
    url = f"{server.base_url}/computers/{cid}/events"
    with httpx.stream("GET", url, params={"token": server.api_key}, timeout=30) as resp:
        assert resp.status_code == 200
        first = next(line for line in resp.iter_lines() if line.startswith("data:"))
        assert json.loads(first[5:])["type"] == "subscribed"

    missing = httpx.get(url, timeout=30)
    assert missing.status_code == 401 and missing.json()["status"] == 401
    assert httpx.get(url, params={"token": "wrong"}, timeout=30).status_code == 401

    other_key = subprocess.run(
        [sys.executable, "-m", "opencone", "keys", "create", "--new-org", "other-events",
         "--data-dir", str(server.data_dir)], capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()
    for params, headers in (({"token": other_key}, {}), ({}, {"authorization": f"Bearer {other_key}"})):
        resp = httpx.get(url, params=params, headers=headers, timeout=30)
        assert resp.status_code == 404 and resp.json()["status"] == 404
    assert server.http().get("/computers/comp_nope/events").status_code == 404

    client.computers.delete(cid)
    # a terminated computer: 200, its one terminated event, then the stream closes
    ended = server.http().get(f"/computers/{cid}/events")
    assert ended.status_code == 200 and ended.headers["content-type"].startswith("text/event-stream")
    datas = [json.loads(line[5:]) for line in ended.text.splitlines() if line.startswith("data:")]
    assert [d["type"] for d in datas] == ["terminated"] and datas[0]["reason"] == "deleted"


def test_a_popup_is_reported_as_a_new_tab(client: Lightcone, comp_id: str, site: str) -> None:
    client.computers.navigate(comp_id, url=f"{site}/playground.html")
    sub = Subscriber(client, comp_id)
    first_tab = client.computers.tabs.list(comp_id).result["tabs"][0]["tab_id"]
    client.computers.click(comp_id, x=420, y=58)  # window.open('/page2.html')
    opened = sub.wait_for(lambda e: e["type"] == "tab_opened")
    assert opened["tab_id"] != first_tab
    # the popup may have its URL by the time it is registered; otherwise a navigated event follows
    if not opened["url"].endswith("/page2.html"):
        sub.wait_for(lambda e: e["type"] == "navigated" and e["tab_id"] == opened["tab_id"]
                     and e["url"].endswith("/page2.html"))
    client.computers.tabs.delete(opened["tab_id"], id=comp_id)
    sub.wait_for(lambda e: e["type"] == "tab_closed" and e["tab_id"] == opened["tab_id"])


# -- a server with a tiny queue, a fast heartbeat and a 2 s expiry warning ------------------
@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("events"), env={
        "OPENCONE_EVENTS_QUEUE_SIZE": "50", "OPENCONE_EVENTS_HEARTBEAT_SECONDS": "1",
        "OPENCONE_EXPIRING_SOON_SECONDS": "2",
    })
    yield srv
    srv.stop()


def test_expiring_soon_heartbeats_and_the_end_by_lifetime(tight: Server) -> None:
    client = tight.client()
    cid = client.computers.create(max_lifetime_seconds=6).id
    sub = Subscriber(client, cid)
    events = sub.finish(timeout=30)
    check_framing(sub.lines)
    warn = sub.of("expiring_soon")
    assert len(warn) == 1 and warn[0]["reason"] == "max_lifetime_reached"
    assert 0 <= warn[0]["seconds_left"] <= 2.01 and warn[0]["expires_at"].endswith("Z")
    assert len(sub.of("heartbeat")) >= 2 and "seq" not in sub.of("heartbeat")[0]
    assert events[-1]["type"] == "terminated" and events[-1]["reason"] == "max_lifetime_reached"


def _stalled_subscriber(server: Server, cid: str) -> socket.socket:
    """An HTTP/1.0 event stream (no chunking) whose reader reads nothing, with a small receive buffer."""
    u = urlsplit(server.base_url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.connect((u.hostname, u.port))
    sock.sendall(f"GET /computers/{cid}/events HTTP/1.0\r\nHost: {u.netloc}\r\n"
                 f"Authorization: Bearer {server.api_key}\r\n\r\n".encode())
    return sock


def _read_all(sock: socket.socket, timeout: float = 60) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_stalled_subscriber_does_not_slow_the_computer(tight: Server) -> None:
    client = tight.client()
    cid = client.computers.create().id

    def clicks(n: int) -> float:
        start = time.monotonic()
        for i in range(n):
            assert client.computers.click(cid, x=10 + i % 50, y=10).status == "success"
        return time.monotonic() - start

    clicks(20)  # warm up
    baseline = clicks(150)
    sock = _stalled_subscriber(tight, cid)
    try:
        time.sleep(0.5)
        # ~40 MB of output: far beyond the socket buffers and the 50-event queue of the stalled reader
        start = time.monotonic()
        lines = list(client.computers.exec.create(cid, command="yes abcdefghijklmnop | head -c 40000000"))
        exec_time = time.monotonic() - start
        assert lines[-1].type == "exit" and lines[-1].code == 0
        stalled = clicks(150)
        assert stalled < baseline * 3 + 3, (baseline, stalled)
        assert exec_time < 30
        client.computers.delete(cid)
        raw = _read_all(sock)
    finally:
        sock.close()

    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0]
    events = [json.loads(line[5:]) for line in body.decode().split("\n") if line.startswith("data:")]
    subscribed, final = events[0], events[-1]
    assert subscribed["type"] == "subscribed" and final["type"] == "terminated"
    dropped = [e for e in events if e["type"] == "dropped"]
    assert dropped and all(e["count"] > 0 for e in dropped)
    # nothing is lost silently: what arrived plus what was reported dropped is every event since subscribing
    received = [e for e in events if "seq" in e]
    assert len(received) + sum(e["count"] for e in dropped) == final["seq"] - subscribed["last_seq"]
    seqs = [e["seq"] for e in received]
    assert seqs == sorted(seqs)


def test_server_stop_ends_streams_at_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "0"})
    try:
        client = srv.client()
        cid = client.computers.create().id
        sub = Subscriber(client, cid)
        srv.stop()
        events = sub.finish(timeout=15)
        # a clean end, sent before uvicorn's graceful timeout would have cut the stream off without one
        assert events[-1]["type"] == "terminated" and events[-1]["reason"] == "server_shutdown"
    finally:
        srv.stop()
