"""The current Notte API, driven by the real ``notte-sdk`` client (tests/notte_clients).

``NOTTE_API_URL`` points the client at the server; after each step the test looks at the
page through the Lightcone API on the same computer, and through Playwright over the
session's ``cdp_url``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Server, wait_until
from notte_clients import ClientFailed, NotteProcess
from playwright.sync_api import sync_playwright


@pytest.fixture
def notte(server: Server, tmp_path: Path) -> Iterator[NotteProcess]:
    client = NotteProcess("sdk", server.base_url, server.api_key, tmp_path / "client.log")
    yield client
    client.close()


def _html(server: Server, cid: str) -> str:
    with server.http() as http:
        return http.post(f"/computers/{cid}/html", json={}).json()["result"]["html_content"]  # type: ignore[no-any-return]


def _log(server: Server, cid: str) -> list[str]:
    match = re.search(r"LOG(\[.*?\])END", _html(server, cid), re.S)
    assert match
    return json.loads(match.group(1))  # type: ignore[no-any-return]


def _by(obs: dict[str, Any], label: str) -> dict[str, Any]:
    return next(x for x in obs["actions"] if x["text_label"] == label)


def test_a_session_with_the_current_client(notte: NotteProcess, server: Server, site: str) -> None:
    started = notte.call("enter", idle_timeout_minutes=2, max_duration_minutes=10)  # with client.Session(...)
    sid = started["session_id"]
    assert started["status"] == "active" and started["idle_timeout_minutes"] == 2
    assert started["max_duration_minutes"] == 10 and started["closed_at"] is None
    assert started["viewer_url"] == f"{server.base_url}/live#{sid}"
    comp = server.client().computers.retrieve(sid)
    assert comp.inactivity_timeout_seconds == 120 and comp.max_lifetime_seconds == 600
    assert notte.call("status")["status"] == "active"

    assert notte.call("execute", type="goto", url=f"{site}/perception.html")["success"] is True
    assert "Perception test page" in _html(server, sid)
    obs = notte.call("observe")
    assert obs["url"] == f"{site}/perception.html" and obs["screenshot_bytes"] > 1000 and obs["bboxes"] > 10
    search, buy, link = _by(obs, "Search"), _by(obs, "Buy"), _by(obs, "Next page")
    assert search["type"] == "fill" and search["id"].startswith("I") and buy["type"] == "click"
    assert _by(obs, "Colour")["type"] == "select_dropdown_option" and _by(obs, "Agree")["type"] == "check"
    assert "Sold out" not in {x["text_label"] for x in obs["actions"]}  # disabled: nothing to do

    notte.call("execute", type="fill", id=search["id"], value="typed by notte")
    assert _log(server, sid)[-1] == "q=typed by notte"  # the input holds the value
    notte.call("execute", type="check", id=_by(obs, "Agree")["id"], value=True)
    notte.call("execute", type="click", id=buy["id"])
    assert _log(server, sid)[-2:] == ["agree=true", "buy"]
    notte.call("execute", type="click", selector="css=#shift")  # by selector
    assert _log(server, sid)[-1] == "shifted"
    failed = notte.call("execute", type="click", id="B999", raise_on_failure=False)
    assert failed["success"] is False and "B999" in failed["message"]
    with pytest.raises(ClientFailed, match="B999"):
        notte.call("execute", type="click", id="B999")

    cdp_url = notte.call("cdp_url")
    with sync_playwright() as pw:  # the session's browser, over its cdp_url
        page = pw.chromium.connect_over_cdp(cdp_url).contexts[0].pages[0]
        assert page.url == f"{site}/perception.html" and page.input_value("#q") == "typed by notte"

    notte.call("execute", type="click", id=link["id"])
    assert wait_until(lambda: "The next page" in _html(server, sid))  # the link's page loaded
    assert notte.call("scrape").startswith("# The next page")
    notte.call("execute", type="go_back")
    assert wait_until(lambda: "Perception test page" in _html(server, sid))
    notte.call("execute", type="scroll_down", amount=400)

    listed = notte.call("list")
    assert sid in [x["session_id"] for x in listed]
    ended = notte.call("exit")  # leaving the with block stops the session
    assert ended["status"] == "closed" and ended["closed_at"] and ended["close_reason"] == "manual"
    assert server.client().computers.retrieve(sid).status == "terminated"
    assert sid not in [x["session_id"] for x in notte.call("list")]  # (only active ones by default)


def test_a_stopped_session_says_so(server: Server) -> None:
    with server.http() as http:
        started = http.post("/sessions/start", json={"timeout_minutes": 4}).json()  # the alias
        sid = started["session_id"]
        assert started["idle_timeout_minutes"] == 4 and started["timeout_minutes"] == 4
        stopped = http.delete(f"/sessions/{sid}/stop", params={"close_reason": "error"}).json()
        assert stopped["status"] == "closed" and stopped["close_reason"] == "error" and stopped["closed_at"]
        again = http.delete(f"/sessions/{sid}/stop")
        assert again.status_code == 409 and "already stopped" in again.json()["detail"]
        r = http.post(f"/sessions/{sid}/page/observe", json={})
        assert r.status_code == 409 and "closed" in r.json()["detail"]
        assert http.get(f"/sessions/{sid}").json()["status"] == "closed"
        assert http.post("/sessions/start", json={"idle_timeout_minutes": 20, "max_duration_minutes": 10}
                         ).status_code == 422
        assert http.get("/sessions/comp_0000000000000000").status_code == 404
        live = http.post("/sessions/start", json={}).json()["session_id"]
    key = subprocess.run([sys.executable, "-m", "opencone", "keys", "create", "--new-org", "notte-other",
                          "--data-dir", str(server.data_dir)], capture_output=True, text=True, check=True).stdout
    with server.http(key.strip()) as other:  # another organisation's key: no such session
        assert other.get(f"/sessions/{live}").status_code == 404
        assert other.delete(f"/sessions/{live}/stop").status_code == 404
        assert other.post(f"/sessions/{live}/page/observe", json={}).status_code == 404
        assert other.get("/sessions/").json()["items"] == []
    with server.http() as http:
        assert http.delete(f"/sessions/{live}/stop").json()["status"] == "closed"
