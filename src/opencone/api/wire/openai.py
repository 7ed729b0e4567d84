"""The OpenAI-shaped edge of ``/v1`` (and ``/models``, ``/chat/completions``): errors as OpenAI
says them, and the shapes the OpenAPI document gives for these routes.

Clients of these routes are OpenAI SDKs and their kin, which read
``{"error": {"message", "type", "param", "code"}}``; so every error of these
routes is said that way, not as the problem+json of the rest of the API: the
gateway's own (gateway/errors.py), a missing or wrong key (401), a query that
does not parse, and a body api/guard.py refused (413, 422), through
``refused``. ``OpenAIRoute`` is the route class of their routers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pydantic_core
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from opencone.api.errors import describe_validation
from opencone.api.json_body import JsonBody
from opencone.core.errors import ServiceError
from opencone.gateway.errors import GatewayError
from opencone.gateway.images import OwnFiles, own_origins

log = logging.getLogger(__name__)

# the paths whose refusals api/guard.py says in this shape
PATHS = r"^/(?:v1/(?:models|chat/completions|responses)|models|chat/completions)(?:/|$)"

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 409: "invalid_request_error", 410: "invalid_request_error",
          413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}
_CODES = {401: "invalid_api_key", 404: "not_found", 413: "request_too_large", 422: "invalid_request"}
_TITLES = {400: "Bad request", 401: "Unauthorized", 404: "Not found", 410: "Gone", 413: "Request body too large",
           422: "Invalid request", 429: "Too many requests", 500: "Internal error", 502: "Upstream failed",
           504: "Upstream timed out"}


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    message: str = Field(description="What was wrong: the field, the setting to set, or the upstream's own words.")
    type: str = Field(description="`invalid_request_error`, `authentication_error`, `rate_limit_error`, "
                                  "`upstream_error`, `server_error`.")
    param: str | None = Field(description="The field at fault, if one is.")
    code: str | None = Field(description="e.g. `model_not_found`, `no_model_configured`, `response_not_found`.")


class OpenAIError(BaseModel):
    """The body of every error of the OpenAI-shaped routes (``/v1/*``), as OpenAI sends it."""

    error: ErrorDetail


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for an OpenAI-shaped route: these error statuses, each an ``OpenAIError``
    (api/openapi.py leaves them as they are)."""
    return {status: {"model": OpenAIError, "description": _TITLES.get(status, "Error")} for status in statuses}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   kind: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    hdrs = dict(headers or {})
    if status == 401:
        hdrs.setdefault("www-authenticate", "Bearer")
    if status >= 500:
        # the upstream's SDK retried already (OPENCONE_MODEL_MAX_RETRIES): the caller's should not again
        hdrs.setdefault("x-should-retry", "false")
    body = {"error": {"message": message, "type": kind or _TYPES.get(status, "server_error"), "param": param,
                      "code": code if code is not None else _CODES.get(status)}}
    return JSONResponse(body, status_code=status, headers=hdrs)


def gateway_error(exc: GatewayError) -> JSONResponse:
    return error_response(exc.status, exc.message, param=exc.param, code=exc.code, kind=exc.type,
                          headers=exc.headers)


def refused(status: int, detail: str, errs: list[dict[str, str]]) -> Response:
    """A body api/guard.py refused (413, 422), said in OpenAI's shape."""
    return error_response(status, detail, param=errs[0]["field"] if errs else None)


class OpenAIRoute(APIRoute):
    """Errors raised while a request is answered (the key's dependency, a query that does not
    parse, the gateway's) come out in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except GatewayError as exc:
                return gateway_error(exc)
            except ServiceError as exc:
                return error_response(exc.status, exc.message)
            except RequestValidationError as exc:
                detail, items = describe_validation(list(exc.errors()))
                return error_response(400, detail, param=items[0]["field"] if items else None)
            except HTTPException as exc:
                return error_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))
            except Exception as exc:  # a bug: logged, and said in these routes' shape all the same
                log.exception("unhandled error")
                return error_response(500, f"internal error: {exc.__class__.__name__}")

        return route


# -- what the OpenAPI document says the answers are (open: the upstreams' fields pass through) --
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ModelObject(_Open):
    id: str = Field(description="What to send as `model`; a family's is its pattern, e.g. `openai/*`.")
    object: str = Field(description="`model`")
    created: int
    owned_by: str
    provider: str = Field(description="`openai`, `openai-chat`, `anthropic` or `lightcone`")
    family: bool = Field(description="true: every id with this prefix goes to this upstream")
    default: bool = Field(description="the model a request that names none gets")


class ModelList(_Open):
    object: str = Field(description="`list`")
    data: list[ModelObject]


class ResponseObject(_Open):
    """An OpenAI Response (its fields pass through from a native upstream)."""

    id: str
    object: str = Field(description="`response`")
    created_at: int
    model: str
    status: str | None = None
    output: list[dict[str, Any]]


class DeletedResponse(_Open):
    id: str
    object: str = Field(description="`response.deleted`")
    deleted: bool


class ItemList(_Open):
    object: str = Field(description="`list`")
    data: list[dict[str, Any]]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class ChatCompletion(_Open):
    """An OpenAI ``chat.completion`` (as the upstream sent it)."""

    id: str
    object: str = Field(description="`chat.completion`")
    created: int
    model: str
    choices: list[dict[str, Any]]


def sse_or(model: type[BaseModel], what: str) -> dict[int | str, dict[str, Any]]:
    """A 200 that is JSON of ``model``, or an SSE stream when the request asked for one."""
    return {200: {"model": model, "description": f"{what}; with `stream: true`, Server-Sent Events",
                  "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


# -- request helpers of the gateway's routes ------------------------------------------------------
def gateway_of(request: Request) -> Any:
    return request.app.state.gateway


def own_files(request: Request) -> OwnFiles:
    """Our own screenshot links as this request sees them (gateway/images.py)."""
    runtime = request.app.state.runtime
    settings = runtime.settings
    return OwnFiles(runtime.files, own_origins(str(request.base_url), settings.public_url, settings.port))


async def json_of(request: Request) -> Any:
    """The body as JSON; a body that is not is a 400 (api/guard.py has bounded and checked it)."""
    raw = await request.body()
    if not raw.strip():
        raise GatewayError("the body is empty; send a JSON object", param=None)
    try:
        return pydantic_core.from_json(raw)
    except ValueError:
        raise GatewayError("the body is not valid JSON", param=None) from None


def answered(body: Any, stream: Any, dropped: list[str]) -> Response:
    """A gateway answer: JSON (bytes as an upstream sent them, or a dict) or an SSE stream."""
    headers = {"x-opencone-dropped-fields": ", ".join(dropped)} if dropped else {}
    if stream is not None:
        headers.update({"cache-control": "no-cache", "x-accel-buffering": "no"})
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
    if isinstance(body, bytes | bytearray):
        return Response(bytes(body), media_type="application/json", headers=headers)
    return JsonBody(body, headers=headers)
