"""CDP benchmark: BrowserArena's "hello browser" lifecycle through opencone, beside raw Playwright.

Run by hand, never in CI:

    .venv/bin/python bench/bench_cdp.py              # 20 samples at concurrency 1, 5 rounds of 10
    .venv/bin/python bench/bench_cdp.py --quick      # 5 samples, 2 rounds

One lifecycle through opencone (all on 127.0.0.1):
  create    ``AsyncLightcone.computers.create()`` (the warm pool's path)
  connect   ``playwright.chromium.connect_over_cdp(f"{base}/computers/{id}/cdp?token=…")``
            (Playwright first GETs ``/cdp/json/version/``, then opens the proxied WebSocket)
  goto      ``page.goto(local page, wait_until="load")`` on the computer's existing tab
  release   ``browser.close()`` (only disconnects: "disconnect") + ``computers.delete(id)`` ("delete")
The raw lifecycle is the same with no server: opencone's ``launch_chromium`` (identical
flags), ``connect_over_cdp(ws_url)``, ``goto``, disconnect + kill the process group.

Before every opencone sample the script waits until ``/health`` shows the warm pool full,
so create takes a launched browser and no refill launch competes for the CPU; raw samples
also start on a quiet machine (after that wait). At concurrency 10 the server's pool is
10 and 10 lifecycles start at once; every lifecycle's own time is one sample.
Extra diagnostic rows: connect through the ``ws://…/cdp?token=`` URL (no /json/version
round trip); the ``/json/version`` GET alone; and "attach" cycles (connect + goto +
disconnect, no create/delete) on one long-lived computer through the proxy beside the
same on one long-lived raw Chromium directly, which isolates the proxy hop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import Server, Site, loadavg, start_server, summary
from playwright.async_api import Playwright, async_playwright
from tzafon import AsyncLightcone

from opencone.config import Settings
from opencone.drivers.chromium.launcher import launch_chromium

TARGET_P50_MS = 150.0
PAGE = "<!doctype html><html><head><title>hello browser</title></head><body><h1>hello browser</h1></body></html>"


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


async def api_lifecycle(srv: Server, sdk: AsyncLightcone, pw: Playwright, url: str, via_ws: bool = False
                        ) -> dict[str, float]:
    t0 = time.perf_counter()
    comp = await sdk.computers.create(kind="browser")
    create = ms(t0)
    t1 = time.perf_counter()
    endpoint = f"{srv.base_url}/computers/{comp.id}/cdp?token={srv.api_key}"
    if via_ws:
        endpoint = "ws" + endpoint[len("http"):]
    browser = await pw.chromium.connect_over_cdp(endpoint)
    connect = ms(t1)
    t2 = time.perf_counter()
    await browser.contexts[0].pages[0].goto(url, wait_until="load")
    goto = ms(t2)
    t3 = time.perf_counter()
    await browser.close()
    disconnect = ms(t3)
    t4 = time.perf_counter()
    await sdk.computers.delete(comp.id)
    return {"total": ms(t0), "create": create, "connect": connect, "goto": goto, "disconnect": disconnect,
            "delete": ms(t4)}


async def raw_lifecycle(pw: Playwright, executable: str, tmp: Path, url: str) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = await launch_chromium(executable, tmp / f"raw-{secrets.token_hex(6)}")
    create = ms(t0)
    t1 = time.perf_counter()
    browser = await pw.chromium.connect_over_cdp(proc.ws_url)
    connect = ms(t1)
    t2 = time.perf_counter()
    context = browser.contexts[0]
    page = context.pages[0] if context.pages else await context.new_page()
    await page.goto(url, wait_until="load")
    goto = ms(t2)
    t3 = time.perf_counter()
    await browser.close()
    disconnect = ms(t3)
    t4 = time.perf_counter()
    await proc.terminate()
    return {"total": ms(t0), "create": create, "connect": connect, "goto": goto, "disconnect": disconnect,
            "delete": ms(t4)}


async def attach_cycle(pw: Playwright, endpoint: str, url: str) -> dict[str, float]:
    """connect + goto + disconnect on a browser that stays: the proxy hop alone, without create/delete."""
    t0 = time.perf_counter()
    browser = await pw.chromium.connect_over_cdp(endpoint)
    connect = ms(t0)
    t1 = time.perf_counter()
    await browser.contexts[0].pages[0].goto(url, wait_until="load")
    goto = ms(t1)
    t2 = time.perf_counter()
    await browser.close()
    return {"total": ms(t0), "create": 0.0, "connect": connect, "goto": goto, "disconnect": ms(t2), "delete": 0.0}


async def wait_warm(srv: Server, http: httpx.AsyncClient, size: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await http.get(f"{srv.base_url}/health")).json().get("warm_browsers", 0) >= size:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"warm pool did not reach {size} in {timeout}s")


def add(rows: dict[str, list[dict[str, float]]], name: str, sample: dict[str, float]) -> None:
    rows.setdefault(name, []).append(sample)


async def run(srv: Server, site: Site, tmp: Path, samples: int, rounds: int, pool: int,
              attach_only: bool = False) -> dict[str, Any]:
    executable = Settings().browser_executable
    url = f"{site.url}/hello.html"
    rows: dict[str, list[dict[str, float]]] = {}
    walls: dict[str, list[float]] = {}
    async with async_playwright() as pw, httpx.AsyncClient(timeout=30) as http:
        sdk = AsyncLightcone(api_key=srv.api_key, base_url=srv.base_url, max_retries=0)
        # warm-up: the first connect loads Playwright's code paths on both sides
        await wait_warm(srv, http, pool)
        await api_lifecycle(srv, sdk, pw, url)
        await raw_lifecycle(pw, executable, tmp, url)
        for _ in range(0 if attach_only else samples):
            await wait_warm(srv, http, pool)
            add(rows, "opencone c=1", await api_lifecycle(srv, sdk, pw, url))
            await wait_warm(srv, http, pool)
            add(rows, "raw c=1", await raw_lifecycle(pw, executable, tmp, url))
            await wait_warm(srv, http, pool)
            add(rows, "opencone c=1 (ws:// URL)", await api_lifecycle(srv, sdk, pw, url, via_ws=True))
        # on browsers that stay: the discovery GET alone, and attach cycles through the proxy and direct
        comp = await sdk.computers.create(kind="browser")
        raw = await launch_chromium(executable, tmp / "raw-attach")
        await asyncio.sleep(1)  # both browsers idle, as a pooled one is
        version = []
        for _ in range(samples):
            t0 = time.perf_counter()
            r = await http.get(f"{srv.base_url}/computers/{comp.id}/cdp/json/version/", params={"token": srv.api_key})
            version.append(ms(t0))
            r.raise_for_status()
            ws = f"ws{srv.base_url[4:]}/computers/{comp.id}/cdp?token={srv.api_key}"
            add(rows, "attach via proxy (ws://)", await attach_cycle(pw, ws, url))
            add(rows, "attach direct (raw ws)", await attach_cycle(pw, raw.ws_url, url))
        await raw.terminate()
        await sdk.computers.delete(comp.id)
        for _ in range(0 if attach_only else rounds):
            await wait_warm(srv, http, pool)
            t0 = time.perf_counter()
            for s in await asyncio.gather(*(api_lifecycle(srv, sdk, pw, url) for _ in range(10))):
                add(rows, "opencone c=10", s)
            walls.setdefault("opencone c=10", []).append(ms(t0))
            await wait_warm(srv, http, pool)
            t0 = time.perf_counter()
            for s in await asyncio.gather(*(raw_lifecycle(pw, executable, tmp, url) for _ in range(10))):
                add(rows, "raw c=10", s)
            walls.setdefault("raw c=10", []).append(ms(t0))
        await sdk.close()
    out: dict[str, Any] = {"rows": {}, "json_version_get": summary(version)}
    for name, items in rows.items():
        out["rows"][name] = {phase: summary([s[phase] for s in items]) for phase in items[0]}
        if name in walls:
            out["rows"][name]["round_wall"] = summary(walls[name])
    return out


def fmt(v: float | None) -> str:
    return "     -" if v is None else f"{v:6.1f}"


def report(res: dict[str, Any]) -> str:
    phases = ("total", "create", "connect", "goto", "disconnect", "delete")
    lines = [f"{'lifecycle (ms)':<28} {'n':>3}  " + "  ".join(f"{p + ' p50/p95':>17}" for p in phases)]
    for name, row in res["rows"].items():
        cells = "  ".join(f"{fmt(row[p]['p50'])} / {fmt(row[p]['p95'])}   " for p in phases)
        lines.append(f"{name:<28} {row['total']['n']:>3}  {cells}")
        if "round_wall" in row:
            w = row["round_wall"]
            lines.append(f"{'':<28}      wall time of a round of 10: p50 {w['p50']:.0f} ms, p95 {w['p95']:.0f} ms")
    v = res["json_version_get"]
    lines.append(f"GET /cdp/json/version/ alone: p50 {v['p50']:.1f} ms, p95 {v['p95']:.1f} ms")
    via, direct = (res["rows"][k]["connect"]["p50"] for k in ("attach via proxy (ws://)", "attach direct (raw ws)"))
    lines.append(f"attach connect through the proxy: p50 {via:.1f} ms beside {direct:.1f} ms direct "
                 f"(+{via - direct:.1f} ms, {via / direct:.2f}x; "
                 f"target ≤ direct + 5 ms: {'yes' if via <= direct + 5 else 'NO'})")
    if "opencone c=1" in res["rows"]:
        p50 = res["rows"]["opencone c=1"]["total"]["p50"]
        lines.append(f"target: opencone c=1 p50 ≤ {TARGET_P50_MS:.0f} ms → {p50:.1f} ms "
                     f"{'yes' if p50 <= TARGET_P50_MS else 'NO'}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20, help="lifecycles per row at concurrency 1")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of 10 concurrent lifecycles")
    ap.add_argument("--quick", action="store_true", help="5 samples, 2 rounds")
    ap.add_argument("--attach-only", action="store_true",
                    help="only the attach rows (connect + goto + disconnect on browsers that stay)")
    ap.add_argument("--no-json", action="store_true", help="do not write bench/results/cdp-*.json")
    args = ap.parse_args()
    if args.quick:
        args.samples, args.rounds = 5, 2
    pool = 2 if args.attach_only else 10
    tmp = Path(tempfile.mkdtemp(prefix="opencone-bench-cdp-"))
    (tmp / "site").mkdir()
    (tmp / "site" / "hello.html").write_text(PAGE)
    site = Site(tmp / "site")
    print(f"{os.cpu_count()} cores, load {' / '.join(f'{x:.2f}' for x in loadavg())}", flush=True)
    srv = start_server(tmp, env={"OPENCONE_POOL_SIZE": str(pool)})
    try:
        res = asyncio.run(run(srv, site, tmp, args.samples, args.rounds, pool, args.attach_only))
    finally:
        srv.stop()
        site.close()
        shutil.rmtree(tmp, ignore_errors=True)
    res["load_after"] = loadavg()
    print(report(res))
    print(f"load at the end {' / '.join(f'{x:.2f}' for x in res['load_after'])}")
    if not args.no_json:
        out_dir = Path(__file__).resolve().parent / "results"
        out_dir.mkdir(exist_ok=True)
        path = out_dir / f"cdp-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(res, indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
