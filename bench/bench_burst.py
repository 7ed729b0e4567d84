"""Burst benchmark: many computers at once through opencone, beside the raw floor, default settings.

Run by hand, never in CI:

    .venv/bin/python bench/bench_burst.py              # bursts of 32 browsers and 8 desktops (~4 min)
    .venv/bin/python bench/bench_burst.py --quick      # bursts of 8 and 3, 2 rounds of lifecycles
    .venv/bin/python bench/bench_burst.py --no-desktops

The server runs with the default pool settings (floor OPENCONE_POOL_SIZE=2, max 32, desktops 0/8).
Every figure is printed beside its raw floor, measured in the same run, and the ratio:

- **10 concurrent lifecycles** (create → ``connect_over_cdp`` → ``goto`` → disconnect → delete, 10 at
  once, several rounds, started right after the second burst's deletes and one after another, so they
  find the pool still refilling, usually empty: their creates wait for launches), p50 of
  each lifecycle, beside the raw lifecycle in one running browser: ``new_context`` → ``new_page`` →
  ``goto`` → ``context.close``, 10 at once. Target ≤ 0.6× raw. Each round says how many browsers the
  pool held ready when it began, and the p50 of each phase beside the raw side's (opening: create +
  connect against new_context + new_page; goto; the end: disconnect + delete against context.close).
  Each round is also put beside 10 browsers launched in parallel by the raw side: the floor of a
  round whose creates find the pool empty (one browser per computer, not a context), and one last
  round runs once the pool holds 10 again. That last round is also put beside its own floor: 10
  browsers already running, one per lifecycle as opencone has them (connect_over_cdp → goto →
  disconnect → kill, 10 at once, no server), which the raw new-context side does not pay.
- **first, cold burst of N creates**: all fired together on a fresh server; "usable" is each
  computer's first screenshot answered. Raw: N Chromiums launched in parallel with opencone's own
  launcher (same flags), each connected over CDP and its first JPEG captured. Target ≤ 1.1× raw.
- **second burst of N** after the pool has seen the first (the script waits until it holds N):
  create p95. Target ≤ 100 ms.
- **delete** at concurrency 1, 10, the rest of the first burst and N, p50 and p95, as client time and as
  server time (the answer's ``Server-Timing: app;dur=``, api/server_timing.py), beside ``retrieve`` of
  the same computers just before (auth, lookup, JSON: the least any call costs on that loop). Target:
  server time ≤ 5 ms (p95); client time beyond retrieve's is queueing on the loaded loop.
- **idle memory**: after the bursts are deleted, the seconds until the server's processes are back to
  the floor's (the pool's floor of browsers alone; their PSS beside the PSS measured before the
  bursts). Target: within a minute.
- the same bursts for desktops (no raw side: their floor is the first, cold burst).

Bench runs mean something only on a quiet machine; the load average is printed beside every figure.
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
from _common import Server, Site, percentile, start_server, total_pss_mib, user_data_dirs
from playwright.async_api import Playwright, async_playwright
from tzafon import AsyncLightcone

from opencone.api import server_timing
from opencone.config import Settings
from opencone.drivers.chromium.launcher import _cleanups as launcher_cleanups
from opencone.drivers.chromium.launcher import launch_chromium

PAGE = "<!doctype html><html><head><title>burst</title></head><body><h1>burst</h1></body></html>"


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def load() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def p50(xs: list[float]) -> float:
    return percentile(xs, 50)


def p95(xs: list[float]) -> float:
    return percentile(xs, 95)


class Report:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, api: float, raw: float | None, target: str = "", met: bool | None = None,
            unit: str = "ms") -> None:
        row = {"name": name, "api": api, "raw": raw, "ratio": (api / raw) if raw else None, "target": target,
               "met": met, "unit": unit, "load": os.getloadavg()}
        self.rows.append(row)
        ratio = f"{row['ratio']:.2f}×" if row["ratio"] is not None else "  -  "
        raw_s = f"{raw:9.1f}" if raw is not None else "        -"
        verdict = "" if met is None else ("yes" if met else "NO")
        print(f"{name:<52} {api:9.1f} {raw_s} {ratio:>7}  {target:<22} {verdict:<4} {load()}", flush=True)


# -- raw side ----------------------------------------------------------------------------------
async def raw_parallel_launch(pw: Playwright, executable: str, tmp: Path, n: int) -> tuple[float, list[Any]]:
    """N Chromiums launched at once with opencone's launcher; each usable once its first JPEG is back."""
    t0 = time.perf_counter()

    async def one() -> Any:
        proc = await launch_chromium(executable, tmp / f"raw-{secrets.token_hex(6)}")
        browser = await pw.chromium.connect_over_cdp(proc.ws_url)
        ctx = browser.contexts[0]
        page = ctx.pages[0] if ctx.pages else await ctx.new_page()
        cdp = await ctx.new_cdp_session(page)
        await cdp.send("Page.captureScreenshot", {"format": "jpeg", "quality": 80})
        return proc, browser

    made = await asyncio.gather(*(one() for _ in range(n)))
    return ms(t0), list(made)


# a lifecycle's phases: opening (raw: new_context + new_page; opencone: create + connect_over_cdp),
# the page's load, and the end (raw: context.close; opencone: disconnect + delete)
Phases = dict[str, float]


async def raw_context_lifecycles(pw: Playwright, ws_url: str, url: str, n: int) -> list[Phases]:
    browser = await pw.chromium.connect_over_cdp(ws_url)

    async def one() -> Phases:
        t0 = time.perf_counter()
        ctx = await browser.new_context()
        page = await ctx.new_page()
        opened = ms(t0)
        t1 = time.perf_counter()
        await page.goto(url, wait_until="load")
        loaded = ms(t1)
        t2 = time.perf_counter()
        await ctx.close()
        return {"open": opened, "goto": loaded, "end": ms(t2), "total": ms(t0)}

    try:
        return list(await asyncio.gather(*(one() for _ in range(n))))
    finally:
        await browser.close()


async def raw_browser_lifecycles(pw: Playwright, executable: str, tmp: Path, url: str, n: int) -> list[Phases]:
    """The floor of a round on a warm pool with one browser per computer: N browsers launched
    beforehand and left to settle, then at once each connected over CDP, its page loaded, and the
    client gone and the browser killed (what a pool browser costs a lifecycle, without the server)."""
    procs = await asyncio.gather(*(launch_chromium(executable, tmp / f"warm-{secrets.token_hex(6)}")
                                   for _ in range(n)))
    await asyncio.sleep(3)

    async def one(proc: Any) -> Phases:
        t0 = time.perf_counter()
        browser = await pw.chromium.connect_over_cdp(proc.ws_url)
        opened = ms(t0)
        t1 = time.perf_counter()
        await browser.contexts[0].pages[0].goto(url, wait_until="load")
        loaded = ms(t1)
        t2 = time.perf_counter()
        await browser.close()
        await proc.terminate()
        return {"open": opened, "goto": loaded, "end": ms(t2), "total": ms(t0)}

    return list(await asyncio.gather(*(one(p) for p in procs)))


# -- opencone side -----------------------------------------------------------------------------
async def lifecycle(srv: Server, sdk: AsyncLightcone, pw: Playwright, url: str) -> Phases:
    t0 = time.perf_counter()
    comp = await sdk.computers.create(kind="browser")
    created = ms(t0)
    browser = await pw.chromium.connect_over_cdp(f"{srv.base_url}/computers/{comp.id}/cdp?token={srv.api_key}")
    opened = ms(t0)
    t1 = time.perf_counter()
    await browser.contexts[0].pages[0].goto(url, wait_until="load")
    loaded = ms(t1)
    t2 = time.perf_counter()
    await browser.close()
    await sdk.computers.delete(comp.id)
    return {"create": created, "connect": opened - created, "open": opened, "goto": loaded, "end": ms(t2),
            "total": ms(t0)}


def lifecycle_phases(rep: Report, runs: list[Phases], raw: list[Phases]) -> None:
    """Where a lifecycle's time goes, p50 of each phase beside the raw side's."""
    for key, raw_key, what in (("create", None, "create"), ("connect", None, "connect_over_cdp"),
                               ("open", "open", "create + connect (raw: new_context + new_page)"),
                               ("goto", "goto", "goto"), ("end", "end", "disconnect + delete (raw: close)")):
        rep.add(f"  {what}", p50([x[key] for x in runs]), p50([x[raw_key] for x in raw]) if raw_key else None)


async def health(http: httpx.AsyncClient, srv: Server) -> dict[str, Any]:
    return (await http.get(f"{srv.base_url}/health")).json()  # type: ignore[no-any-return]


async def wait_warm(http: httpx.AsyncClient, srv: Server, key: str, n: int, timeout: float = 300) -> tuple[float, int]:
    """Seconds until the pool holds ``n`` ready, and how many it holds then (fewer after ``timeout``:
    on a loaded machine the refill may not finish before the pool's idle shrink)."""
    t0, held = time.monotonic(), 0
    while time.monotonic() - t0 < timeout:
        held = (await health(http, srv)).get(key, 0)
        if held >= n:
            break
        await asyncio.sleep(0.1)
    return time.monotonic() - t0, held


async def burst(sdk: AsyncLightcone, kind: str, n: int) -> tuple[list[float], list[float], list[str], float]:
    """N creates at once: each create's latency, each one's time until its first screenshot answered."""
    t0 = time.perf_counter()

    async def one() -> tuple[float, float, str]:
        c0 = time.perf_counter()
        comp = await sdk.computers.create(kind=kind)
        created = ms(c0)
        shot = await sdk.computers.screenshot(comp.id)
        if shot.status != "success":
            raise RuntimeError(f"screenshot of {comp.id}: {shot.error_message}")
        return created, ms(t0), comp.id

    made = await asyncio.gather(*(one() for _ in range(n)))
    return [m[0] for m in made], [m[1] for m in made], [m[2] for m in made], ms(t0)


async def timed_calls(calls: list[Any]) -> tuple[list[float], list[float]]:
    """Each call's client time and its server time (the answer's ``Server-Timing: app;dur=``), in ms."""
    async def one(call: Any) -> tuple[float, float]:
        t0 = time.perf_counter()
        answer = await call
        return ms(t0), server_timing.parse(answer.headers.get("server-timing", "")).get("app", float("nan"))
    made = await asyncio.gather(*(one(c) for c in calls))
    return [m[0] for m in made], [m[1] for m in made]


async def delete_vs_retrieve(sdk: AsyncLightcone, ids: list[str], rep: Report, label: str) -> None:
    """Deletes at the concurrency of ``ids``, beside retrieves of the same computers just before (the
    floor of any call on that loop: auth, lookup, JSON), as client time and as server time."""
    raw = sdk.computers.with_raw_response
    r_client, r_server = await timed_calls([raw.retrieve(i) for i in ids])
    d_client, d_server = await timed_calls([raw.delete(i) for i in ids])
    c = len(ids)
    rep.add(f"delete c={c} {label}client p50 (raw: retrieve)", p50(d_client), p50(r_client))
    rep.add(f"delete c={c} {label}client p95 (raw: retrieve)", p95(d_client), p95(r_client))
    rep.add(f"delete c={c} {label}server p50 (raw: retrieve)", p50(d_server), p50(r_server))
    rep.add(f"delete c={c} {label}server p95 (raw: retrieve)", p95(d_server), p95(r_server), "server ≤ 5 ms",
            p95(d_server) <= 5)


async def back_to_floor(http: httpx.AsyncClient, srv: Server, floor: int, floor_pss: float,
                        since: float, kind: str, timeout: float = 150) -> tuple[float, float]:
    """Seconds after ``since`` (a perf_counter) until the server's processes are the floor's again:
    ``floor`` ready in the pool, no computer, no other browser (one ``--user-data-dir`` each) or
    desktop, for three checks a second apart."""
    key = "warm_browsers" if kind == "browser" else "warm_desktops"
    steady, first = 0, float("nan")
    while ms(since) / 1000 < timeout:
        h = await health(http, srv)
        pids = srv.chromium_pids()
        browsers = len(user_data_dirs(pids))
        others = h.get("warm_desktops", 0) if kind == "browser" else h.get("warm_browsers", 0) - 2
        at_floor = h.get(key, 0) == floor and h.get("computers", 0) == 0 and others <= 0 and \
            browsers == (floor if kind == "browser" else 2)  # (a desktop's floor: the browsers' floor of 2)
        if at_floor:
            steady, first = steady + 1, first if steady else ms(since) / 1000
            if steady == 3:
                return first, total_pss_mib(pids)
        else:
            steady = 0
        await asyncio.sleep(1)
    return float("nan"), total_pss_mib(srv.chromium_pids())


async def run(args: argparse.Namespace, tmp: Path, site: Site) -> Report:
    rep = Report()
    n, rounds = (8, 2) if args.quick else (args.n, 3)
    executable = Settings().browser_executable
    url = f"{site.url}/burst.html"
    print(f"{'figure':<52} {'opencone':>9} {'raw':>9} {'ratio':>7}  {'target':<22} met", flush=True)
    async with async_playwright() as pw, httpx.AsyncClient(timeout=60) as http:
        # -- raw floors first, on a machine without the server's browsers
        raw_wall, made = await raw_parallel_launch(pw, executable, tmp / "raw", n)
        raw_proc = made[0][0]
        for proc, browser in made[1:]:
            await browser.close()
            await proc.terminate()
        raw10: list[Phases] = []
        for _ in range(rounds):
            raw10 += await raw_context_lifecycles(pw, raw_proc.ws_url, url, 10)
        # the floor of a lifecycle round that finds no browser ready: 10 new browsers (one per computer)
        launch10_wall, made10 = await raw_parallel_launch(pw, executable, tmp / "raw10", 10)
        for proc, browser in made10:
            await browser.close()
            await proc.terminate()
        # and of a round that finds 10 warm: 10 browsers already running, one per computer
        warm10: list[Phases] = []
        for _ in range(rounds):
            warm10 += await raw_browser_lifecycles(pw, executable, tmp / "warm10", url, 10)

        # -- a fresh server, default pool settings
        srv = start_server(tmp / "srv", env={"OPENCONE_POOL_SIZE": "2", "OPENCONE_MAX_COMPUTERS": "200"})
        try:
            sdk = AsyncLightcone(api_key=srv.api_key, base_url=srv.base_url, max_retries=0, timeout=300)
            await wait_warm(http, srv, "warm_browsers", 2)
            await asyncio.sleep(2)
            floor_pss = total_pss_mib(srv.chromium_pids())
            creates, usable, ids, wall = await burst(sdk, "browser", n)
            rep.add(f"cold burst of {n}: all usable, wall (raw: {n} parallel launches)", wall, raw_wall,
                    "≤ 1.1× raw", wall <= 1.1 * raw_wall)
            rep.add(f"cold burst of {n}: create p50", p50(creates), None)
            rep.add(f"cold burst of {n}: first usable", min(usable), None)
            for group in (ids[:1], ids[1:11], ids[11:]):
                if group:
                    await delete_vs_retrieve(sdk, group, rep, "")
            waited, held = await wait_warm(http, srv, "warm_browsers", n, timeout=45)
            print(f"  (the pool held {held} ready {waited:.1f} s after the deletes)", flush=True)
            creates2, _usable2, ids2, _ = await burst(sdk, "browser", n)
            rep.add(f"second burst of {n}: create p95", p95(creates2), None, "≤ 100 ms", p95(creates2) <= 100)
            rep.add(f"second burst of {n}: create p50", p50(creates2), None)
            await delete_vs_retrieve(sdk, ids2, rep, "(2nd burst) ")
            raw_lat = [x["total"] for x in raw10]
            for r in range(rounds + 1):
                label = f"round {r + 1}"
                if r == rounds:  # and once more after the pool had the time to refill for 10
                    await wait_warm(http, srv, "warm_browsers", 10, timeout=90)
                    label = "after a refill"
                held = (await health(http, srv)).get("warm_browsers", 0)
                runs = list(await asyncio.gather(*(lifecycle(srv, sdk, pw, url) for _ in range(10))))
                lat = [x["total"] for x in runs]
                rep.add(f"10 concurrent lifecycles, {label} ({held} warm), p50 (raw: new context)", p50(lat),
                        p50(raw_lat), "≤ 0.6× raw", p50(lat) <= 0.6 * p50(raw_lat))
                rep.add("  the same (raw: 10 browsers launched in parallel)", p50(lat), launch10_wall)
                rep.add("  the same (raw: 10 warm browsers, one per lifecycle)", p50(lat),
                        p50([x["total"] for x in warm10]))
                lifecycle_phases(rep, runs, raw10)
                if r == rounds:
                    for key, what in (("open", "connect_over_cdp"), ("goto", "goto"),
                                      ("end", "disconnect + delete (raw: disconnect + kill)")):
                        rep.add(f"  {what} (raw: 10 warm browsers)", p50([x[key] for x in runs]) if key != "open"
                                else p50([x["connect"] for x in runs]), p50([x[key] for x in warm10]))
            last = time.perf_counter()
            secs, pss = await back_to_floor(http, srv, 2, floor_pss, last, "browser")
            rep.add("idle: back to the floor after the last create (s)", secs, None, "≤ 60 s", secs <= 60, "s")
            rep.add("idle: browsers' PSS then, MiB (raw: before the bursts)", pss, floor_pss)

            if not args.no_desktops:
                d = 3 if args.quick else args.desktops
                creates, usable, ids, wall = await burst(sdk, "desktop", d)
                rep.add(f"desktops: cold burst of {d}: all usable, wall", wall, None)
                rep.add(f"desktops: cold burst of {d}: create p50", p50(creates), None)
                await delete_vs_retrieve(sdk, ids, rep, "desktops ")
                waited, held = await wait_warm(http, srv, "warm_desktops", d, timeout=45)
                print(f"  (the desktop pool held {held} ready {waited:.1f} s after the deletes)", flush=True)
                creates2, _u, ids2, _ = await burst(sdk, "desktop", d)
                rep.add(f"desktops: second burst of {d}: create p95", p95(creates2), None, "≤ 100 ms",
                        p95(creates2) <= 100)
                await delete_vs_retrieve(sdk, ids2, rep, "desktops (2nd) ")
                last = time.perf_counter()
                secs, _pss = await back_to_floor(http, srv, 0, floor_pss, last, "desktop")
                rep.add("desktops idle: back to the floor after the last create (s)", secs, None, "≤ 60 s",
                        secs <= 60, "s")
            await sdk.close()
        finally:
            srv.stop()
        await made[0][1].close()
        await raw_proc.terminate()
        await asyncio.gather(*launcher_cleanups, return_exceptions=True)  # profiles removed before the loop ends
    return rep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=32, help="browsers per burst")
    ap.add_argument("--desktops", type=int, default=8, help="desktops per burst")
    ap.add_argument("--quick", action="store_true", help="bursts of 8 browsers and 3 desktops, 2 rounds")
    ap.add_argument("--no-desktops", action="store_true")
    ap.add_argument("--no-json", action="store_true", help="do not write bench/results/burst-*.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="opencone-burst-"))
    (tmp / "site").mkdir()
    (tmp / "site" / "burst.html").write_text(PAGE)
    site = Site(tmp / "site")
    print(f"{os.cpu_count()} cores, {load()} at the start", flush=True)
    try:
        rep = asyncio.run(run(args, tmp, site))
    finally:
        site.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{load()} at the end")
    if not args.no_json:
        out = Path(__file__).resolve().parent / "results"
        out.mkdir(exist_ok=True)
        path = out / f"burst-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(rep.rows, indent=2))
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path.name}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
