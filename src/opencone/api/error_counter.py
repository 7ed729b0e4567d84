"""Counts every error answer for ``GET /metrics`` (``opencone_http_errors_total{status, error}``).

The outermost middleware, so it sees the answers of every layer: the body guard's 413/422, the hot
routes', FastAPI's. ``error`` is the type an exception handler noted in the scope
(``api/errors.py``: ``NotFound``, ``validation``…), else the status's own name. A request without
an error costs one extra ``send`` wrapper.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opencone.core.metrics import Metrics

SCOPE_KEY = "opencone.error"  # set by api/errors.py's handlers
_NAMES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "body_too_large", 422: "validation", 429: "too_many_requests", 500: "internal",
          502: "bad_gateway", 503: "unavailable", 504: "gateway_timeout"}


def note(scope: Scope, error: str) -> None:
    """Name the error this request is answered with (called where the exception is mapped)."""
    scope[SCOPE_KEY] = error


class ErrorCounter:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                status = message["status"]
                metrics: Metrics | None = getattr(getattr(scope["app"].state, "runtime", None), "metrics", None)
                if metrics is not None:
                    metrics.observe_error(status, scope.get(SCOPE_KEY) or _NAMES.get(status, f"http_{status}"))
            await send(message)

        await self.app(scope, receive, counted)
