"""What the per-computer forwarding proxy adds to a page load, beside the raw figure.

Two headless Chromiums in the same run: one with ``--proxy-server`` pointing at an
opencone ForwardingProxy in direct mode (as every browser computer has it), one
with no proxy at all. Each sample is a ``page.goto`` of a local page, measured
alternately on both browsers so load drift hits both sides alike:

* ``page``      a small HTML page over plain http (a new proxied connection per request)
* ``big``       a page that loads a 1 MiB script (two requests) over plain http
* ``page_tls``  the small page over https (CONNECT tunnel, kept alive by Chromium)
* ``big_tls``   the same over https

The forwarder runs in this script's event loop, beside Playwright, as it does in
the server. The web site runs in its own threads. Nothing leaves 127.0.0.1.

Then ``fetches`` without a browser: N sequential plain-http GETs of a small page with
httpx, direct beside through the forwarder, in two modes, interleaved one by one:
``keep-alive`` (one client connection; the forwarder reuses its pooled upstream
connection) and ``one exchange`` (``Connection: close`` on every request: a new
connection each time on both sides, which is what every plain-http request cost
through the forwarder before it kept connections alive), and ``via an http upstream``
(httpx straight to an HTTP upstream proxy, beside httpx through a forwarder routed to
that proxy, which keeps its connection to it per destination).

Then a bulk figure without a browser: 256 MiB read from a byte source (its own
process) directly and through a CONNECT tunnel of the forwarder, for the MiB/s and
the CPU time the forwarder's process spends per MiB.

    .venv/bin/python bench/bench_proxy.py [--samples 60] [--fetches 300] [--no-json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Page, async_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import loadavg, summary  # noqa: E402
from proxy_servers import RecordingHttpProxy, make_cert, run_site, server_tls  # noqa: E402

from opencone.config import _default_chromium  # noqa: E402
from opencone.drivers.chromium.launcher import launch_chromium  # noqa: E402
from opencone.drivers.proxy import ForwardingProxy  # noqa: E402
from opencone.drivers.proxy.egress import EgressPolicy  # noqa: E402

CASES = {"page": ("http", "/page"), "big": ("http", "/bigpage"), "page_tls": ("https", "/page"),
         "big_tls": ("https", "/bigpage")}


async def _goto_ms(page: Page, url: str) -> float:
    t0 = time.perf_counter()
    response = await page.goto(url, wait_until="load")
    elapsed = (time.perf_counter() - t0) * 1000
    assert response is not None and response.status == 200, url
    return elapsed


async def run(samples: int, warmup: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    cert = make_cert(tmp)
    assert cert is not None, "openssl is needed for the https cases"
    with run_site() as site, run_site(server_tls(*cert)) as tls_site:
        bases = {"http": site.url, "https": tls_site.url}
        async with ForwardingProxy(policy=EgressPolicy.open()) as fwd, async_playwright() as pw:
            flags = ["--ignore-certificate-errors"]
            proxied = await launch_chromium(_default_chromium(), tmp / "proxied", proxy_server=fwd.url,
                                            extra_args=flags)
            raw = await launch_chromium(_default_chromium(), tmp / "raw", extra_args=flags)
            try:
                pages: dict[str, Page] = {}
                for name, proc in (("proxied", proxied), ("raw", raw)):
                    browser = await pw.chromium.connect_over_cdp(proc.ws_url)
                    ctx = browser.contexts[0]
                    pages[name] = ctx.pages[0] if ctx.pages else await ctx.new_page()
                results: dict[str, Any] = {}
                for case, (scheme, path) in CASES.items():
                    times: dict[str, list[float]] = {"proxied": [], "raw": []}
                    for i in range(warmup + samples):
                        order = ("proxied", "raw") if i % 2 == 0 else ("raw", "proxied")
                        for name in order:
                            ms = await _goto_ms(pages[name], f"{bases[scheme]}{path}?n={i}")
                            if i >= warmup:
                                times[name].append(ms)
                    p, r = summary(times["proxied"]), summary(times["raw"])
                    results[case] = {"proxied_ms": p, "raw_ms": r, "added_ms_p50": p["p50"] - r["p50"],
                                     "ratio_p50": p["p50"] / r["p50"], "ratio_p95": p["p95"] / r["p95"]}
                results["forwarder"] = fwd.stats()
                return results
            finally:
                await proxied.terminate()
                await raw.terminate()


_SOURCE = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
print(s.getsockname()[1], flush=True)
chunk = bytes(1 << 20)
while True:
    c, _ = s.accept()
    n = int(c.recv(64).split()[0])
    for _ in range(n):
        c.sendall(chunk)
    c.close()
"""


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _pull(port: int, mib: int, via: int | None) -> tuple[float, float]:
    """(seconds, CPU seconds of this process) to read ``mib`` MiB from the source."""
    cpu0, t0 = _cpu(), time.perf_counter()
    if via is None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 18)
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", via, limit=1 << 18)
        writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
    writer.write(f"{mib}\n".encode())
    got = 0
    while chunk := await reader.read(1 << 18):
        got += len(chunk)
    writer.close()
    assert got == mib << 20, got
    return time.perf_counter() - t0, _cpu() - cpu0


async def bulk(mib: int = 256, rounds: int = 3) -> dict[str, Any]:
    source = subprocess.Popen([sys.executable, "-c", _SOURCE], stdout=subprocess.PIPE)
    try:
        assert source.stdout is not None
        port = int(source.stdout.readline())
        out: dict[str, Any] = {}
        async with ForwardingProxy(policy=EgressPolicy.open()) as fwd:
            for name, via in (("raw", None), ("proxied", fwd.port)):
                runs = [await _pull(port, mib, via) for _ in range(rounds)]
                best = min(runs)
                out[name] = {"mib_per_s": mib / best[0], "cpu_ms_per_mib": best[1] * 1000 / mib}
        return out
    finally:
        source.kill()
        source.wait()


async def fetches(n: int, warmup: int = 20) -> dict[str, Any]:
    """N sequential GETs per mode, direct and through the forwarder, interleaved one by one."""
    with run_site() as site:
        url = f"{site.url}/page"
        async with ForwardingProxy(policy=EgressPolicy.open()) as fwd:
            clients = {"direct": httpx.AsyncClient(), "proxied": httpx.AsyncClient(proxy=fwd.url)}
            out: dict[str, Any] = {}
            try:
                for mode, headers in (("keep-alive", {}), ("one exchange", {"Connection": "close"})):
                    times: dict[str, list[float]] = {"direct": [], "proxied": []}
                    for i in range(warmup + n):
                        for name in (("direct", "proxied") if i % 2 == 0 else ("proxied", "direct")):
                            t0 = time.perf_counter()
                            r = await clients[name].get(url, headers=headers)
                            elapsed = (time.perf_counter() - t0) * 1000
                            assert r.status_code == 200
                            if i >= warmup:
                                times[name].append(elapsed)
                    d, p = summary(times["direct"]), summary(times["proxied"])
                    out[mode] = {"direct_ms": d, "proxied_ms": p, "added_ms_p50": p["p50"] - d["p50"],
                                 "ratio_p50": p["p50"] / d["p50"]}
                out["forwarder"] = fwd.stats()
            finally:
                for c in clients.values():
                    await c.aclose()
        out["via an http upstream"] = await _fetches_via_upstream(url, n, warmup)
        return out


async def _fetches_via_upstream(url: str, n: int, warmup: int) -> dict[str, Any]:
    """The same GETs through an HTTP upstream proxy: httpx straight to it, beside httpx through a
    forwarder routed to it (which keeps its connection to the proxy, per destination)."""
    upstream = await RecordingHttpProxy().start()
    try:
        async with ForwardingProxy(upstream.url(), policy=EgressPolicy.open()) as fwd:
            clients = {"direct": httpx.AsyncClient(proxy=upstream.url()), "proxied": httpx.AsyncClient(proxy=fwd.url)}
            times: dict[str, list[float]] = {"direct": [], "proxied": []}
            try:
                for i in range(warmup + n):
                    for name in (("direct", "proxied") if i % 2 == 0 else ("proxied", "direct")):
                        t0 = time.perf_counter()
                        r = await clients[name].get(url)
                        elapsed = (time.perf_counter() - t0) * 1000
                        assert r.status_code == 200
                        if i >= warmup:
                            times[name].append(elapsed)
            finally:
                for c in clients.values():
                    await c.aclose()
            d, p = summary(times["direct"]), summary(times["proxied"])
            return {"direct_ms": d, "proxied_ms": p, "added_ms_p50": p["p50"] - d["p50"],
                    "ratio_p50": p["p50"] / d["p50"], "forwarder": fwd.stats()}
    finally:
        await upstream.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=60, help="samples per case and browser (after warm-up)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--fetches", type=int, default=300, help="sequential plain-http GETs per mode and side")
    ap.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    args = ap.parse_args()
    load_before = loadavg()
    results = asyncio.run(run(args.samples, args.warmup))
    results["fetches"] = asyncio.run(fetches(args.fetches))
    results["bulk"] = asyncio.run(bulk())
    print(f"load average before: {load_before[0]:.2f}   samples per figure: {args.samples}")
    print(f"{'case':<10} {'raw p50':>9} {'proxy p50':>10} {'added':>8} {'ratio':>6}   "
          f"{'raw p95':>9} {'proxy p95':>10} {'ratio':>6}")
    for case in CASES:
        r = results[case]
        print(f"{case:<10} {r['raw_ms']['p50']:>8.2f}m {r['proxied_ms']['p50']:>9.2f}m {r['added_ms_p50']:>7.2f}m "
              f"{r['ratio_p50']:>6.2f}   {r['raw_ms']['p95']:>8.2f}m {r['proxied_ms']['p95']:>9.2f}m "
              f"{r['ratio_p95']:>6.2f}")
    print("forwarder:", results["forwarder"])
    f = results["fetches"]
    for mode in ("keep-alive", "one exchange", "via an http upstream"):
        r = f[mode]
        print(f"{args.fetches} sequential GETs, {mode:<12}: direct p50 {r['direct_ms']['p50']:.2f} ms, "
              f"through the forwarder {r['proxied_ms']['p50']:.2f} ms (+{r['added_ms_p50']:.2f} ms, "
              f"{r['ratio_p50']:.2f}x); p95 {r['direct_ms']['p95']:.2f} / {r['proxied_ms']['p95']:.2f} ms")
    print("forwarder (fetches):", f["forwarder"])
    b = results["bulk"]
    print(f"bulk 256 MiB, best of 3: raw {b['raw']['mib_per_s']:.0f} MiB/s "
          f"({b['raw']['cpu_ms_per_mib']:.2f} ms CPU/MiB in the reader); "
          f"through the forwarder {b['proxied']['mib_per_s']:.0f} MiB/s "
          f"({b['proxied']['cpu_ms_per_mib']:.2f} ms CPU/MiB, forwarder + reader)")
    if not args.no_json:
        out = Path(__file__).resolve().parent / "results"
        out.mkdir(exist_ok=True)
        path = out / f"proxy-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps({"samples": args.samples, "loadavg": load_before, "results": results}, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
