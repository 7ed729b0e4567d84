"""``/computers/{id}/exec`` (an NDJSON stream) and ``/computers/{id}/exec/sync``.

The stream always answers HTTP 200, because the SDK parses its body line by
line: a bad body or an unknown or terminated computer comes as one
``{"type":"error"}`` line. Only a missing or wrong API key is a 401.

The SDK reads with a 60 s timeout and retries a POST that timed out, so a
slow answer would run the command again. The stream is fine while the
command prints something at least every 60 s. /exec/sync sends a space every
15 s while a command runs (JSON allows leading whitespace), so it can run
longer than 60 s too. ``/debug`` is buffered and has no such guard: keep its
``timeout_seconds`` under 60 s with the SDK, or raise the client's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from opencone.api.auth import current_org
from opencone.api.deps import runtime
from opencone.api.errors import problems
from opencone.core.errors import InvalidInput, ServiceError
from opencone.core.exec import ExecRequest, ExecResult, parse_request

log = logging.getLogger(__name__)
router = APIRouter(tags=["exec"])

NDJSON = "application/x-ndjson"
HEARTBEAT_SECONDS = 15.0
_CODES = {400: "BAD_REQUEST", 404: "NOT_FOUND", 409: "CONFLICT", 413: "TOO_LARGE", 422: "INVALID_REQUEST",
          429: "LIMIT_REACHED", 503: "UNAVAILABLE"}
_BODY_DOC = {"requestBody": {"required": True,
                             "content": {"application/json": {"schema": ExecRequest.model_json_schema()}}}}


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _error_line(status: int, message: str) -> bytes:
    return _json({"type": "error", "code": _CODES.get(status, "ERROR"), "message": message, "status": status}) + b"\n"


STREAM_PATH = r"^/computers/[^/]+/exec$"


def refused(status: int, detail: str, _errors: list[dict[str, str]]) -> Response:
    """A body api/guard.py refused, said as the stream says every error: one line, HTTP 200."""
    return Response(_error_line(status, detail), media_type=NDJSON, headers={"cache-control": "no-store"})


def _parse(raw: bytes) -> ExecRequest:
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise InvalidInput('the body is not valid JSON; send {"command": "..."}') from None
    return parse_request(data)


@router.post("/computers/{computer_id}/exec", openapi_extra=_BODY_DOC, response_class=StreamingResponse,
             responses={200: {"description": "NDJSON lines; every error but a bad key is one `error` line",
                              "content": {NDJSON: {}}}, **problems(401)})
async def exec_stream(computer_id: str, request: Request, org: str = Depends(current_org)) -> StreamingResponse:
    """Run a command; stream ``stdout``/``stderr`` lines as produced, then one ``exit`` (-1: timeout/killed)."""
    raw = await request.body()  # before streaming: the disconnect listener shares receive()
    service = runtime(request).exec

    async def lines() -> AsyncIterator[bytes]:
        try:
            req = _parse(raw)
            async with contextlib.aclosing(service.stream(org, computer_id, req)) as events:
                async for ev in events:
                    if ev.type == "exit":
                        yield _json({"type": "exit", "code": ev.code}) + b"\n"
                    elif ev.data:  # never an empty line, never an empty chunk
                        yield _json({"type": ev.type, "data": ev.data}) + b"\n"
        except ServiceError as exc:
            yield _error_line(exc.status, exc.message)
        except Exception as exc:  # the stream has started: an error line, never a broken stream
            log.exception("exec on %s failed", computer_id)
            yield _json({"type": "error", "code": "INTERNAL", "message": f"internal error: {exc}"}) + b"\n"

    # a disconnecting client cancels lines(), and with it the command (see core.exec)
    return StreamingResponse(lines(), media_type=NDJSON,
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})


class ExecSyncResult(BaseModel):
    exit_code: int = Field(description="-1: timed out or killed")
    stdout: str
    stderr: str
    truncated: bool = False
    timed_out: bool = False
    error_message: str | None = Field(default=None, description="Set when the command failed after the 200 "
                                                                "went out (it ran past 15 s)")


def _sync_body(res: ExecResult) -> dict[str, Any]:
    return {"exit_code": res.exit_code, "stdout": res.stdout, "stderr": res.stderr,
            "truncated": res.truncated, "timed_out": res.timed_out}


@router.post("/computers/{computer_id}/exec/sync", openapi_extra=_BODY_DOC,
             responses={200: {"model": ExecSyncResult}, **problems(401, 404, 409, 413, 422, 503)})
async def exec_sync(computer_id: str, request: Request, org: str = Depends(current_org)) -> Response:
    """Run a command to the end; ``{exit_code, stdout, stderr, truncated, timed_out}``."""
    req = _parse(await request.body())
    task = asyncio.create_task(runtime(request).exec.run(org, computer_id, req))
    try:
        done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_SECONDS)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if done:
        return JSONResponse(_sync_body(task.result()))  # a ServiceError here becomes its 4xx
    return StreamingResponse(_padded(task), media_type="application/json")


async def _padded(task: asyncio.Task[ExecResult]) -> AsyncIterator[bytes]:
    """Spaces while the command runs (keeps the client's read timeout at bay), then the JSON body."""
    try:
        while not task.done():
            yield b" "
            await asyncio.wait({task}, timeout=HEARTBEAT_SECONDS)
        try:
            body = _sync_body(task.result())
        except ServiceError as exc:  # the 200 is already sent
            body = {"exit_code": -1, "stdout": "", "stderr": "", "error_message": exc.message}
        yield _json(body)
    finally:
        task.cancel()
