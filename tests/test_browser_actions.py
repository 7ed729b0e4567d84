"""Every action endpoint of a browser computer, through the official SDK.

Each test asserts what the page really saw (its event log is written into the
page's HTML by tests/pages/playground.html), not only that a call returned.
"""

from __future__ import annotations

import base64
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Server, free_port, jpeg_size, page_state
from tzafon import Lightcone
from tzafon.lib.computer_session import ComputerSession


@pytest.fixture
def comp(client: Lightcone, site: str) -> Iterator[ComputerSession]:
    with client.computer.create(kind="browser") as session:
        result = session.navigate(f"{site}/playground.html")
        assert result.status == "success", result.error_message
        yield session


def state(session: ComputerSession) -> dict[str, Any]:
    result = session.html()
    assert result.status == "success", result.error_message
    return page_state(session.get_html_content(result))


def test_click_runs_the_buttons_handler(comp: ComputerSession) -> None:
    result = comp.click(110, 70)
    assert result.status == "success"
    assert result.executed_tab_id
    assert state(comp)["clicks"] == 1
    comp.click(110, 70)
    assert state(comp)["clicks"] == 2


def test_held_keys_reach_clicks_and_a_press_without_coordinates_follows_the_last_click(
        client: Lightcone, site: str) -> None:
    # a plain click goes on opencone's own CDP connection; with a key held it goes through
    # Playwright, which adds the key; a later press without coordinates lands where the click was
    with client.computer.create(kind="browser") as comp:
        assert comp.navigate(f"{site}/playground.html").status == "success"
        assert comp.click(110, 70).status == "success"
        assert comp.key_down("shift").status == "success"
        assert comp.click(110, 70).status == "success"
        assert comp.key_up("shift").status == "success"
        assert comp.click(110, 70).status == "success"
        assert state(comp)["clickmods"] == ["", "shift", ""]
        assert comp.click(300, 450).status == "success"
        res = client.computers.batch(comp.id, actions=[{"type": "mouse_down"}, {"type": "mouse_up"}])
        assert res["status"] == "success", res
        s = state(comp)
        assert s["mousedowns"][-1] == [0, 300, 450] and s["mouseups"][-1] == [0, 300, 450]


def test_double_and_right_click(comp: ComputerSession) -> None:
    assert comp.double_click(600, 600).status == "success"
    assert comp.right_click(600, 600).status == "success"
    s = state(comp)
    assert s["dblclicks"] == 1
    assert s["contextmenus"] == 1
    assert [m[0] for m in s["mousedowns"]] == [0, 0, 2]  # two left presses, then the right button


def test_type_text_lands_in_the_input(comp: ComputerSession) -> None:
    comp.click(200, 135)
    assert comp.type("Hello, wörld 42! ✓ 日本").status == "success"
    s = state(comp)
    assert s["input"] == "Hello, wörld 42! ✓ 日本"
    assert s["downs"][:5] == ["H", "e", "l", "l", "o"]  # real key events, not only an input event


def test_type_newlines_into_a_textarea(comp: ComputerSession) -> None:
    comp.click(200, 200)
    comp.type("one\ntwo")
    assert state(comp)["area"] == "one\ntwo"


def test_hotkey_and_keys_are_case_insensitive_with_aliases(comp: ComputerSession) -> None:
    comp.click(200, 135)
    assert comp.hotkey("ctrl", "a").status == "success"
    assert comp.hotkey(["SHIFT", "Tab"]).status == "success"
    assert comp.key_down("Control").status == "success"
    assert comp.key_up("CONTROL").status == "success"
    assert comp.hotkey("esc").status == "success"
    assert comp.hotkey("Return").status == "success"
    assert comp.hotkey("arrowleft").status == "success"
    downs = state(comp)["downs"]
    assert "a+ctrl" in downs
    assert "Tab+shift" in downs


def test_named_keys_reach_the_page(comp: ComputerSession) -> None:
    comp.click(600, 600)
    for key in ("ESC", "enter", "ArrowUp", "pgdn", "F13", "f24", "cmd", "Super", "option", "space", "Backspace"):
        result = comp.hotkey(key)
        assert result.status == "success", (key, result.error_message)
    downs = state(comp)["downs"]
    assert downs[:5] == ["Escape", "Enter", "ArrowUp", "PageDown", "F13"]
    assert "F24" in downs
    assert "Meta+meta" in downs
    assert "Alt+alt" in downs
    assert " " in downs
    assert "Backspace" in downs


def test_scroll_moves_the_page(comp: ComputerSession) -> None:
    assert comp.scroll(dx=0, dy=600, x=500, y=400).status == "success"
    s = state(comp)
    assert s["scrollY"] >= 500
    comp.scroll(dx=300, dy=0, x=500, y=400)
    assert state(comp)["scrollX"] >= 250
    comp.scroll(dx=0, dy=-600, x=500, y=400)
    assert state(comp)["scrollY"] < s["scrollY"]


def test_drag_moves_the_box(comp: ComputerSession) -> None:
    assert comp.drag(80, 330, 400, 500).status == "success"
    assert state(comp)["drag"] == [400, 500]


def test_mouse_down_and_up(comp: ComputerSession) -> None:
    assert comp.mouse_down(80, 330).status == "success"
    assert comp.mouse_up(300, 450).status == "success"
    s = state(comp)
    assert s["mousedowns"][-1] == [0, 80, 330]
    assert s["mouseups"][-1] == [0, 300, 450]
    assert s["drag"] == [300, 450]


def test_screenshot_url_is_fetchable_without_auth(comp: ComputerSession) -> None:
    result = comp.screenshot()
    assert result.status == "success"
    url = comp.get_screenshot_url(result)
    assert url and url.startswith("http")
    with urllib.request.urlopen(url) as resp:  # no Authorization header, as the SDK examples do
        assert resp.headers["content-type"] == "image/jpeg"
        data = resp.read()
    assert data[:2] == b"\xff\xd8"
    assert jpeg_size(data) == (1024, 768)


def test_screenshot_base64_is_a_data_url(comp: ComputerSession) -> None:
    result = comp.screenshot(base64=True)
    url = comp.get_screenshot_url(result)
    assert url.startswith("data:image/jpeg;base64,")
    data = base64.b64decode(url.split(",", 1)[1])
    assert data[:2] == b"\xff\xd8"
    with urllib.request.urlopen(url) as resp:  # urllib opens data URLs too
        assert resp.read() == data


def test_navigate_and_html(comp: ComputerSession, site: str) -> None:
    assert comp.navigate(f"{site}/page2.html").status == "success"
    html = comp.get_html_content(comp.html(auto_detect_encoding=True))
    assert "Second page" in html


def test_navigate_to_unreachable_host_is_an_action_error(comp: ComputerSession) -> None:
    result = comp.navigate(f"http://127.0.0.1:{free_port()}/nothing-listens-here")
    assert result.status == "error"
    assert "ERR_CONNECTION_REFUSED" in (result.error_message or "")


def test_viewport_changes_the_screenshot_size(comp: ComputerSession) -> None:
    result = comp.set_viewport(800, 600)
    assert result.status == "success"
    shot = comp.screenshot()
    with urllib.request.urlopen(comp.get_screenshot_url(shot)) as resp:
        assert jpeg_size(resp.read()) == (800, 600)
    ctx = comp.execute({"type": "wait", "ms": 1, "include_context": True}).page_context
    assert ctx is not None and (ctx.viewport_width, ctx.viewport_height) == (800, 600)


def test_include_context_reports_the_page(client: Lightcone, comp: ComputerSession) -> None:
    comp.scroll(dx=0, dy=300, x=500, y=400)
    result = client.computers.execute(comp.id, action={"type": "wait", "ms": 1}, extra_body={"include_context": True})
    ctx = result.page_context
    assert ctx is not None
    assert ctx.title == "playground"
    assert ctx.url.endswith("/playground.html")
    assert ctx.scroll_y >= 250
    assert ctx.is_main_tab is True
    assert ctx.tab_id == result.executed_tab_id
    assert ctx.page_height >= 5000


def test_wait_action(comp: ComputerSession) -> None:
    import time

    start = time.monotonic()
    assert comp.wait(0.3).status == "success"
    assert time.monotonic() - start >= 0.3


def test_execute_takes_every_action_type(client: Lightcone, comp: ComputerSession, site: str) -> None:
    cid = comp.id
    actions: list[dict[str, Any]] = [
        {"type": "click", "x": 110, "y": 70},
        {"type": "double_click", "x": 600, "y": 600},
        {"type": "right_click", "x": 600, "y": 600},
        {"type": "drag", "x1": 80, "y1": 330, "x2": 200, "y2": 400},
        {"type": "type", "text": "ab"},
        {"type": "keypress", "keys": ["ctrl", "a"]},
        {"type": "scroll", "x": 500, "y": 400, "dx": 0, "dy": 100},
        {"type": "wait", "ms": 10},
        {"type": "screenshot"},
        {"type": "get_html_content"},
        {"type": "set_viewport", "width": 1000, "height": 700},
        {"type": "key_down", "key": "shift"},
        {"type": "key_up", "key": "shift"},
        {"type": "mouse_down", "x": 10, "y": 10},
        {"type": "mouse_up", "x": 10, "y": 10},
        {"type": "list_tabs"},
        {"type": "new_tab", "url": f"{site}/page2.html"},
        {"type": "go_to_url", "url": f"{site}/index.html"},
    ]
    for action in actions:
        result = client.computers.execute(cid, action=action)
        assert result.status == "success", (action, result.error_message)
        assert result.request_id and result.timestamp
    tabs = client.computers.execute(cid, action={"type": "list_tabs"}).result["tabs"]
    assert len(tabs) == 2
    new_tab = next(t for t in tabs if t["is_main_tab"])
    first = next(t for t in tabs if not t["is_main_tab"])
    assert new_tab["url"].endswith("/index.html")
    assert client.computers.execute(cid, action={"type": "switch_tab", "tab_id": first["tab_id"]}).status == "success"
    assert client.computers.execute(cid, action={"type": "close_tab", "tab_id": new_tab["tab_id"]}).status == "success"
    tabs = client.computers.execute(cid, action={"type": "list_tabs"}).result["tabs"]
    assert [t["tab_id"] for t in tabs] == [first["tab_id"]]


def test_batch_runs_in_order_and_stops_at_first_error(comp: ComputerSession) -> None:
    out = comp.batch([
        {"type": "click", "x": 110, "y": 70},
        {"type": "click", "x": 110, "y": 70},
        {"type": "go_to_url", "url": f"http://127.0.0.1:{free_port()}/refused"},
        {"type": "click", "x": 110, "y": 70},
    ])
    assert out["status"] == "error"
    assert [r["status"] for r in out["results"]] == ["success", "success", "error"]
    assert out["completed"] == 2 and out["total"] == 4
    assert "ERR_CONNECTION_REFUSED" in out["error_message"]


def test_batch_accepts_the_openai_computer_use_dialect(comp: ComputerSession, site: str) -> None:
    comp.navigate(f"{site}/playground.html")
    out = comp.batch([
        {"type": "click", "button": "left", "x": 110, "y": 70},
        {"type": "point_and_type", "x": 200, "y": 135, "text": "hi"},
        {"type": "move", "x": 300, "y": 300},
        {"type": "keypress", "keys": ["CTRL", "A"]},
        {"type": "scroll", "x": 500, "y": 400, "scroll_x": 0, "scroll_y": 400},
        {"type": "drag", "path": [{"x": 80, "y": 330}, {"x": 150, "y": 350}, {"x": 250, "y": 380}]},
        {"type": "wait"},
        {"type": "screenshot"},
    ])
    assert out["status"] == "success", out
    assert len(out["results"]) == 8
    assert out["results"][-1]["result"]["screenshot_url"].startswith("http")
    s = state(comp)
    assert s["clicks"] == 1
    assert s["downs"][:2] == ["h", "i"]
    assert "a+ctrl" in s["downs"]
    assert s["scrollY"] >= 350


def test_tabs_lifecycle(client: Lightcone, comp: ComputerSession, site: str) -> None:
    tabs = client.computers.tabs.list(comp.id)
    assert tabs.status == "success"
    [first] = tabs.result["tabs"]
    created = client.computers.tabs.create(comp.id, url=f"{site}/page2.html")
    assert created.status == "success"
    second = created.result["tab_id"]
    listed = client.computers.tabs.list(comp.id).result["tabs"]
    assert {t["tab_id"] for t in listed} == {first["tab_id"], second}
    assert next(t for t in listed if t["tab_id"] == second)["is_main_tab"] is True
    # actions go to the main tab; tab_id targets another one
    assert "Second page" in comp.get_html_content(comp.html())
    other = client.computers.html(comp.id, tab_id=first["tab_id"])
    assert other.executed_tab_id == first["tab_id"]
    assert "playground" in other.result["html_content"]
    switched = client.computers.tabs.switch(first["tab_id"], id=comp.id)
    assert switched.status == "success"
    assert "playground" in comp.get_html_content(comp.html())
    assert client.computers.tabs.delete(second, id=comp.id).status == "success"
    last = client.computers.tabs.delete(first["tab_id"], id=comp.id)
    assert last.status == "error"
    assert "last tab" in last.error_message
    unknown = client.computers.tabs.switch("NOPE", id=comp.id)
    assert unknown.status == "error" and "NOPE" in unknown.error_message


def _tabs_when(client: Lightcone, cid: str, count: int, within: float = 10.0) -> list[dict[str, Any]]:
    """The tab list once it has ``count`` tabs (the spec calls it eventually consistent)."""
    import time

    deadline = time.monotonic() + within
    while True:
        tabs = client.computers.tabs.list(cid).result["tabs"]
        if len(tabs) == count or time.monotonic() > deadline:
            return tabs
        time.sleep(0.1)


def test_pages_opened_by_the_page_become_tabs(client: Lightcone, comp: ComputerSession) -> None:
    comp.click(420, 58)  # window.open
    tabs = _tabs_when(client, comp.id, 2)
    assert len(tabs) == 2
    popup = next(t for t in tabs if t["url"].endswith("/page2.html"))
    assert popup["is_main_tab"] is True
    assert "Second page" in comp.get_html_content(comp.html())
    client.computers.tabs.switch(next(t for t in tabs if t is not popup)["tab_id"], id=comp.id)
    comp.click(420, 108)  # target=_blank link
    assert len(_tabs_when(client, comp.id, 3)) == 3


def test_actions_on_one_computer_are_serialised(client: Lightcone, comp: ComputerSession) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _i: client.computers.click(comp.id, x=110, y=70), range(16)))
    assert all(r.status == "success" for r in results)
    assert state(comp)["clicks"] == 16



def test_typing_sends_the_key_events_playwright_sends(server: Server, site: str) -> None:
    """The API types on opencone's own CDP connection (queued, not one round trip per key); what
    the page sees must be what Playwright's own keyboard.type gives it, event for event."""
    from playwright.sync_api import sync_playwright

    text = "Hi, wörld!\tA~`1!2@3#4$5%6^7&8*9(0)-_=+[{]}\\|;:'\",<.>/? ✓ 日本\nend\r."
    client = server.client()
    comp = client.computers.create()
    try:
        assert client.computers.navigate(comp.id, url=f"{site}/keylog.html").status == "success"
        with sync_playwright() as pw:
            browser = pw.chromium.connect_over_cdp(f"{server.base_url}/computers/{comp.id}/cdp?token={server.api_key}")
            page = next(p for p in browser.contexts[0].pages if p.url.endswith("/keylog.html"))
            logs = []
            for typist in ("api", "playwright", "api"):
                page.evaluate("reset()")
                if typist == "api":
                    assert client.computers.type(comp.id, text=text).status == "success"
                else:
                    page.keyboard.type(text)
                logs.append((page.evaluate("window.log"), page.evaluate("area.value")))
            browser.close()
        (api_log, api_value), (pw_log, pw_value), again = logs
        assert api_value == pw_value and "wörld" in api_value and "日本" in api_value
        assert api_log == pw_log, [(a, b) for a, b in zip(api_log, pw_log, strict=False) if a != b][:5]
        assert again == logs[0]
        assert len([e for e in api_log if e[0] == "keydown"]) > 40  # real key events, not only input
    finally:
        client.computers.delete(comp.id)
