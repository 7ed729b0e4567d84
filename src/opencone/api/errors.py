"""Every error leaves as JSON that says what was wrong and what is allowed.

Bodies follow RFC 7807 (``type``, ``title``, ``status``, ``detail``) with the
old Lightcone ``error_message`` beside ``detail``; the SDK accepts any JSON.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from opencone.api.error_counter import note
from opencone.core.errors import ServiceError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_TITLES = {
    400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
    405: "Method not allowed", 409: "Conflict", 413: "Request body too large", 416: "Range not satisfiable",
    422: "Invalid request",
    429: "Too many requests", 500: "Internal error", 503: "Service unavailable",
}


class FieldError(BaseModel):
    field: str = Field(description="Where in the request, e.g. `actions[1].keys[0]` or `body`.")
    message: str


class Problem(BaseModel):
    """An RFC 7807 problem: the body of every error answer (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow", title="Problem")
    type: str = Field(description="Always `about:blank`: the status says the kind.")
    title: str
    status: int
    detail: str = Field(description="What was wrong, naming the field and what is allowed.")
    error_message: str = Field(description="The same as `detail` (the older Lightcone field).")
    errors: list[FieldError] | None = Field(default=None, description="For a 422: each field at fault.")


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: these error statuses, each a Problem (api/openapi.py sets the media type)."""
    return {status: {"model": Problem, "description": _TITLES[status]} for status in statuses}


def problem(status: int, detail: str, headers: dict[str, str] | None = None,
            extra: dict[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": _TITLES.get(status, "Error"), "status": status,
                            "detail": detail, "error_message": detail}
    for key, value in (extra or {}).items():
        body.setdefault(key, value)
    hdrs = dict(headers or {})
    if status in (409, 500, 503):
        # the SDK retries 409 and 5xx twice; a retry of these would not change the answer
        hdrs.setdefault("x-should-retry", "false")
    if status == 401:
        hdrs.setdefault("www-authenticate", "Bearer")
    if status == 429:
        hdrs.setdefault("retry-after", "1")
    return JSONResponse(body, status_code=status, headers=hdrs, media_type="application/problem+json")


def service_problem(exc: ServiceError) -> JSONResponse:
    return problem(exc.status, exc.message, extra={k: v for k, v in exc.details.items() if v is not None})


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def describe_validation(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, str]]]:
    items = []
    for err in errors:
        where = _loc(err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        items.append({"field": where, "message": msg})
    detail = "; ".join(f"{i['field']}: {i['message']}" for i in items[:5])
    return detail, items


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(req: Request, exc: ServiceError) -> JSONResponse:
        note(req.scope, type(exc).__name__)  # GET /metrics: errors by type (api/error_counter.py)
        return service_problem(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        detail, items = describe_validation(list(exc.errors()))
        return problem(422, detail, extra={"errors": items})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such endpoint; see /docs for the API"
        if exc.status_code == 405:
            detail = "method not allowed on this endpoint; see /docs for the API"
        return problem(exc.status_code, detail, headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        note(req.scope, f"internal:{exc.__class__.__name__}")
        return problem(500, f"internal error: {exc.__class__.__name__}")
