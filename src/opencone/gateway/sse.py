"""Server-Sent Events as the OpenAI SDK reads them: ``event:`` + one-line JSON ``data:``."""

from __future__ import annotations

from typing import Any

import pydantic_core

DONE = b"data: [DONE]\n\n"


def data(obj: Any) -> bytes:
    """A Chat Completions chunk (no event name)."""
    return b"data: " + pydantic_core.to_json(obj) + b"\n\n"


def event(obj: dict[str, Any]) -> bytes:
    """A Responses event, named by its ``type``."""
    return b"event: " + str(obj["type"]).encode() + b"\ndata: " + pydantic_core.to_json(obj) + b"\n\n"


class FirstEvent:
    """Reads an SSE byte stream as it passes by, until its first JSON ``data:`` is whole (the
    native Responses stream's ``response.created``, which carries the response's id)."""

    def __init__(self, limit: int = 1 << 20) -> None:
        self._buffer = b""
        self._limit = limit
        self.value: Any = None
        self.done = False

    def feed(self, chunk: bytes) -> None:
        if self.done:
            return
        self._buffer += chunk
        while b"\n" in self._buffer:
            line, _, self._buffer = self._buffer.partition(b"\n")
            line = line.rstrip(b"\r")
            if line.startswith(b"data:"):
                try:
                    self.value = pydantic_core.from_json(line[5:].strip())
                except ValueError:
                    continue
                self.done = True
                self._buffer = b""
                return
        if len(self._buffer) > self._limit:
            self.done = True
            self._buffer = b""
