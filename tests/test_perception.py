"""Element snapshots and refs (core/perception.py, drivers/chromium/perception.py), on the real server.

The page (tests/pages/perception.html) writes every click, input and change into its own
log, which each test reads back from the page: an action on a ref is checked by what the
page shows, never only by the answer. It has an iframe, a shadow root, a long list, hidden
and disabled buttons, a button the page moves, and one far below the fold.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Server, wait_until
from playwright.sync_api import sync_playwright

LOG = re.compile(r"LOG(\[.*?\])END", re.S)
REF = r"\[ref=(?:f\d+)?e\d+\]"  # (a page's refs are e5, or f2e5 once its main frame was replaced)


def _post(server: Server, cid: str, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    with server.http() as http:
        r = http.post(f"/computers/{cid}/{action}", json=body or {})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _ok(server: Server, cid: str, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    answer = _post(server, cid, action, body)
    assert answer["status"] == "success", answer["error_message"]
    return answer["result"]  # type: ignore[no-any-return]


def page_log(server: Server, cid: str) -> list[str]:
    html = _ok(server, cid, "html")["html_content"]
    match = LOG.search(html)
    assert match, "the page's log is not in its HTML"
    return json.loads(match.group(1))  # type: ignore[no-any-return]


def snapshot(server: Server, cid: str, **options: Any) -> dict[str, Any]:
    return _ok(server, cid, "snapshot", options)


def refs_by_name(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in snap["elements"] if e.get("ref") and e.get("name")}


@pytest.fixture
def page(server: Server, cid: str, site: str) -> Iterator[str]:
    """The computer on a fresh copy of the perception page."""
    _ok(server, cid, "navigate", {"url": f"{site}/perception.html"})
    yield cid


def test_the_text_form_is_playwrights_own(server: Server, page: str) -> None:
    snap = snapshot(server, page)
    text = snap["snapshot"]
    assert re.fullmatch(r"snap_[0-9a-f]{12}", snap["snapshot_id"])
    assert re.search(rf'^  - heading "Perception test page" \[level=1\] {REF}$', text, re.M)
    buy = re.search(r'^    - button "Buy" \[ref=((?:f\d+)?)e\d+\]$', text, re.M)
    assert buy
    assert re.search(rf'- button "Sold out" \[disabled\] {REF}', text)
    assert "Display none" not in text and "Invisible" not in text  # hidden: not in the tree
    assert re.search(rf'- button "Shadow button" {REF}', text)  # inside a shadow root
    # the frame's elements are under its iframe, with refs of their own frame
    frame = text[text.index("- iframe [ref="):].split("- list")[0]
    inner = re.search(r'- button "Frame button" \[ref=(f\d+)e\d+\]', frame)
    assert inner and inner.group(1) != buy.group(1)
    assert re.search(rf'- button "Far below" {REF} \[offscreen\]', text)
    assert re.search(rf'- button "Row 200" {REF} \[offscreen\]', text)
    assert re.search(rf'- button "Row 1" {REF}$', text, re.M)  # in view: no mark
    # Playwright's own snapshot of the same page, over CDP: the same text, but for our marks
    with sync_playwright() as pw:
        browser = pw.chromium.connect_over_cdp(f"{server.base_url}/computers/{page}/cdp?token={server.api_key}")
        theirs = browser.contexts[0].pages[0].aria_snapshot(mode="ai")
    ours = text.replace(" [offscreen]", "")
    strip = re.compile(r" \[ref=[^\]]+\]")
    assert strip.sub("", ours) == strip.sub("", theirs)
    assert snap["total_elements"] == snap["shown_elements"] > 400 and snap["truncated"] is False


def test_refs_act_in_the_page_its_frames_and_shadow_roots(server: Server, page: str) -> None:
    els = refs_by_name(snapshot(server, page, format="json"))
    assert els["Frame button"]["frame"].startswith("f") and "frame" not in els["Buy"]
    steps = [
        ("click", {"ref": els["Buy"]["ref"]}, "buy"),
        ("click", {"ref": els["Shadow button"]["ref"]}, "shadow"),
        ("click", {"ref": els["Frame button"]["ref"]}, "frame"),
        ("click", {"ref": els["Row 200"]["ref"]}, "row200"),  # far down the long list: scrolled to
        ("click", {"ref": els["Far below"]["ref"]}, "far"),
        ("fill", {"ref": els["Search"]["ref"], "text": "new words"}, "q=new words"),
        ("type", {"ref": els["Shadow input"]["ref"], "text": "ab"}, "shadowq=ab"),
        ("select-option", {"ref": els["Colour"]["ref"], "values": ["Blue"]}, "color=b"),
        ("click", {"ref": els["Agree"]["ref"]}, "agree=true"),
    ]
    for action, body, shown in steps:
        _ok(server, page, action, body)
        assert page_log(server, page)[-1] == shown, (action, body)
    after = refs_by_name(snapshot(server, page, format="json"))
    assert after["Search"]["value"] == "new words" and after["Agree"]["checked"] is True
    assert after["Shadow input"]["value"] == "ab"


def test_boxes_are_screenshot_pixels_at_the_device_scale(server: Server, site: str) -> None:
    client = server.client()
    comp = client.computers.create(kind="browser", display={"width": 800, "height": 600, "scale": 2})
    try:
        _ok(server, comp.id, "navigate", {"url": f"{site}/perception.html"})
        els = refs_by_name(snapshot(server, comp.id, format="json"))
        for name, shown in (("Buy", "buy"), ("Frame button", "frame"), ("Shadow button", "shadow")):
            x, y, w, h = els[name]["box"]
            assert w > 40 and h > 30  # twice the CSS size
            _ok(server, comp.id, "click", {"x": x + w / 2, "y": y + h / 2})  # a plain click, in screenshot px
            assert page_log(server, comp.id)[-1] == shown, name
        snap = snapshot(server, comp.id, format="json")
        assert snap["viewport"] == {"width": 1600, "height": 1200}
    finally:
        client.computers.delete(comp.id)


def test_an_element_that_moved_is_clicked_where_it_is_now(server: Server, page: str) -> None:
    els = refs_by_name(snapshot(server, page, format="json"))
    x, y, w, h = els["Moving target"]["box"]
    _ok(server, page, "click", {"ref": els["Shift the page"]["ref"]})  # the page grows a banner above it
    _ok(server, page, "click", {"x": x + w / 2, "y": y + h / 2})  # where the snapshot saw it: missed
    assert "mover" not in page_log(server, page)
    _ok(server, page, "click", {"ref": els["Moving target"]["ref"]})
    assert page_log(server, page)[-1] == "mover"


def test_hidden_and_disabled_elements(server: Server, page: str) -> None:
    snap = snapshot(server, page, format="json")
    names = {e.get("name") for e in snap["elements"]}
    assert "Display none" not in names and "Invisible" not in names
    sold = refs_by_name(snap)["Sold out"]
    assert sold["disabled"] is True
    answer = _post(server, page, "click", {"ref": sold["ref"]})
    assert answer["status"] == "error" and "not enabled" in answer["error_message"]
    assert page_log(server, page) == []


def test_stale_refs_are_refused_and_nothing_is_clicked(server: Server, page: str, site: str) -> None:
    first = snapshot(server, page, format="json")
    els = refs_by_name(first)
    # an element the page removed
    _ok(server, page, "click", {"ref": els["Remove buy"]["ref"]})
    answer = _post(server, page, "click", {"ref": els["Buy"]["ref"]})
    assert answer["status"] == "error" and "no longer on the page" in answer["error_message"]
    assert page_log(server, page) == ["removed"]
    # a page that navigated: its old refs are refused, without a new snapshot and with one
    _ok(server, page, "click", {"ref": els["Next page"]["ref"]})
    assert wait_until(lambda: "The next page" in _ok(server, page, "html")["html_content"])
    answer = _post(server, page, "click", {"ref": els["Shift the page"]["ref"]})
    assert answer["status"] == "error" and "no longer on the page" in answer["error_message"], answer
    second = snapshot(server, page, format="json")
    assert second["url"].endswith("/perception_next.html")
    for el in [e for e in first["elements"] if e.get("ref") and e.get("role") == "button"][:12]:
        answer = _post(server, page, "click", {"ref": el["ref"], "snapshot_id": first["snapshot_id"]})
        assert answer["status"] == "error", el
        assert "stale" in answer["error_message"] or "not in snapshot" in answer["error_message"]
    assert page_log(server, page) == []  # nothing on the new page was clicked
    answer = _post(server, page, "click", {"ref": "e3", "snapshot_id": "snap_000000000000"})
    assert answer["status"] == "error" and "not one of this tab's" in answer["error_message"]
    # the new snapshot's refs work
    _ok(server, page, "click", {"ref": refs_by_name(second)["First"]["ref"]})
    assert page_log(server, page) == ["n1"]


def test_a_tab_without_a_snapshot_has_no_refs(server: Server, site: str) -> None:
    client = server.client()
    comp = client.computers.create(kind="browser")
    try:
        _ok(server, comp.id, "navigate", {"url": f"{site}/perception.html"})
        answer = _post(server, comp.id, "click", {"ref": "e7"})
        assert answer["status"] == "error" and "no element snapshot yet" in answer["error_message"]
        assert page_log(server, comp.id) == []
    finally:
        client.computers.delete(comp.id)


def test_filters_and_the_size_cap(server: Server, page: str) -> None:
    in_view = snapshot(server, page, viewport_only=True)["snapshot"]
    assert '"Buy"' in in_view and '"Frame button"' in in_view
    assert '"Far below"' not in in_view and '"Row 200"' not in in_view and "[offscreen]" not in in_view
    interactive = snapshot(server, page, format="json", interactive_only=True)
    assert interactive["elements"] and all(e.get("ref") for e in interactive["elements"])
    roles = {e["role"] for e in interactive["elements"]}
    assert {"button", "link", "textbox", "checkbox", "combobox"} <= roles
    assert not roles & {"text", "generic", "paragraph", "heading", "list", "listitem"}
    flat = snapshot(server, page, interactive_only=True)["snapshot"]
    assert all(line.startswith(("- ", "  - /")) for line in flat.splitlines())
    small = snapshot(server, page, max_chars=1000)
    assert small["truncated"] is True and len(small["snapshot"]) <= 1300
    assert small["snapshot"].endswith("]") and "truncated" in small["snapshot"].splitlines()[-1]
    assert 0 < small["shown_elements"] < small["total_elements"]
    small_json = snapshot(server, page, format="json", max_chars=1000)
    assert small_json["truncated"] is True and "notice" in small_json
    boxed = snapshot(server, page, boxes=True)["snapshot"]
    assert re.search(rf'- button "Buy" {REF} \[box=\d+,\d+,\d+,\d+\]', boxed)


def test_execute_and_batch_take_refs(server: Server, page: str) -> None:
    els = refs_by_name(snapshot(server, page, format="json"))
    with server.http() as http:
        r = http.post(f"/computers/{page}/batch", json={"actions": [
            {"type": "click", "ref": els["Buy"]["ref"]},
            {"type": "fill", "ref": els["Search"]["ref"], "text": "from a batch"},
            {"type": "select_option", "ref": els["Colour"]["ref"], "value": "Red"},
            {"type": "double_click", "ref": els["Frame button"]["ref"]},
            {"type": "snapshot", "format": "json", "interactive_only": True},
            {"type": "markdown"},
        ]}).json()
    assert r["status"] == "success", r
    assert page_log(server, page) == ["buy", "q=from a batch", "color=r", "frame", "frame"]
    assert r["results"][2]["result"]["selected"] == ["r"]
    assert r["results"][4]["result"]["elements"] and "Perception test page" in r["results"][5]["result"]["markdown"]
    with server.http() as http:
        r = http.post(f"/computers/{page}/execute", json={"action": {"type": "right_click", "ref": "e99999"}}).json()
    assert r["status"] == "error" and "not in snapshot" in r["error_message"]


def test_bad_refs_are_422(server: Server, page: str) -> None:
    with server.http() as http:
        r = http.post(f"/computers/{page}/click", json={"ref": "button"})
        assert r.status_code == 422 and "ref" in r.json()["detail"]
        r = http.post(f"/computers/{page}/drag", json={"ref": "e1"})
        assert r.status_code == 422 and "to_ref" in r.json()["detail"]
        r = http.post(f"/computers/{page}/mouse-down", json={"ref": "e1"})
        assert r.status_code == 422
        r = http.post(f"/computers/{page}/fill", json={"text": "x"})
        assert r.status_code == 422 and "ref" in r.json()["detail"]
        r = http.post(f"/computers/{page}/execute", json={"action": {"type": "select_option", "ref": "e1"}})
        assert r.status_code == 422 and "values" in r.json()["detail"]


def test_markdown_of_an_article(server: Server, cid: str, site: str) -> None:
    _ok(server, cid, "navigate", {"url": f"{site}/article.html"})
    md = _ok(server, cid, "markdown")
    text = md["markdown"]
    assert md["title"] == "The Article" and md["url"] == f"{site}/article.html"
    assert "# Growing tomatoes" in text and "## Varieties" in text and "## Care" in text
    assert f"[the second page]({site}/page2.html)" in text  # resolved against the page
    assert "[an outside reference](https://example.org/tomato)" in text
    assert re.search(r"^\| Name +\| Colour +\| Days +\|$", text, re.M)
    assert re.search(r"^\| Golden Jubilee +\| Yellow +\| 80 +\|$", text, re.M)
    assert "- Water often" in text
    for left_out in ("Footer text", "Menu entry", "Site header", "Sponsored", "![A ripe tomato]"):
        assert left_out not in text
    everything = _ok(server, cid, "markdown", {"main_only": False, "images": True})
    assert "Footer text" in everything["markdown"] and "Menu entry" in everything["markdown"]
    assert f"![A ripe tomato]({site}/tomato.png)" in everything["markdown"]
    assert everything["images"] == [{"url": f"{site}/tomato.png", "alt": "A ripe tomato"}]
    plain = _ok(server, cid, "markdown", {"links": False})["markdown"]
    assert "the second page" in plain and "](" not in plain
    short = _ok(server, cid, "markdown", {"max_chars": 200})
    assert short["truncated"] is True and "truncated" in short["markdown"] and len(short["markdown"]) < 400


def test_a_desktops_browser_has_refs_too(server: Server, site: str) -> None:
    client = server.client()
    comp = client.computers.create(kind="desktop")
    try:
        _ok(server, comp.id, "navigate", {"url": f"{site}/perception.html"})
        els = refs_by_name(snapshot(server, comp.id, format="json"))
        _ok(server, comp.id, "click", {"ref": els["Buy"]["ref"]})
        assert page_log(server, comp.id) == ["buy"]
        # the box is where the button is on the X screen: a plain click there (XTest) hits it
        x, y, w, h = els["Frame button"]["box"]
        _ok(server, comp.id, "click", {"x": x + w / 2, "y": y + h / 2})
        assert page_log(server, comp.id) == ["buy", "frame"]
        assert "Growing" not in _ok(server, comp.id, "markdown")["markdown"]
    finally:
        client.computers.delete(comp.id)


def test_refs_of_a_frame_that_loaded_a_new_document_are_refused(server: Server, page: str) -> None:
    """An iframe that navigates keeps its ref prefix, and its new document numbers its refs from 1
    again: the same ref now names another element, so the old snapshot's is refused."""
    first = snapshot(server, page, format="json")
    frame_button = refs_by_name(first)["Frame button"]["ref"]
    _ok(server, page, "click", {"ref": refs_by_name(first)["Frame link"]["ref"]})  # the frame goes to page2
    assert wait_until(lambda: "Second page" in json.dumps(snapshot(server, page, format="json")["elements"]))
    second = snapshot(server, page, format="json")
    heading = next(e for e in second["elements"] if e.get("name") == "Second page")
    assert heading["ref"][:2] == frame_button[:2]  # (the same frame prefix)
    answer = _post(server, page, "click", {"ref": frame_button, "snapshot_id": first["snapshot_id"]})
    assert answer["status"] == "error" and "stale" in answer["error_message"], answer
    assert second["snapshot_id"] in answer["error_message"]  # refused by the snapshots, before the browser
    assert page_log(server, page) == []


async def test_the_browser_refuses_a_ref_of_another_document(tmp_path: Any, site: str) -> None:
    """The driver's own guard, under the services' (a snapshot the services never saw, e.g. one
    that failed half way): a ref checked against the document it was taken in."""
    from playwright.async_api import async_playwright

    from opencone.config import _default_chromium
    from opencone.core.perception import parse
    from opencone.drivers.base import Display, DriverError, ElementTarget
    from opencone.drivers.chromium.computer import ChromiumComputer

    async with async_playwright() as pw:
        browser = await ChromiumComputer.launch(pw, _default_chromium(), tmp_path / "profile", Display(800, 600))
        try:
            tab = browser.tabs.all()[0]
            await tab.page.goto(f"{site}/perception.html")
            parsed = parse((await browser.page_snapshot(None)).text)
            ref = next(n.ref for n in parsed.nodes if n.name == "Frame button")
            iframe = next(r for r, prefix in parsed.iframes.items() if ref.startswith(prefix))
            probe = (await browser.probe_frames([iframe], None))[iframe]
            assert probe is not None and ref is not None
            target = ElementTarget(ref=ref, document=probe.document, description="the frame's button",
                                   snapshot_id="s", main_frame=False)
            await browser.element_click(target, "left", 1, None)  # the document it was taken in: fine
            await tab.page.evaluate("document.getElementById('frame').src = 'perception_frame.html?again'")
            await tab.page.wait_for_timeout(500)
            await tab.page.aria_snapshot(mode="ai")  # the frame's refs, numbered again
            with pytest.raises(DriverError, match="stale"):
                await browser.element_click(target, "left", 1, None)
            log = await tab.page.evaluate("document.getElementById('log').textContent")
            assert log == 'LOG["frame"]END'  # one click: the first
            # the page's own refs are checked against the page's document
            page = await browser.page_snapshot(None)
            buy = next(n.ref for n in parse(page.text).nodes if n.name == "Buy")
            with pytest.raises(DriverError, match="stale"):
                await browser.element_click(ElementTarget(ref=buy, document=page.document + "0"), "left", 1, None)
            await browser.element_click(ElementTarget(ref=buy, document=page.document), "left", 1, None)
            log = await tab.page.evaluate("document.getElementById('log').textContent")
            assert log == 'LOG["frame","buy"]END'
        finally:
            await browser.close()


def test_the_readme_example_runs(server: Server) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    block = re.search(r"`examples/perception.py`:\n\n```python\n(.*?)```", (root / "README.md").read_text(), re.S)
    assert block, "README has no perception example"
    assert block.group(1).strip() in (root / "examples" / "perception.py").read_text()
    env = {**os.environ, "TZAFON_API_KEY": server.api_key, "LIGHTCONE_BASE_URL": server.base_url}
    out = subprocess.run([sys.executable, str(root / "examples" / "perception.py")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert re.search(r'^  - button "Buy" \[ref=e\d+\]$', out.stdout, re.M)
    assert "# Bought" in out.stdout  # the click landed, and markdown shows it
    assert re.search(r"box of Buy, in screenshot pixels: \[\d+, \d+, \d+, \d+\]", out.stdout)


def test_scroll_and_drag_by_ref(server: Server, page: str) -> None:
    els = refs_by_name(snapshot(server, page, format="json"))
    assert els["Far below"]["offscreen"] is True and "offscreen" not in els["Buy"]
    _ok(server, page, "scroll", {"ref": els["Far below"]["ref"]})  # scrolled into view
    down = refs_by_name(snapshot(server, page, format="json"))
    assert "offscreen" not in down["Far below"] and down["Buy"]["offscreen"] is True
    _ok(server, page, "scroll", {"ref": down["Far below"]["ref"], "dy": -20000})  # the wheel over it
    up = refs_by_name(snapshot(server, page, format="json"))
    assert "offscreen" not in up["Buy"] and up["Far below"]["offscreen"] is True
    _ok(server, page, "drag", {"ref": up["Drag me"]["ref"], "to_ref": up["Drop here"]["ref"]})
    assert page_log(server, page) == ["dropped"]
