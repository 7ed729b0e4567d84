"""MCP benchmark: a ``click`` + ``screenshot`` round trip through ``/mcp`` beside the same two
actions through the REST API, on one server, one computer and one local page, in the same run.

Run by hand, never in CI:

    .venv/bin/python bench/bench_mcp.py            # 40 samples per figure
    .venv/bin/python bench/bench_mcp.py --quick    # 10 samples

Each sample is, from the client's side until the image bytes are in hand:
- REST: ``POST /computers/{id}/click {x, y}`` then ``POST /computers/{id}/screenshot {"base64": true}``
  (httpx, keep-alive);
- MCP over Streamable HTTP with the official client, in the sessionless 2026-07-28 era and in the
  2025-11-25 handshake era: ``tools/call click {x, y}`` then ``tools/call screenshot`` (a JPEG image
  content; the same 1024x768 screen, so scale 1 and no re-encoding);
- MCP over stdio: the same calls through ``opencone mcp --url`` (the bridge) to the same server.
Floors beside them: ``GET /health`` (an HTTP round trip that does nothing) and the MCP call that
touches no browser (``computer_get``) beside its REST twin (``GET /computers/{id}``). The kinds
are interleaved sample by sample, so load drifts hit them alike. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
from _common import loadavg, start_server, summary
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from opencone.testing import Site

PAGES = Path(__file__).resolve().parent.parent / "tests" / "pages"


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return (time.perf_counter() - t0) * 1000


def mcp_ok(result: Any) -> Any:
    if result.is_error:
        raise RuntimeError(result.content[0].text)
    return result


async def main(samples: int) -> dict[str, Any]:
    site = Site(PAGES)
    tmp = Path(tempfile.mkdtemp(prefix="bench-mcp-"))
    srv = start_server(tmp, env={"OPENCONE_POOL_SIZE": "1"})
    try:
        rest = httpx.AsyncClient(base_url=srv.base_url, timeout=60,
                                 headers={"authorization": f"Bearer {srv.api_key}"})
        cid = (await rest.post("/computers", json={})).json()["id"]
        assert (await rest.post(f"/computers/{cid}/navigate", json={"url": f"{site.url}/mcp.html"})).status_code == 200

        async def rest_round() -> None:
            r = await rest.post(f"/computers/{cid}/click", json={"x": 700, "y": 550})
            assert r.json()["status"] == "success", r.text
            r = await rest.post(f"/computers/{cid}/screenshot", json={"base64": True})
            body = r.json()
            assert body["status"] == "success" and base64.b64decode(body["result"]["screenshot_url"].split(",", 1)[-1])

        async def rest_get() -> None:
            assert (await rest.get(f"/computers/{cid}")).status_code == 200

        async def health() -> None:
            assert (await rest.get("/health")).status_code == 200

        http2 = httpx2.AsyncClient(headers={"Authorization": f"Bearer {srv.api_key}"},
                                   timeout=httpx2.Timeout(60, read=300))
        url = f"{srv.base_url}/mcp"
        stdio = StdioServerParameters(command=sys.executable,
                                      args=["-m", "opencone", "mcp", "--url", srv.base_url, "--key", srv.api_key])
        async with (http2, Client(streamable_http_client(url, http_client=http2)) as modern,
                    Client(streamable_http_client(url, http_client=http2), mode="legacy") as legacy,
                    Client(stdio) as bridged):
            clients = {"mcp_2026": modern, "mcp_2025": legacy, "mcp_stdio": bridged}

            def mcp_round(c: Client) -> Callable[[], Awaitable[None]]:
                async def go() -> None:
                    mcp_ok(await c.call_tool("click", {"computer_id": cid, "x": 700, "y": 550}))
                    shot = mcp_ok(await c.call_tool("screenshot", {"computer_id": cid}))
                    assert base64.b64decode(shot.content[0].data)
                return go

            def mcp_get(c: Client) -> Callable[[], Awaitable[None]]:
                async def go() -> None:
                    mcp_ok(await c.call_tool("computer_get", {"computer_id": cid}))
                return go

            kinds: dict[str, Callable[[], Awaitable[None]]] = {
                "rest_click_screenshot": rest_round, "rest_get_computer": rest_get, "http_health": health,
                **{f"{n}_click_screenshot": mcp_round(c) for n, c in clients.items()},
                **{f"{n}_get_computer": mcp_get(c) for n, c in clients.items()},
            }
            for fn in kinds.values():  # warm-up: connections, first image, caches
                await fn()
            times: dict[str, list[float]] = {k: [] for k in kinds}
            load_before = loadavg()
            for _ in range(samples):
                for k, fn in kinds.items():
                    times[k].append(await timed(fn))
            shot = mcp_ok(await modern.call_tool("screenshot", {"computer_id": cid}))
            image_bytes = len(base64.b64decode(shot.content[0].data))
        await rest.delete(f"/computers/{cid}")
        await rest.aclose()
    finally:
        srv.stop()
        site.close()
    out: dict[str, Any] = {"samples": samples, "load_before": load_before, "load_after": loadavg(),
                           "screenshot_jpeg_bytes": image_bytes,
                           "ms": {k: {m: round(v, 2) if isinstance(v, float) else v for m, v in summary(t).items()}
                                  for k, t in times.items()}}
    p50 = {k: out["ms"][k]["p50"] for k in times}
    out["ratio_p50_vs_rest"] = {k: round(p50[k] / p50["rest_click_screenshot"], 3)
                                for k in times if k.endswith("_click_screenshot")}
    out["ratio_p50_get_vs_rest"] = {k: round(p50[k] / p50["rest_get_computer"], 3)
                                    for k in times if k.endswith("_get_computer")}
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 samples instead of 40")
    ap.add_argument("--samples", type=int, default=None)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main(args.samples or (10 if args.quick else 40))), indent=2))
