"""``Server-Timing: app;dur=<ms>`` on every HTTP answer: the server's own time for a request.

Measured from the moment the request enters the application (the outermost middleware) to its
answer's headers, so what a client sees beyond it is queueing (the event loop busy with other
requests, the kernel, the client itself). A benchmark reads both (bench/bench_burst.py).

Pure ASGI: one wrapped ``send`` per request (BaseHTTPMiddleware would add a task and a stream
per request). A streamed answer (SSE, a screencast, a file) gets its time to first headers, which
is harmless; WebSockets and lifespan pass through untouched.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"server-timing"


class ServerTiming:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                dur = (time.perf_counter() - t0) * 1000
                headers = list(message.get("headers", ()))
                headers.append((HEADER, b"app;dur=%.3f" % dur))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed)


def parse(value: str) -> dict[str, float]:
    """``app;dur=1.2, db;dur=3`` -> ``{"app": 1.2, "db": 3.0}`` (metrics without a ``dur`` left out):
    for the benchmarks and tests that read the header back."""
    out: dict[str, float] = {}
    for metric in value.split(","):
        name, *params = (p.strip() for p in metric.split(";"))
        for param in params:
            key, _, val = param.partition("=")
            if key.strip().lower() == "dur" and name:
                try:
                    out[name] = float(val.strip().strip('"'))
                except ValueError:
                    pass
    return out
