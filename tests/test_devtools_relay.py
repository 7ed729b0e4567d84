"""drivers/chromium/devtools.py: the relay from Playwright's driver (a Unix socket) into a browser's
namespace. Bytes flow both ways, a half-close is passed on, and every relayed connection is closed
once both directions have ended, or when the relay closes: never left to the garbage collector,
whose dealloc of an unclosed uvloop transport closes its descriptor twice (the second close hits
whatever took the number in between)."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from opencone.drivers.chromium.devtools import DevTools

RUNNERS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {"uvloop": uvloop.run, "asyncio": asyncio.run}


class LoopbackNamespace:
    """Stands in for a NetNamespace: a connected non-blocking socket to 127.0.0.1:port, as its
    ``connect`` hands one out."""

    async def connect(self, port: int, host: str = "127.0.0.1") -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        return sock


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Only an explicit close may free a descriptor: the collector must not hide a leak."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def fds_back_to(baseline: int, timeout: float = 3.0) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    while open_fds() > baseline and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    return open_fds()


async def relayed(tmp_path: Path, handler: Callable[..., Coroutine[Any, Any, None]]
                  ) -> tuple[DevTools, asyncio.Server, str]:
    """A 'browser' (a TCP server running ``handler``) and a DevTools relay in front of it."""
    browser = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = browser.sockets[0].getsockname()[1]
    devtools = DevTools(f"ws://127.0.0.1:{port}/devtools/browser/x", LoopbackNamespace(), tmp_path)  # type: ignore[arg-type]
    url = await devtools.playwright_url()
    assert url.startswith("ws+unix://") and url.endswith(":/devtools/browser/x")
    return devtools, browser, url.removeprefix("ws+unix://").rsplit(":", 1)[0]


@pytest.mark.parametrize("loop", RUNNERS)
@pytest.mark.parametrize("greeting", [b"ready", b""], ids=["connected-first", "eof-while-opening"])
def test_both_directions_end_and_the_relay_closes_its_sockets(loop: str, greeting: bytes, tmp_path: Path,
                                                              no_gc: None) -> None:
    async def main() -> None:
        async def browser_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(greeting)
            request = await reader.read()  # to the client's EOF: the half-close was passed on
            writer.write(b"answer to " + request)
            await writer.drain()
            writer.close()  # the browser goes away

        devtools, browser, path = await relayed(tmp_path, browser_side)
        baseline = open_fds()
        for _ in range(5):  # a leak of two descriptors per connection adds up
            reader, writer = await asyncio.open_unix_connection(path)
            # with no greeting the client's EOF may come before the far end is open: it must wait for it
            assert await asyncio.wait_for(reader.readexactly(len(greeting)), 5) == greeting
            writer.write(b"hello")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"answer to hello"
            writer.close()
            await writer.wait_closed()
        assert await fds_back_to(baseline) == baseline, "a relayed connection stayed open"
        await devtools.close()
        browser.close()
        await browser.wait_closed()

    RUNNERS[loop](main())


@pytest.mark.parametrize("loop", RUNNERS)
def test_the_relay_closes_what_is_still_connected_when_it_closes(loop: str, tmp_path: Path, no_gc: None) -> None:
    async def main() -> None:
        browser_writers: list[asyncio.StreamWriter] = []

        async def browser_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            browser_writers.append(writer)
            writer.write(b"ready")
            await reader.read()

        devtools, browser, path = await relayed(tmp_path, browser_side)
        reader, writer = await asyncio.open_unix_connection(path)
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"ready"
        baseline = open_fds()
        await devtools.close()
        # the driver's end sees its connection end, and the relay's two sockets are gone
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert await fds_back_to(baseline - 2) <= baseline - 2
        writer.close()
        for w in browser_writers:
            w.close()
        browser.close()
        await browser.wait_closed()

    RUNNERS[loop](main())
