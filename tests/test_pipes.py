"""drivers/pipes.py: a child's pipe read on the event loop (uvloop, as the server runs, and asyncio),
its descriptor closed exactly once (uvloop's own connect_read_pipe closes it twice)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from opencone.drivers.pipes import FdReader, stream

RUNNERS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {"uvloop": uvloop.run, "asyncio": asyncio.run}


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.eof = False
        self.lost = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


@pytest.mark.parametrize("loop", RUNNERS)
def test_data_eof_and_one_close(loop: str) -> None:
    async def main() -> None:
        r, w = os.pipe()
        rec = Recorder()
        transport = FdReader(asyncio.get_running_loop(), r, rec)
        transport.pause_reading()
        payload = b"x" * 100_000 + b"y" * 100_000  # more than one read, and more than the pipe holds at once

        def write_all() -> None:
            view = memoryview(payload)
            while view:
                view = view[os.write(w, view):]

        writer = asyncio.get_running_loop().run_in_executor(None, write_all)
        await asyncio.sleep(0.05)
        assert rec.data == b""  # paused: nothing read
        transport.resume_reading()
        await writer
        os.close(w)
        await asyncio.wait_for(rec.lost.wait(), 5)
        assert rec.data == payload and rec.eof and transport.is_closing()
        # the number is free again: whoever gets it next keeps it (no second close comes)
        again_r, again_w = os.pipe()
        try:
            assert r in (again_r, again_w)
            transport.close()  # a close after the end closes nothing
            await asyncio.sleep(0.05)
            os.fstat(r)
        finally:
            os.close(again_r)
            os.close(again_w)

    RUNNERS[loop](main())


@pytest.mark.parametrize("loop", RUNNERS)
def test_a_stream_reads_lines(loop: str) -> None:
    async def main() -> None:
        r, w = os.pipe()
        reader = stream(r, asyncio.get_running_loop())
        os.write(w, b"one\ntwo\n")
        os.close(w)
        assert await reader.readline() == b"one\n"
        assert await reader.readline() == b"two\n"
        assert await reader.readline() == b""

    RUNNERS[loop](main())


@pytest.mark.parametrize("loop", RUNNERS)
def test_xvfb_display_number_is_read_on_the_loop_and_its_pipe_closed_once(loop: str) -> None:
    """Xvfb's ``-displayfd`` pipe: the number is read across chunks; a pipe that ends early is an
    error; a read given up (a start's timeout) closes the pipe at once, with no thread left in it."""
    from opencone.drivers.desktop.xserver import XServerError, _read_number

    async def main() -> None:
        r, w = os.pipe()
        reading = asyncio.ensure_future(_read_number(r))
        os.write(w, b"4")
        await asyncio.sleep(0.01)
        os.write(w, b"2\n")
        assert await reading == 42
        with pytest.raises(OSError):
            os.fstat(r)
        os.close(w)

        r, w = os.pipe()
        os.write(w, b"7")
        os.close(w)
        with pytest.raises(XServerError, match="exited before"):
            await _read_number(r)

        r, w = os.pipe()
        threads = threading.active_count()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await _read_number(r)
        with pytest.raises(OSError):
            os.fstat(r)  # closed by the reader, before anything else could be given the number
        assert threading.active_count() == threads
        os.close(w)

    RUNNERS[loop](main())
