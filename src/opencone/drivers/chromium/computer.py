"""A browser computer: one Chromium, its tabs, and every action done once.

Plain clicks, typed text and screenshots go on opencone's own CDP connection to
the page (queued commands, no hop through Playwright's node driver: clicks 2.8
against 4.2 ms, typing half the time, measured); other input through
Playwright's mouse and keyboard. Screenshots are a raw CDP
``Page.captureScreenshot`` (JPEG from the compositor in one or two frames, half
the time of ``page.screenshot``). Element snapshots and actions on refs are
Playwright's own (drivers/chromium/perception.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from playwright.async_api import Browser, BrowserContext, Playwright
from playwright.async_api import Error as PlaywrightError

from opencone.drivers import priority
from opencone.drivers.base import (
    CdpEndpoint,
    ComputerGone,
    Display,
    DriverError,
    ElementTarget,
    PageContext,
    TabInfo,
    UploadSource,
)
from opencone.drivers.chromium.cdp_client import CdpConnection
from opencone.drivers.chromium.downloads import DownloadDir, Downloads, Staging
from opencone.drivers.chromium.launcher import LAUNCH_TIMEOUT_SECONDS, ChromiumProcess, launch_chromium
from opencone.drivers.chromium.perception import ELEMENT_TIMEOUT_MS, ChromiumPerception
from opencone.drivers.chromium.screencast import ChromiumScreencast
from opencone.drivers.chromium.stealth import DEFAULT as DEFAULT_STEALTH
from opencone.drivers.chromium.stealth import StealthConfig, StealthTargets
from opencone.drivers.chromium.tabs import Tab, TabRegistry
from opencone.drivers.chromium.typing import key_events
from opencone.drivers.netns import NetNamespace

log = logging.getLogger(__name__)

_PAGE_CONTEXT_JS = """() => ({
  url: location.href, title: document.title,
  vw: window.innerWidth, vh: window.innerHeight,
  pw: Math.max(document.documentElement ? document.documentElement.scrollWidth : 0, window.innerWidth),
  ph: Math.max(document.documentElement ? document.documentElement.scrollHeight : 0, window.innerHeight),
  sx: window.scrollX, sy: window.scrollY, dpr: window.devicePixelRatio
})"""

_NEXT_FRAME_JS = "() => new Promise(r => requestAnimationFrame(() => r(null)))"
_HIDDEN_SCHEMES = ("devtools://", "chrome://", "chrome-extension://", "chrome-untrusted://")
# Playwright's keyboard layout stops at F12; the rest go straight to CDP.
_CDP_ONLY_KEYS = {f"F{n}": 111 + n for n in range(13, 25)}
_CDP_BUTTONS = {"back", "forward"}
_TYPE_SLICE = 256  # key events in flight at once while typing
_AT_POINT_JS = "([x, y]) => document.elementFromPoint(x, y)"
# where a desktop window's viewport is on the X screen (as page_snapshot places boxes)
_WINDOW_JS = "() => [innerWidth, innerHeight, screenX, screenY, outerWidth, outerHeight, devicePixelRatio]"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


class ChromiumComputer(ChromiumPerception):
    """Element snapshots and actions on elements (refs) come from ChromiumPerception (perception.py)."""

    kind = "browser"
    x_display: str | None = None  # the X display a desktop's browser draws on; None when headless

    def __init__(self, process: ChromiumProcess, browser: Browser, context: BrowserContext,
                 display: Display, emulate_viewport: bool = True) -> None:
        self.process = process
        self.browser = browser
        self.context = context
        self.display = display
        # a headless browser gets its viewport from emulation; a headful one in a desktop
        # keeps its real window size
        self.emulate_viewport = emulate_viewport
        # a headless browser computer is stealth by default (drivers/chromium/stealth.py);
        # a desktop's own browser (None) is left as it is
        self.stealth: StealthConfig | None = DEFAULT_STEALTH if emulate_viewport else None
        self.stealth_targets: StealthTargets | None = None  # applies self.stealth to every target
        self.cdp_clients = 0  # clients of the computer's CDP endpoint connected now (core/cdp_proxy.py)
        self.tabs = TabRegistry(context, self._prepare_tab)
        self._closing = False
        self._gone_callbacks: list[Callable[[str], None]] = []
        self._gone_reason: str | None = None
        self.downloads: Downloads | None = None  # set at launch (downloads.py)
        self.staging = Staging(process.user_data_dir)
        browser.on("disconnected", lambda _b: self._gone("browser_crashed"))

    # -- life ---------------------------------------------------------------------------
    @classmethod
    async def launch(cls, playwright: Playwright, executable: str, profile_dir: Path, display: Display, *,
                     headless: bool = True, env: dict[str, str] | None = None, emulate_viewport: bool = True,
                     extra_args: list[str] | None = None, keep_profile: bool = False,
                     user_agent: str | None = None,
                     wrap: Callable[[list[str]], list[str]] | None = None,
                     netns: NetNamespace | None = None, relay_dir: Path | None = None,
                     downloads: DownloadDir | None = None) -> ChromiumComputer:
        """``netns``: the network namespace the browser runs in (launcher.py); ``relay_dir`` then
        holds the socket Playwright reaches it through. ``downloads``: where its downloads go
        (the profile's ``Downloads`` unless said)."""
        # a launch at a low priority (ahead of demand: drivers/priority.py) may take long on a busy machine
        timeout = LAUNCH_TIMEOUT_SECONDS * (4 if priority.lowered() else 1)
        process = await launch_chromium(executable, profile_dir, display.width, display.height,
                                        headless=headless, env=env, extra_args=extra_args, keep_profile=keep_profile,
                                        user_agent=user_agent, wrap=wrap, netns=netns, relay_dir=relay_dir,
                                        timeout=timeout)
        try:
            browser = await playwright.chromium.connect_over_cdp(await process.devtools.playwright_url())
            context = browser.contexts[0] if browser.contexts else await browser.new_context()
            computer = cls(process, browser, context, display, emulate_viewport)
            if computer.stealth is not None:  # before any tab: popups and workers get it before they run
                computer.stealth_targets = await StealthTargets.start(process.devtools, context, computer.stealth)
            await computer.tabs.adopt_existing()
            if not computer.tabs.all():
                await computer.tabs.register(await context.new_page())
            saved = profile_dir / "Downloads"
            computer.downloads = Downloads(downloads or DownloadDir(saved, str(saved)), computer.tabs.emit)
            await computer.downloads.start(browser)
        except BaseException:
            await process.terminate()
            raise
        return computer

    def on_gone(self, callback: Callable[[str], None]) -> None:
        self._gone_callbacks.append(callback)

    def on_event(self, callback: Callable[[str, dict[str, object]], None]) -> None:
        """Tab events: ``tab_opened``, ``tab_closed``, ``navigated`` (main frame), with their fields."""
        self.tabs.listeners.append(callback)

    def _gone(self, reason: str) -> None:
        if self._closing or self._gone_reason:
            return
        self._gone_reason = reason
        log.warning("browser %s is gone: %s", self.process.pid, reason)
        for callback in self._gone_callbacks:
            with contextlib.suppress(Exception):
                callback(reason)

    @property
    def alive(self) -> bool:
        return not self._closing and self._gone_reason is None and self.process.process.returncode is None

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        await self.process.terminate()  # kill first: a graceful Browser.close costs ~100 ms
        if self.stealth_targets is not None:
            await self.stealth_targets.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.browser.close(), 2)

    def screencast(self) -> ChromiumScreencast:
        """Frames of the main tab while someone watches (see drivers/chromium/screencast.py)."""
        return ChromiumScreencast(self)

    async def _tab(self, tab: str | None) -> Tab:
        if not self.alive:
            raise ComputerGone("the browser is no longer running")
        return await self.tabs.get(tab)

    async def _prepare_tab(self, tab: Tab) -> None:
        # (stealth is not the tab's: self.stealth_targets applied it before the tab ran)
        await self._emulate(tab)

    async def configure_stealth(self, options: dict[str, object] | None) -> None:
        """Apply a computer's ``stealth`` options to a (pool) browser: its tabs now, new tabs later."""
        if not self.emulate_viewport:
            return
        self.stealth = StealthConfig.from_options(options)
        await self.tabs.settle()
        if self.stealth_targets is not None:
            await self.stealth_targets.configure(self.stealth)
        for tab in self.tabs.all():
            await self._emulate(tab)

    async def _emulate(self, tab: Tab) -> None:
        if not self.emulate_viewport:
            return
        d = self.display
        screen = self.stealth.screen if self.stealth is not None and self.stealth.screen else None
        sw, sh = screen or (d.width, d.height)
        metrics = {"width": d.width, "height": d.height, "deviceScaleFactor": d.scale, "mobile": False,
                   "screenWidth": sw, "screenHeight": sh}
        if self.stealth_targets is not None:  # a popup's first document gets them too
            self.stealth_targets.page_metrics = metrics
        await tab.cdp.send("Emulation.setDeviceMetricsOverride", metrics)

    def _css(self, v: float) -> float:
        """Screenshot pixels to CSS pixels."""
        return v / self.display.scale

    # -- pointer ------------------------------------------------------------------------
    async def click(self, x: float, y: float, button: str, count: int, tab: str | None) -> None:
        t = await self._tab(tab)
        if button in _CDP_BUTTONS:
            for _ in range(count):
                await self._cdp_button(t, "mousePressed", x, y, button)
                await self._cdp_button(t, "mouseReleased", x, y, button)
            return
        direct = None if t.held else self._direct(t)
        if direct is None:  # a key or button is held: Playwright adds it to the click
            await t.page.mouse.click(self._css(x), self._css(y), button=button, click_count=count)  # type: ignore[arg-type]
            t.stale_pointer = None
            return
        # the events Playwright's mouse.click sends, pipelined on our own connection: no hop
        # through its node driver and no round trip per event (2.8 ms against 4.2, measured)
        conn, session = direct
        at = {"x": self._css(x), "y": self._css(y)}
        events = [conn.send("Input.dispatchMouseEvent", {"type": "mouseMoved", **at, "button": "none"}, session)]
        for n in range(1, count + 1):
            for kind in ("mousePressed", "mouseReleased"):
                events.append(conn.send("Input.dispatchMouseEvent",
                                        {"type": kind, **at, "button": button, "clickCount": n}, session))
        try:
            await asyncio.gather(*events)
        except (RuntimeError, ConnectionError) as exc:
            raise DriverError(f"click failed: {exc}") from None
        t.stale_pointer = (at["x"], at["y"])  # Playwright's mouse is still where it was

    def _direct(self, t: Tab) -> tuple[CdpConnection, str] | None:
        """Our own CDP session on the tab's page (a tab's id is its target id), if there is one."""
        return None if self.stealth_targets is None else self.stealth_targets.page_session(t.tab_id)

    async def _sync_pointer(self, t: Tab) -> None:
        """Before Playwright presses or releases where its mouse is: put it where our last click was."""
        stale, t.stale_pointer = t.stale_pointer, None
        if stale is not None:
            await t.page.mouse.move(*stale)

    async def _cdp_button(self, t: Tab, kind: str, x: float, y: float, button: str) -> None:
        await t.cdp.send("Input.dispatchMouseEvent", {
            "type": kind, "x": self._css(x), "y": self._css(y), "button": button, "clickCount": 1,
        })

    async def move(self, x: float, y: float, tab: str | None) -> None:
        t = await self._tab(tab)
        t.stale_pointer = None
        await t.page.mouse.move(self._css(x), self._css(y))

    async def mouse_down(self, x: float | None, y: float | None, button: str, tab: str | None) -> None:
        t = await self._tab(tab)
        if button in _CDP_BUTTONS:
            raise DriverError(f"button {button!r} cannot be held down in a browser; use left, right or middle")
        if x is not None and y is not None:
            t.stale_pointer = None
            await t.page.mouse.move(self._css(x), self._css(y))
        else:
            await self._sync_pointer(t)
        await t.page.mouse.down(button=button)  # type: ignore[arg-type]
        t.held.add(f"button:{button}")

    async def mouse_up(self, x: float | None, y: float | None, button: str, tab: str | None) -> None:
        t = await self._tab(tab)
        if button in _CDP_BUTTONS:
            raise DriverError(f"button {button!r} cannot be held down in a browser; use left, right or middle")
        if x is not None and y is not None:
            t.stale_pointer = None
            await t.page.mouse.move(self._css(x), self._css(y))
        else:
            await self._sync_pointer(t)
        await t.page.mouse.up(button=button)  # type: ignore[arg-type]
        t.held.discard(f"button:{button}")

    async def drag(self, path: list[tuple[float, float]], button: str, tab: str | None) -> None:
        t = await self._tab(tab)
        mouse = t.page.mouse
        (x0, y0), rest = path[0], path[1:]
        t.stale_pointer = None
        await mouse.move(self._css(x0), self._css(y0))
        await mouse.down(button=button)  # type: ignore[arg-type]
        # intermediate moves so drag-and-drop and sliders see motion, not a jump
        steps = 8 if len(rest) == 1 else 1
        for x, y in rest:
            await mouse.move(self._css(x), self._css(y), steps=steps)
        await mouse.up(button=button)  # type: ignore[arg-type]

    async def scroll(self, x: float, y: float, dx: float, dy: float, tab: str | None) -> None:
        t = await self._tab(tab)
        await t.cdp.send("Input.dispatchMouseEvent", {
            "type": "mouseWheel", "x": self._css(x), "y": self._css(y),
            "deltaX": self._css(dx), "deltaY": self._css(dy),
        })
        # the wheel is applied on the next frame; wait for it so the next action sees it
        with contextlib.suppress(PlaywrightError):
            await asyncio.wait_for(t.page.evaluate(_NEXT_FRAME_JS), 1.0)

    # -- keyboard -----------------------------------------------------------------------
    async def type_text(self, text: str, tab: str | None) -> None:
        t = await self._tab(tab)
        direct = None if t.held else self._direct(t)
        if direct is None:  # a key is held: Playwright adds it to every key
            await t.page.keyboard.type(text)
            return
        # Playwright's key events, queued on our own connection instead of one round trip each
        # through its driver (typing.py); a long text goes in slices, so its futures stay few
        conn, session = direct
        commands = key_events(text)
        try:
            for start in range(0, len(commands), _TYPE_SLICE):
                await asyncio.gather(*(conn.send(method, params, session)
                                       for method, params in commands[start:start + _TYPE_SLICE]))
        except (RuntimeError, ConnectionError) as exc:
            raise DriverError(f"typing failed: {exc}") from None

    async def _key(self, t: Tab, key: str, down: bool) -> None:
        code = _CDP_ONLY_KEYS.get(key)
        if code is not None:
            await t.cdp.send("Input.dispatchKeyEvent", {
                "type": "keyDown" if down else "keyUp", "key": key, "code": key,
                "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code,
            })
        elif down:
            await t.page.keyboard.down(key)
        else:
            await t.page.keyboard.up(key)

    async def press_keys(self, keys: list[str], tab: str | None) -> None:
        t = await self._tab(tab)
        pressed: list[str] = []
        try:
            for key in keys:
                await self._key(t, key, True)
                pressed.append(key)
        finally:
            for key in reversed(pressed):
                await self._key(t, key, False)

    async def key_down(self, key: str, tab: str | None) -> None:
        t = await self._tab(tab)
        await self._key(t, key, True)
        t.held.add(f"key:{key}")  # clicks go through Playwright meanwhile

    async def key_up(self, key: str, tab: str | None) -> None:
        t = await self._tab(tab)
        await self._key(t, key, False)
        t.held.discard(f"key:{key}")

    # -- page ---------------------------------------------------------------------------
    async def screenshot(self, quality: int, tab: str | None) -> bytes:
        t = await self._tab(tab)
        params = {"format": "jpeg", "quality": quality}
        direct = self._direct(t)
        if direct is None:
            shot = await t.cdp.send("Page.captureScreenshot", params)
        else:  # on opencone's own connection: the image skips Playwright's driver (two JSON hops)
            conn, session = direct
            try:
                shot = await conn.send("Page.captureScreenshot", params, session)
            except (RuntimeError, ConnectionError) as exc:
                raise DriverError(f"screenshot failed: {exc}") from None
        return base64.b64decode(shot["data"])

    async def navigate(self, url: str, timeout: float, tab: str | None) -> None:
        t = await self._tab(tab)
        if self.cdp_clients:
            await self._catch_up(t)
        try:
            await t.page.goto(url, wait_until="load", timeout=timeout * 1000)
        except PlaywrightError as exc:
            raise DriverError(f"navigation to {url} failed: {_first_line(exc)}") from None

    @staticmethod
    async def _catch_up(t: Tab) -> None:
        """One round trip on Playwright's connection, so it has heard every event the browser sent
        before now. A CDP client of our endpoint may just have navigated the tab: its goto resolves
        when the page loads, and the same events can still be on their way to our Playwright, which
        would then take that finished navigation for one interrupting its own goto."""
        with contextlib.suppress(PlaywrightError):
            await t.cdp.send("Page.getFrameTree")

    async def html(self, tab: str | None) -> str:
        t = await self._tab(tab)
        return await t.page.content()

    async def set_viewport(self, display: Display) -> None:
        self.display = display
        if not self.emulate_viewport:
            return
        for tab in self.tabs.all():
            await self._emulate(tab)

    async def page_context(self, tab: str | None) -> PageContext | None:
        t = await self._tab(tab)
        v = await t.page.evaluate(_PAGE_CONTEXT_JS)
        return PageContext(
            url=v["url"], title=v["title"], tab_id=t.tab_id, is_main_tab=t.tab_id == self.tabs.main_id,
            viewport_width=int(v["vw"]), viewport_height=int(v["vh"]),
            page_width=int(v["pw"]), page_height=int(v["ph"]),
            scroll_x=float(v["sx"]), scroll_y=float(v["sy"]), device_scale_factor=float(v["dpr"]),
        )

    async def current_tab(self, tab: str | None) -> str | None:
        return (await self._tab(tab)).tab_id

    # -- tabs ---------------------------------------------------------------------------
    async def _info(self, t: Tab) -> TabInfo:
        title = ""
        with contextlib.suppress(PlaywrightError):
            title = await asyncio.wait_for(t.page.title(), 2)
        return TabInfo(tab_id=t.tab_id, url=t.page.url, title=title, is_main=t.tab_id == self.tabs.main_id)

    async def list_tabs(self) -> list[TabInfo]:
        if not self.alive:
            raise ComputerGone("the browser is no longer running")
        await self.tabs.settle()
        live = await self._page_targets()
        tabs = [t for t in self.tabs.all() if not t.page.url.startswith(_HIDDEN_SCHEMES)
                and (live is None or t.tab_id in live)]
        return [await self._info(t) for t in tabs]

    async def _page_targets(self) -> set[str] | None:
        """The page targets the browser has right now. A page a CDP client closed is gone from the
        browser when its ``close()`` resolves, but Playwright's close event reaches this server's
        connection 20-90 ms later: without asking, ``GET /tabs`` would still list it."""
        with contextlib.suppress(Exception):  # (None: the registry's view alone)
            if self.stealth_targets is not None:
                return await asyncio.wait_for(self.stealth_targets.page_targets(), 2)
            for t in self.tabs.all():  # no connection of our own: through Playwright's session on a tab
                answer = await asyncio.wait_for(t.cdp.send("Target.getTargets"), 2)
                return {i["targetId"] for i in answer["targetInfos"] if i.get("type") == "page"}
        return None

    async def new_tab(self, url: str | None, timeout: float) -> TabInfo:
        if not self.alive:
            raise ComputerGone("the browser is no longer running")
        page = await self.context.new_page()
        tab = await self.tabs.register(page)
        self.tabs.main_id = tab.tab_id
        await page.bring_to_front()
        if url:
            await self.navigate(url, timeout, tab.tab_id)
        return await self._info(tab)

    async def switch_tab(self, tab: str) -> TabInfo:
        t = await self._tab(tab)
        self.tabs.main_id = t.tab_id
        await t.page.bring_to_front()
        return await self._info(t)

    async def close_tab(self, tab: str) -> None:
        t = await self._tab(tab)
        if len(self.tabs) <= 1:
            raise DriverError("cannot close the last tab; open another tab first or delete the computer")
        await t.page.close()
        self.tabs.forget(t.tab_id)
        main = await self.tabs.get(None)
        with contextlib.suppress(PlaywrightError):
            await main.page.bring_to_front()

    # -- CDP ------------------------------------------------------------------------------
    async def cdp_endpoint(self) -> CdpEndpoint:
        if not self.alive:
            raise ComputerGone("the browser is no longer running")
        where = self.downloads_dir_of()  # a client's downloads land with the computer's own
        return CdpEndpoint(self.process.devtools.connect, f"Chrome/{self.browser.version}", where.seen_as,
                           str(where.host))

    # -- files ----------------------------------------------------------------------------
    def downloads_dir_of(self) -> DownloadDir:
        if self.downloads is not None:
            return self.downloads.where
        saved = self.process.user_data_dir / "Downloads"
        return DownloadDir(saved, str(saved))

    def downloads_dir(self) -> Path:
        """Where this browser's downloads are, on the server's side."""
        return self.downloads_dir_of().host

    async def set_input_files(self, target: ElementTarget | None, point: tuple[float, float] | None,
                              source: UploadSource, tab: str | None) -> None:
        """Put ``source`` into the file input ``target`` (a ref, resolved as for a click) or the one
        at ``point`` (screenshot pixels); Playwright retargets a label to its input."""
        staged = await asyncio.to_thread(self.staging.stage, source.fd, source.name)
        if target is not None:
            _, locator = await self._element(target, tab)
            await self._do("upload_file into", target,
                           locator.set_input_files(str(staged), timeout=ELEMENT_TIMEOUT_MS))
            return
        assert point is not None
        t = await self._tab(tab)
        x, y = point
        if self.emulate_viewport:
            cx, cy = self._css(x), self._css(y)
        else:  # a desktop's window: the viewport sits below the toolbars on the X screen
            vw, vh, sx, sy, ow, oh, dpr = await t.page.evaluate(_WINDOW_JS)
            scale = float(dpr) or 1.0
            cx, cy = x / scale - (sx + (ow - vw) / 2), y / scale - (sy + oh - vh)
        handle = await t.page.evaluate_handle(_AT_POINT_JS, [cx, cy])
        element = handle.as_element()
        if element is None:
            await handle.dispose()
            raise DriverError(f"upload_file: no element of the page at ({x:g}, {y:g}); point at a file input "
                              "(or its label), or give its ref")
        try:
            await element.set_input_files(str(staged), timeout=ELEMENT_TIMEOUT_MS)
        except PlaywrightError as exc:
            raise DriverError(f"upload_file at ({x:g}, {y:g}) failed: {_first_line(exc)}; point at a file "
                              "input (or its label), or give its ref") from None
        finally:
            await element.dispose()
