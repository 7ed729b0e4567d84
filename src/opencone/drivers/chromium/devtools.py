"""How the server reaches one Chromium's DevTools.

Chromium listens on 127.0.0.1 of its own network namespace (drivers/netns.py)
when it has one, so no other computer, and nothing else on the host, can reach
that port. The server's own clients (stealth, direct clicks, the CDP proxy)
connect with a socket made inside the namespace. Playwright's node driver is
another process, on the host's network: it connects through a Unix socket in
the server's run directory (0700, the server's own), which this module relays
into the namespace, byte for byte.

Every relayed transport is closed explicitly: when both directions have ended,
when either end is lost, and when the relay closes. One left to the garbage
collector is worse than a leak under uvloop: the socket object closes its
descriptor, then the transport's handle closes the same number again, which by
then may be another's (a subprocess's pipe, an exec's socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection

from opencone.drivers.netns import NetNamespace

_MAX_UNIX_PATH = 100  # sun_path is 108 bytes with its NUL; keep a margin


class _Pipe(asyncio.Protocol):
    """One end of a relayed connection: what it reads is written to its peer."""

    def __init__(self, live: set[_Pipe]) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.ended = False  # this end has read its EOF
        self._early: list[bytes] = []  # read before the peer was connected
        self._live = live  # the relay's open ends, closed with it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._live.add(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def attach(self, peer: _Pipe) -> None:
        self.peer = peer
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self._early.append(data)
        elif not peer.transport.is_closing():
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.ended = True
        peer = self.peer
        if peer is None:
            return True  # the far end is still opening: _Accepted._open passes the EOF on
        if peer.transport is None or peer.ended or not peer.transport.can_write_eof():
            return False  # nothing left to relay either way: the transport closes, and its peer with it
        peer.transport.write_eof()
        return True  # half-closed: the other direction still flows

    def connection_lost(self, exc: Exception | None) -> None:
        self._live.discard(self)
        if self.peer is not None:
            self.peer.close()

    # back-pressure: while the peer cannot take more, this end stops reading
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Accepted(_Pipe):
    """A connection from Playwright's driver; on arrival, its peer is opened inside the namespace."""

    def __init__(self, netns: NetNamespace, port: int, live: set[_Pipe]) -> None:
        super().__init__(live)
        self._netns, self._port = netns, port
        self._opening: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._opening = asyncio.ensure_future(self._open())

    async def _open(self) -> None:
        try:
            sock = await self._netns.connect(self._port)
        except OSError:
            self.close()
            return
        far = _Pipe(self._live)
        try:
            await asyncio.get_running_loop().create_connection(lambda: far, sock=sock)
        except BaseException as exc:
            sock.close()  # no transport owns it
            self.close()
            if not isinstance(exc, OSError):
                raise
            return
        far.attach(self)
        self.attach(far)
        if self.transport is None or self.transport.is_closing():
            far.close()
        elif self.ended:  # the driver's side ended while the far one was opening
            self.eof_received()


class DevTools:
    """One browser's DevTools endpoint: ``ws://127.0.0.1:<port>/devtools/browser/<id>``, inside
    ``netns`` when it has one (else on the host's loopback)."""

    def __init__(self, ws_url: str, netns: NetNamespace | None = None, relay_dir: Path | None = None) -> None:
        self.ws_url = ws_url
        parts = urlsplit(ws_url)
        self.port = parts.port or 80
        self.path = parts.path
        self.netns = netns
        self._relay_dir = relay_dir
        self._relay: asyncio.Server | None = None
        self._relay_path: Path | None = None
        self._relayed: set[_Pipe] = set()  # open ends of relayed connections

    async def connect(self, **options: Any) -> ClientConnection:
        """A WebSocket to the browser, for a client of the server's own."""
        if self.netns is None:
            return await websockets.connect(self.ws_url, **options)
        sock = await self.netns.connect(self.port)
        try:
            return await websockets.connect(self.ws_url, sock=sock, **options)
        except BaseException:
            sock.close()
            raise

    async def playwright_url(self) -> str:
        """What Playwright's ``connect_over_cdp`` is given: the relay when the browser is in a
        namespace of its own (the node driver is not)."""
        if self.netns is None:
            return self.ws_url
        if self._relay is None:
            self._relay_path = self._socket_path()
            netns, port, live = self.netns, self.port, self._relayed
            self._relay = await asyncio.get_running_loop().create_unix_server(lambda: _Accepted(netns, port, live),
                                                                              str(self._relay_path))
        return f"ws+unix://{self._relay_path}:{self.path}"

    def _socket_path(self) -> Path:
        assert self._relay_dir is not None, "a browser in a namespace needs a relay directory"
        name = f"cdp-{secrets.token_hex(6)}.sock"
        directory = self._relay_dir
        if len(str(directory / name)) > _MAX_UNIX_PATH:  # a deep data dir: a private one in /tmp instead
            tag = hashlib.sha256(str(directory).encode()).hexdigest()[:12]
            directory = Path(tempfile.gettempdir()) / f"opencone-cdp-{tag}"
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700, parents=True)
        st = directory.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(f"{directory} is not a directory of ours")
        directory.chmod(0o700)  # the server's own: no computer's user may connect
        return directory / name

    async def close(self) -> None:
        for end in list(self._relayed):  # a server's close leaves its accepted connections open
            end.close()
        if self._relay is not None:
            self._relay.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._relay.wait_closed(), 1)
            self._relay = None
        if self._relay_path is not None:
            self._relay_path.unlink(missing_ok=True)
            self._relay_path = None
