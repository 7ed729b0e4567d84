"""Hold a live stream's next message until the client has taken the previous ones.

A video stream must not buffer: a viewer that stalls for two seconds should
then see the screen as it is, not replay two seconds of it. The services floor
keeps only the newest frame per viewer, but that helps only if the server does
not hand frames to the kernel faster than the client reads them, and a TCP
socket happily queues megabytes (its send buffer grows to 4 MiB on Linux). So
a stream's socket gets a small send buffer, and the next frame is written only
once the bytes still queued for the client (asyncio's buffer plus the socket's
unacknowledged bytes, ``SIOCOUTQ``) are below one frame's worth; meanwhile the
viewer's slot keeps taking newer frames.

ASGI gives an application no handle on its connection, so the transport is
found behind the ``send`` callable uvicorn passes in (its bound method's
``transport``). Under another server nothing is found, and streams just run
without this check.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
from collections.abc import Callable
from typing import Any

SEND_BUFFER = 64 * 1024
POLL_SECONDS = (0.002, 0.05)  # first and longest wait between checks of a stalled client


def _is_transport(obj: object) -> bool:
    # uvloop's transports do not derive from asyncio's classes: check for what is used here
    return all(callable(getattr(obj, name, None)) for name in ("get_extra_info", "get_write_buffer_size", "is_closing"))


def find_transport(send: Callable[..., Any], depth: int = 8) -> Any | None:
    """The asyncio transport behind an ASGI ``send``, through the middleware's wrapper closures."""
    todo: list[tuple[Any, int]] = [(send, 0)]
    seen: set[int] = set()
    while todo:
        fn, level = todo.pop()
        if id(fn) in seen or level > depth:
            continue
        seen.add(id(fn))
        transport = getattr(getattr(fn, "__self__", None), "transport", None)
        if _is_transport(transport):
            return transport
        for cell in getattr(fn, "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # an empty cell
                value = cell.cell_contents
                if callable(value):
                    todo.append((value, level + 1))
    return None


class Backpressure:
    """Set ``attach(send)`` before the body starts; then ``await ready(limit)`` before each message."""

    def __init__(self) -> None:
        self._transport: Any | None = None
        self._fd: int | None = None

    def attach(self, send: Callable[..., Any]) -> None:
        transport = find_transport(send)
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self._transport = transport
        self._fd = sock.fileno()

    def queued(self) -> int:
        """Bytes written but not yet taken by the client's kernel."""
        if self._transport is None or self._transport.is_closing():
            return 0
        n = self._transport.get_write_buffer_size()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                n += struct.unpack("i", fcntl.ioctl(self._fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        return n

    async def ready(self, limit: int) -> None:
        """Wait until at most ``limit`` bytes are still queued."""
        pause, longest = POLL_SECONDS
        while self.queued() > limit:
            await asyncio.sleep(pause)
            pause = min(pause * 2, longest)  # a client that stays away costs next to nothing
