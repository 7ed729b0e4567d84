"""What GET /metrics costs the hot path: the per-action hook and the error counter's wrapper.

Run by hand: ``.venv/bin/python bench/bench_metrics.py``. Each figure is printed beside its raw
floor measured in the same run: the hook (two ``perf_counter`` calls and ``observe_action``, as
``ComputerService._do_step`` runs it) beside the two ``perf_counter`` calls alone; a request through
``ErrorCounter`` beside the same ASGI app called directly; and, for scale, a click's HTTP round trip
against a real server.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from opencone.api.error_counter import ErrorCounter
from opencone.core.metrics import Metrics
from opencone.testing import start_server

N = 200_000


def per_call(fn: Any, n: int = N) -> float:
    """Median of 5 runs of ``n`` calls, in microseconds per call."""
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn(n)
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(runs)


def floor_pair(n: int) -> None:
    pc = time.perf_counter
    for _ in range(n):
        t0 = pc()
        _ = pc() - t0


def hook(n: int) -> None:
    m, pc = Metrics(), time.perf_counter
    for _ in range(n):
        t0 = pc()
        m.observe_action("click", pc() - t0, True)


async def _asgi(n: int, wrapped: bool) -> float:
    class State:
        runtime = type("R", (), {"metrics": Metrics()})()

    class App:
        state = State()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(_m: Any) -> None:
        return None

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    target = ErrorCounter(app) if wrapped else app
    scope = {"type": "http", "app": App()}
    t0 = time.perf_counter()
    for _ in range(n):
        await target(scope, receive, send)
    return (time.perf_counter() - t0) / n * 1e6


def asgi(wrapped: bool) -> float:
    return statistics.median(asyncio.run(_asgi(50_000, wrapped)) for _ in range(5))


def click_round_trip() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp))
        try:
            client = server.client()
            comp = client.computers.create()
            with server.http() as http:
                for _ in range(20):
                    http.post(f"/computers/{comp.id}/click", json={"x": 10, "y": 10})
                samples = []
                for _ in range(200):
                    t0 = time.perf_counter()
                    http.post(f"/computers/{comp.id}/click", json={"x": 10, "y": 10})
                    samples.append((time.perf_counter() - t0) * 1e6)
            client.computers.delete(comp.id)
            return statistics.median(samples)
        finally:
            server.stop()


def main() -> None:
    floor, cost = per_call(floor_pair), per_call(hook)
    print(f"action hook       {cost:6.2f} us   raw floor (perf_counter pair) {floor:6.2f} us   "
          f"hook alone {cost - floor:5.2f} us ({cost / floor:.1f}x)")
    direct, wrapped = asgi(False), asgi(True)
    print(f"error counter     {wrapped:6.2f} us   raw floor (ASGI app direct)   {direct:6.2f} us   "
          f"wrapper {wrapped - direct:5.2f} us ({wrapped / direct:.2f}x)")
    if "--no-server" not in sys.argv:
        click = click_round_trip()
        print(f"click round trip {click:7.0f} us   (hook + wrapper: {(cost + wrapped - direct) / click:.2%} of it)")
    with open("/proc/loadavg") as f:
        print("load:", f.read().strip())


if __name__ == "__main__":
    main()
