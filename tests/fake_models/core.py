"""What every fake endpoint shares: settings, the request log, scripted faults, each vendor's
auth and error shapes, and SSE framing."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

DEFAULT_API_KEY = "fake-model-key"


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


@dataclass
class Settings:
    """Set at start (command line) and by ``POST /_script``; ``POST /_reset`` restores the start."""

    api_key: str = DEFAULT_API_KEY
    latency: float = 0.0            # seconds before every model answer (a stream: before its first event)
    stream_interval: float = 0.0    # seconds between two events of a stream
    mode: str = "policy"            # "policy": look at the screen; "fast": answer at once (benchmarks)
    fast_steps: int = 3             # fast mode: model turns before it says done
    log_bodies: bool = True         # keep each request's JSON body in the log
    display_mismatch: str = "refuse"  # a screenshot not of the declared display: "refuse" (say so) | "scale"
    chunk: int = 16                 # characters per text / arguments delta in streams

    def update(self, values: dict[str, Any]) -> None:
        names = {f.name: f.type for f in fields(self)}
        for key, value in values.items():
            if key not in names:
                raise ValueError(f"unknown setting {key!r}; known: {', '.join(names)}")
            current = getattr(self, key)
            if isinstance(current, bool) and not isinstance(value, bool):
                raise ValueError(f"setting {key!r} takes true or false, not {value!r}")
            choices = {"mode": ("policy", "fast"), "display_mismatch": ("refuse", "scale")}.get(key)
            if choices and value not in choices:
                raise ValueError(f"setting {key!r} is one of {', '.join(choices)}, not {value!r}")
            setattr(self, key, type(current)(value))


FAULT_KINDS = ("status", "garbage", "truncate", "delay", "safety_check")


@dataclass
class Fault:
    """What the next ``count`` model requests (matching ``path``/``model`` when given) get instead
    of a normal answer. One kind per fault:

    status: an HTTP error in the vendor's shape (429, 500, 503, 529…), ``retry_after`` seconds if set;
    garbage: "output" (the protocol is right, the model's output is nonsense), "body" (HTTP 200
             whose body is not JSON; a stream: a data line that is not JSON);
    truncate: a stream that stops half way, without its final events (the connection is dropped);
    delay: seconds to wait before answering normally;
    safety_check: (Responses) the computer_call carries a pending safety check, which the next
             request must acknowledge or get a 400."""

    kind: str
    value: Any
    count: int = 1
    path: str | None = None
    model: str | None = None
    retry_after: float | None = None
    message: str | None = None

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> Fault:
        kinds = [k for k in FAULT_KINDS if k in spec]
        if len(kinds) != 1:
            raise ValueError(f"a fault names exactly one of {', '.join(FAULT_KINDS)}: {spec!r}")
        extra = set(spec) - {*FAULT_KINDS, "count", "path", "model", "retry_after", "message"}
        if extra:
            raise ValueError(f"unknown fault field(s) {sorted(extra)}")
        return cls(kinds[0], spec[kinds[0]], int(spec.get("count", 1)), spec.get("path"), spec.get("model"),
                   spec.get("retry_after"), spec.get("message"))

    def matches(self, path: str, model: str | None) -> bool:
        return (self.path is None or self.path in path) and (self.model is None or self.model == model)

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class State:
    settings: Settings
    initial: Settings
    log_file: Path | None = None
    log: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    seq: int = 0
    store: dict[str, Any] = field(default_factory=dict)  # the Responses API's own store (responses.py)

    def reset(self) -> None:
        self.settings = Settings(**asdict(self.initial))
        self.log.clear()
        self.faults.clear()
        self.store.clear()

    def take_fault(self, path: str, model: str | None) -> Fault | None:
        for fault in self.faults:
            if fault.matches(path, model):
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def finish(self, entry: dict[str, Any]) -> None:
        entry["duration_ms"] = round((time.time() - entry["t"]) * 1000, 2)
        if self.log_file is not None:
            with self.log_file.open("a") as f:
                f.write(json.dumps(entry) + "\n")


@dataclass
class Call:
    """One model request, as the endpoints see it: its body, its log entry, its fault."""

    request: Request
    raw: bytes
    body: dict[str, Any]
    entry: dict[str, Any]
    fault: Fault | None
    state: State

    @property
    def settings(self) -> Settings:
        return self.state.settings

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    def note(self, **values: Any) -> None:
        self.entry.update(values)

    def input_tokens(self) -> int:
        return max(1, len(self.raw) // 4)


# -- vendors' errors ---------------------------------------------------------------------------------
OPENAI_ERRORS = {400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
                 404: ("invalid_request_error", None), 429: ("requests", "rate_limit_exceeded"),
                 500: ("server_error", None), 503: ("server_error", None)}
ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    500: "api_error", 529: "overloaded_error"}


def openai_error(status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    kind, default_code = OPENAI_ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error",
                                                    None))
    body = {"error": {"message": message, "type": kind, "param": param, "code": code or default_code}}
    return JSONResponse(body, status, headers={"x-request-id": new_id("req_"), **(headers or {})})


def anthropic_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    request_id = new_id("req_")
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
    return JSONResponse(body, status, headers={"request-id": request_id, **(headers or {})})


def vendor_error(vendor: str, status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    if vendor == "anthropic":
        return anthropic_error(status, message, headers)
    return openai_error(status, message, headers=headers)


def authorized(request: Request, vendor: str, key: str) -> bool:
    bearer = request.headers.get("authorization", "")
    if vendor == "anthropic" and request.headers.get("x-api-key") == key:
        return True
    return bearer == f"Bearer {key}"


# -- the start of every model request ---------------------------------------------------------------
LOGGED_HEADERS = ("authorization", "x-api-key", "anthropic-version", "anthropic-beta", "content-type", "accept",
                  "user-agent", "x-stainless-retry-count", "idempotency-key", "openai-beta", "x-fake-dialect")


async def begin(request: Request, state: State, vendor: str, api: str, generate: bool = False) -> Call | Response:
    """Log the request, check its key and body; for a request that makes the model answer
    (``generate``), apply the latency and any scripted fault. Returns the Call to answer, or
    the Response that already answers it (an error)."""
    raw = await request.body()
    state.seq += 1
    entry: dict[str, Any] = {"seq": state.seq, "t": time.time(), "method": request.method,
                             "path": request.url.path, "query": str(request.url.query), "vendor": vendor,
                             "api": api, "headers": {h: request.headers[h] for h in LOGGED_HEADERS
                                                     if h in request.headers}}
    state.log.append(entry)
    settings = state.settings

    def fail(response: Response, **notes: Any) -> Response:
        entry.update(status=response.status_code, **notes)
        state.finish(entry)
        return response

    if not authorized(request, vendor, settings.api_key):
        if vendor == "anthropic":
            return fail(anthropic_error(401, "invalid x-api-key"), error="unauthorized")
        return fail(openai_error(401, "Incorrect API key provided. You can find your API key at the fake's "
                                 "start (FakeModels.api_key).", code="invalid_api_key"), error="unauthorized")
    try:
        body = json.loads(raw) if raw else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return fail(vendor_error(vendor, 400, f"We could not parse the JSON body of your request: {exc}"),
                    error="bad json")
    if not isinstance(body, dict):
        return fail(vendor_error(vendor, 400, "The request body must be a JSON object."), error="bad json")
    model = body.get("model") if isinstance(body.get("model"), str) else None
    entry.update(model=model, stream=bool(body.get("stream")))
    if settings.log_bodies:
        entry["body"] = body
    fault = state.take_fault(request.url.path, model) if generate else None
    if fault is not None:
        entry["fault"] = fault.describe()
    wait = (settings.latency if generate else 0.0) + (float(fault.value) if fault and fault.kind == "delay" else 0.0)
    if wait > 0 and not (api == "responses" and body.get("background")):
        await asyncio.sleep(wait)
    if fault is not None and fault.kind == "status":
        status = int(fault.value)
        headers = {"retry-after": str(fault.retry_after)} if fault.retry_after is not None else None
        message = fault.message or {429: "Rate limit reached (scripted by the fake).",
                                    529: "Overloaded (scripted by the fake)."}.get(
            status, f"The server had an error (scripted by the fake: {status}).")
        return fail(vendor_error(vendor, status, message, headers))
    if fault is not None and fault.kind == "garbage" and fault.value == "body" and not body.get("stream"):
        return fail(Response(b'{"id": "garbage", "choices": [{"mess', 200, media_type="application/json"))
    return Call(request, raw, body, entry, fault, state)


def answer_json(call: Call, body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
                ) -> JSONResponse:
    call.entry["status"] = status
    call.state.finish(call.entry)
    return JSONResponse(body, status, headers=headers)


def reject(call: Call, vendor: str, status: int, message: str, **kw: Any) -> JSONResponse:
    """A 4xx a real provider gives to a malformed conversation (a tool result without its call…)."""
    call.entry.update(status=status, error=message)
    call.state.finish(call.entry)
    if vendor == "anthropic":
        return anthropic_error(status, message)
    return openai_error(status, message, **kw)


# -- streams ---------------------------------------------------------------------------------------------
class Dropped(Exception):
    """Raised inside a stream to drop the connection half way (the ``truncate`` fault)."""


def sse(event: str | None, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def stream_response(call: Call, frames: Iterable[bytes], headers: dict[str, str] | None = None
                    ) -> StreamingResponse:
    """Send ``frames`` as SSE, paced by ``stream_interval``; a ``truncate`` fault drops the
    connection after half of them, a ``garbage: body`` fault sends a data line that is no JSON."""
    frames = list(frames)
    fault = call.fault
    interval = call.settings.stream_interval
    call.entry.update(status=200, events=len(frames))

    async def body() -> AsyncIterator[bytes]:
        try:
            if fault is not None and fault.kind == "garbage" and fault.value == "body":
                yield b"data: {this is not json\n\n"
                return
            cut = len(frames) // 2 if fault is not None and fault.kind == "truncate" else None
            for n, frame in enumerate(frames):
                if cut is not None and n == cut:
                    call.entry["truncated_after"] = n
                    raise Dropped("scripted truncate")
                if n and interval:
                    await asyncio.sleep(interval)
                yield frame
        finally:
            call.state.finish(call.entry)

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", **(headers or {})})


def pieces(text: str, size: int) -> list[str]:
    """``text`` cut in deltas of ``size`` characters (one empty delta for an empty text)."""
    size = max(1, size)
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]
