"""The seed-era Notte API, driven by the real ``notte==1.2.1`` client (tests/notte_clients).

After each of the client's steps the test looks at the page itself, through the Lightcone
API on the same computer (a Notte session is an opencone browser computer): the link's
page loaded, the input holds the value. The server's clock is the test's to move
(``OPENCONE_TEST_CLOCK_FILE``), so the idle timeout is tested without waiting a minute.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, start_server, wait_until
from notte_clients import ClientFailed, NotteProcess


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clock") / "offset"
    path.write_text("0")
    return path


@pytest.fixture(scope="module")
def notte_server(tmp_path_factory: pytest.TempPathFactory, clock: Path) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("notte-seed"), env={"OPENCONE_TEST_CLOCK_FILE": str(clock)})
    yield srv
    srv.stop()


@pytest.fixture
def notte(notte_server: Server, tmp_path: Path) -> Iterator[NotteProcess]:
    client = NotteProcess("seed", notte_server.base_url, notte_server.api_key, tmp_path / "client.log")
    yield client
    client.close()


def _html(server: Server, cid: str) -> str:
    with server.http() as http:
        return http.post(f"/computers/{cid}/html", json={}).json()["result"]["html_content"]  # type: ignore[no-any-return]


def _log(server: Server, cid: str) -> list[str]:
    match = re.search(r"LOG(\[.*?\])END", _html(server, cid), re.S)
    assert match
    return json.loads(match.group(1))  # type: ignore[no-any-return]


def _field(server: Server, cid: str, name: str) -> Any:
    with server.http() as http:
        snap = http.post(f"/computers/{cid}/snapshot", json={"format": "json"}).json()["result"]
    return next(e for e in snap["elements"] if e.get("name") == name)


def _action(obs: dict[str, Any], description: str) -> dict[str, Any]:
    return next(x for x in obs["space"]["actions"] if x["description"] == description)


def test_the_seed_client_observes_steps_scrapes_and_closes(notte: NotteProcess, notte_server: Server,
                                                           site: str) -> None:
    started = notte.call("start", session_timeout_minutes=2)
    assert started["status"] == "active" and started["timeout_minutes"] == 2
    sid = started["session_id"]
    # the session is a browser computer of the key's organisation, with the session's idle timeout
    comp = notte_server.client().computers.retrieve(sid)
    assert comp.kind == "browser" and comp.inactivity_timeout_seconds == 120 and comp.idle_timeout_enabled
    assert sid in [c.id for c in notte_server.client().computers.list()]

    obs = notte.call("observe", url=f"{site}/perception.html")
    assert obs["url"] == f"{site}/perception.html" and obs["title"] == "Perception"
    assert "Perception test page" in _html(notte_server, sid)  # the page is there
    link, search = _action(obs, 'Follow the link "Next page"'), _action(obs, 'Fill the textbox "Search" with a value')
    assert link["id"] == "L1" and search["id"].startswith("I") and search["params"][0]["default"] == "old text"
    colour = _action(obs, 'Select an option of the combobox "Colour"')
    assert colour["params"][0]["values"] == ["Red", "Green", "Blue"]
    assert obs["space"]["special"] == [f"S{i}" for i in range(1, 9)] and obs["space"]["category"] is None
    assert _action(obs, 'Click the button "Sold out"')["status"] == "excluded"  # disabled
    assert obs["screenshot"] is None

    notte.call("step", action_id=search["id"], value="hello")
    assert _field(notte_server, sid, "Search")["value"] == "hello"  # the input holds the value
    notte.call("step", action_id=colour["id"], value="Blue")
    assert _log(notte_server, sid)[-1] == "color=b"
    buy = _action(obs, 'Click the button "Buy"')["id"]
    notte.call("step", action_id=buy)
    assert _log(notte_server, sid)[-1] == "buy"
    after = notte.call("step", action_id="L1", screenshot=True)
    assert wait_until(lambda: "The next page" in _html(notte_server, sid))  # the link's page loaded
    assert after["url"].endswith("/perception_next.html") and len(after["screenshot"]) > 1000
    assert {x["description"] for x in after["space"]["actions"]} >= {'Click the button "First"'}

    scraped = notte.call("scrape")
    assert scraped["data"]["markdown"].startswith("# The next page") and scraped["space"] is None

    back = notte.call("step", action_id="S4")  # special actions: back
    assert back["url"] == f"{site}/perception.html"
    gone = notte.call("step", action_id="S1", value=f"{site}/page2.html")  # goto
    assert gone["url"] == f"{site}/page2.html" and "Second page" in _html(notte_server, sid)

    closed = notte.call("close")
    assert closed["status"] == "closed" and closed["session_id"] == sid
    comp = notte_server.client().computers.retrieve(sid)
    assert comp.status == "terminated" and comp.termination_reason == "deleted"


def test_a_timeout_over_30_minutes_is_refused(notte: NotteProcess, notte_server: Server) -> None:
    with pytest.raises(ClientFailed, match="less than or equal to 30"):
        notte.call("start", session_timeout_minutes=31)  # the client's own check
    with httpx.Client(base_url=notte_server.base_url, timeout=30,  # and the server's
                      headers={"authorization": f"Bearer {notte_server.api_key}"}) as http:
        r = http.post("/session/start", json={"session_timeout_minutes": 31, "keep_alive": True})
    assert r.status_code == 400 and "session_timeout_minutes" in r.json()["detail"]


def test_keep_alive_false_closes_after_the_operation(notte: NotteProcess, notte_server: Server, site: str,
                                                    tmp_path: Path) -> None:
    started = notte.call("start", keep_alive=False)
    assert started["status"] == "closed"
    assert notte_server.client().computers.retrieve(started["session_id"]).status == "terminated"
    # a one-shot observe without a session makes its own and closes it
    one = NotteProcess("seed", notte_server.base_url, notte_server.api_key, tmp_path / "one-shot.log")
    with notte_server.http() as http:
        def sessions() -> dict[str, str]:
            listed = http.get("/sessions/", params={"only_active": False, "page_size": 100}).json()["items"]
            return {x["session_id"]: x["status"] for x in listed}
        before, live = sessions(), {c.id for c in notte_server.client().computers.list()}
        try:
            obs = one.call("observe", url=f"{site}/page2.html")
        finally:
            one.close()
        assert obs["title"] == "page two" and obs["space"]["actions"] == []
        made = {sid: status for sid, status in sessions().items() if sid not in before}
        assert list(made.values()) == ["closed"]
        assert {c.id for c in notte_server.client().computers.list()} == live


def test_the_idle_timeout_runs_from_the_last_access(notte: NotteProcess, notte_server: Server, clock: Path,
                                                    site: str) -> None:
    started = notte.call("start", session_timeout_minutes=1)
    sid = started["session_id"]
    notte.call("observe", url=f"{site}/page2.html")
    try:
        clock.write_text("45")
        notte.call("observe")  # 45 s idle of 60: an access, which starts the minute again
        clock.write_text("90")  # 45 s since that access
        with httpx.Client(base_url=notte_server.base_url, timeout=30,
                          headers={"authorization": f"Bearer {notte_server.api_key}"}) as http:
            status = http.get(f"/sessions/{sid}").json()  # a status read: not an access
            assert status["status"] == "active"
            time.sleep(0.6)  # (the reaper's turn)
            assert http.get(f"/sessions/{sid}").json()["status"] == "active"
            clock.write_text("106")  # 61 s since the last access
            with pytest.raises(ClientFailed, match="timed_out"):
                notte.call("observe")
            closed = notte.call("close")
        assert closed["status"] == "timed_out"
        accessed = closed["last_accessed_at"]
        comp = notte_server.client().computers.retrieve(sid)
        assert comp.status == "terminated" and comp.termination_reason == "inactivity_timeout"
        assert accessed > started["last_accessed_at"]
    finally:
        clock.write_text("0")
