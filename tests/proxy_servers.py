"""Real servers on 127.0.0.1 for the proxy tests and bench: a target web site (http
and https) and two recording upstream proxies (HTTP/HTTPS and SOCKS5).

The recording proxies are written here from the RFCs, independently of
opencone's forwarder, so a mistake in the forwarder's client side is not
mirrored by the same mistake on the server side.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import ipaddress
import shutil
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BIG = bytes(range(256)) * 4096  # 1 MiB
BIG_JS = (b"// " + b"x" * 60 + b"\n") * (1024 * 1024 // 64)  # 1 MiB of comment: nothing to run


# -- a self-signed certificate for 127.0.0.1 (openssl CLI; the venv has no `cryptography`) --
def make_cert(directory: Path) -> tuple[Path, Path] | None:
    """(cert, key) for CN/SAN 127.0.0.1, or None when openssl is not installed."""
    if shutil.which("openssl") is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def client_tls(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


# -- the target site ------------------------------------------------------------------------
class _Site(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive by default: the forwarder must still close cleanly
    # the head and the body are written apart: with Nagle on, the body waited for the ACK of the head,
    # which a client delays up to 40 ms on a kept connection (real servers set TCP_NODELAY too)
    disable_nagle_algorithm = True
    seen: list[str]

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append(self.path)
        path = urlsplit(self.path).path
        if path == "/big":
            self._send(BIG, "application/octet-stream")
        elif path == "/big.js":
            self._send(BIG_JS, "application/javascript")
        elif path == "/bigpage":  # a page whose load waits for 1 MiB more
            self._send(b"<html><head><title>big</title><script src='/big.js'></script></head><body>big</body></html>",
                       "text/html")
        elif path == "/favicon.ico":
            self._send(b"", "image/x-icon", 404)
        else:
            title = f"page {self.path}"
            self._send(f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>".encode(),
                       "text/html")

    def do_POST(self) -> None:  # noqa: N802
        self.seen.append(self.path)
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self._send(body, "application/octet-stream")

    def _send(self, body: bytes, ctype: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Site:
    url: str
    seen: list[str]
    httpd: http.server.ThreadingHTTPServer

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]


@contextlib.contextmanager
def run_site(tls: ssl.SSLContext | None = None) -> Iterator[Site]:
    """A threaded web site on 127.0.0.1 (its own thread, not the test's event loop)."""
    seen: list[str] = []
    handler = type("Handler", (_Site,), {"seen": seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if tls else "http"
    try:
        yield Site(f"{scheme}://127.0.0.1:{httpd.server_address[1]}", seen, httpd)
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- byte pipes ----------------------------------------------------------------------------
async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    with contextlib.suppress(Exception):
        dst.close()


async def _splice(r1: asyncio.StreamReader, w1: asyncio.StreamWriter, r2: asyncio.StreamReader,
                  w2: asyncio.StreamWriter) -> None:
    await asyncio.gather(_pipe(r1, w2), _pipe(r2, w1))


@dataclass
class Recorder:
    """Base of the recording proxies: what they saw, and their listening socket."""

    seen: list[str] = field(default_factory=list)
    rejected: int = 0
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


# -- an HTTP(S) proxy that records every request line --------------------------------------
@dataclass
class RecordingHttpProxy(Recorder):
    user: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None

    async def start(self) -> RecordingHttpProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        return self

    def url(self, user: str | None = None, password: str | None = None) -> str:
        scheme = "https" if self.tls else "http"
        auth = f"{user}:{password}@" if user is not None else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}"

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.user is None:
            return True
        want = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return headers.get("proxy-authorization") == want

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # plain-http requests one after another on a kept connection, as real proxies take them
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                first, *lines = head.split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
                method, target, version = first.split(" ")
                if not self._authorized(headers):
                    self.rejected += 1
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                 b"Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
                    await writer.drain()
                    return
                self.seen.append(f"{method} {target}")
                if method == "CONNECT":
                    host, _, port = target.rpartition(":")
                    r2, w2 = await asyncio.open_connection(host.strip("[]"), int(port))
                    writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
                    await _splice(reader, writer, r2, w2)
                    return
                if not await self._exchange(reader, writer, method, target, version, lines, headers):
                    return
        except Exception:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


    @staticmethod
    async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, target: str,
                        version: str, lines: list[str], headers: dict[str, str]) -> bool:
        """One plain-http request sent to its origin (on a connection of its own, closed after) and the
        answer relayed; True when the client connection may carry the next request."""
        body = await reader.readexactly(int(headers.get("content-length") or 0))
        url = urlsplit(target)
        r2, w2 = await asyncio.open_connection(url.hostname, url.port or 80)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        kept = [ln for ln in lines if ln and not ln.lower().startswith(("proxy-authorization:", "proxy-connection:",
                                                                       "connection:"))]
        w2.write("\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""]).encode("latin-1")
                 + body)
        answer = await r2.readuntil(b"\r\n\r\n")
        length = next((int(ln.split(b":", 1)[1]) for ln in answer.split(b"\r\n")
                       if ln.lower().startswith(b"content-length:")), None)
        rest = await (r2.readexactly(length) if length is not None else r2.read())
        w2.close()
        if length is None:  # framed by the close: the client's connection ends with it
            writer.write(answer + rest)
            await writer.drain()
            return False
        lines_out = [ln for ln in answer.split(b"\r\n") if ln and not ln.lower().startswith(b"connection:")]
        writer.write(b"\r\n".join(lines_out) + b"\r\n\r\n" + rest)
        await writer.drain()
        return True


# -- a SOCKS5 proxy (RFC 1928 / 1929) that records every CONNECT ------------------------------
@dataclass
class RecordingSocks5Proxy(Recorder):
    user: str | None = None
    password: str | None = None

    async def start(self) -> RecordingSocks5Proxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    def url(self, user: str | None = None, password: str | None = None, scheme: str = "socks5") -> str:
        auth = f"{user}:{password}@" if user is not None else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ver, n = await reader.readexactly(2)
            methods = await reader.readexactly(n)
            assert ver == 5
            if self.user is not None:
                if 2 not in methods:
                    writer.write(b"\x05\xff")
                    self.rejected += 1
                    return
                writer.write(b"\x05\x02")
                _v, ulen = await reader.readexactly(2)
                user = (await reader.readexactly(ulen)).decode()
                (plen,) = await reader.readexactly(1)
                password = (await reader.readexactly(plen)).decode()
                if (user, password) != (self.user, self.password):
                    writer.write(b"\x01\x01")
                    self.rejected += 1
                    return
                writer.write(b"\x01\x00")
            else:
                writer.write(b"\x05\x00")
            _v, cmd, _r, atyp = await reader.readexactly(4)
            if atyp == 1:
                host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
            elif atyp == 4:
                host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
            else:
                (length,) = await reader.readexactly(1)
                host = (await reader.readexactly(length)).decode()
            (port,) = struct.unpack("!H", await reader.readexactly(2))
            self.seen.append(f"CONNECT {host}:{port}")
            try:
                r2, w2 = await asyncio.open_connection(host, port)
            except OSError:
                writer.write(b"\x05\x05\x00\x01" + socket.inet_aton("0.0.0.0") + b"\x00\x00")
                return
            writer.write(b"\x05\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", 0))
            await _splice(reader, writer, r2, w2)
        except Exception:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


async def silent_server() -> asyncio.Server:
    """Accepts connections and never says a word (a proxy that hangs)."""
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.read()
        writer.close()

    return await asyncio.start_server(hold, "127.0.0.1", 0)


def closed_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopThread:
    """An event loop in a daemon thread, for asyncio servers used by synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
