"""What a driver's screencast hands up: JPEG frames and pointer positions.

A source captures one computer's screen until it is cancelled (nobody is
watching any more) or the computer is gone (it returns). It calls ``emit``
from the event loop for every new picture; it never queues: the services
floor keeps only the newest frame for each viewer.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True, frozen=True)
class Frame:
    data: str  # the JPEG, base64: Chromium sends it so, and the wire needs it so
    width: int
    height: int
    timestamp: float  # seconds since the epoch, when the picture was taken
    seq: int = 0  # numbered by the services floor, per computer
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class CursorPosition:
    x: int
    y: int


ScreencastEvent = Frame | CursorPosition
Emit = Callable[[ScreencastEvent], None]


class ScreencastSource(Protocol):
    async def run(self, emit: Emit) -> None:
        """Capture until cancelled; return when the computer is gone."""


def jpeg_size_b64(data: str) -> tuple[int, int] | None:
    """Width and height of a base64 JPEG, read from its SOF marker near the start."""
    raw = base64.b64decode(data[:4096])  # the SOF follows the quantisation tables, well inside this
    i = 2
    while i + 9 < len(raw):
        if raw[i] != 0xFF:
            return None
        marker, length = raw[i + 1], int.from_bytes(raw[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            return int.from_bytes(raw[i + 7:i + 9], "big"), int.from_bytes(raw[i + 5:i + 7], "big")
        i += 2 + length
    return None
