"""Operations and rough edges, each through a real client against a real server: GET / for a
person and for a script, `opencone status`, pool browsers that call nobody, the default display
of a desktop, a minimize that sticks, and GET /tabs right after a CDP client closed a page."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import jpeg_size, wait_until
from playwright.sync_api import sync_playwright
from prometheus_client.parser import text_string_to_metric_families
from tzafon import Lightcone

from opencone.testing import Server, start_server

FORWARDER_LOG = "opencone.drivers.proxy"


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # the default log level (info), and /metrics open to scrapers
    s = start_server(tmp_path_factory.mktemp("ops"), env={"OPENCONE_POOL_SIZE": "1", "OPENCONE_METRICS_PUBLIC": "true"})
    yield s
    s.stop()


def test_root_leads_a_person_and_a_script_somewhere(ops: Server) -> None:
    for accept in ("text/html,application/xhtml+xml,*/*;q=0.8", "*/*", ""):
        page = httpx.get(f"{ops.base_url}/", headers={"accept": accept}, timeout=10)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), accept
        assert f'href="{ops.base_url}/live"' in page.text and f'href="{ops.base_url}/docs"' in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
    info = httpx.get(f"{ops.base_url}/", headers={"accept": "application/json"}, timeout=10)
    assert info.status_code == 200 and info.headers["content-type"] == "application/json"
    body = info.json()
    assert body["name"] == "opencone" and body["version"] == ops.health()["version"]
    assert body["links"]["live"] == f"{ops.base_url}/live" and body["links"]["docs"] == f"{ops.base_url}/docs"
    for link in ("live", "docs", "openapi", "health"):  # every link it gives leads somewhere
        assert httpx.get(body["links"][link], timeout=10).status_code == 200, link
    # a hostile Host header is not echoed into the page as markup
    odd = httpx.get(f"{ops.base_url}/", headers={"host": 'x"><script>alert(1)</script>'}, timeout=10)
    assert "<script>" not in odd.text


def test_metrics_public_opens_metrics_only(ops: Server) -> None:
    open_ = httpx.get(f"{ops.base_url}/metrics", timeout=10)
    assert open_.status_code == 200
    names = {f.name for f in text_string_to_metric_families(open_.text)}
    assert {"opencone_computers", "opencone_pool_ready", "opencone_computer_creates"} <= names
    assert httpx.get(f"{ops.base_url}/status", timeout=10).status_code == 401  # it lists ids: never public


def _status(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opencone", "status", *args], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", **(env or {})})


def test_opencone_status_reads_the_running_server(ops: Server) -> None:
    client = ops.client()
    with client.computer.create(kind="browser") as comp:
        out = _status("--url", ops.base_url, "--api-key", ops.api_key, "--json")
        assert out.returncode == 0, out.stderr
        st = json.loads(out.stdout)
        assert comp.id in {c["id"] for c in st["computers"]["list"]}
        assert st["computers"]["by_kind"]["browser"] >= 1 and st["pools"][0]["pool"] == "browser"
        # the table, with the key and URL from the environment as the SDK's users have them
        table = _status(env={"LIGHTCONE_BASE_URL": ops.base_url, "TZAFON_API_KEY": ops.api_key})
        assert table.returncode == 0, table.stderr
        assert comp.id in table.stdout and "pools" in table.stdout and "free of" in table.stdout
    wrong = _status("--url", ops.base_url, "--api-key", "oc_wrong")
    assert wrong.returncode == 1 and "401" in wrong.stdout and "invalid or revoked API key" in wrong.stdout
    assert _status("--url", ops.base_url).returncode == 2  # no key at all: says so
    down = _status("--url", "http://127.0.0.1:9", "--api-key", "k")
    assert down.returncode == 1 and "cannot reach" in down.stdout


def _forwarder_lines(server: Server) -> list[str]:
    return [line for line in server.log().splitlines() if FORWARDER_LOG in line]


def test_a_pool_browser_calls_nobody(ops: Server, site: str) -> None:
    # Chromium used to try accounts.google.com (ListAccounts) and update.googleapis.com (the
    # on-device-model manifest) at start; the forwarder saw each attempt. A pool browser that has
    # idled since its launch, and after its create, has opened no connection at all.
    ops.wait_warm(1)
    time.sleep(3)  # the attempts came within about a second of a launch
    client = ops.client()
    with client.computer.create(kind="browser") as comp:
        time.sleep(2)
        proxy = ops.http().get(f"/computers/{comp.id}").json()["proxy"]
        assert proxy["connections"] == 0, proxy
        # the count is real: a page load is one connection, a refused destination another
        assert client.computers.navigate(comp.id, url=f"{site}/playground.html").status == "success"
        refused = client.computers.navigate(comp.id, url="http://10.255.255.1/")
        assert refused.status == "error" and "egress" in (refused.error_message or ""), refused.error_message
        assert ops.http().get(f"/computers/{comp.id}").json()["proxy"]["connections"] >= 2
    # a refused or failed connection is the page's business (its error, an egress_blocked event):
    # nothing of the forwarder's in the log at the default level
    assert _forwarder_lines(ops) == []


def test_a_desktop_without_a_display_is_1280_by_720(ops: Server) -> None:
    client = ops.client()
    with client.computer.create(kind="desktop") as desk:
        d = client.computers.retrieve(desk.id).model_extra["display"]
        assert (d["width"], d["height"]) == (1280, 720)
        shot = client.computers.screenshot(desk.id, base64=True).result["screenshot_url"]
        assert jpeg_size(base64.b64decode(shot.split(",", 1)[1])) == (1280, 720)
    with client.computer.create(kind="browser") as browser:  # browsers keep the SDK helpers' 1024x768
        d = client.computers.retrieve(browser.id).model_extra["display"]
        assert (d["width"], d["height"]) == (1024, 768)


_GEOMETRY = re.compile(r"^\s+(0x[0-9a-f]+) .*?(\d+)x(\d+)\+(-?\d+)\+(-?\d+)\s+\+(-?\d+)\+(-?\d+)\s*$")


def _sh(client: Lightcone, cid: str, command: str) -> str:
    ran = client.computers.exec.sync(cid, command=command, timeout_seconds=20)
    assert ran.exit_code == 0, (command, ran.stderr)
    return ran.stdout


def _children(client: Lightcone, cid: str, wid: str) -> tuple[str, list[tuple[str, int, int, int, int, int, int]]]:
    """A window's parent ("" for the root), and its children as (id, absolute x, y, width, height,
    x, y within the parent) (xwininfo -tree)."""
    out = _sh(client, cid, f"xwininfo -tree -id {wid}")
    parent = re.search(r"Parent window id: (0x[0-9a-f]+)", out)
    assert parent is not None, out
    kids = []
    for line in out.splitlines():
        m = _GEOMETRY.match(line)
        if m:
            kids.append((m[1], int(m[6]), int(m[7]), int(m[2]), int(m[3]), int(m[4]), int(m[5])))
    return parent[1] if "(the root window)" not in out.split("Parent window id:")[1].splitlines()[0] else "", kids


def _iconify_button(client: Lightcone, cid: str, wid: str) -> tuple[int, int]:
    """The centre of the openbox iconify button of the frame around window ``wid``: the frame is the
    client's ancestor just below the root; its titlebar's small square children are the buttons,
    in openbox's default layout NLIMC (icon, label, iconify, maximise, close)."""
    frame = wid
    while True:
        parent, _kids = _children(client, cid, frame)
        if not parent:
            break
        frame = parent
    _root, kids = _children(client, cid, frame)
    titlebar = min((k for k in kids if k[3] >= 50 and k[4] >= 10), key=lambda k: k[2])  # the topmost wide one
    _parent, buttons = _children(client, cid, titlebar[0])
    # the buttons of the layout; those at the titlebar's very corner are openbox's unused ones (unmapped)
    squares = sorted((b for b in buttons if b[3] == b[4] and 4 < b[3] < 40 and b[5:] != (0, 0)),
                     key=lambda b: b[1])
    assert len(squares) >= 3, buttons
    _id, x, y, w, h, _rx, _ry = squares[-3]
    return x + w // 2, y + h // 2


def _state(client: Lightcone, cid: str, wid: str) -> tuple[str, str]:
    out = _sh(client, cid, f"xprop -id {wid} WM_STATE _NET_WM_STATE")
    wm_state = re.search(r"window state: (\w+)", out)
    return (wm_state[1] if wm_state else ""), out


def test_one_click_on_minimize_sticks(ops: Server) -> None:
    client = ops.client()
    with client.computer.create(kind="desktop") as desk:
        cid = desk.id
        command = ("xterm -T other -geometry 30x5+40+420 & xdotool search --sync --onlyvisible --name '^other$' "
                   ">/dev/null; xterm -T mini -geometry 30x5+500+200 & wait")
        runner = threading.Thread(target=client.computers.exec.sync, args=(cid,), daemon=True,
                                  kwargs={"command": command, "timeout_seconds": 60})
        runner.start()
        assert wait_until(lambda: client.computers.exec.sync(
            cid, command="xdotool search --onlyvisible --name '^mini$'").exit_code == 0, 20)
        wid = hex(int(_sh(client, cid, "xdotool search --onlyvisible --name '^mini$'").split()[0]))
        other = hex(int(_sh(client, cid, "xdotool search --onlyvisible --name '^other$'").split()[0]))
        bx, by = _iconify_button(client, cid, wid)
        # focus the other terminal first (a click in its own area), so the iconify click lands on a window
        # that has not the focus: the case whose focus call after the click used to map it again
        ox, oy, _w, _h = (int(v) for v in re.findall(
            r"Absolute upper-left X:\s+(\d+).*?Absolute upper-left Y:\s+(\d+).*?Width:\s+(\d+).*?Height:\s+(\d+)",
            _sh(client, cid, f"xwininfo -id {other}"), re.S)[0])
        assert client.computers.click(cid, x=ox + 20, y=oy + 20).status == "success"
        active = lambda: int(_sh(client, cid, "xdotool getactivewindow").split()[0])  # noqa: E731
        assert wait_until(lambda: active() == int(other, 16), 5)
        assert _state(client, cid, wid)[0] == "Normal"
        assert client.computers.click(cid, x=bx, y=by).status == "success"
        assert wait_until(lambda: _state(client, cid, wid)[0] == "Iconic", 5), _state(client, cid, wid)
        time.sleep(1)
        state, raw = _state(client, cid, wid)
        assert state == "Iconic" and "_NET_WM_STATE_HIDDEN" in raw, raw
        # a click in a window's own area still focuses it
        assert client.computers.click(cid, x=ox + 20, y=oy + 20).status == "success"
        assert wait_until(lambda: active() == int(other, 16), 5)


def test_a_page_closed_over_cdp_leaves_the_tabs_at_once(ops: Server) -> None:
    client = ops.client()
    with client.computer.create(kind="browser") as comp, sync_playwright() as pw:
        browser = pw.chromium.connect_over_cdp(f"{ops.base_url}/computers/{comp.id}/cdp?token={ops.api_key}")
        try:
            context = browser.contexts[0]
            listed: list[Any] = []
            for _ in range(20):
                page = context.new_page()
                assert wait_until(lambda: len(client.computers.tabs.list(comp.id).result["tabs"]) == 2, 10)
                page.close()
                tabs = client.computers.tabs.list(comp.id).result["tabs"]  # at once: no wait
                listed.append(len(tabs))
            assert listed == [1] * 20, listed
        finally:
            browser.close()
