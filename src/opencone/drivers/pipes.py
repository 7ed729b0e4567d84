"""Reading a child's output pipe on the event loop, by the pipe's descriptor alone.

Why not ``loop.connect_read_pipe``: under uvicorn the loop is uvloop, whose pipe transport hands
the file object's descriptor to libuv without a dup, so libuv closes the number and then the file
object closes it again (MagicStack/uvloop#763). Between the two closes another thread may have
been handed that number (the lowest free one): its file, socket or pipe is then closed under it.
It did so in CI: a Chromium launch on the spawner thread lost its stderr pipe (EBADF). Here the
descriptor has one owner, this transport, which closes it once.
"""

from __future__ import annotations

import asyncio
import os


class FdReader(asyncio.ReadTransport):
    """A read transport over the pipe ``fd``, which it owns from here on: what the protocol gets
    from ``connect_read_pipe`` (data, EOF, pause and resume, close, connection lost)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._loop, self._fd, self._protocol = loop, fd, protocol
        self._paused = False
        self._closing = False
        os.set_blocking(fd, False)
        protocol.connection_made(self)
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(exc)
            return
        if data:
            self._protocol.data_received(data)
            return
        self._protocol.eof_received()
        self._close(None)

    def pause_reading(self) -> None:
        if not self._paused and not self._closing:
            self._paused = True
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if self._paused and not self._closing:
            self._paused = False
            self._loop.add_reader(self._fd, self._readable)

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._close(None)

    def _close(self, exc: Exception | None) -> None:
        if self._closing:
            return
        self._closing = True
        if not self._paused:
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._loop.call_soon(self._protocol.connection_lost, exc)


def stream(fd: int, loop: asyncio.AbstractEventLoop, limit: int = 1 << 20) -> asyncio.StreamReader:
    """A stream reading the pipe ``fd`` (owned by it from here on)."""
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    FdReader(loop, fd, asyncio.StreamReaderProtocol(reader, loop=loop))
    return reader
