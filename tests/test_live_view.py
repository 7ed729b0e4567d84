"""The live view (``/live``) in a real Chromium: log in, watch, take over, hand back.

Playwright drives a second, independent Chromium that opens the live view;
what the view forwards is checked inside the computer through the REST
``html`` action (the playground page's event log).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import Server, page_state
from playwright.sync_api import Browser, Page, sync_playwright
from tzafon import Lightcone

CHROMIUM = "/usr/lib/chromium/chromium"


@pytest.fixture(scope="module")
def viewer() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield browser
        browser.close()


def state(client: Lightcone, cid: str) -> dict[str, Any]:
    result = client.computers.html(cid)
    assert result.status == "success", result.error_message
    return page_state(result.result["html_content"])


def wait_state(client: Lightcone, cid: str, check: Any, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        s = state(client, cid)
        if check(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.1)


def seq(page: Page) -> int:
    return int(page.get_attribute("#screen", "data-seq") or 0)


def view_point(page: Page, x: float, y: float) -> tuple[float, float]:
    """Where screenshot pixel (x, y) is drawn in the live view."""
    box = page.locator("#screen").bounding_box()
    assert box
    w, h = page.evaluate("() => [document.getElementById('screen').naturalWidth, "
                         "document.getElementById('screen').naturalHeight]")
    return box["x"] + x * box["width"] / w, box["y"] + y * box["height"] / h


def test_the_page_loads_without_a_key_and_loads_nothing_from_elsewhere(server: Server) -> None:
    r = httpx.get(f"{server.base_url}/live", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", r.text)
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_watch_take_over_and_hand_back(server: Server, client: Lightcone, site: str, viewer: Browser) -> None:
    comp = client.computers.create(kind="browser")
    cid = comp.id
    try:
        assert client.computers.navigate(cid, url=f"{site}/playground.html").status == "success"
        # bypass_csp: the page forbids eval, which wait_for_function needs; the page itself never evals
        page = viewer.new_page(viewport={"width": 1100, "height": 800}, bypass_csp=True)  # scaled to fit
        page.goto(f"{server.base_url}/live#{cid}")

        page.fill("#key", "not-a-key")
        page.click("#connect")
        page.wait_for_function("document.getElementById('message').textContent.includes('invalid key')")

        page.fill("#key", server.api_key)
        page.click("#connect")
        row = page.locator(f"tr[data-id='{cid}']")
        row.wait_for()
        assert "browser" in row.inner_text()
        page.wait_for_selector("#screen.live")
        page.wait_for_function("Number(document.getElementById('screen').dataset.seq) >= 1")

        # the picture follows the computer
        src = page.get_attribute("#screen", "src")
        assert client.computers.navigate(cid, url=f"{site}/page2.html").status == "success"
        page.wait_for_function("s => document.getElementById('screen').src !== s", arg=src)
        before = seq(page)
        assert client.computers.navigate(cid, url=f"{site}/playground.html").status == "success"
        page.wait_for_function(f"Number(document.getElementById('screen').dataset.seq) > {before}")
        page.wait_for_timeout(300)  # the last frames of the load

        # without take-over, a click in the view does nothing to the computer
        page.mouse.click(*view_point(page, 110, 70))
        page.wait_for_timeout(500)
        assert state(client, cid)["clicks"] == 0

        page.click("#takeover")
        page.wait_for_selector("#screen.control")
        page.mouse.click(*view_point(page, 110, 70))  # the playground's button: x 50-170, y 50-90
        s = wait_state(client, cid, lambda s: s["clicks"] >= 1)
        assert s["clicks"] == 1, s

        page.mouse.click(*view_point(page, 200, 135))  # into the text box
        page.keyboard.type("hi there")
        page.keyboard.press("Backspace")  # a special key goes as a hotkey
        s = wait_state(client, cid, lambda s: s.get("input") == "hi ther")
        assert s.get("input") == "hi ther", s
        page.keyboard.press("Control+a")  # a chord: select all, then replace it
        page.keyboard.type("X")
        s = wait_state(client, cid, lambda s: s.get("input") == "X")
        assert s.get("input") == "X", s
        assert "a+ctrl" in s["downs"], s["downs"]

        page.click("#handback")
        page.wait_for_selector("#screen:not(.control)")
        page.mouse.click(*view_point(page, 110, 70))
        page.keyboard.type("zz")
        page.wait_for_timeout(700)
        s = state(client, cid)
        assert s["clicks"] == 1 and s.get("input") == "X", s

        # the key stays for the tab's session: a reload needs no new key
        page.reload()
        page.locator(f"tr[data-id='{cid}']").wait_for()
        page.wait_for_selector("#screen.live")

        client.computers.delete(cid)
        page.wait_for_function("document.getElementById('message').textContent.includes('ended')", timeout=10000)
        page.close()
    finally:
        client.computers.delete(cid)
