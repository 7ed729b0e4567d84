"""Desktop benchmark: opencone's desktop API against the raw X cost of the same operation.

Run by hand, never in CI (a few minutes; wants a quiet machine):

    .venv/bin/python bench/bench_desktop.py             # 20 samples per figure
    .venv/bin/python bench/bench_desktop.py --quick     # smoke run, 5 samples
    .venv/bin/python bench/bench_desktop.py --actions-only --samples 100   # skip the create rows

API figures are calls of the official ``tzafon`` SDK to a real ``opencone serve``
process. Raw figures are the same operation done here directly: Xvfb started with
``-displayfd`` and checked with an Xlib connect; the whole desktop (Xvfb, openbox,
xterm, a headful Chromium with the same flags, connected over CDP); an mss (XShm) grab
encoded by simplejpeg; a python-xlib XTest click and 20-character type on a display
that shows the same page as the server's desktop. Raw and API samples alternate, each
side going first in every other round, so background load hits both alike.
``--settle MS`` pauses before each sample, as an agent leaves time between actions: no
sample then pays for the browser still handling the input before it, but every process
wakes from idle, which on a small VM costs each hop (client -> server -> X thread -> Xvfb
and back) more than back-to-back calls do.

Screenshots come in three rows. "screen changed": one character is typed on both desktops
first (not timed) and their browsers are given 50 ms to draw it, as an agent acts and then
looks; the server uses such a moment to encode the screen ahead (drivers/desktop/readyshot.py)
and answers with that JPEG when nothing was drawn since, while the raw side grabs and encodes
as always. "changed by another client": a small window of this process's own is repainted on
both screens just before (not timed): a change no API input announced, so the server grabs and
encodes it then, though only the 32-row bands the window is in (drivers/desktop/stripjpeg.py),
while the raw side grabs and encodes the whole screen. "screen unchanged": both sides took a screenshot just
before (not timed) and nothing was typed since; the server then hands out its last JPEG again
when XDAMAGE says nothing was drawn (drivers/desktop/damage.py), while the raw side grabs and
encodes as always (a blinking caret can still count as a change).

The "API floor" rows are SDK calls that reach the server and do nothing on the desktop
(``GET /computers/{id}/status``, ``POST .../keepalive``): the HTTP + SDK + auth cost every
action pays. The "-floor" column is an action's API p50 minus the status p50 of the same
run, i.e. what the server adds on top of the raw operation and that round trip. "SDK floor"
is the same SDK click sent to bench/null_http.py, which answers at once without doing
anything: the least any server could cost a click here (the SDK, httpx and loopback TCP),
to hold beside the click target (raw XTest + 2 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import mss
import numpy
import simplejpeg
from _common import Server, Site, loadavg, null_http, start_server, summary
from playwright.async_api import async_playwright
from tzafon import Lightcone
from Xlib import XK, X
from Xlib.display import Display as XDisplay
from Xlib.ext import xtest

from opencone.config import Settings
from opencone.drivers.chromium.launcher import launch_chromium
from opencone.drivers.desktop.apps import OPENBOX_RC

WIDTH, HEIGHT = 1024, 768
QUALITY = 80
TEXT20 = "opencone bench 12345"
assert len(TEXT20) == 20
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>bench</title></head>
<body style="font:16px sans-serif;margin:20px"><h1>opencone desktop bench</h1>
<input id="box" style="position:absolute;left:20px;top:100px;width:600px;height:30px">
<p style="position:absolute;top:200px">A small static page with an input.</p></body></html>"""
FLOOR_ROW = "API floor (GET status)"
NULL_ROW = "SDK floor (click, null server)"
HTTP_NULL_ROW = "HTTP floor (click, null server)"
HTTP_CLICK = "click, plain HTTP"
SHOT_CHANGED_URL, SHOT_CHANGED_B64 = "screenshot, screen changed (URL)", "screenshot, screen changed (b64)"
SHOT_UNCHANGED = "screenshot, screen unchanged (URL)"
SHOT_OTHER = "screenshot, changed by other client"
ACTION_ROWS = (SHOT_CHANGED_URL, SHOT_CHANGED_B64, SHOT_OTHER, SHOT_UNCHANGED, "click", HTTP_CLICK, "type 20 chars")
CLICK_AT = (200, 200)  # page (20..620, 100..130) sits below the browser's ~87 px of tabs and toolbar


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return ms(t0)


def ok(result: Any, what: str) -> Any:
    if getattr(result, "status", "success") != "success":
        raise RuntimeError(f"{what} failed: {getattr(result, 'error_message', result)}")
    return result


# -- the raw side ------------------------------------------------------------------------------
def http_ok(response: httpx.Response) -> None:
    if response.status_code != 200 or response.json().get("status") != "success":
        raise RuntimeError(f"plain HTTP click failed: {response.status_code} {response.text[:200]}")


def raw_xvfb() -> tuple[subprocess.Popen[bytes], str]:
    """Xvfb with -displayfd, up and answering an Xlib connect."""
    r, w = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", f"{WIDTH}x{HEIGHT}x24",
                             "-nolisten", "tcp", "-noreset"], pass_fds=(w,), start_new_session=True,
                            stderr=subprocess.DEVNULL)
    os.close(w)
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(r, 64)
        if not chunk:
            raise RuntimeError("Xvfb exited")
        data += chunk
    os.close(r)
    name = f":{int(data)}"
    XDisplay(name).close()
    return proc, name


def kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 9)
    proc.wait()


class RawDesktop:
    """Xvfb + openbox + xterm + headful Chromium, started and driven directly."""

    def __init__(self, tmp: Path, executable: str) -> None:
        self.tmp, self.executable = tmp, executable
        self.loop = asyncio.new_event_loop()
        self.pw = self.loop.run_until_complete(async_playwright().start())
        self.open: list[dict[str, Any]] = []  # desks not closed yet (stop closes them)

    def launch(self, url: str | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        xvfb, name = raw_xvfb()
        work = self.tmp / f"raw-{secrets.token_hex(4)}"
        work.mkdir()
        (work / "rc.xml").write_text(OPENBOX_RC)
        env = {**os.environ, "DISPLAY": name, "HOME": str(work)}
        wm = subprocess.Popen(["openbox", "--config-file", str(work / "rc.xml")], env=env, start_new_session=True,
                              stderr=subprocess.DEVNULL)
        term = subprocess.Popen(["xterm"], env=env, start_new_session=True, stderr=subprocess.DEVNULL)
        d = XDisplay(name)
        atom = d.intern_atom("_NET_SUPPORTING_WM_CHECK")
        while d.screen().root.get_full_property(atom, X.AnyPropertyType) is None:
            time.sleep(0.005)

        async def browser() -> Any:
            proc = await launch_chromium(self.executable, work / "chromium", WIDTH, HEIGHT, headless=False, env=env,
                                         extra_args=["--window-position=0,0", "--start-maximized", "--test-type"])
            b = await self.pw.chromium.connect_over_cdp(proc.ws_url)
            ctx = b.contexts[0]
            page = ctx.pages[0] if ctx.pages else await ctx.new_page()
            return proc, b, page

        chromium, b, page = self.loop.run_until_complete(browser())
        create = ms(t0)
        if url:
            self.loop.run_until_complete(page.goto(url, wait_until="load"))
        desk = {"create": create, "xvfb": xvfb, "wm": wm, "term": term, "chromium": chromium, "browser": b,
                "display": d, "name": name, "work": work}
        self.open.append(desk)
        return desk

    def close(self, desk: dict[str, Any]) -> None:
        self.open.remove(desk)
        self.loop.run_until_complete(desk["chromium"].terminate())
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(asyncio.wait_for(desk["browser"].close(), 2))
        desk["display"].close()
        for key in ("term", "wm", "xvfb"):
            kill(desk[key])
        shutil.rmtree(desk["work"], ignore_errors=True)

    def stop(self) -> None:
        for desk in list(self.open):  # a run that failed half way
            with contextlib.suppress(Exception):
                self.close(desk)
        self.loop.run_until_complete(self.pw.stop())
        self.loop.close()


class RawOps:
    """mss + simplejpeg grabs and XTest input on one display, as a driver without a server would do."""

    def __init__(self, desk: dict[str, Any]) -> None:
        self.d: Any = desk["display"]
        self.grabber = mss.MSS(display=desk["name"])
        self.codes = {c: self._code(c) for c in set(TEXT20 + "x")}
        self.shift = self.d.keysym_to_keycode(XK.string_to_keysym("Shift_L"))

    def _code(self, char: str) -> tuple[int, bool]:
        sym = ord(char)
        for code, index in self.d.keysym_to_keycodes(sym):
            if index in (0, 1):
                return code, index == 1
        raise RuntimeError(f"no key for {char!r}")

    def screenshot(self) -> float:
        t0 = time.perf_counter()
        shot = self.grabber.grab({"left": 0, "top": 0, "width": WIDTH, "height": HEIGHT})
        pixels = numpy.frombuffer(shot.raw, numpy.uint8).reshape(HEIGHT, WIDTH, 4)
        simplejpeg.encode_jpeg(pixels, quality=QUALITY, colorspace="BGRA", colorsubsampling="420", fastdct=True)
        return ms(t0)

    def click(self) -> float:
        t0 = time.perf_counter()
        xtest.fake_input(self.d, X.MotionNotify, x=CLICK_AT[0], y=CLICK_AT[1])
        xtest.fake_input(self.d, X.ButtonPress, 1)
        xtest.fake_input(self.d, X.ButtonRelease, 1)
        self.d.sync()
        return ms(t0)

    def type20(self) -> float:
        return self.type_text(TEXT20)

    def type_text(self, text: str) -> float:
        t0 = time.perf_counter()
        for char in text:
            code, shifted = self.codes[char]
            if shifted:
                xtest.fake_input(self.d, X.KeyPress, self.shift)
            xtest.fake_input(self.d, X.KeyPress, code)
            xtest.fake_input(self.d, X.KeyRelease, code)
            if shifted:
                xtest.fake_input(self.d, X.KeyRelease, self.shift)
        self.d.sync()
        return ms(t0)

    def close(self) -> None:
        self.grabber.close()


class Painter:
    """A small window of this process's own on a display, repainted in a new colour on demand:
    a change no API input caused, so the server has not looked at the screen since."""

    def __init__(self, name: str) -> None:
        self.d = XDisplay(name)
        screen = self.d.screen()
        self.win = screen.root.create_window(WIDTH - 80, HEIGHT - 80, 64, 64, 0, screen.root_depth,
                                             override_redirect=True, background_pixel=0)
        self.win.map()
        self.colour = 0
        self.d.sync()

    def paint(self) -> None:
        self.colour = (self.colour + 0x3F1F0F) & 0xFFFFFF
        self.win.change_attributes(background_pixel=self.colour)
        self.win.clear_area(0, 0, 0, 0)
        self.d.sync()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # (its X server may be gone already)
            self.d.close()


# -- results -----------------------------------------------------------------------------------
class Results:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, list[float]]] = {}
        self.raw_label: dict[str, str] = {}

    def add(self, row: str, side: str, value: float) -> None:
        self.rows.setdefault(row, {"api": [], "raw": []})[side].append(value)

    def table(self) -> tuple[str, list[dict[str, Any]]]:
        head = (f"{'operation':34} {'API p50':>9} {'API p95':>9}   {'raw p50':>8} {'raw p95':>8}  {'ratio':>6}"
                f"  {'-floor':>7}")
        lines = [head + "  raw is (all in ms)", "-" * 120]
        out = []
        floor = summary(self.rows.get(FLOOR_ROW, {}).get("api", []))["p50"]
        for row, sides in self.rows.items():
            a, r = summary(sides["api"]), summary(sides["raw"])
            ratio = a["p50"] / r["p50"] if a["p50"] and r["p50"] else None
            cells = [f"{v:9.1f}" if v is not None else f"{'-':>9}" for v in (a["p50"], a["p95"])]
            raw = [f"{v:8.2f}" if v is not None else f"{'-':>8}" for v in (r["p50"], r["p95"])]
            rtxt = f"{ratio:6.1f}" if ratio else f"{'-':>6}"
            over = a["p50"] - floor if floor is not None and a["p50"] is not None and row in ACTION_ROWS else None
            otxt = f"{over:7.1f}" if over is not None else f"{'-':>7}"
            lines.append(f"{row:34} {cells[0]} {cells[1]}   {raw[0]} {raw[1]}  {rtxt}  {otxt}  "
                         f"{self.raw_label.get(row, '')}")
            out.append({"operation": row, "api_ms": a, "raw_ms": r, "ratio_p50": ratio, "api_minus_floor_p50": over,
                        "raw_is": self.raw_label.get(row, "")})
        return "\n".join(lines), out


def wait_pool_ready(server: Server, timeout: float = 60) -> None:
    """The desktop pool is full once a desktop's pidfile lists its browser (4 processes)."""
    run = Path(server.run_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pidfile in run.glob("desktop-*.pids"):
            if len(pidfile.read_text().splitlines()) >= 4:
                time.sleep(0.3)  # the pool appends it right after
                return
        time.sleep(0.05)
    raise TimeoutError("the desktop pool did not fill")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-json", action="store_true")
    ap.add_argument("--actions-only", action="store_true", help="skip the create rows (cold and pool)")
    ap.add_argument("--settle", type=float, default=0.0, metavar="MS", help="pause before each action sample")
    args = ap.parse_args()
    n = 5 if args.quick else args.samples
    n_create = max(3, n // 2)
    settle = args.settle / 1000
    executable = Settings().chromium_path
    tmp = Path(tempfile.mkdtemp(prefix="opencone-bench-desktop-"))
    (tmp / "site").mkdir()
    (tmp / "site" / "page.html").write_text(PAGE)
    site = Site(tmp / "site")
    url = f"{site.url}/page.html"
    res = Results()
    res.raw_label.update({
        "create desktop, cold (vs Xvfb)": "Xvfb -displayfd up + Xlib connect",
        "create desktop, cold (vs stack)": "Xvfb+openbox+xterm+headful Chromium+CDP",
        "create desktop, from pool": "Xvfb -displayfd up + Xlib connect",
        SHOT_CHANGED_URL: "mss XShm grab + simplejpeg q80 420",
        SHOT_CHANGED_B64: "mss XShm grab + simplejpeg q80 420",
        SHOT_UNCHANGED: "mss XShm grab + simplejpeg q80 420",
        SHOT_OTHER: "mss XShm grab + simplejpeg q80 420",
        "click": "python-xlib XTest motion+press+release+sync",
        "type 20 chars": "python-xlib XTest 20 keys+sync",
        NULL_ROW: "python-xlib XTest motion+press+release+sync",
        HTTP_CLICK: "python-xlib XTest motion+press+release+sync",
        HTTP_NULL_ROW: "python-xlib XTest motion+press+release+sync",
    })
    load_before = loadavg()
    raw = RawDesktop(tmp, executable)
    cold = start_server(tmp, env={"OPENCONE_POOL_SIZE": "0", "OPENCONE_DESKTOP_POOL_SIZE": "0"})
    stack = contextlib.ExitStack()
    stack.callback(cold.stop)  # last out: whatever else fails to close, the server stops
    try:
        client = cold.client(timeout=120)
        if not args.actions_only:
            print(f"cold creates ({n_create}) ...", flush=True)
        for i in range(0 if args.actions_only else n_create + 1):
            t0 = time.perf_counter()
            comp = client.computers.create(kind="desktop")
            api = ms(t0)
            client.computers.delete(comp.id)
            t0 = time.perf_counter()
            xvfb, _name = raw_xvfb()
            raw_x = ms(t0)
            kill(xvfb)
            desk = raw.launch()
            raw.close(desk)
            if i == 0:
                continue  # warm-up: Playwright's driver starts with the first desktop
            res.add("create desktop, cold (vs Xvfb)", "api", api)
            res.add("create desktop, cold (vs Xvfb)", "raw", raw_x)
            res.add("create desktop, cold (vs stack)", "api", api)
            res.add("create desktop, cold (vs stack)", "raw", desk["create"])

        print(f"actions ({n}) ...", flush=True)
        comp = client.computers.create(kind="desktop")
        ok(client.computers.navigate(comp.id, url=url), "navigate")
        desk = raw.launch(url)
        ops = RawOps(desk)
        ok(client.computers.click(comp.id, x=CLICK_AT[0], y=CLICK_AT[1]), "click")
        ops.click()
        shuffler = random.Random(1)
        null_url = stack.enter_context(null_http())
        null_client = Lightcone(api_key="unused", base_url=null_url, max_retries=0)
        click_body = {"x": CLICK_AT[0], "y": CLICK_AT[1]}
        http = stack.enter_context(cold.http())
        http_null = stack.enter_context(httpx.Client(base_url=null_url))
        for row in (FLOOR_ROW, "API floor (POST keepalive)", NULL_ROW, HTTP_NULL_ROW, *ACTION_ROWS):  # table order
            res.rows.setdefault(row, {"api": [], "raw": []})
        def change_both() -> None:  # (not timed) both screens move: one more character in the input
            ok(client.computers.type(comp.id, text="x"), "type")
            ops.type_text("x")
            time.sleep(0.05)

        api_display = ok(client.computers.exec.sync(comp.id, command="echo $DISPLAY"), "exec").stdout.strip()
        painters = [Painter(api_display), Painter(desk["name"])]
        stack.callback(lambda: [p.close() for p in painters])

        def paint_both() -> None:  # (not timed) another X client draws on both screens, at once before
            for painter in painters:
                painter.paint()

        def look_at_both() -> None:  # (not timed) both sides have just taken this screen
            ok(client.computers.screenshot(comp.id), "screenshot")
            ops.screenshot()

        url_shot = (lambda: ok(client.computers.screenshot(comp.id), "screenshot"), ops.screenshot)
        samples: dict[str, tuple[Callable[[], Any], Callable[[], float] | None, Callable[[], None] | None]] = {
            SHOT_CHANGED_URL: (*url_shot, change_both),
            FLOOR_ROW: (lambda: client.computers.retrieve_status(comp.id), None, None),
            SHOT_CHANGED_B64: (lambda: ok(client.computers.screenshot(comp.id, base64=True), "shot"),
                               ops.screenshot, change_both),
            SHOT_UNCHANGED: (*url_shot, look_at_both),
            SHOT_OTHER: (*url_shot, paint_both),
            "API floor (POST keepalive)": (lambda: client.computers.keepalive(comp.id), None, None),
            NULL_ROW: (lambda: ok(null_client.computers.click(comp.id, x=CLICK_AT[0], y=CLICK_AT[1]), "null click"),
                       ops.click, None),
            "click": (lambda: ok(client.computers.click(comp.id, x=CLICK_AT[0], y=CLICK_AT[1]), "click"),
                      ops.click, None),
            "type 20 chars": (lambda: ok(client.computers.type(comp.id, text=TEXT20), "type"), ops.type20, None),
            HTTP_CLICK: (lambda: http_ok(http.post(f"/computers/{comp.id}/click", json=click_body)), ops.click, None),
            HTTP_NULL_ROW: (lambda: http_ok(http_null.post(f"/computers/{comp.id}/click", json=click_body)),
                            ops.click, None),
        }
        for i in range(n + 3):
            # 20 typed keys keep both browsers busy for several ms: whichever sample comes next pays
            # for it (in a fixed order that was always the URL screenshot). A shuffled order spreads it.
            order = list(samples.items())
            shuffler.shuffle(order)
            for row, (api_fn, raw_fn, prepare) in order:
                if prepare is not None:
                    prepare()
                # which side goes first alternates: the first one pays for whatever is still running
                # (after a change, both browsers may still be painting)
                a = r = None
                for side in ("api", "raw") if i % 2 else ("raw", "api"):
                    time.sleep(settle)
                    if side == "api":
                        a = timed(api_fn)
                    elif raw_fn is not None:
                        r = raw_fn()
                assert a is not None
                if i >= 3:
                    res.add(row, "api", a)
                    if r is not None:
                        res.add(row, "raw", r)
        ops.close()
        raw.close(desk)
        client.computers.delete(comp.id)
    except BaseException:
        raw.stop()  # (on success the pool creates below still use it)
        raise
    finally:
        stack.close()

    if args.actions_only:
        raw.stop()
        site.close()
        shutil.rmtree(tmp, ignore_errors=True)
        return report(res, args, n, load_before)
    warm = start_server(tmp, env={"OPENCONE_POOL_SIZE": "0", "OPENCONE_DESKTOP_POOL_SIZE": "1"})
    try:
        client = warm.client(timeout=120)
        print(f"pool creates ({n_create}) ...", flush=True)
        for i in range(n_create + 1):
            wait_pool_ready(warm)
            t0 = time.perf_counter()
            comp = client.computers.create(kind="desktop")
            api = ms(t0)
            client.computers.delete(comp.id)
            t0 = time.perf_counter()
            xvfb, _name = raw_xvfb()
            raw_x = ms(t0)
            kill(xvfb)
            if i:
                res.add("create desktop, from pool", "api", api)
                res.add("create desktop, from pool", "raw", raw_x)
    finally:
        warm.stop()
        raw.stop()
        site.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return report(res, args, n, load_before)


def report(res: Results, args: argparse.Namespace, n: int, load_before: tuple[float, float, float]) -> int:
    text, rows = res.table()
    load_after = loadavg()
    print()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          "(on 2 cores, above ~1 the figures are noisy)")
    print(text)
    if not args.no_json:
        out = Path(__file__).with_name("results")
        out.mkdir(exist_ok=True)
        path = out / f"desktop-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps({"samples": n, "settle_ms": args.settle, "load": [load_before, load_after],
                                   "rows": rows}, indent=2))
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
