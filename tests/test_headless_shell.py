"""Browser computers on Debian's headless shell (``OPENCONE_BROWSER_CHROMIUM_PATH``), desktops on Chromium.

The shell is the lighter build of the same Chromium (measured here: launch to first JPEG 180 against
370 ms, 192 against 318 MiB, half the CPU per page load); a desktop needs a browser with windows, so
it keeps ``OPENCONE_CHROMIUM_PATH``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from opencone.testing import Server, start_server

SHELL = "/usr/lib/chromium/chromium-headless-shell"

pytestmark = pytest.mark.skipif(not os.access(SHELL, os.X_OK),
                                reason="chromium-headless-shell is not installed (scripts/setup.sh --test installs it)")


@pytest.fixture(scope="module")
def shell_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("shell"), env={"OPENCONE_BROWSER_CHROMIUM_PATH": SHELL})
    yield srv
    srv.stop()


def product_and_agent(srv: Server, cid: str, url: str) -> tuple[str, str, str]:
    """The browser's own product, what the page reports as its user agent, and the page's title,
    through the computer's CDP endpoint."""
    with sync_playwright() as pw:
        browser = pw.chromium.connect_over_cdp(f"{srv.base_url}/computers/{cid}/cdp?token={srv.api_key}")
        try:
            product = browser.new_browser_cdp_session().send("Browser.getVersion")["product"]
            page = browser.contexts[0].pages[0]
            page.goto(url)
            return product, page.evaluate("navigator.userAgent"), page.title()
        finally:
            browser.close()


def test_browsers_run_the_shell_and_desktops_chromium(shell_server: Server, site: str) -> None:
    with shell_server.client() as client:
        browser = client.computers.create(kind="browser")
        try:
            product, agent, _ = product_and_agent(shell_server, browser.id, f"{site}/agent_form.html")
            assert product.startswith("HeadlessChrome/"), product  # the shell is what runs
            assert "HeadlessChrome" not in agent and "Chrome/" in agent  # stealth's user agent still applies
            # the REST side works on it as on Chromium
            nav = client.computers.navigate(browser.id, url=f"{site}/agent_form.html")
            assert nav.status == "success", nav.error_message
            shot = client.computers.screenshot(browser.id, base64=True)
            assert shot.status == "success", shot.error_message
        finally:
            client.computers.delete(browser.id)

        desktop = client.computers.create(kind="desktop")
        try:
            product, _, title = product_and_agent(shell_server, desktop.id, f"{site}/agent_form.html")
            assert product.startswith("Chrome/"), product
            assert title
        finally:
            client.computers.delete(desktop.id)


@pytest.mark.parametrize("where", ["nothing-here", "."])  # no file at all, and a directory (executable too)
def test_a_browser_path_that_is_no_program_stops_the_start(tmp_path: Path, where: str) -> None:
    with pytest.raises(RuntimeError) as failed:
        started = start_server(tmp_path, env={"OPENCONE_BROWSER_CHROMIUM_PATH": str(tmp_path / where)}, timeout=30)
        started.stop()  # (it should not have started: no server is left behind when it did)
    assert "bad setting: OPENCONE_BROWSER_CHROMIUM_PATH" in str(failed.value)
    assert "not an executable file" in str(failed.value)
