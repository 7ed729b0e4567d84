"""The CDP endpoint: Playwright and Puppeteer drive a computer's own browser.

Clients connect through ``/computers/{id}/cdp`` (Playwright's http form, which
first fetches ``/cdp/json/version/``) or ``/computers/{id}/ws`` (a WebSocket
URL, Puppeteer's ``browserWSEndpoint``), with ``?token=`` or a Bearer header,
while the REST API keeps working on the same computer.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tzafon
from conftest import Server, page_state, wait_until
from playwright.sync_api import Browser, Playwright, sync_playwright
from playwright.sync_api import Error as PlaywrightError
from tzafon import Lightcone
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from opencone.testing import start_server

NODE_DIR = Path(__file__).with_name("node")


@pytest.fixture(scope="module")
def pw() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture
def comp_id(client: Lightcone) -> Iterator[str]:
    comp = client.computers.create(kind="browser")
    yield comp.id
    try:
        client.computers.delete(comp.id)
    except tzafon.NotFoundError:
        pass


def cdp_url(server: Server, cid: str, key: str | None = None) -> str:
    return f"{server.base_url}/computers/{cid}/cdp?token={key or server.api_key}"


def ws_url(server: Server, cid: str, key: str | None = None) -> str:
    return f"ws{server.base_url[4:]}/computers/{cid}/ws?token={key or server.api_key}"


def state(client: Lightcone, cid: str) -> dict[str, Any]:
    result = client.computers.html(cid)
    assert result.status == "success", result.error_message
    return page_state(result.result["html_content"])


def other_org_key(server: Server) -> str:
    out = subprocess.run([sys.executable, "-m", "opencone", "keys", "create", "--new-org", "cdp-other",
                          "--name", "cdp-test", "--data-dir", str(server.data_dir)],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


class Raw:
    """A bare CDP client on one WebSocket: numbered commands, answers by id."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.next_id = 0

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.conn.send(json.dumps(msg))
        while True:
            answer = json.loads(self.conn.recv(timeout=10))
            if answer.get("id") == self.next_id:
                return answer


# -- discovery and refusal ------------------------------------------------------------------------
def test_json_version_points_back_at_the_proxy(server: Server, comp_id: str) -> None:
    r = httpx.get(f"{server.base_url}/computers/{comp_id}/cdp/json/version/", params={"token": server.api_key})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["Browser"].startswith("Chrome/") and body["Protocol-Version"] == "1.3"
    assert body["webSocketDebuggerUrl"] == f"ws{server.base_url[4:]}/computers/{comp_id}/cdp?token={server.api_key}"
    # with a Bearer header the URL carries no key (the client sends the header again)
    with server.http() as h:
        body = h.get(f"/computers/{comp_id}/cdp/json/version").json()
    assert body["webSocketDebuggerUrl"] == f"ws{server.base_url[4:]}/computers/{comp_id}/cdp"
    assert httpx.get(f"{server.base_url}/computers/{comp_id}/cdp/json/version/").status_code == 401


def test_websockets_are_not_compressed_unless_configured(server: Server, comp_id: str, tmp_path: Path) -> None:
    """A client offering permessage-deflate (websockets and Playwright do) gets plain frames: on
    loopback or a LAN compression only costs both ends CPU (the server's halved without it, measured);
    ``OPENCONE_WS_COMPRESSION=true`` grants it, for a client across a slow link."""
    def extensions(srv: Server, cid: str) -> str | None:
        with connect(ws_url(srv, cid), compression="deflate", open_timeout=10) as conn:
            assert "Chrome/" in Raw(conn).send("Browser.getVersion")["result"]["product"]
            return conn.response.headers.get("Sec-WebSocket-Extensions")

    assert extensions(server, comp_id) is None
    compressing = start_server(tmp_path, env={"OPENCONE_WS_COMPRESSION": "true", "OPENCONE_POOL_SIZE": "0"})
    try:
        with compressing.client() as client:
            cid = client.computers.create(kind="browser").id
            assert (extensions(compressing, cid) or "").startswith("permessage-deflate")
            client.computers.delete(cid)
    finally:
        compressing.stop()


def test_plain_get_on_ws_is_a_bad_request(client: Lightcone, comp_id: str) -> None:
    with pytest.raises(tzafon.BadRequestError) as err:
        client.computers.retrieve_ws(comp_id)
    assert "WebSocket endpoint" in err.value.body["detail"]


def test_bad_keys_and_other_organisations_are_refused(server: Server, comp_id: str) -> None:
    plain = f"ws{server.base_url[4:]}/computers/{comp_id}/ws"
    for url, status in ((plain, 401), (plain + "?token=wrong", 401),
                        (ws_url(server, comp_id, other_org_key(server)), 404),
                        (ws_url(server, "comp_nope"), 404)):
        with pytest.raises(InvalidStatus) as err:
            connect(url, open_timeout=10)
        assert err.value.response.status_code == status, url
        assert json.loads(err.value.response.body)["status"] == status


def test_dangerous_commands_are_refused(server: Server, client: Lightcone, comp_id: str) -> None:
    with connect(ws_url(server, comp_id), max_size=None, open_timeout=10) as conn:
        raw = Raw(conn)
        assert raw.send("Browser.getVersion")["result"]["product"].startswith(("Chrome/", "HeadlessChrome/"))
        assert raw.send("Browser.close") == {"id": raw.next_id, "result": {}}  # pretended, not done
        assert "not allowed" in raw.send("Browser.crash")["error"]["message"]
        assert "not allowed" in raw.send("Tethering.bind", {"port": 9999})["error"]["message"]
        assert "not allowed" in raw.send("Target.setRemoteLocations", {"locations": []})["error"]["message"]
        created = raw.send("Target.createTarget", {"url": "file:///etc/passwd"})
        assert "only" in created["error"]["message"] and "file:" in created["error"]["message"]
        unknown = raw.send("Target.closeTarget", {"targetId": "0123456789ABCDEF0123456789ABCDEF"})
        assert "not part of this computer" in unknown["error"]["message"]
        own_proxy = raw.send("Target.createBrowserContext", {"proxyServer": "http://127.0.0.1:9"})
        assert "change-proxy" in own_proxy["error"]["message"]
        picked = raw.send("DOM.setFileInputFiles", {"files": ["/etc/passwd"], "nodeId": 1})
        assert "setFileInputFiles" in picked["error"]["message"]
        [page] = [t for t in raw.send("Target.getTargets")["result"]["targetInfos"] if t["type"] == "page"]
        session = raw.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})
        sid = session["result"]["sessionId"]
        nav = raw.send("Page.navigate", {"url": "file:///etc/hostname"}, session=sid)
        assert nav["error"]["code"] == -32000 and nav["sessionId"] == sid
        assert raw.send("Runtime.evaluate", {"expression": "1 + 1"}, session=sid)["result"]["result"]["value"] == 2
    assert client.computers.retrieve(comp_id).status != "terminated"
    assert client.computers.screenshot(comp_id).status == "success"


# -- Playwright -------------------------------------------------------------------------------------
def fill_and_check(browser: Browser, client: Lightcone, cid: str, site: str, text: str) -> None:
    page = browser.contexts[0].pages[0]
    page.goto(f"{site}/playground.html")
    page.fill("#input", text)
    assert state(client, cid)["input"] == text  # the REST API sees what CDP did


def test_playwright_over_the_http_endpoint(pw: Playwright, server: Server, client: Lightcone, comp_id: str,
                                           site: str) -> None:
    browser = pw.chromium.connect_over_cdp(cdp_url(server, comp_id))
    try:
        fill_and_check(browser, client, comp_id, site, "filled over cdp")
    finally:
        browser.close()


def test_playwright_over_the_ws_url(pw: Playwright, server: Server, client: Lightcone, comp_id: str,
                                    site: str) -> None:
    browser = pw.chromium.connect_over_cdp(ws_url(server, comp_id))
    try:
        fill_and_check(browser, client, comp_id, site, "filled over ws")
    finally:
        browser.close()


def test_playwright_with_a_bearer_header(pw: Playwright, server: Server, client: Lightcone, comp_id: str,
                                         site: str) -> None:
    browser = pw.chromium.connect_over_cdp(f"{server.base_url}/computers/{comp_id}/cdp",
                                           headers={"Authorization": f"Bearer {server.api_key}"})
    try:
        fill_and_check(browser, client, comp_id, site, "filled with a header")
    finally:
        browser.close()


def test_rest_actions_work_while_attached_and_new_pages_are_tabs(
        pw: Playwright, server: Server, client: Lightcone, comp_id: str, site: str) -> None:
    browser = pw.chromium.connect_over_cdp(cdp_url(server, comp_id))
    try:
        page = browser.contexts[0].pages[0]
        page.goto(f"{site}/playground.html")
        assert client.computers.click(comp_id, x=110, y=70).status == "success"  # the button
        assert page.evaluate("state.clicks") == 1  # CDP sees what REST did
        assert client.computers.type(comp_id, text="x").status == "success"
        extra = browser.contexts[0].new_page()
        extra.goto(f"{site}/page2.html")

        def listed() -> list[dict[str, Any]]:
            return client.computers.tabs.list(comp_id).result["tabs"]

        assert wait_until(lambda: any(t["url"].endswith("/page2.html") for t in listed())), listed()
        assert len(listed()) == 2
    finally:
        browser.close()


def test_rest_navigates_take_turns_with_a_cdp_clients_gotos(
        pw: Playwright, server: Server, client: Lightcone, comp_id: str, site: str) -> None:
    """A REST navigate right after a CDP client's own goto (an agent that mixes both): the server's
    Playwright may not have heard of the client's navigation yet, and took it for one that interrupted
    its own ("interrupted by another navigation"); it catches up first (drivers/chromium/computer.py)."""
    browser = pw.chromium.connect_over_cdp(cdp_url(server, comp_id))
    try:
        page = browser.contexts[0].pages[0]
        for i in range(40):
            page.goto(f"{site}/page2.html?cdp={i}", wait_until="load")
            rest = f"{site}/playground.html?rest={i}"
            result = client.computers.navigate(comp_id, url=rest)
            assert result.status == "success", f"turn {i}: {result.error_message}"
            page.wait_for_url(rest)  # this client hears of the REST navigate before its next goto
    finally:
        browser.close()


def test_closing_the_client_leaves_the_computer_alive(pw: Playwright, server: Server, client: Lightcone,
                                                     comp_id: str, site: str) -> None:
    browser = pw.chromium.connect_over_cdp(cdp_url(server, comp_id))
    browser.contexts[0].pages[0].goto(f"{site}/playground.html")
    browser.close()
    time.sleep(0.3)
    assert client.computers.retrieve(comp_id).status != "terminated"
    assert client.computers.click(comp_id, x=110, y=70).status == "success"
    assert state(client, comp_id)["clicks"] == 1
    again = pw.chromium.connect_over_cdp(cdp_url(server, comp_id))  # and a new client can attach
    try:
        assert again.contexts[0].pages[0].evaluate("state.clicks") == 1
    finally:
        again.close()


def test_deleting_the_computer_disconnects_the_client(pw: Playwright, server: Server, client: Lightcone) -> None:
    cid = client.computers.create(kind="browser").id
    browser = pw.chromium.connect_over_cdp(cdp_url(server, cid))
    page = browser.contexts[0].pages[0]
    gone: list[bool] = []
    browser.on("disconnected", lambda _b: gone.append(True))
    with connect(ws_url(server, cid), open_timeout=10) as raw:
        client.computers.delete(cid)
        with pytest.raises(ConnectionClosed) as err:
            while True:
                raw.recv(timeout=10)
        assert err.value.rcvd is not None and err.value.rcvd.code == 1001
        assert cid in err.value.rcvd.reason and "deleted" in err.value.rcvd.reason
    deadline = time.monotonic() + 10
    while not gone and time.monotonic() < deadline:
        with contextlib.suppress(PlaywrightError):
            page.wait_for_timeout(50)  # a call into Playwright lets the sync API deliver the event
    assert gone and not browser.is_connected()
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(server, cid), open_timeout=10)
    assert refused.value.response.status_code == 409


def test_cdp_traffic_counts_as_activity(server: Server, client: Lightcone) -> None:
    cid = client.computers.create(kind="browser", inactivity_timeout_seconds=2).id
    try:
        with connect(ws_url(server, cid), open_timeout=10) as conn:
            raw = Raw(conn)
            for _ in range(10):  # 4 s of commands: twice the idle timeout
                raw.send("Browser.getVersion")
                time.sleep(0.4)
            assert client.computers.retrieve(cid).status != "terminated"
            # silence while attached is idleness: the computer ends and the client is told
            with pytest.raises(ConnectionClosed) as err:
                conn.recv(timeout=10)
            assert "inactivity" in (err.value.rcvd.reason if err.value.rcvd else "")
    finally:
        try:
            client.computers.delete(cid)
        except tzafon.NotFoundError:
            pass


def test_a_desktop_browser_over_cdp(pw: Playwright, server: Server, client: Lightcone, site: str) -> None:
    cid = client.computers.create(kind="desktop").id
    try:
        browser = pw.chromium.connect_over_cdp(cdp_url(server, cid))
        try:
            fill_and_check(browser, client, cid, site, "filled on a desktop")
        finally:
            browser.close()
        assert client.computers.retrieve(cid).status != "terminated"
        assert server.api_key not in server.log()  # the handshake is logged with ?token= hidden
    finally:
        client.computers.delete(cid)


# -- Puppeteer --------------------------------------------------------------------------------------
def test_puppeteer_connects_to_ws(server: Server, client: Lightcone, comp_id: str, site: str) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the Puppeteer check needs it")
    if not (NODE_DIR / "node_modules" / "puppeteer-core").is_dir():
        pytest.skip("puppeteer-core is not installed; run scripts/setup.sh --test (npm ci in tests/node)")
    out = subprocess.run([node, str(NODE_DIR / "puppeteer_title.mjs"), ws_url(server, comp_id),
                          f"{site}/page2.html"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["title"] and result["pages"] == 2
    titles = [t["title"] for t in client.computers.tabs.list(comp_id).result["tabs"]]
    assert result["title"] in titles  # Puppeteer's page stays after it disconnected
    assert client.computers.retrieve(comp_id).status != "terminated"


# -- the policy on its own ----------------------------------------------------------------------------
def test_policy_rewrites_downloads_and_keeps_uploads_inside_the_computer(tmp_path: Path) -> None:
    from opencone.core.cdp_policy import CdpPolicy, relabel_error

    files = tmp_path / "files"
    files.mkdir()
    (files / "ok.txt").write_text("x")
    (files / "escape").symlink_to("/etc/passwd")
    policy = CdpPolicy(str(files))
    v = policy.check(json.dumps({"id": 1, "method": "Browser.setDownloadBehavior",
                                 "params": {"behavior": "allow", "downloadPath": "/etc/cron.d"}}))
    assert v.forward is not None and json.loads(v.forward)["params"]["downloadPath"] == str(files.resolve())
    ok = policy.check(json.dumps({"id": 2, "method": "DOM.setFileInputFiles",
                                  "params": {"files": [str(files / "ok.txt")], "nodeId": 1}}))
    assert ok.forward is not None and ok.reply is None
    for path in (str(files / "escape"), str(files / ".." / "files" / ".." / "x"), "relative.txt"):
        bad = policy.check(json.dumps({"id": 3, "method": "DOM.setFileInputFiles", "params": {"files": [path]}}))
        assert bad.reply is not None and json.loads(bad.reply)["error"]["code"] == -32000, path
    for url in ("file:///etc/passwd", "FILE:///etc/passwd", "view-source:file:///etc", "chrome://version"):
        refused = policy.check(json.dumps({"id": 4, "method": "Page.navigate", "params": {"url": url},
                                           "sessionId": "S"}))
        assert refused.reply is not None and json.loads(refused.reply)["sessionId"] == "S", url
    for url in ("https://example.com", "about:blank", "data:text/html,hi", ""):
        assert policy.check(json.dumps({"id": 5, "method": "Target.createTarget", "params": {"url": url}})).forward
    assert policy.check(b"not json").forward == b"not json"  # Chromium answers that itself
    answer = '{"id":7,"error":{"code":-32602,"message":"No target with given id found"}}'
    assert "T1 is not part of this computer" in relabel_error(answer, "T1")
    assert relabel_error('{"id":7,"result":{}}', "T1") == '{"id":7,"result":{}}'
