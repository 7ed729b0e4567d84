"""Perception benchmark: snapshots, markdown and clicks by ref through the API, beside the raw
Playwright calls they are made of, on a browser this script launches itself.

Run by hand, never in CI:

    .venv/bin/python bench/bench_perception.py            # 15 samples per figure (~3 min)
    .venv/bin/python bench/bench_perception.py --quick    # 5 samples

Pages of about 100, 1,000 and 5,000 elements (a product list: a link, a text, a button and an
input per row) are served on 127.0.0.1. Each API figure is one HTTP request (httpx, keep-alive)
to a real ``opencone serve`` process, from the request until its JSON is parsed; each raw
figure is the same thing done on a Chromium launched with opencone's own launcher (identical
flags, the same device metrics): ``page.aria_snapshot(mode="ai")`` (and with ``boxes=True``,
what the server calls), ``page.content()`` converted by the same HTML-to-markdown library with
the same options, ``page.mouse.click`` and ``page.get_by_ref(ref).click()``. Raw and API samples
are interleaved. A Notte ``observe`` round trip goes through the real ``notte-sdk`` client (its
own venv, .venv/notte-sdk; skipped when absent). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import html_to_markdown as h2m
import httpx
from _common import Site, loadavg, start_server, summary
from playwright.async_api import async_playwright

from opencone.config import Settings
from opencone.core import actions as a
from opencone.core.markdown import _NOT_MAIN
from opencone.drivers.chromium.launcher import launch_chromium

T = TypeVar("T")
WIDTH, HEIGHT = 1024, 768
SIZES = (100, 1000, 5000)
ROOT = Path(__file__).resolve().parents[1]


def page(n: int) -> str:
    """About ``n`` elements: rows of a link, a text, a button and an input, in a list."""
    rows = "".join(f"<li><a href='item{i}.html'>Item {i}</a> <span>price {i}</span> <button>Buy {i}</button> "
                   f"<input aria-label='qty {i}' value='1'></li>" for i in range(max(1, n // 5)))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>bench {n}</title></head><body>"
            f"<h1>Bench page, {n} elements</h1><main><button id='target' style='position:fixed;left:300px;"
            f"top:10px' onclick='this.textContent=++window.n'>0</button><ul>{rows}</ul></main>"
            "<script>window.n=0</script></body></html>")


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def md_options(url: str) -> h2m.ConversionOptions:
    """What core/markdown.py passes for the markdown action's defaults (main content, links, no images)."""
    return h2m.ConversionOptions(extract_metadata=False, skip_images=True, base_url=url, exclude_selectors=_NOT_MAIN)


class Raw:
    """A Chromium from opencone's launcher, driven directly by Playwright on its own event loop."""

    def __init__(self, executable: str, tmp: Path) -> None:
        self.executable, self.tmp = executable, tmp
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.pw: Any = self.run(self._playwright())
        self.run(self._launch())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _playwright(self) -> Any:
        return await async_playwright().start()

    async def _launch(self) -> None:
        self.proc = await launch_chromium(self.executable, self.tmp / f"raw-{secrets.token_hex(4)}", WIDTH, HEIGHT)
        self.browser = await self.pw.chromium.connect_over_cdp(self.proc.ws_url)
        context = self.browser.contexts[0]
        self.page = context.pages[0] if context.pages else await context.new_page()
        cdp = await context.new_cdp_session(self.page)
        await cdp.send("Emulation.setDeviceMetricsOverride", {
            "width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False,
            "screenWidth": WIDTH, "screenHeight": HEIGHT})

    async def goto(self, url: str) -> None:
        await self.page.goto(url, wait_until="load")

    async def snapshot(self, boxes: bool) -> float:
        t0 = time.perf_counter()
        await self.page.aria_snapshot(mode="ai", boxes=boxes)
        return ms(t0)

    async def markdown(self) -> float:
        t0 = time.perf_counter()
        html = await self.page.content()
        h2m.convert(html, md_options(self.page.url))
        return ms(t0)

    async def click_xy(self, x: float, y: float) -> float:
        t0 = time.perf_counter()
        await self.page.mouse.click(x, y)
        return ms(t0)

    async def click_ref(self, ref: str) -> float:
        t0 = time.perf_counter()
        await self.page.get_by_ref(ref).click()
        return ms(t0)

    async def target_ref(self) -> str:
        text = await self.page.aria_snapshot(mode="ai")
        line = next(ln for ln in text.splitlines() if '- button "0" [ref=' in ln)
        return line.split("[ref=")[1].split("]")[0]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.proc.terminate())
        with contextlib.suppress(Exception):
            self.run(self.pw.stop())
        with contextlib.suppress(Exception):  # (the launcher's reaper tasks finish before the loop stops)
            self.run(asyncio.sleep(0.3))
        self.loop.call_soon_threadsafe(self.loop.stop)


class Api:
    def __init__(self, base: str, key: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=120, headers={"authorization": f"Bearer {key}"})
        self.cid = self.http.post("/computers", json={"kind": "browser"}).json()["id"]

    def post(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = self.http.post(f"/computers/{self.cid}/{action}", json=body).json()
        if answer.get("status") != "success":
            raise RuntimeError(f"{action} failed: {answer}")
        return answer["result"]  # type: ignore[no-any-return]

    def timed(self, action: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        result = self.post(action, body)
        return ms(t0), result

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.http.delete(f"/computers/{self.cid}")
        self.http.close()


NOTTE_OBSERVE = textwrap.dedent("""
    import json, sys, time
    from loguru import logger
    from notte_sdk import NotteClient
    from notte_sdk.endpoints import base
    logger.remove()
    base.BaseClient.check_and_warn_version_mismatch = lambda self: None
    url, n = sys.argv[1], int(sys.argv[2])
    times = []
    with NotteClient().Session(idle_timeout_minutes=5) as session:
        session.execute(type="goto", url=url)
        session.observe()
        for _ in range(n):
            t0 = time.perf_counter()
            obs = session.observe()
            times.append((time.perf_counter() - t0) * 1000)
    print(json.dumps({"times": times, "actions": len(obs.space.interaction_actions)}))
""")


def notte_observe(base: str, key: str, url: str, samples: int) -> dict[str, Any] | None:
    python = ROOT / ".venv" / "notte-sdk" / "bin" / "python"
    if not python.exists():
        return None
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "NOTTE_API_URL": base, "NOTTE_API_KEY": key, "DISABLE_TELEMETRY": "true",
           "HTTPS_PROXY": dead, "HTTP_PROXY": dead, "NO_PROXY": "127.0.0.1,localhost"}
    out = subprocess.run([str(python), "-c", NOTTE_OBSERVE, url, str(samples)], env=env, capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def row(rows: list[dict[str, Any]], name: str, api: list[float], raw: list[float] | None,
        raw_boxes: list[float] | None = None) -> None:
    s_api = summary(api)
    entry: dict[str, Any] = {"row": name, "api": s_api}
    if raw:
        s_raw = summary(raw)
        entry["raw"] = s_raw
        entry["ratio"] = s_api["p50"] / s_raw["p50"]
    if raw_boxes:
        s_box = summary(raw_boxes)
        entry["raw_boxes"] = s_box
        entry["ratio_boxes"] = s_api["p50"] / s_box["p50"]
    rows.append(entry)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="5 samples")
    ap.add_argument("--no-json", action="store_true")
    args = ap.parse_args()
    samples = 5 if args.quick else args.samples
    tmp = Path(tempfile.mkdtemp(prefix="bench-perception-"))
    pages = tmp / "site"
    pages.mkdir()
    for n in SIZES:
        (pages / f"p{n}.html").write_text(page(n))
    site = Site(pages)
    server = start_server(tmp / "server")
    raw = Raw(Settings().browser_executable, tmp)
    api = Api(server.base_url, server.api_key)
    rows: list[dict[str, Any]] = []
    try:
        for n in SIZES:
            url = f"{site.url}/p{n}.html"
            raw.run(raw.goto(url))
            api.post("navigate", {"url": url})
            res: dict[str, list[float]] = {k: [] for k in ("api_text", "api_json", "raw", "raw_boxes", "api_md",
                                                           "raw_md")}
            for warm in range(2):  # (first calls compile Playwright's injected script)
                raw.run(raw.snapshot(True))
                api.post("snapshot", {})
                del warm
            elements = 0
            for _ in range(samples):
                res["raw"].append(raw.run(raw.snapshot(False)))
                t, result = api.timed("snapshot", {"max_chars": a.MAX_SNAPSHOT_CHARS})
                res["api_text"].append(t)
                elements = result["total_elements"]
                res["raw_boxes"].append(raw.run(raw.snapshot(True)))
                res["api_json"].append(api.timed("snapshot", {"format": "json", "max_chars": a.MAX_SNAPSHOT_CHARS})[0])
                res["raw_md"].append(raw.run(raw.markdown()))
                res["api_md"].append(api.timed("markdown", {})[0])
            row(rows, f"snapshot, text ({n} elements, {elements} refs)", res["api_text"], res["raw"], res["raw_boxes"])
            row(rows, f"snapshot, JSON ({n} elements)", res["api_json"], res["raw"], res["raw_boxes"])
            row(rows, f"markdown ({n} elements)", res["api_md"], res["raw_md"])
        # clicks on the 1,000-element page: by ref (Playwright's actionability checks) against by x,y
        url = f"{site.url}/p1000.html"
        raw.run(raw.goto(url))
        api.post("navigate", {"url": url})
        target = next(e for e in api.post("snapshot", {"format": "json", "interactive_only": True})["elements"]
                      if e.get("name") == "0")
        x, y, w, h = target["box"]
        raw_ref = raw.run(raw.target_ref())
        clicks: dict[str, list[float]] = {k: [] for k in ("api_ref", "api_xy", "raw_ref", "raw_xy")}
        for _ in range(samples):
            clicks["raw_xy"].append(raw.run(raw.click_xy(x + w / 2, y + h / 2)))
            clicks["api_xy"].append(api.timed("click", {"x": x + w / 2, "y": y + h / 2})[0])
            clicks["raw_ref"].append(raw.run(raw.click_ref(raw_ref)))
            clicks["api_ref"].append(api.timed("click", {"ref": target["ref"]})[0])
        row(rows, "click by ref (API) / get_by_ref().click() (raw)", clicks["api_ref"], clicks["raw_ref"])
        row(rows, "click by x,y (API) / mouse.click (raw)", clicks["api_xy"], clicks["raw_xy"])
        notte = notte_observe(server.base_url, server.api_key, url, samples)
        if notte is not None:
            row(rows, f"Notte observe via notte-sdk ({notte['actions']} actions; raw: aria_snapshot boxes)",
                notte["times"], res_1000_boxes(rows))
    finally:
        api.close()
        raw.close()
        server.stop()
        site.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nload average {loadavg()}, {samples} samples per figure (p50 ms)\n")
    print(f"{'row':<72} {'API':>8} {'raw':>8} {'ratio':>6} {'raw+box':>8} {'ratio':>6}")
    for r in rows:
        raw_p50 = r.get("raw", {}).get("p50")
        box_p50 = r.get("raw_boxes", {}).get("p50")
        print(f"{r['row']:<72} {r['api']['p50']:8.1f} " + (f"{raw_p50:8.1f} {r['ratio']:6.2f}" if raw_p50 else " " * 15)
              + (f" {box_p50:8.1f} {r['ratio_boxes']:6.2f}" if box_p50 else ""))
    if not args.no_json:
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / f"perception-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(
            {"samples": samples, "loadavg": loadavg(), "rows": rows}, indent=1))
    return 0


def res_1000_boxes(rows: list[dict[str, Any]]) -> list[float] | None:
    """(The raw figure a Notte observe is set beside: the 1,000-element page's boxed snapshot's p50.)"""
    found = next((r for r in rows if r["row"].startswith("snapshot, JSON (1000")), None)
    return [found["raw_boxes"]["p50"]] if found else None


if __name__ == "__main__":
    sys.exit(main())
