"""What a browser offers the perception layer (core/perception.py): Playwright's own element
snapshot, and actions on the elements its refs name.

The snapshot is ``page.aria_snapshot(mode="ai", boxes=True)``, refs resolve with
``page.get_by_ref`` and actions are Playwright's locator actions, which wait until the
element is visible, stable, enabled and the one that would receive the click (a moving
or covered element is waited for, then refused, never missed). Before acting, the ref
is looked at once (``count``, which does not wait, then its document): an element that is gone, or
that lives in another document than the one the snapshot was taken in (the page, or
its frame, navigated since), is refused with a message that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import TYPE_CHECKING, Any

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Locator

from opencone.drivers.base import DriverError, ElementTarget, FrameProbe, PageSnapshot

if TYPE_CHECKING:
    from opencone.drivers.base import Display
    from opencone.drivers.chromium.tabs import Tab

SNAPSHOT_TIMEOUT_MS = 15_000
ELEMENT_TIMEOUT_MS = 5_000  # how long an action waits for its element to be actionable

PROBE_TIMEOUT_MS = 2_000  # a ref just seen in the snapshot is found at once; only a race waits
# a document's identity: its time origin (a new document has another; reading it changes nothing)
_ORIGIN_JS = "() => String(performance.timeOrigin)"
# where an <iframe>'s viewport is in its parent's: its content box
_CONTENT_JS = """e => {
  const r = e.getBoundingClientRect(), s = e.ownerDocument.defaultView.getComputedStyle(e);
  const px = k => parseFloat(s[k]) || 0;
  return [r.left + e.clientLeft + px('paddingLeft'), r.top + e.clientTop + px('paddingTop'),
          e.clientWidth - px('paddingLeft') - px('paddingRight'),
          e.clientHeight - px('paddingTop') - px('paddingBottom')];
}"""
# (Locator.evaluate, slower than a frame's evaluate, for a ref in a frame: evaluate_all finds no
# aria-ref element at all, its query runs in another world than the snapshot's)
_DOCUMENT_JS = "e => String(e.ownerDocument.defaultView.performance.timeOrigin)"
_VIEW_JS = """() => [innerWidth, innerHeight, screenX, screenY, outerWidth, outerHeight, devicePixelRatio,
  document.title, String(performance.timeOrigin)]"""
_NEXT_FRAME_JS = "() => new Promise(r => requestAnimationFrame(() => r(null)))"
_SOURCE_JS = """() => { const d = document.doctype, e = document.documentElement;
  return [(d ? new XMLSerializer().serializeToString(d) : '') + (e ? e.outerHTML : ''), document.title]; }"""


_NOISE = re.compile(r"^(\d+ × )?(waiting .*|retrying .*|attempting .*|locator resolved to .*|scrolling .*|done .*)$")


def _why(exc: BaseException) -> str:
    """Playwright's first line, and the last thing its call log says was wrong (``element is not
    enabled``, ``<div> intercepts pointer events``…)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return exc.__class__.__name__
    head = lines[0].split(": ", 1)[-1] if lines[0].startswith(("Locator.", "Page.", "Frame.")) else lines[0]
    log = [ln.lstrip("- ").strip() for ln in lines[1:] if ln.startswith("-")]
    said = [ln for ln in log if not _NOISE.match(ln)]
    return f"{head} ({(said or log)[-1]})" if log else head


class ChromiumPerception:
    """Mixed into ChromiumComputer: ``_tab``, ``display``, ``emulate_viewport`` and ``type_text`` are its."""

    display: Display
    emulate_viewport: bool

    if TYPE_CHECKING:
        async def _tab(self, tab: str | None) -> Tab: ...
        async def type_text(self, text: str, tab: str | None) -> None: ...

    # -- snapshots ------------------------------------------------------------------------
    async def page_snapshot(self, tab: str | None) -> PageSnapshot:
        t = await self._tab(tab)
        try:
            text, view = await asyncio.gather(
                t.page.aria_snapshot(mode="ai", boxes=True, timeout=SNAPSHOT_TIMEOUT_MS),
                t.page.evaluate(_VIEW_JS))
        except PlaywrightError as exc:
            raise DriverError(f"snapshot failed: {_why(exc)}") from None
        # (the page's document is read beside the snapshot, not after it: a navigation in between gives
        # a snapshot whose refs this document has not, refused as gone, or a document its refs are
        # not in, refused as stale; never a ref taken for another element)
        vw, vh, sx, sy, ow, oh, dpr, title, document = view
        if self.emulate_viewport:  # headless: the screenshot is the viewport, at the device scale
            scale, origin = self.display.scale, (0.0, 0.0)
        else:  # a desktop's window: the viewport sits below the browser's toolbars on the X screen
            scale = float(dpr) or 1.0
            origin = ((sx + (ow - vw) / 2) * scale, (sy + oh - vh) * scale)
        return PageSnapshot(text=text, url=t.page.url, title=str(title), tab_id=t.tab_id,
                            viewport=(float(vw), float(vh)), scale=scale, origin=origin, document=document)

    async def probe_frames(self, refs: list[str], tab: str | None) -> dict[str, FrameProbe | None]:
        t = await self._tab(tab)

        async def one(ref: str) -> FrameProbe | None:
            with contextlib.suppress(PlaywrightError):
                handle = await t.page.get_by_ref(ref).element_handle(timeout=PROBE_TIMEOUT_MS)
                try:
                    frame = await handle.content_frame()
                    if frame is None:
                        return None
                    document, box = await asyncio.gather(frame.evaluate(_ORIGIN_JS), handle.evaluate(_CONTENT_JS))
                    return FrameProbe(document, (float(box[0]), float(box[1]), float(box[2]), float(box[3])))
                finally:
                    await handle.dispose()
            return None

        found = await asyncio.gather(*(one(ref) for ref in refs))
        return dict(zip(refs, found, strict=True))

    async def page_source(self, tab: str | None) -> tuple[str, str, str]:
        """The tab's HTML (as ``page.content()`` gives it), URL and title, in one call."""
        t = await self._tab(tab)
        try:
            html, title = await t.page.evaluate(_SOURCE_JS)
        except PlaywrightError as exc:
            raise DriverError(f"reading the page failed: {_why(exc)}") from None
        return str(html), t.page.url, str(title)

    async def page_evaluate(self, expression: str, max_chars: int, tab: str | None) -> dict[str, Any]:
        """``expression`` run by Playwright's ``page.evaluate`` (a function's source is called); its
        result as JSON text, cut at ``max_chars``."""
        t = await self._tab(tab)
        try:
            value = await t.page.evaluate(expression)
        except PlaywrightError as exc:
            raise DriverError(f"evaluate failed: {_why(exc)}") from None
        text = json.dumps(value, ensure_ascii=False, default=str)  # (Playwright gives JSON-able values)
        return {"result": text[:max_chars], "truncated": len(text) > max_chars, "url": t.page.url}

    # -- elements -------------------------------------------------------------------------
    async def _element(self, target: ElementTarget, tab: str | None) -> tuple[Tab, Locator]:
        """The element's locator, once it is sure to be the one the snapshot named."""
        t = await self._tab(tab)
        if target.selector is not None:
            return t, t.page.locator(target.selector).first
        assert target.ref is not None
        locator = t.page.get_by_ref(target.ref)
        what = f"ref {target.ref} ({target.description}) of snapshot {target.snapshot_id}"
        try:  # (count does not wait: a ref that names nothing is said at once)
            if target.main_frame:  # the page's document (a frame's evaluate: faster than the element's)
                found, document = await asyncio.gather(locator.count(), t.page.evaluate(_ORIGIN_JS))
            else:
                found = await locator.count()
                document = await locator.evaluate(_DOCUMENT_JS, timeout=PROBE_TIMEOUT_MS) if found else None
            if not found:
                document = None
        except PlaywrightError as exc:
            if "Invalid frame in aria-ref" not in str(exc):  # (its frame is gone: so is the element)
                raise DriverError(f"ref {target.ref}: {_why(exc)}") from None
            document = None
        if document is None:
            raise DriverError(f"{what} is no longer on the page: the page changed since the snapshot (it is now "
                              f"{t.page.url}); take a new snapshot")
        if document != target.document:
            raise DriverError(f"{what} is stale: the page (or its frame) loaded a new document since the snapshot, "
                              f"and that ref now names another element; refused. Take a new snapshot of "
                              f"{t.page.url}")
        return t, locator

    async def _do(self, what: str, target: ElementTarget, action: Any) -> Any:
        try:
            return await action
        except PlaywrightError as exc:
            raise DriverError(f"{what} {target.ref or target.selector} ({target.description}) failed: "
                              f"{_why(exc)}") from None

    async def element_click(self, target: ElementTarget, button: str, count: int, tab: str | None) -> None:
        _, loc = await self._element(target, tab)
        if button not in ("left", "right", "middle"):
            raise DriverError(f"button {button!r} cannot click an element; use left, right or middle")
        await self._do("click on", target, loc.click(button=button, click_count=count,  # type: ignore[arg-type]
                                                     timeout=ELEMENT_TIMEOUT_MS))

    async def element_type(self, target: ElementTarget, text: str, tab: str | None) -> None:
        _, loc = await self._element(target, tab)
        await self._do("click on", target, loc.click(timeout=ELEMENT_TIMEOUT_MS))
        await self.type_text(text, tab)

    async def element_fill(self, target: ElementTarget, text: str, tab: str | None) -> None:
        _, loc = await self._element(target, tab)
        await self._do("fill of", target, loc.fill(text, timeout=ELEMENT_TIMEOUT_MS))

    async def element_select(self, target: ElementTarget, values: list[str], tab: str | None) -> list[str]:
        _, loc = await self._element(target, tab)
        chosen = await self._do("select_option on", target, loc.select_option(values, timeout=ELEMENT_TIMEOUT_MS))
        return list(chosen)

    async def element_scroll(self, target: ElementTarget, dx: float, dy: float, tab: str | None) -> None:
        t, loc = await self._element(target, tab)
        await self._do("scroll to", target, loc.scroll_into_view_if_needed(timeout=ELEMENT_TIMEOUT_MS))
        if not dx and not dy:
            return
        box = await self._do("scroll over", target, loc.bounding_box(timeout=ELEMENT_TIMEOUT_MS))
        if box is None:
            raise DriverError(f"scroll over {target.ref or target.selector}: the element has no box")
        scale = self.display.scale if self.emulate_viewport else 1.0
        await t.cdp.send("Input.dispatchMouseEvent", {
            "type": "mouseWheel", "x": box["x"] + box["width"] / 2, "y": box["y"] + box["height"] / 2,
            "deltaX": dx / scale, "deltaY": dy / scale,
        })
        with contextlib.suppress(PlaywrightError, TimeoutError):
            await asyncio.wait_for(t.page.evaluate(_NEXT_FRAME_JS), 1.0)

    async def element_pointer(self, op: str, target: ElementTarget, button: str, tab: str | None) -> None:
        """``op`` (``move``, ``down``, ``up``) at the element's centre, scrolled into view first: the
        pixel pointer actions on the point a ref names (a hover; a press and a release by ref)."""
        _, loc = await self._element(target, tab)
        await self._do("scroll to", target, loc.scroll_into_view_if_needed(timeout=ELEMENT_TIMEOUT_MS))
        box = await self._do("pointer onto", target, loc.bounding_box(timeout=ELEMENT_TIMEOUT_MS))
        if box is None:
            raise DriverError(f"pointer onto {target.ref or target.selector}: the element has no box (it is hidden)")
        x, y = (box["x"] + box["width"] / 2) * self.display.scale, (box["y"] + box["height"] / 2) * self.display.scale
        if op == "move":
            await self.move(x, y, tab)  # type: ignore[attr-defined]
        elif op == "down":
            await self.mouse_down(x, y, button, tab)  # type: ignore[attr-defined]
        else:
            await self.mouse_up(x, y, button, tab)  # type: ignore[attr-defined]

    async def element_drag(self, source: ElementTarget, dest: ElementTarget, tab: str | None) -> None:
        _, src = await self._element(source, tab)
        _, dst = await self._element(dest, tab)
        await self._do("drag of", source, src.drag_to(dst, timeout=ELEMENT_TIMEOUT_MS))

    async def history(self, op: str, timeout: float, tab: str | None) -> None:
        t = await self._tab(tab)
        page = t.page
        go = {"back": page.go_back, "forward": page.go_forward, "reload": page.reload}[op]
        # (a page back from the back-forward cache fires no load event: back and forward wait for the commit)
        try:
            await go(wait_until="load" if op == "reload" else "commit", timeout=timeout * 1000)
        except PlaywrightError as exc:
            raise DriverError(f"{op} failed: {_why(exc)}") from None
