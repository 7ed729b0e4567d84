"""Browser benchmark: opencone's API against the raw Playwright/CDP cost of the same operation.

Run by hand, never in CI (it takes a few minutes and wants a quiet machine):

    .venv/bin/python bench/bench_browser.py            # full run
    .venv/bin/python bench/bench_browser.py --quick    # smoke run, ~1 minute

Every API figure goes through the official ``tzafon`` SDK to a real ``opencone serve``
process; every raw figure is the same operation done directly with Playwright/CDP on a
Chromium this script launches itself with opencone's own launcher (identical flags).
Raw and API samples are interleaved so background load hits both alike.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.metadata
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import psutil
from _common import (
    Server,
    Site,
    loadavg,
    pids_with,
    pss_kib,
    start_server,
    summary,
    total_pss_mib,
    user_data_dirs,
)
from playwright.async_api import async_playwright

from opencone.config import Settings
from opencone.drivers.chromium.launcher import launch_chromium

T = TypeVar("T")

WIDTH, HEIGHT = 1024, 768  # the server's default display, so both sides render the same frame
QUALITY = 80
TEXT20 = "opencone bench 12345"  # 20 characters
CLICK_AT = (200, 115)  # inside the text box of page A
assert len(TEXT20) == 20

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>bench {name}</title>
<style>body{{font:16px sans-serif;margin:20px}} td{{border:1px solid #999;padding:4px}}</style></head>
<body><h1>opencone bench page {name}</h1>
<input id="box" autofocus style="position:absolute;left:20px;top:100px;width:600px;height:30px">
<button style="position:absolute;left:20px;top:160px" onclick="this.textContent=++window.n">0</button>
<div style="position:absolute;top:220px"><p>A small static page: a heading, an input, a button and a table.</p>
<table>{rows}</table></div>
<script>window.n = 0</script></body></html>
"""


def write_site(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"<tr><td>row {i}</td><td>{i * i}</td><td>value {i}</td></tr>" for i in range(12))
    for name in ("a", "b"):
        (root / f"{name}.html").write_text(PAGE.format(name=name.upper(), rows=rows))


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


# -- the raw side: Playwright/CDP in an event loop on its own thread -------------------------------
class Raw:
    """Chromium launched with opencone's launcher and driven directly, timed inside the event loop."""

    def __init__(self, executable: str, tmp: Path) -> None:
        self.executable = executable
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="raw-loop", daemon=True)
        self._thread.start()
        self.pw: Any = self.run(self._start_playwright())
        self._proc: Any = None
        self._browser: Any = None
        self.page: Any = None
        self.cdp: Any = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start_playwright(self) -> Any:
        return await async_playwright().start()

    async def _launch(self) -> tuple[Any, Any, Any, Any]:
        proc = await launch_chromium(self.executable, self.tmp / f"raw-{secrets.token_hex(6)}", WIDTH, HEIGHT)
        browser = await self.pw.chromium.connect_over_cdp(proc.ws_url)
        context = browser.contexts[0] if browser.contexts else await browser.new_context()
        page = context.pages[0] if context.pages else await context.new_page()
        return proc, browser, context, page

    async def create_sample(self) -> dict[str, float]:
        """launch + connect + first page ready; then first screenshot; then kill."""
        t0 = time.perf_counter()
        proc, browser, context, page = await self._launch()
        create = ms(t0)
        cdp = await context.new_cdp_session(page)
        shot = await cdp.send("Page.captureScreenshot", {"format": "jpeg", "quality": QUALITY})
        base64.b64decode(shot["data"])
        first_shot = ms(t0)
        t1 = time.perf_counter()
        await proc.terminate()
        delete = ms(t1)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(browser.close(), 2)
        return {"create": create, "create_shot": first_shot, "delete": delete}

    async def _open(self, url: str) -> None:
        self._proc, self._browser, context, self.page = await self._launch()
        self.cdp = await context.new_cdp_session(self.page)
        # the same device metrics the server sets on every tab
        await self.cdp.send("Emulation.setDeviceMetricsOverride", {
            "width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False,
            "screenWidth": WIDTH, "screenHeight": HEIGHT,
        })
        await self.page.goto(url, wait_until="load")

    def open(self, url: str) -> None:
        self.run(self._open(url))

    async def _close(self) -> None:
        if self._proc is not None:
            await self._proc.terminate()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._browser.close(), 2)
            self._proc = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self._close())
        with contextlib.suppress(Exception):
            self.run(self.pw.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    # timed operations, each returning milliseconds
    async def click(self) -> float:
        t0 = time.perf_counter()
        await self.page.mouse.click(*CLICK_AT)
        return ms(t0)

    async def type20(self) -> float:
        t0 = time.perf_counter()
        await self.page.keyboard.type(TEXT20)
        return ms(t0)

    async def screenshot(self) -> float:
        t0 = time.perf_counter()
        shot = await self.cdp.send("Page.captureScreenshot", {"format": "jpeg", "quality": QUALITY})
        base64.b64decode(shot["data"])
        return ms(t0)

    async def goto(self, url: str, page: Any = None) -> float:
        t0 = time.perf_counter()
        await (page or self.page).goto(url, wait_until="load")
        return ms(t0)

    async def attach(self, endpoint: str) -> tuple[Any, Any]:
        """A server computer's own page, over its CDP endpoint: the same goto as the raw side, in
        the computer's isolation (its namespace, its egress forwarder, its sandbox) but with no API."""
        browser = await self.pw.chromium.connect_over_cdp(endpoint)
        return browser, browser.contexts[0].pages[0]


# -- the API side: the official SDK, synchronous, as an agent uses it ---------------------------------
def ok(result: Any, what: str) -> Any:
    if getattr(result, "status", "success") != "success":
        raise RuntimeError(f"{what} failed: {getattr(result, 'error_message', result)}")
    return result


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return ms(t0)


class Results:
    def __init__(self) -> None:
        self.samples: dict[str, dict[str, list[float]]] = {}

    def add(self, row: str, side: str, value: float) -> None:
        self.samples.setdefault(row, {"api": [], "raw": []})[side].append(value)

    def stats(self, row: str, side: str) -> dict[str, Any]:
        return summary(self.samples.get(row, {}).get(side, []))


def bench_create(server: Server, raw: Raw, res: Results, samples: int, warmup: int, pool: int,
                 prefix: str, interleave_raw: bool = True) -> None:
    """create, create → first screenshot and delete; from the warm pool when ``pool`` > 0."""
    client = server.client()
    for i in range(warmup + samples):
        if pool:
            server.wait_warm(pool)
        t0 = time.perf_counter()
        comp = client.computers.create()
        create = ms(t0)
        ok(client.computers.screenshot(comp.id), "screenshot")
        first_shot = ms(t0)
        delete = timed(lambda: client.computers.delete(comp.id))  # noqa: B023
        if i >= warmup:
            res.add(f"{prefix}create", "api", create)
            res.add(f"{prefix}create → first screenshot", "api", first_shot)
            res.add(f"{prefix}delete", "api", delete)
        if interleave_raw:
            if pool:
                server.wait_warm(pool)  # the raw launch must not share the CPU with a pool refill
            r = raw.run(raw.create_sample())
            if i >= warmup:
                res.add("raw create", "raw", r["create"])
                res.add("raw create → first screenshot", "raw", r["create_shot"])
                res.add("raw delete", "raw", r["delete"])


def bench_delete_settled(server: Server, res: Results, samples: int, pool: int) -> None:
    """delete once the pool has refilled, i.e. without a Chromium launch running beside it."""
    client = server.client()
    for i in range(1 + samples):
        server.wait_warm(pool)
        comp = client.computers.create()
        server.wait_warm(pool)
        delete = timed(lambda: client.computers.delete(comp.id))  # noqa: B023
        if i >= 1:
            res.add("delete (pool refilled first)", "api", delete)


def bench_actions(server: Server, raw: Raw, site: str, res: Results, samples: int, warmup: int,
                  settle: float = 0.0) -> None:
    client = server.client()
    comp = client.computers.create()
    url_a, url_b = f"{site}/a.html", f"{site}/b.html"
    ok(client.computers.navigate(comp.id, url=url_a), "navigate")
    raw.open(url_a)
    try:
        ops: list[tuple[str, Callable[[], Any], Callable[[], Coroutine[Any, Any, float]]]] = [
            ("click", lambda: ok(client.computers.click(comp.id, x=CLICK_AT[0], y=CLICK_AT[1]), "click"),
             raw.click),
            ("type 20 chars", lambda: ok(client.computers.type(comp.id, text=TEXT20), "type"), raw.type20),
            ("screenshot", lambda: ok(client.computers.screenshot(comp.id), "screenshot"), raw.screenshot),
            ("screenshot base64", lambda: ok(client.computers.screenshot(comp.id, base64=True), "screenshot"),
             raw.screenshot),
        ]
        for name, api_op, raw_op in ops:
            for i in range(warmup + samples):
                # alternate which side goes first, so neither always follows the other's work;
                # with --settle, each starts from a browser that has finished the previous input
                if i % 2:
                    time.sleep(settle)
                    r = raw.run(raw_op())
                    time.sleep(settle)
                    a = timed(api_op)
                else:
                    time.sleep(settle)
                    a = timed(api_op)
                    time.sleep(settle)
                    r = raw.run(raw_op())
                if i >= warmup:
                    res.add(name, "api", a)
                    res.add(name, "raw", r)
        # navigate alternates between two pages on both sides, and which side goes first every two
        # samples (a load right after the other side's runs beside that one's trailing work)
        for i in range(warmup + samples):
            url = url_b if i % 2 == 0 else url_a
            if (i // 2) % 2:
                r = raw.run(raw.goto(url))
                a = timed(lambda: ok(client.computers.navigate(comp.id, url=url), "navigate"))  # noqa: B023
            else:
                a = timed(lambda: ok(client.computers.navigate(comp.id, url=url), "navigate"))  # noqa: B023
                r = raw.run(raw.goto(url))
            if i >= warmup:
                res.add("navigate (load)", "api", a)
                res.add("navigate (load)", "raw", r)
        # the same goto on the computer's page over its CDP endpoint, beside the raw one: splits
        # navigate's gap into the computer's isolation and the API's own cost
        browser, page = raw.run(raw.attach(f"{server.base_url}/computers/{comp.id}/cdp?token={server.api_key}"))
        try:
            for i in range(warmup + samples):
                url = url_b if i % 2 == 0 else url_a
                if (i // 2) % 2:
                    r = raw.run(raw.goto(url))
                    c = raw.run(raw.goto(url, page))
                else:
                    c = raw.run(raw.goto(url, page))
                    r = raw.run(raw.goto(url))
                if i >= warmup:
                    res.add("navigate, same computer over CDP", "api", c)
                    res.add("navigate, same computer over CDP", "raw", r)
        finally:
            with contextlib.suppress(Exception):
                raw.run(browser.close(), timeout=10)
        # the floor of any API call: auth + lookup + JSON, no browser work
        for i in range(warmup + samples):
            a = timed(lambda: client.computers.retrieve(comp.id))
            if i >= warmup:
                res.add("API floor: retrieve (no browser)", "api", a)
    finally:
        with contextlib.suppress(Exception):
            client.computers.delete(comp.id)
        raw.run(raw._close())


def server_tree_pss(server: Server) -> dict[str, float]:
    """PSS (MiB) of the server's Python process and of Playwright's node driver."""
    out = {"server_python_mib": pss_kib(server.process.pid) / 1024, "playwright_driver_mib": 0.0}
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(server.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "node" in child.name() or any("playwright" in p for p in child.cmdline()[:2]):
                    out["playwright_driver_mib"] += pss_kib(child.pid) / 1024
    return out


def bench_capacity(tmp: Path, n: int) -> dict[str, Any]:
    pool = 2
    server = start_server(tmp, env={"OPENCONE_POOL_SIZE": str(pool), "OPENCONE_MAX_COMPUTERS": str(n + 20),
                                    "OPENCONE_DEFAULT_INACTIVITY_TIMEOUT_SECONDS": "3600"})
    out: dict[str, Any] = {"n": n, "pool_size": pool}
    client = server.client(timeout=120)
    ids: list[str] = []
    try:
        server.wait_warm(pool)
        out["load_before"] = loadavg()
        t0 = time.perf_counter()
        for _ in range(n):
            ids.append(client.computers.create().id)
        out["open_seconds"] = (time.perf_counter() - t0)
        out["open_per_computer_ms"] = out["open_seconds"] * 1000 / n
        server.wait_warm(pool, timeout=120)
        time.sleep(3)  # let the pages settle before reading memory
        pids = server.chromium_pids()
        browsers = user_data_dirs(pids)
        out["chromium_processes"] = len(pids)
        out["browsers"] = len(browsers)
        out["chromium_pss_mib"] = total_pss_mib(pids)
        out["chromium_pss_per_browser_mib"] = out["chromium_pss_mib"] / max(1, len(browsers))
        out.update(server_tree_pss(server))
        out["mem_available_mib"] = psutil.virtual_memory().available / 2**20
        out["load_after_open"] = loadavg()
        shots: list[float] = []
        answered = 0
        for cid in ids:
            t = time.perf_counter()
            with contextlib.suppress(Exception):
                r = client.computers.screenshot(cid)
                if r.status == "success" and (r.result or {}).get("screenshot_url"):
                    answered += 1
            shots.append(ms(t))
        out["screenshots_answered"] = answered
        out["screenshot_ms"] = summary(shots)
        t0 = time.perf_counter()
        for cid in ids:
            client.computers.delete(cid)
        out["delete_all_seconds"] = time.perf_counter() - t0
        ids.clear()
        # after deleting every computer only the warm pool's browsers may remain
        deadline = time.monotonic() + 15
        while True:
            left = user_data_dirs(server.chromium_pids())
            warm = server.health().get("warm_browsers", 0)
            if len(left) <= warm or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        out["browsers_left_after_delete"] = len(left)
        out["warm_browsers_after_delete"] = warm
        out["leaked_browsers_after_delete"] = max(0, len(left) - warm)
        out["load_end"] = loadavg()
    finally:
        for cid in ids:
            with contextlib.suppress(Exception):
                client.computers.delete(cid)
        server.stop()
    time.sleep(0.5)
    out["chromium_processes_after_stop"] = len(pids_with(server.run_dir))
    return out


# -- report ---------------------------------------------------------------------------------------------
ROWS = [
    # (label, api row, raw row, target kind)
    ("create (warm pool)", "create", "raw create", "create50"),
    ("create → first screenshot (warm pool)", "create → first screenshot", "raw create → first screenshot", None),
    ("create (cold, pool 0)", "cold create", "raw create", None),
    ("create → first screenshot (cold)", "cold create → first screenshot", "raw create → first screenshot", None),
    ("delete (pool refill running)", "delete", "raw delete", None),
    ("delete (pool refilled first)", "delete (pool refilled first)", "raw delete", None),
    ("delete (pool 0 server)", "cold delete", "raw delete", None),
    ("click", "click", "click", "click+rt+1"),
    ("type 20 chars", "type 20 chars", "type 20 chars", None),
    ("screenshot (URL)", "screenshot", "screenshot", "ratio1.1"),
    ("screenshot (base64)", "screenshot base64", "screenshot base64", "ratio1.1"),
    ("navigate (load)", "navigate (load)", "navigate (load)", "ratio1.1"),
    ("navigate, same computer over CDP", "navigate, same computer over CDP", "navigate, same computer over CDP",
     None),
    ("API floor: retrieve (no browser)", "API floor: retrieve (no browser)", None, None),
]


def target_check(kind: str | None, api: float | None, raw: float | None, floor: float | None = None
                 ) -> tuple[str, str]:
    """Issue 16's targets; ``floor``: the API floor's p50 (retrieve: the bare HTTP round trip)."""
    if kind is None or api is None:
        return "", ""
    if kind == "create50":
        return "p50 ≤ 50 ms", "yes" if api <= 50 else "NO"
    if raw is None:
        return "", ""
    if kind == "click+rt+1" and floor is not None:
        limit = raw + floor + 1
        return f"p50 ≤ raw+rt+1 = {limit:.1f}", "yes" if api <= limit else "NO"
    if kind == "ratio1.1":
        return f"p50 ≤ 1.1×raw = {raw * 1.1:.1f}", "yes" if api <= raw * 1.1 else "NO"
    return "", ""


def fmt(v: float | None, width: int = 7) -> str:
    return f"{v:{width}.1f}" if isinstance(v, (int, float)) else " " * (width - 1) + "–"


def report(res: Results) -> tuple[str, list[dict[str, Any]]]:
    head = (f"{'operation':<40} {'n':>3} {'API p50':>8} {'API p95':>8} {'raw p50':>8} {'raw p95':>8} "
            f"{'API/raw':>8} {'Δ ms':>7}  {'target':<24} met")
    lines = [head, "-" * len(head)]
    rows: list[dict[str, Any]] = []
    floor = res.stats("API floor: retrieve (no browser)", "api")
    for label, api_row, raw_row, kind in ROWS:
        a = res.stats(api_row, "api")
        if not a["n"]:
            continue
        r = res.stats(raw_row, "raw") if raw_row else summary([])
        ratio = a["p50"] / r["p50"] if r["n"] and r["p50"] else None
        diff = a["p50"] - r["p50"] if r["n"] else None
        target, met = target_check(kind, a["p50"], r["p50"] if r["n"] else None, floor["p50"] if floor["n"] else None)
        ratio_s = f"{ratio:8.2f}" if ratio is not None else " " * 7 + "–"
        lines.append(f"{label:<40} {a['n']:>3} {fmt(a['p50'], 8)} {fmt(a['p95'], 8)} {fmt(r['p50'], 8)} "
                     f"{fmt(r['p95'], 8)} {ratio_s} {fmt(diff, 7)}  {target:<24} {met}")
        rows.append({"operation": label, "api": a, "raw": r, "ratio_p50": ratio, "diff_p50_ms": diff,
                     "target": target, "met": met or None})
    return "\n".join(lines), rows


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "mem_total_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    with contextlib.suppress(Exception):
        exe = Settings().browser_executable
        info["chromium"] = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20).stdout.strip()
    for dist in ("playwright", "tzafon"):
        with contextlib.suppress(Exception):
            info[dist] = importlib.metadata.version(dist)
    with contextlib.suppress(Exception):
        root = Path(__file__).resolve().parent.parent
        info["git"] = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "src"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        info["src_dirty"] = bool(dirty)
    return info


def print_capacity(cap: dict[str, Any]) -> str:
    la = " / ".join(f"{x:.2f}" for x in cap.get("load_after_open", ()))
    s = cap.get("screenshot_ms", {})
    lines = [
        f"Capacity: {cap['n']} idle computers (server pool size {cap['pool_size']}; each computer is one Chromium)",
        f"  opened in {cap['open_seconds']:.1f} s ({cap['open_per_computer_ms']:.0f} ms per computer, sequential)",
        f"  Chromium: {cap['browsers']} browsers ({cap['n']} computers + warm pool), {cap['chromium_processes']} "
        f"processes, PSS {cap['chromium_pss_mib']:.0f} MiB total = {cap['chromium_pss_per_browser_mib']:.1f} MiB "
        "per browser",
        f"  server Python PSS {cap['server_python_mib']:.0f} MiB, Playwright node driver PSS "
        f"{cap['playwright_driver_mib']:.0f} MiB; MemAvailable {cap['mem_available_mib']:.0f} MiB",
        f"  load average after opening (1/5/15 min): {la}",
        f"  screenshots answered: {cap['screenshots_answered']}/{cap['n']} "
        f"(p50 {fmt(s.get('p50')).strip()} ms, p95 {fmt(s.get('p95')).strip()} ms, one after another)",
        f"  deleted all in {cap['delete_all_seconds']:.1f} s; browsers left: {cap['browsers_left_after_delete']} "
        f"(warm pool {cap['warm_browsers_after_delete']}, leaked {cap['leaked_browsers_after_delete']}); "
        f"Chromium processes after server stop: {cap['chromium_processes_after_stop']}",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=30, help="samples per operation (default 30)")
    ap.add_argument("--idle", type=int, default=60, help="idle computers for the capacity check (0 skips it)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 5 samples, 5 idle computers")
    ap.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    ap.add_argument("--settle", type=float, default=0.0, metavar="MS",
                    help="pause before each action sample, as an agent leaves time between actions")
    args = ap.parse_args()
    if args.quick:
        args.samples, args.idle = 5, 5
    samples = max(1, args.samples)
    warmup = 1 if args.quick else 3
    cold_samples = max(3, samples // 3)

    info = machine()
    load_start = loadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"opencone browser benchmark, {started}")
    dirty = " (src modified)" if info.get("src_dirty") else ""
    print(f"machine: {info.get('nproc')} cores, {info.get('mem_total_gib')} GiB, Linux {info.get('kernel')}, "
          f"Python {info.get('python')}, {info.get('chromium', '?')}, playwright {info.get('playwright', '?')}, "
          f"tzafon {info.get('tzafon', '?')}, git {info.get('git', '?')}{dirty}")
    print(f"load average at start (1/5/15 min): {' / '.join(f'{x:.2f}' for x in load_start)}")
    print(f"samples: {samples} (+{warmup} warm-up) per operation, cold create {cold_samples}, idle {args.idle}",
          flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="opencone-bench-"))
    res = Results()
    cap: dict[str, Any] | None = None
    raw: Raw | None = None
    site: Site | None = None
    try:
        write_site(tmp / "site")
        site = Site(tmp / "site")
        raw = Raw(Settings().browser_executable, tmp / "raw")

        print("· warm server (pool 2): create / screenshot / delete …", flush=True)
        server = start_server(tmp, env={"OPENCONE_POOL_SIZE": "2"})
        try:
            bench_create(server, raw, res, samples, warmup, pool=2, prefix="")
            bench_delete_settled(server, res, cold_samples, pool=2)
            print("· warm server: click / type / screenshot / navigate …", flush=True)
            server.wait_warm(2)
            bench_actions(server, raw, site.url, res, samples, warmup, args.settle / 1000)
        finally:
            server.stop()

        print("· cold server (pool 0): create …", flush=True)
        server = start_server(tmp, env={"OPENCONE_POOL_SIZE": "0"})
        try:
            bench_create(server, raw, res, cold_samples, 1, pool=0, prefix="cold ")
        finally:
            server.stop()
        raw.close()
        raw = None

        if args.idle > 0:
            print(f"· capacity: {args.idle} idle computers …", flush=True)
            cap = bench_capacity(tmp, args.idle)
    finally:
        if raw is not None:
            raw.close()
        if site is not None:
            site.close()
        shutil.rmtree(tmp, ignore_errors=True)

    load_end = loadavg()
    table, rows = report(res)
    print()
    print(table)
    print()
    print("API = official tzafon SDK → opencone server (HTTP on 127.0.0.1); raw = the same primitive on a Chromium")
    print("launched by this script with opencone's launcher (identical flags): create = launch + CDP connect + first")
    print("page ready; screenshot = CDP Page.captureScreenshot JPEG q80; click = page.mouse.click; type =")
    print("page.keyboard.type; navigate = page.goto(wait_until=load); delete = kill the process group.")
    print("Warm-pool create waits until the pool is full before each sample. Times in ms.")
    if cap:
        print()
        print(print_capacity(cap))
    print()
    print(f"load average at start: {' / '.join(f'{x:.2f}' for x in load_start)}; "
          f"at end: {' / '.join(f'{x:.2f}' for x in load_end)} ({info.get('nproc')} cores)")
    print("Absolute times are indicative (they move with machine load); the API/raw ratios and differences are")
    print("more stable, since raw and API samples are interleaved.")

    if not args.no_json:
        out_dir = Path(__file__).resolve().parent / "results"
        out_dir.mkdir(exist_ok=True)
        path = out_dir / f"browser-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps({
            "started": started, "machine": info, "load_start": load_start, "load_end": load_end,
            "samples": samples, "warmup": warmup, "rows": rows, "capacity": cap,
            "samples_ms": res.samples, "argv": sys.argv[1:],
        }, indent=2, default=str))
        print(f"figures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
