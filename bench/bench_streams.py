"""Screencast benchmark: frames delivered through the API beside a raw CDP screencast.

Run by hand, never in CI:

    .venv/bin/python bench/bench_streams.py            # ~1.5 minutes
    .venv/bin/python bench/bench_streams.py --quick    # shorter windows, fewer samples

Figures:

- **fps**: frames delivered on a page that repaints every animation frame, counted over a window, with the
  interval between frames (p50/p95) and the mean JPEG size. Both Chromiums animate during both windows, so
  they share the machine alike. API: ``GET /computers/{id}/screencast`` read with
  the official SDK (``with_streaming_response`` + ``iter_lines``). Raw: CDP ``Page.startScreencast`` (JPEG,
  same quality and size, every frame acknowledged) on a Chromium launched with opencone's own launcher.
- **click → frame**: from the start of a click until the first frame that shows its effect arrives, on a page
  whose background colour toggles on mousedown (each frame is decoded and a pixel checked). API: SDK
  ``computers.click`` while the screencast is read; raw: ``page.mouse.click`` while the raw screencast runs.
  Samples of both sides are interleaved.
- The same two figures for a desktop computer (X capture, capped at 30 fps by design); its raw column is a
  direct Chromium screencast, i.e. what a browser alone could do.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import psutil
import simplejpeg
from _common import Site, loadavg, start_server, summary
from playwright.async_api import async_playwright

from opencone.config import Settings
from opencone.drivers.chromium.launcher import launch_chromium

T = TypeVar("T")
WIDTH, HEIGHT = 1024, 768  # the server's default display
QUALITY = 70  # what the server's screencast uses
RED, BLUE = (255, 0, 0), (0, 0, 255)

ANIM = """<!doctype html><html><head><meta charset="utf-8"><title>anim</title>
<style>html,body{margin:0;height:100%;background:#fff}canvas{display:block}</style></head><body>
<canvas id="c" width="600" height="400"></canvas><script>
const ctx = document.getElementById('c').getContext('2d'); let n = 0;
function draw() { n++; ctx.fillStyle = `hsl(${(n * 7) % 360},80%,50%)`; ctx.fillRect(0, 0, 600, 400);
  ctx.fillStyle = '#000'; ctx.font = '64px sans-serif'; ctx.fillText(String(n), 30, 100); requestAnimationFrame(draw); }
requestAnimationFrame(draw);
</script></body></html>"""

TOGGLE = """<!doctype html><html><head><meta charset="utf-8"><title>toggle</title>
<style>html,body{margin:0;height:100%;background:rgb(255,0,0)}</style></head><body><script>
let on = false;
document.addEventListener('mousedown', () => {
  on = !on; document.body.style.background = on ? 'rgb(0,0,255)' : 'rgb(255,0,0)'; });
</script></body></html>"""


def colour(image_b64: str, x: int, y: int) -> tuple[int, int, int] | None:
    """RED or BLUE if the pixel at (x, y) is clearly one of them."""
    pixels = simplejpeg.decode_jpeg(base64.b64decode(image_b64), colorspace="RGB", fastdct=True, fastupsample=True)
    r, g, b = (int(v) for v in pixels[y, x])
    if r > 200 and b < 60 and g < 60:
        return RED
    if b > 200 and r < 60 and g < 60:
        return BLUE
    return None


class Waiter:
    """The first frame (arrival time) whose probe pixel shows ``want``."""

    def __init__(self, want: tuple[int, int, int], probe: tuple[int, int]) -> None:
        self.want, self.probe = want, probe
        self.arrived: float | None = None
        self.done = threading.Event()

    def offer(self, at: float, image_b64: str) -> None:
        if not self.done.is_set() and colour(image_b64, *self.probe) == self.want:
            self.arrived = at
            self.done.set()


# -- the API side -------------------------------------------------------------------------------------
class ApiCast:
    """The screencast of one computer read through the SDK on a thread."""

    def __init__(self, client: Any, computer_id: str) -> None:
        self.client, self.computer_id = client, computer_id
        self.frames: list[tuple[float, int]] = []  # (arrival, jpeg bytes)
        self.waiter: Waiter | None = None
        self.last_image: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            with self.client.computers.with_streaming_response.retrieve_screencast(self.computer_id) as r:
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    at = time.perf_counter()
                    data = json.loads(line[5:])
                    if "image_data" not in data:
                        continue
                    self.frames.append((at, len(data["image_data"]) * 3 // 4))
                    self.last_image = data["image_data"]
                    waiter = self.waiter
                    if waiter is not None:
                        waiter.offer(at, data["image_data"])


# -- the raw side: a Chromium of our own, screencast over CDP ---------------------------------------------
class Raw:
    def __init__(self, executable: str, tmp: Path) -> None:
        self.executable, self.tmp = executable, tmp
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="raw-loop", daemon=True)
        self._thread.start()
        self.frames: list[tuple[float, int]] = []
        self.waiter: Waiter | None = None
        self.last_image: str | None = None
        self.run(self._start())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self.pw = await async_playwright().start()
        self.proc = await launch_chromium(self.executable, self.tmp / f"raw-{secrets.token_hex(4)}", WIDTH, HEIGHT)
        self.browser = await self.pw.chromium.connect_over_cdp(self.proc.ws_url)
        context = self.browser.contexts[0] if self.browser.contexts else await self.browser.new_context()
        self.page = context.pages[0] if context.pages else await context.new_page()
        self.cdp = await context.new_cdp_session(self.page)
        await self.cdp.send("Emulation.setDeviceMetricsOverride", {
            "width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False,
            "screenWidth": WIDTH, "screenHeight": HEIGHT,
        })

        def on_frame(params: dict[str, Any]) -> None:
            at = time.perf_counter()
            asyncio.ensure_future(self.cdp.send("Page.screencastFrameAck", {"sessionId": params["sessionId"]}))
            self.frames.append((at, len(params["data"]) * 3 // 4))
            self.last_image = params["data"]
            waiter = self.waiter
            if waiter is not None:
                waiter.offer(at, params["data"])

        self.cdp.on("Page.screencastFrame", on_frame)
        await self.cdp.send("Page.startScreencast", {"format": "jpeg", "quality": QUALITY, "maxWidth": WIDTH,
                                                     "maxHeight": HEIGHT, "everyNthFrame": 1})

    def goto(self, url: str) -> None:
        self.run(self.page.goto(url, wait_until="load"))

    def click(self, x: int, y: int) -> None:
        self.run(self.page.mouse.click(x, y))

    def close(self) -> None:
        async def stop() -> None:
            await self.proc.terminate()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.browser.close(), 2)
            await self.pw.stop()
            await asyncio.sleep(0.3)  # the launcher reaps the process in the background
        with contextlib.suppress(Exception):
            self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


# -- measurements ------------------------------------------------------------------------------------------
def fps_window(frames: list[tuple[float, int]], seconds: float, procs: list[psutil.Process]) -> dict[str, Any]:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    n0, t0 = len(frames), time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - t0
    cpu = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            cpu += p.cpu_percent(None)
    window = frames[n0:]
    gaps = [(b[0] - a[0]) * 1000 for a, b in zip(window, window[1:], strict=False)]
    return {"fps": len(window) / elapsed, "frames": len(window), "interval_ms": summary(gaps),
            "kib_per_frame": (sum(f[1] for f in window) / len(window) / 1024) if window else None,
            "server_cpu_percent": cpu if procs else None}


def click_latency(click: Any, holder: Any, probe: tuple[int, int]) -> float | None:
    """Click, and time until the first frame whose probe pixel shows the other colour."""
    now = colour(holder.last_image, *probe) if holder.last_image else None
    waiter = Waiter(BLUE if now == RED else RED, probe)
    holder.waiter = waiter
    t0 = time.perf_counter()
    click()
    ok = waiter.done.wait(5)
    holder.waiter = None
    return (waiter.arrived - t0) * 1000 if ok and waiter.arrived else None


def latency_rows(samples: int, api_click: Any, api: Any, raw_click: Any | None, raw: Any | None,
                 probe: tuple[int, int], raw_probe: tuple[int, int]) -> dict[str, Any]:
    """Interleaved samples (API, then raw), after two warm-up rounds."""
    out: dict[str, list[float]] = {"api": [], "raw": []}
    lost = 0
    for i in range(samples + 2):
        for side, click, holder, pr in (("api", api_click, api, probe), ("raw", raw_click, raw, raw_probe)):
            if holder is None:
                continue
            v = click_latency(click, holder, pr)
            if v is None:
                lost += 1
            elif i >= 2:
                out[side].append(v)
            time.sleep(0.1)  # let the last frames of this click settle
    return {"api": summary(out["api"]), "raw": summary(out["raw"]) if raw is not None else None, "lost": lost}


def fmt(s: dict[str, Any] | None, key: str = "p50") -> str:
    if not s or s.get(key) is None:
        return "–"
    return f"{s[key]:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-json", action="store_true")
    args = ap.parse_args()
    window = 2.0 if args.quick else 5.0
    samples = 5 if args.quick else 20

    tmp = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    (tmp / "site").mkdir()
    (tmp / "site" / "anim.html").write_text(ANIM)
    (tmp / "site" / "toggle.html").write_text(TOGGLE)
    site = Site(tmp / "site")
    executable = Settings().browser_executable
    results: dict[str, Any] = {"load_start": loadavg(), "cores": os.cpu_count()}
    server = start_server(tmp, env={"OPENCONE_POOL_SIZE": "1"})
    raw: Raw | None = None
    try:
        client = server.client()
        server_proc = [psutil.Process(server.process.pid)]

        # -- browser ------------------------------------------------------------------------------
        comp = client.computers.create(kind="browser")
        client.computers.navigate(comp.id, url=f"{site.url}/anim.html")
        raw = Raw(executable, tmp)
        raw.goto(f"{site.url}/anim.html")
        api = ApiCast(client, comp.id)
        time.sleep(1.0)
        results["browser_fps_api"] = fps_window(api.frames, window, server_proc)
        results["browser_fps_raw"] = fps_window(raw.frames, window, [])

        client.computers.navigate(comp.id, url=f"{site.url}/toggle.html")
        raw.goto(f"{site.url}/toggle.html")
        time.sleep(0.5)
        results["browser_click_to_frame_ms"] = latency_rows(
            samples, lambda: client.computers.click(comp.id, x=500, y=400), api,
            lambda: raw.click(500, 400), raw, (500, 300), (500, 300))
        client.computers.delete(comp.id)

        # -- desktop ------------------------------------------------------------------------------
        desk = client.computers.create(kind="desktop")
        client.computers.navigate(desk.id, url=f"{site.url}/anim.html")
        dcast = ApiCast(client, desk.id)
        time.sleep(1.5)
        results["desktop_fps_api"] = fps_window(dcast.frames, window, server_proc)
        client.computers.navigate(desk.id, url=f"{site.url}/toggle.html")
        time.sleep(1.0)
        results["desktop_click_to_frame_ms"] = latency_rows(
            samples, lambda: client.computers.click(desk.id, x=500, y=500), dcast, None, None,
            (500, 600), (0, 0))
        client.computers.delete(desk.id)
    finally:
        if raw is not None:
            raw.close()
        server.stop()
        site.close()
        shutil.rmtree(tmp, ignore_errors=True)
    results["load_end"] = loadavg()

    b_api, b_raw, d_api = results["browser_fps_api"], results["browser_fps_raw"], results["desktop_fps_api"]
    bl, dl = results["browser_click_to_frame_ms"], results["desktop_click_to_frame_ms"]
    print(f"\nscreencast, {WIDTH}x{HEIGHT} JPEG q{QUALITY}; {results['cores']} cores; "
          f"load {results['load_start'][0]:.2f} → {results['load_end'][0]:.2f}\n")
    print(f"{'figure':44} {'API':>10} {'raw':>10}")
    print(f"{'browser fps, animating page':44} {b_api['fps']:>10.1f} {b_raw['fps']:>10.1f}")
    print(f"{'browser frame interval p50 / p95 (ms)':44} "
          f"{fmt(b_api['interval_ms']) + ' / ' + fmt(b_api['interval_ms'], 'p95'):>10} "
          f"{fmt(b_raw['interval_ms']) + ' / ' + fmt(b_raw['interval_ms'], 'p95'):>10}")
    print(f"{'browser KiB per frame':44} {b_api['kib_per_frame'] or 0:>10.1f} {b_raw['kib_per_frame'] or 0:>10.1f}")
    print(f"{'server process CPU % while streaming':44} {b_api['server_cpu_percent']:>10.0f} {'':>10}")
    print(f"{'browser click → frame p50 (ms)':44} {fmt(bl['api']):>10} {fmt(bl['raw']):>10}")
    print(f"{'browser click → frame p95 (ms)':44} {fmt(bl['api'], 'p95'):>10} {fmt(bl['raw'], 'p95'):>10}")
    print(f"{'desktop fps, animating page (cap 30)':44} {d_api['fps']:>10.1f} {'':>10}")
    print(f"{'desktop KiB per frame':44} {d_api['kib_per_frame'] or 0:>10.1f} {'':>10}")
    print(f"{'server process CPU % while streaming desktop':44} {d_api['server_cpu_percent']:>10.0f} {'':>10}")
    print(f"{'desktop click → frame p50 / p95 (ms)':44} "
          f"{fmt(dl['api']) + ' / ' + fmt(dl['api'], 'p95'):>10} {'':>10}")

    if not args.no_json:
        out = Path(__file__).resolve().parent / "results"
        out.mkdir(exist_ok=True)
        path = out / f"streams-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
