"""Every request body is bounded and checked before anything parses it.

One ASGI middleware, the outermost, in front of the hot action routes
(api/hot_actions.py) and FastAPI's routing alike, so no route, present or
future, sees a body it was not meant to carry:

A file upload (``PUT`` on ``raw_uploads``: a computer's files) is no JSON and is
streamed to disk by its route, which caps it by its own setting; it passes untouched.

- larger than ``OPENCONE_MAX_BODY_BYTES``: 413, said by ``Content-Length``
  before anything is read, or counted as the body arrives;
- not UTF-8, nested deeper than ``MAX_JSON_DEPTH``, or holding a lone UTF-16
  surrogate (``"\\ud800"``: Python's json accepts it, but no UTF-8 encoder, OS
  string, browser key or JSON response can carry it): 422 naming the field.

The body is parsed once here by pydantic-core's parser (Rust, bounded depth,
strict Unicode): a few microseconds for an action's body, all of the guard
included; only a body it refuses is looked at again, to say why. A body that is simply not JSON
goes on: the route answers it as before (422 where it wanted JSON). What
passes here any JSON parser downstream takes without recursing deep, and
every string in it encodes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pydantic_core
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opencone.api.errors import problem

# pydantic-core's parser stops there (tests/test_bad_input.py checks 151 passes and 301 does not);
# the stdlib's would recurse to ~1000 and raise RecursionError
MAX_JSON_DEPTH = 200
UTF8_REQUIRED = "request bodies are JSON text in UTF-8"

# How a refusal is said: (status, detail, errors) -> the response. problem+json, unless a path says
# otherwise (the NDJSON exec stream answers in its own terms, with HTTP 200).
Render = Callable[[int, str, list[dict[str, str]]], Response]


def _problem(status: int, detail: str, errors: list[dict[str, str]]) -> Response:
    return problem(status, detail, extra={"errors": errors} if errors else None)


class BodyGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int,
                 renderers: dict[str, Render] | None = None, raw_uploads: str | None = None) -> None:
        """``renderers``: a path regex -> how refusals on the paths it matches are said;
        ``raw_uploads``: a path regex whose PUT bodies go on unread (their route bounds them)."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.renderers = [(re.compile(path), render) for path, render in (renderers or {}).items()]
        self.raw_uploads = re.compile(raw_uploads) if raw_uploads else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] == "PUT" and self.raw_uploads is not None and self.raw_uploads.match(scope["path"]):
            return await self.app(scope, receive, send)
        length, chunked = _framing(scope)
        if length == 0 or (length is None and not chunked):
            return await self.app(scope, receive, send)  # no body: nothing to check
        limit = self.max_body_bytes
        if length is not None and length > limit:
            return await self._refuse(scope, receive, send, 413, _too_large(length, limit), [])
        body = await read_body(receive, limit)
        if body is None:
            return await self._refuse(scope, receive, send, 413, _too_large(None, limit), [])
        refusal = check_json(body)
        if refusal is not None:
            return await self._refuse(scope, receive, send, 422, *refusal)
        await self.app(scope, replay(body, receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, detail: str,
                      errors: list[dict[str, str]]) -> None:
        render = next((r for pattern, r in self.renderers if pattern.match(scope["path"])), _problem)
        await render(status, detail, errors)(scope, receive, send)


def _too_large(length: int | None, limit: int) -> str:
    if length is None:  # chunked: counted as it came
        return f"the request body is over {limit} bytes, the most allowed (OPENCONE_MAX_BODY_BYTES)"
    return f"the request body is {length} bytes; at most {limit} are allowed (OPENCONE_MAX_BODY_BYTES)"


def _framing(scope: Scope) -> tuple[int | None, bool]:
    """The body's ``Content-Length`` (None if absent or unreadable) and whether it comes chunked."""
    length: int | None = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked


async def read_body(receive: Receive, limit: int | None = None) -> bytes | None:
    """The whole body; None as soon as it grows past ``limit``."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` again from the start: the body once, then whatever comes next (a disconnect)."""
    given = False

    async def again() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


def check_json(body: bytes) -> tuple[str, list[dict[str, str]]] | None:
    """Why ``body`` may not go on (a detail and the fields at fault), or None.

    Only what downstream parsers cannot be trusted with is refused; a body that is
    not JSON at all passes (its route says what it expected).
    """
    try:
        pydantic_core.from_json(body)
        return None
    except ValueError:
        pass  # refused: find out why, from the slow but thorough stdlib parser
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        detail = f"the body is not valid UTF-8 (byte {exc.start}); {UTF8_REQUIRED}"
        return detail, [{"field": "body", "message": detail}]
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except RecursionError:
        return _too_deep()
    except ValueError:
        return None  # not JSON: the route answers it
    found = _lone_surrogate(value)
    if found is not None:
        where, in_key, what = found
        message = (f"{'a key ' if in_key else ''}contains a lone UTF-16 surrogate ({what}); text must be "
                   "valid Unicode (a surrogate only as half of a pair)")
        return f"{where}: {message}", [{"field": where, "message": message}]
    return _too_deep()  # parsed by the stdlib, refused by pydantic-core: nested past its limit


def _too_deep() -> tuple[str, list[dict[str, str]]]:
    message = f"JSON nested deeper than {MAX_JSON_DEPTH} levels; at most {MAX_JSON_DEPTH} are allowed"
    return f"body: {message}", [{"field": "body", "message": message}]


def _is_lone(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


_WALK_BUDGET = 100_000  # values looked at to name the field; past it the body as a whole is named
_Path = tuple[Any, ...]  # (parent path, key or index), built as the walk goes: a string only for the answer


def _lone_surrogate(value: Any) -> tuple[str, bool, str] | None:
    """The first string holding a lone surrogate: its field path, whether it is a key of that
    field, and the surrogate, escaped (never the string itself: it could not be sent back)."""
    todo: list[tuple[Any, _Path]] = [(value, ())]
    budget = _WALK_BUDGET
    while todo:
        item, path = todo.pop()
        if isinstance(item, str):
            if _is_lone(item):
                return _field(path), False, _escaped(item)
        elif isinstance(item, dict | list):
            bad_key = next((k for k in item if _is_lone(k)), None) if isinstance(item, dict) else None
            if bad_key is not None:
                return _field(path), True, _escaped(bad_key)
            budget -= len(item)
            if budget < 0:  # (a huge body costs no more than this to refuse)
                return "body", False, "\\ud800-\\udfff"
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            todo.extend((sub, (path, key)) for key, sub in reversed(list(pairs)))  # (popped in order)
    return None


def _field(path: _Path) -> str:
    """``actions[1].url`` from the walk's path; ``body`` for the whole."""
    parts = []
    while path:
        path, key = path
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    joined = "".join(reversed(parts))
    return joined[1:] if joined.startswith(".") else f"body{joined}"


def _escaped(s: str) -> str:
    bad = next(c for c in s if 0xD800 <= ord(c) <= 0xDFFF)
    return f"\\u{ord(bad):04x}"
