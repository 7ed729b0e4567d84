"""A desktop computer: Xvfb, openbox, an xterm and a headful Chromium.

Input and screenshots go straight to the X server (XTest, XShm) on one thread
per desktop, whatever window is on top. Browser things (navigate, html, tabs)
go to the desktop's Chromium through a ChromiumComputer that keeps its real
window size. If that Chromium goes away (a user closed its last window, or it
crashed) the desktop lives on and the next navigate starts a new one; the
desktop ends only when its X server dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
from mss.exception import ScreenShotError
from playwright.async_api import Playwright
from Xlib import Xatom
from Xlib import error as xerror
from Xlib.display import Display as XDisplay

from opencone.drivers.base import (
    CdpEndpoint,
    ComputerGone,
    Display,
    DriverError,
    ElementTarget,
    FrameProbe,
    PageContext,
    PageSnapshot,
    TabInfo,
    UploadSource,
)
from opencone.drivers.chromium import profiles
from opencone.drivers.chromium.computer import ChromiumComputer
from opencone.drivers.chromium.downloads import DownloadDir
from opencone.drivers.chromium.launcher import proxy_flags
from opencone.drivers.chromium.proxied import ProxiedChromium
from opencone.drivers.desktop.apps import start_openbox, start_terminal, x_env
from opencone.drivers.desktop.keyboard import NoSpareKeycode
from opencone.drivers.desktop.readyshot import ReadyShot
from opencone.drivers.desktop.screen import Screen, ScreenSizeError
from opencone.drivers.desktop.screencast import DesktopScreencast
from opencone.drivers.desktop.xinput import XInput
from opencone.drivers.desktop.xserver import XServer, start_xvfb
from opencone.drivers.desktop.xthread import XThread
from opencone.drivers.network import ComputerNetwork, NetworkPlan
from opencone.drivers.processes import kill_group, write_pidfile
from opencone.drivers.proxy.control import RoutedThroughProxy
from opencone.drivers.proxy.forwarder import ForwardingProxy
from opencone.drivers.sandbox import Sandbox, display_number
from opencone.drivers.sandbox.bwrap import HOME_DIR, environment
from opencone.drivers.sandbox.workspaces import sandbox_ids
from opencone.drivers.spawn import Spawned

log = logging.getLogger(__name__)

T = TypeVar("T")

GONE_REASON = "desktop_crashed"
_TWO_FRAMES_JS = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(null))))"
_NO_BROWSER = "no browser window is open on this desktop; navigate to a URL to open one"
_EXIT_GRACE = 5.0  # seconds a browser whose window was closed gets to write its profile


def _check_scale(display: Display) -> None:
    if display.scale != 1.0:
        raise DriverError("a desktop's scale_factor is always 1; set the width and height you want instead")


class _XConnection:
    """The blocking half: one Xlib connection used by XTest and RandR, and the grabber."""

    def __init__(self, name: str, width: int, height: int) -> None:
        self.display = XDisplay(name)
        self.screen = Screen(self.display, name)
        self.screen.resize(width, height)
        self.input = XInput(self.display)

    def jpeg(self, quality: int) -> bytes:
        """The screen as JPEG, showing every input event sent before (as the X server drew it)."""
        if not self.screen.round_trips:  # (with XDAMAGE its check is that round trip: screen.py)
            self.input.settle()
        data = self.screen.jpeg(quality)
        self.input.settled()
        return data

    def wait_for_wm(self, timeout: float) -> bool:
        """Wait until a window manager runs (it owns _NET_SUPPORTING_WM_CHECK on the root)."""
        atom = self.display.intern_atom("_NET_SUPPORTING_WM_CHECK")
        root = self.display.screen().root
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            prop = root.get_full_property(atom, Xatom.WINDOW)
            if prop is not None and len(prop.value):
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.screen.close()
        with contextlib.suppress(Exception):
            self.display.close()


class DesktopComputer(RoutedThroughProxy):
    kind = "desktop"

    def __init__(self, workdir: Path, pidfile: Path, xserver: XServer, playwright: Playwright,
                 chromium_path: str, display: Display, sandbox: Sandbox | None = None) -> None:
        self.workdir = workdir
        # the sandbox of its terminal and exec commands: made with the desktop (a pooled one too),
        # so its id is the desktop's, not the computer's (LiveComputer.sandbox_id)
        self.sandbox = sandbox if sandbox is not None and sandbox.available else None
        self.sandbox_id = workdir.name
        # its terminal's and browser's home, saved with its environment (none without a sandbox)
        self.home = self._part("home")
        self.display = display
        self.xserver = xserver
        self.x_display: str = xserver.name  # DISPLAY for programs run on this desktop (exec)
        self.browser: ChromiumComputer | None = None
        self._pidfile = pidfile
        self._playwright = playwright
        self._chromium_path = chromium_path
        # Xlib and mss are blocking and not thread-safe: all X calls of this desktop go through here
        self._xt = XThread(f"x{xserver.name}")
        self._x: _XConnection | None = None
        self._ready = ReadyShot(self._look)  # the screen encoded ahead of the next screenshot
        self._apps: dict[str, tuple[Spawned, str]] = {}
        self._browser_lock = asyncio.Lock()
        # one profile for every browser this desktop starts, as on a real desktop: a user who
        # closes the window and navigates again finds their cookies (removed with the desktop)
        self.browser_profile = self._part("browser")
        self.restored_profile = self._part("browser-saved")  # where a saved one is unpacked
        self._retiring: dict[ChromiumComputer, asyncio.Task[None]] = {}  # browsers on their way out
        self._closing = False
        self._gone_reason: str | None = None
        self._gone_callbacks: list[Callable[[str], None]] = []
        self._event_callbacks: list[Callable[[str, dict[str, Any]], None]] = []  # the browser's tab events
        self._watch = asyncio.create_task(self._watch_x(), name=f"watch-x{xserver.name}")
        self.proxy: ForwardingProxy | None = None  # the desktop's browser and networked exec go through it
        self.network: ComputerNetwork | None = None  # (the proxy's, with its network namespaces)

    # -- life ---------------------------------------------------------------------------
    @classmethod
    async def launch(cls, playwright: Playwright, chromium_path: str, run_dir: Path, display: Display,
                     framebuffer: tuple[int, int], sandbox: Sandbox | None = None,
                     network: NetworkPlan | None = None) -> DesktopComputer:
        """Start a desktop showing ``display``; its screen can later grow up to ``framebuffer``.
        Its terminal runs in ``sandbox``; without one that can run (no bubblewrap) it has none."""
        _check_scale(display)
        token = secrets.token_hex(6)
        workdir = run_dir / f"desktop-{token}"
        workdir.mkdir(parents=True)
        fb_w, fb_h = max(display.width, framebuffer[0]), max(display.height, framebuffer[1])
        try:
            xserver = await start_xvfb(fb_w, fb_h)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        desktop = cls(workdir, run_dir / f"desktop-{token}.pids", xserver, playwright, chromium_path, display,
                      sandbox)
        try:
            desktop._record_pids()
            desktop._apps["openbox"] = await start_openbox(xserver.name, workdir)
            # its browser's network: a namespace of its own whose way out is the forwarder (direct until
            # change-proxy says otherwise), under the egress policy
            desktop.network = await ComputerNetwork.open(network if network is not None else NetworkPlan())
            desktop.network.report_refusals(desktop._forward_event)
            desktop.proxy = desktop.network.proxy
            if desktop.sandbox is not None:  # with network (as exec's), in the commands' namespace, proxied
                netns, env = await desktop.command_network() if desktop.sandbox.network else (None, None)
                desktop._apps["xterm"] = await start_terminal(desktop.sandbox, desktop.sandbox_id, xserver.name,
                                                              env, netns)
            else:
                log.warning("desktop %s has no terminal, and its browser runs unconfined: there is no "
                            "sandbox here (bubblewrap)", xserver.name)
            desktop._record_pids()
            # the browser starts alongside: openbox maximizes its window whichever comes up first
            done = await asyncio.gather(desktop._connect(), desktop._start_browser(), return_exceptions=True)
            for outcome in done:
                if isinstance(outcome, BaseException):
                    raise outcome
        except BaseException:
            await desktop.close()
            raise
        return desktop

    async def _connect(self) -> None:
        self._x = await self._run(_XConnection, self.x_display, self.display.width, self.display.height)
        # clicks focus windows through the window manager: it must be running before the first action
        if not await self._run(self._x.wait_for_wm, 10.0):
            log.warning("openbox did not start on %s within 10 s", self.x_display)

    def _part(self, name: str) -> Path:
        """A directory of this desktop that its sandbox sees (drivers/sandbox/workspaces.py)."""
        if self.sandbox is not None:
            return self.sandbox.workspaces.part(self.sandbox_id, name)
        return self.workdir / name

    @property
    def owner(self) -> tuple[int, int] | None:
        """Who must own what its sandbox writes (a restored home or profile); None: the server."""
        return sandbox_ids() if self.sandbox is not None else None

    def _record_pids(self) -> None:
        pids = {self.xserver.pid: self.xserver.executable}
        pids.update({proc.pid: exe for proc, exe in self._apps.values()})
        if self.browser is not None:
            pids[self.browser.process.pid] = self.sandbox.executable if self.sandbox else self._chromium_path
        write_pidfile(self._pidfile, pids)

    async def _watch_x(self) -> None:
        await self.xserver.process.wait()
        self._gone(GONE_REASON)

    def on_gone(self, callback: Callable[[str], None]) -> None:
        self._gone_callbacks.append(callback)

    def on_event(self, callback: Callable[[str, dict[str, Any]], None]) -> None:
        """The tab events of the desktop's browser, whichever browser is running."""
        self._event_callbacks.append(callback)

    def _forward_event(self, kind: str, fields: dict[str, Any]) -> None:
        for callback in self._event_callbacks:
            callback(kind, fields)

    def _gone(self, reason: str) -> None:
        if self._closing or self._gone_reason:
            return
        self._gone_reason = reason
        log.warning("desktop %s is gone: %s", self.x_display, reason)
        for callback in self._gone_callbacks:
            with contextlib.suppress(Exception):
                callback(reason)

    @property
    def alive(self) -> bool:
        return not self._closing and self._gone_reason is None and self.xserver.process.returncode is None

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._ready.close()
        self._watch.cancel()
        # children of the terminal live in sessions of their own: note them before their parents go
        victims = await asyncio.to_thread(self._descendants)
        browser, self.browser = self.browser, None
        await asyncio.gather(
            *([browser.close()] if browser else []),
            *(kill_group(proc.pid, grace=0) for proc, _exe in self._apps.values()),
            self.xserver.terminate(),
            return_exceptions=True,
        )
        await asyncio.to_thread(_kill_all, victims)
        for proc, _exe in self._apps.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 2)
        if self._x is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._xt.run(self._x.close), 2)
        self._xt.shutdown()
        if self.network is not None:
            with contextlib.suppress(Exception):
                await self.network.close()
        if self.sandbox is not None:  # its workspace and control group (the terminal's, exec's)
            with contextlib.suppress(Exception):
                await self.sandbox.remove(self.sandbox_id)
        self._pidfile.unlink(missing_ok=True)
        await asyncio.to_thread(shutil.rmtree, self.workdir, True)

    def _descendants(self) -> list[psutil.Process]:
        roots = [self.xserver.pid, *(proc.pid for proc, _exe in self._apps.values())]
        found: list[psutil.Process] = []
        for pid in roots:
            with contextlib.suppress(psutil.Error):
                found += psutil.Process(pid).children(recursive=True)
        return found

    # -- the X thread ---------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._xt.run(fn, *args)

    async def _xcall(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` on the X thread, in turn, its errors said as a driver's."""
        self._check_running()
        with self._x_errors():
            return await self._run(fn, *args)

    async def _xsend(self, fn: Callable[..., T], *args: Any, only_if: Callable[[], bool] | None = None) -> T:
        """Input that only sends (xthread.py): at once when the X thread is idle (and ``only_if()``
        says this call only sends), else in turn on it."""
        self._check_running()
        ran, result = False, None
        with self._x_errors():
            if self._xc.input.can_send():
                ran, result = self._xt.now(fn, *args, only_if=only_if)
        if not ran:
            result = await self._xcall(fn, *args)
        self._ready.after_input()
        return result  # type: ignore[return-value]

    def _look(self, quality: int) -> asyncio.Future[bytes] | None:
        """One look at the screen for ReadyShot, queued on the X thread; None while it has other work."""
        if self._xt.busy or not self.alive or self._x is None:
            return None
        future = self._xt.submit(self._x.jpeg, quality)
        future.add_done_callback(_consume)
        return future

    def _then_focus(self, focused: bool) -> None:
        """Unless the clicked window is known to have the focus, focus the one under the pointer
        before any later X call runs (xinput.py), without holding up the answer: the next
        action, screenshot or command queues behind it."""
        if not focused and self.alive:  # (a desktop closed while the click waited has no X thread left)
            self._xt.submit(self._xc.input.focus_under_pointer).add_done_callback(_consume)

    def _check_running(self) -> None:
        if not self.alive or self._x is None:
            raise ComputerGone("the desktop is no longer running")

    @contextlib.contextmanager
    def _x_errors(self) -> Iterator[None]:
        try:
            yield
        except (ScreenSizeError, NoSpareKeycode, ScreenShotError, ValueError) as exc:
            raise DriverError(str(exc)) from None
        except (xerror.ConnectionClosedError, OSError) as exc:
            if self.xserver.process.returncode is not None:
                raise ComputerGone("the desktop's X server is no longer running") from None
            raise DriverError(f"X server connection failed: {exc}") from None
        except xerror.XError as exc:
            raise DriverError(f"X server refused the request: {exc}") from None

    @property
    def _xc(self) -> _XConnection:
        assert self._x is not None
        return self._x

    # -- pointer and keyboard: the whole screen, whatever window is on top ----------------
    async def click(self, x: float, y: float, button: str, count: int, tab: str | None) -> None:
        self._then_focus(await self._xsend(self._xc.input.click, x, y, button, count))

    async def move(self, x: float, y: float, tab: str | None) -> None:
        await self._xsend(self._xc.input.move, x, y)

    async def mouse_down(self, x: float | None, y: float | None, button: str, tab: str | None) -> None:
        self._then_focus(await self._xsend(self._xc.input.button, x, y, button, True))

    async def mouse_up(self, x: float | None, y: float | None, button: str, tab: str | None) -> None:
        await self._xsend(self._xc.input.button, x, y, button, False)

    async def drag(self, path: list[tuple[float, float]], button: str, tab: str | None) -> None:
        await self._xcall(self._xc.input.drag, path, button)
        self._ready.after_input()

    async def scroll(self, x: float, y: float, dx: float, dy: float, tab: str | None) -> None:
        await self._xsend(self._xc.input.scroll, x, y, dx, dy)

    async def type_text(self, text: str, tab: str | None) -> None:
        # keys only send when each has a keycode and no window manager shortcut is waited for
        x = self._xc.input
        await self._xsend(x.type_text, text, only_if=lambda: x.sends_only_typing(text))

    async def press_keys(self, keys: list[str], tab: str | None) -> None:
        x = self._xc.input
        await self._xsend(x.press_keys, keys, only_if=lambda: x.sends_only_keys(keys))

    async def key_down(self, key: str, tab: str | None) -> None:
        x = self._xc.input
        await self._xsend(x.key_down, key, only_if=lambda: x.sends_only_keys([key]))

    async def key_up(self, key: str, tab: str | None) -> None:
        x = self._xc.input
        await self._xsend(x.key_up, key, only_if=lambda: x.sends_only_keys([key], up=True))

    # -- screen ---------------------------------------------------------------------------
    async def screenshot(self, quality: int, tab: str | None) -> bytes:
        self._ready.screenshot_taken(quality)
        return await self._xcall(self._xc.jpeg, quality)

    async def settle_input(self) -> None:
        """Wait until the X server has processed the input sent so far (before another X client looks)."""
        if self._x is not None and self._x.input.unsettled:
            await self._xcall(self._x.input.settle)

    def command_ended(self) -> None:
        """A shell command on this desktop ended: like input, it may have drawn (readyshot.py)."""
        self._ready.after_input()

    def screencast(self) -> DesktopScreencast:
        """Frames of the X screen when it changes, and the pointer (see drivers/desktop/screencast.py)."""
        return DesktopScreencast(self.x_display, self._xcall, lambda: (self._xc.screen.width, self._xc.screen.height),
                                 lambda: self.alive)

    async def set_viewport(self, display: Display) -> None:
        _check_scale(display)
        await self._xcall(self._xc.screen.resize, display.width, display.height)
        self.display = Display(display.width, display.height, 1.0)
        if self.browser is not None:
            await self.browser.set_viewport(self.display)  # no emulation: the window follows the screen

    # -- the desktop's browser --------------------------------------------------------------
    async def _start_browser(self, profile: Path | None = None) -> ChromiumComputer:
        """Start the desktop's browser on its profile (``profile`` becomes it when given).

        It runs in the desktop's sandbox, as its terminal does, but on the host's network:
        as the server's user, its address bar would open every file of the host
        (``file:///``), the server's data dir and other computers' profiles among them.
        It sees what the terminal sees (``/workspace``, the home at ``/home/user``, where
        its downloads go) and its profile. Saved state (core/environments.py) finds the
        profile as ``browser_profile``.
        """
        if profile is not None:
            self.browser_profile = profile
        wrap, env = None, x_env(self.x_display, self.workdir)
        if self.sandbox is not None:
            sandbox, display = self.sandbox, display_number(self.x_display)
            sandbox.workspaces.ensure(self.sandbox_id, "home")
            if self.browser_profile == self._part("browser"):
                sandbox.workspaces.ensure(self.sandbox_id, "browser")
            binds = [(self.browser_profile, str(self.browser_profile))]
            env = environment({"HOME": HOME_DIR}, display)

            def wrap(argv: list[str]) -> list[str]:
                return sandbox.program_line(self.sandbox_id, argv, cwd=HOME_DIR, x_display=display,
                                            binds=binds)
        # (proxied: a page load its forwarder refused, or could not route, fails with the reason)
        browser = await ProxiedChromium.launch(
            self._playwright, self._chromium_path, self.browser_profile,
            self.display, headless=False, env=env, emulate_viewport=False,
            extra_args=["--window-position=0,0", "--start-maximized", "--test-type",
                        *(proxy_flags(self.proxy.url) if self.proxy else [])],
            keep_profile=True, wrap=wrap, netns=self.network.namespace if self.network else None,
            relay_dir=self.workdir / "devtools", downloads=self._downloads(),
        )
        assert isinstance(browser, ProxiedChromium)
        browser.proxy = self.proxy  # the desktop's, not the browser's own: it outlives a closed window
        if self.network is not None:
            self.network.guard(browser.process.devtools.port)
        browser.x_display = self.x_display
        browser.on_gone(lambda _reason: self._browser_gone(browser))
        browser.on_event(self._forward_event)
        self.browser = browser
        self._record_pids()
        return browser

    async def restart_browser_with_profile(self, profile: Path) -> ChromiumComputer:
        """Replace the running browser with one on ``profile`` (a restored, saved profile).

        A desktop always comes with its browser running (launched with it, or warm from
        the pool) on a fresh profile; Chromium cannot switch profiles, so that one is closed.
        """
        async with self._browser_lock:
            old, self.browser = self.browser, None
            if old is not None:
                await old.close()  # closing first: no "gone" callback
                await asyncio.to_thread(shutil.rmtree, old.process.user_data_dir, True)  # its fresh profile
            try:
                return await self._start_browser(profile)
            except Exception as exc:
                raise DriverError(f"could not start the desktop's browser on its saved profile: {exc}") from exc

    def _browser_gone(self, browser: ChromiumComputer) -> None:
        if self.browser is browser:
            self.browser = None
            log.info("the browser on desktop %s went away", self.x_display)
        if not self._closing:
            self._retire(browser)

    def _retire(self, browser: ChromiumComputer) -> None:
        """Let a browser whose last window closed finish writing its profile (the next browser
        of this desktop starts on it), then end what is left of it; killing it at once lost
        the cookies and localStorage it had not flushed yet."""
        if browser in self._retiring:
            return

        async def retire() -> None:
            try:
                if not await profiles.wait_for_exit(browser, _EXIT_GRACE):
                    log.warning("the closed browser on desktop %s did not exit in %.0f s; ending it",
                                self.x_display, _EXIT_GRACE)
            finally:
                await browser.close()
                self._retiring.pop(browser, None)

        self._retiring[browser] = asyncio.get_running_loop().create_task(retire())

    async def browser_settled(self) -> None:
        """Wait until no browser of this desktop is still on its way out (its profile is written)."""
        if self._retiring:
            await asyncio.gather(*self._retiring.values(), return_exceptions=True)

    async def _need_browser(self) -> ChromiumComputer:
        """The desktop's browser, started again if it was closed."""
        if not self.alive:
            raise ComputerGone("the desktop is no longer running")
        async with self._browser_lock:
            if self.browser is not None and self.browser.alive and not len(self.browser.tabs):
                # its last window was closed and it is on its way out
                old, self.browser = self.browser, None
                self._retire(old)
            await self.browser_settled()  # one Chromium at a time on the profile
            if self.browser is None or not self.browser.alive:
                try:
                    await self._start_browser()
                except Exception as exc:
                    raise DriverError(f"could not start the desktop's browser: {exc}") from exc
            assert self.browser is not None
            return self.browser

    def _open_browser(self) -> ChromiumComputer | None:
        if not self.alive:
            raise ComputerGone("the desktop is no longer running")
        browser = self.browser
        return browser if browser is not None and browser.alive and len(browser.tabs) else None

    async def navigate(self, url: str, timeout: float, tab: str | None) -> None:
        browser = await self._need_browser()
        await browser.navigate(url, timeout, tab)
        with contextlib.suppress(Exception):
            # show the page (raise the browser window), and let it paint before the next action:
            # input that reaches a page before its first frame can be dropped
            t = await browser.tabs.get(tab)
            await t.page.bring_to_front()
            await asyncio.wait_for(t.page.evaluate(_TWO_FRAMES_JS), 1.0)
        self._ready.after_input()

    async def html(self, tab: str | None) -> str:
        browser = self._open_browser()
        if browser is None:
            raise DriverError(_NO_BROWSER)
        return await browser.html(tab)

    async def list_tabs(self) -> list[TabInfo]:
        browser = self._open_browser()
        return await browser.list_tabs() if browser else []

    async def new_tab(self, url: str | None, timeout: float) -> TabInfo:
        return await (await self._need_browser()).new_tab(url, timeout)

    async def switch_tab(self, tab: str) -> TabInfo:
        browser = self._open_browser()
        if browser is None:
            raise DriverError(_NO_BROWSER)
        return await browser.switch_tab(tab)

    async def close_tab(self, tab: str) -> None:
        browser = self._open_browser()
        if browser is None:
            raise DriverError(_NO_BROWSER)
        await browser.close_tab(tab)

    async def current_tab(self, tab: str | None) -> str | None:
        browser = self._open_browser()
        return await browser.current_tab(tab) if browser else None

    async def page_context(self, tab: str | None) -> PageContext | None:
        browser = self._open_browser()
        return await browser.page_context(tab) if browser else None

    async def cdp_endpoint(self) -> CdpEndpoint:
        return await (await self._need_browser()).cdp_endpoint()

    # -- files ----------------------------------------------------------------------------------
    def _downloads(self) -> DownloadDir | None:
        """Where its browser saves: ~/Downloads, where its terminal and commands look too (without a
        sandbox there is no home: the profile's, as a browser computer's)."""
        if self.sandbox is None:
            return None
        return DownloadDir(self.home / "Downloads", f"{HOME_DIR}/Downloads")

    def downloads_dir(self) -> Path:
        where = self._downloads()
        if where is not None:
            return where.host
        return self.browser_profile / "Downloads"

    async def set_input_files(self, target: ElementTarget | None, point: tuple[float, float] | None,
                              source: UploadSource, tab: str | None) -> None:
        try:
            await self._browser().set_input_files(target, point, source, tab)
        finally:
            self._ready.after_input()

    # -- perception: element snapshots and refs, of the desktop's browser --------------------
    # (drivers/chromium/perception.py; the boxes are placed on the X screen by the window's
    # position, and input on elements goes to the page over CDP, as Playwright sends it)
    def _browser(self) -> ChromiumComputer:
        browser = self._open_browser()
        if browser is None:
            raise DriverError(_NO_BROWSER)
        return browser

    async def page_snapshot(self, tab: str | None) -> PageSnapshot:
        return await self._browser().page_snapshot(tab)

    async def probe_frames(self, refs: list[str], tab: str | None) -> dict[str, FrameProbe | None]:
        return await self._browser().probe_frames(refs, tab)

    async def page_source(self, tab: str | None) -> tuple[str, str, str]:
        return await self._browser().page_source(tab)

    async def page_evaluate(self, expression: str, max_chars: int, tab: str | None) -> dict[str, Any]:
        """JavaScript in the page of the desktop's browser (the ``evaluate`` action)."""
        return await self._browser().page_evaluate(expression, max_chars, tab)

    async def element_click(self, target: ElementTarget, button: str, count: int, tab: str | None) -> None:
        try:
            await self._browser().element_click(target, button, count, tab)
        finally:
            self._ready.after_input()

    async def element_type(self, target: ElementTarget, text: str, tab: str | None) -> None:
        try:
            await self._browser().element_type(target, text, tab)
        finally:
            self._ready.after_input()

    async def element_fill(self, target: ElementTarget, text: str, tab: str | None) -> None:
        try:
            await self._browser().element_fill(target, text, tab)
        finally:
            self._ready.after_input()

    async def element_select(self, target: ElementTarget, values: list[str], tab: str | None) -> list[str]:
        try:
            return await self._browser().element_select(target, values, tab)
        finally:
            self._ready.after_input()

    async def element_scroll(self, target: ElementTarget, dx: float, dy: float, tab: str | None) -> None:
        try:
            await self._browser().element_scroll(target, dx, dy, tab)
        finally:
            self._ready.after_input()

    async def element_drag(self, source: ElementTarget, dest: ElementTarget, tab: str | None) -> None:
        try:
            await self._browser().element_drag(source, dest, tab)
        finally:
            self._ready.after_input()

    async def element_pointer(self, op: str, target: ElementTarget, button: str, tab: str | None) -> None:
        try:
            await self._browser().element_pointer(op, target, button, tab)
        finally:
            self._ready.after_input()

    async def history(self, op: str, timeout: float, tab: str | None) -> None:
        try:
            await self._browser().history(op, timeout, tab)
        finally:
            self._ready.after_input()


def _consume(future: asyncio.Future[Any]) -> None:
    """A background X call failed (the desktop went away meanwhile): the next call says so."""
    if not future.cancelled() and future.exception() is not None:
        log.debug("background X call failed: %r", future.exception())


def _kill_all(victims: list[psutil.Process], timeout: float = 2.0) -> None:
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    # not our children, so nobody here reaps them: a zombie counts as gone
    deadline = time.monotonic() + timeout
    while victims and time.monotonic() < deadline:
        victims = [p for p in victims if _running(p)]
        if victims:
            time.sleep(0.01)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
