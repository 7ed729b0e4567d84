"""The forwarder's keep-alive: client connections carry several requests, upstream
connections are pooled per (route, destination), and neither weakens the egress policy.

Everything is on 127.0.0.1: a small asyncio web site that counts the connections it
accepts (Content-Length and chunked answers), the recording SOCKS5 proxy of
tests/proxy_servers.py, httpx as a client and raw sockets for what httpx would not send.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest
from proxy_servers import RecordingSocks5Proxy

from opencone.drivers.proxy import ForwardingProxy
from opencone.drivers.proxy import forwarder as forwarder_module
from opencone.drivers.proxy.egress import EgressPolicy

pytestmark = pytest.mark.asyncio(loop_scope="session")  # the fixtures' servers run on the session loop
LOCAL = EgressPolicy.open()


@dataclass
class CountingSite:
    """HTTP/1.1 with keep-alive; ``/chunked`` answers in chunks. Records connections and paths."""

    connections: int = 0
    seen: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(Exception):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                first, *lines = head.split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
                path = first.split(" ")[1]
                self.seen.append(path)
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if path.startswith("/chunked"):
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
                else:
                    out = body or f"page {path}".encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(out) + out)
                await writer.drain()
        writer.close()


@pytest.fixture
async def site() -> AsyncIterator[CountingSite]:
    s = CountingSite()
    s.server = await asyncio.start_server(s._handle, "127.0.0.1", 0)
    yield s
    s.server.close()


def _socket_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return n


async def _raw(fwd: ForwardingProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", fwd.port)


async def _response(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    """One Content-Length response: (status line, body)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    length = next(int(ln.split(":", 1)[1]) for ln in head.split("\r\n") if ln.lower().startswith("content-length:"))
    return head.split("\r\n", 1)[0], await reader.readexactly(length)


async def test_requests_reuse_one_upstream_connection_and_chunked_answers_end_right(site: CountingSite) -> None:
    async with ForwardingProxy(connect_timeout=5, policy=LOCAL) as fwd, httpx.AsyncClient(proxy=fwd.url) as c:
        for path in ("/one", "/two", "/chunked", "/three"):
            r = await c.get(f"{site.url}{path}")
            assert r.status_code == 200
        assert r.text == "page /three"
        assert (await c.get(f"{site.url}/chunked")).text == "hello world"
        echo = await c.post(f"{site.url}/echo", content=b"x" * 70_000)
        assert echo.content == b"x" * 70_000
        assert site.seen == ["/one", "/two", "/chunked", "/three", "/chunked", "/echo"]
        assert site.connections == 1 and fwd.stats()["reused"] == 5
        assert fwd.connections == 1  # and one client connection carried them all


async def test_a_route_change_sends_the_next_request_over_the_new_upstream(site: CountingSite) -> None:
    socks = await RecordingSocks5Proxy().start()
    try:
        async with ForwardingProxy(connect_timeout=5, policy=LOCAL) as fwd, httpx.AsyncClient(proxy=fwd.url) as c:
            assert (await c.get(f"{site.url}/direct")).status_code == 200
            assert fwd.stats()["idle_upstream"] == 1
            fwd.set_upstream(socks.url())
            assert fwd.stats()["idle_upstream"] == 0  # the direct connection is not kept for later
            assert (await c.get(f"{site.url}/via-socks")).status_code == 200
            assert socks.seen == [f"CONNECT 127.0.0.1:{site.port}"] and site.connections == 2
            assert (await c.get(f"{site.url}/via-socks-again")).status_code == 200
            assert len(socks.seen) == 1 and site.connections == 2  # pooled through the SOCKS5 route too
            fwd.set_upstream(None)
            assert (await c.get(f"{site.url}/direct-again")).status_code == 200
            assert len(socks.seen) == 1 and site.connections == 3
    finally:
        await socks.close()


async def test_a_refused_destination_on_a_kept_alive_connection_is_still_refused(site: CountingSite) -> None:
    other = CountingSite()
    other.server = await asyncio.start_server(other._handle, "127.0.0.1", 0)
    policy = EgressPolicy.from_settings(f"127.0.0.1:{site.port}", "public")
    try:
        async with ForwardingProxy(connect_timeout=5, policy=policy) as fwd:
            reader, writer = await _raw(fwd)
            writer.write(f"GET {site.url}/ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            assert await _response(reader) == ("HTTP/1.1 200 OK", b"page /ok")
            # the next request on the same connection, pipelined behind a body: checked on its own
            writer.write(f"POST {site.url}/post HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                         f"GET http://127.0.0.1:{other.port}/secret HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert await _response(reader) == ("HTTP/1.1 200 OK", b"hello")
            status, body = await _response(reader)
            assert status == "HTTP/1.1 403 Forbidden" and b"egress policy" in body
            assert await reader.read() == b""  # and the connection ends
            writer.close()
        assert other.connections == 0 and other.seen == [] and site.seen == ["/ok", "/post"]
    finally:
        other.server.close()


SMUGGLED = [
    # both framings: a front end reading Content-Length and a back end reading chunked disagree
    "POST {u}/a HTTP/1.1\r\nHost: x\r\nContent-Length: 52\r\nTransfer-Encoding: chunked\r\n\r\n"
    "0\r\n\r\nGET {u}/hidden HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST {u}/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 41\r\n\r\n"
    "GET {u}/hidden HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST {u}/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    "zz\r\nGET {u}/hidden HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST {u}/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    "3\r\nabcGET {u}/hidden HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST {u}/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    "GET {u}/hidden HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST {u}/a HTTP/1.1\r\nHost: x\r\nContent-Length: +41\r\n\r\nGET {u}/hidden HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET {u}/a HTTP/1.1\r\nHost: x\r\nX: y\nContent-Length: 41\r\n\r\nGET {u}/hidden HTTP/1.1\r\nHost: x\r\n\r\n",
]


@pytest.mark.parametrize("attack", SMUGGLED, ids=["cl+te", "two-cl", "bad-chunk-size", "chunk-overrun",
                                                  "te-not-chunked", "signed-cl", "bare-lf"])
async def test_request_smuggling_gets_400_and_a_close(site: CountingSite, attack: str) -> None:
    async with ForwardingProxy(connect_timeout=5, policy=LOCAL) as fwd:
        reader, writer = await _raw(fwd)
        writer.write(attack.format(u=site.url).encode())
        status, body = await _response(reader)
        assert status == "HTTP/1.1 400 Bad Request", body
        assert await reader.read() == b""
        writer.close()
        await asyncio.sleep(0.05)  # whatever reached the site has been read by now
    assert "/hidden" not in site.seen and fwd.stats()["reused"] == 0


async def test_pooled_connections_expire_and_end_with_the_forwarder(site: CountingSite,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forwarder_module, "IDLE_TIMEOUT", 0.2)
    before = _socket_fds()
    async with ForwardingProxy(connect_timeout=5, policy=LOCAL) as fwd:
        async with httpx.AsyncClient(proxy=fwd.url) as c:
            await c.get(f"{site.url}/a")
            assert fwd.stats()["idle_upstream"] == 1
            await asyncio.sleep(0.4)
            assert fwd.stats()["idle_upstream"] == 0  # closed after its idle timeout
            await c.get(f"{site.url}/b")
            assert site.connections == 2
        async with httpx.AsyncClient(proxy=fwd.url) as c:
            await asyncio.gather(*(c.get(f"{site.url}/p{i}") for i in range(6)))
        assert 1 <= fwd.stats()["idle_upstream"] <= forwarder_module.IDLE_PER_KEY
    for _ in range(50):  # the site's side of each closed connection goes when it reads the EOF
        if _socket_fds() <= before:
            break
        await asyncio.sleep(0.02)
    assert _socket_fds() <= before, "a socket outlived the forwarder"


@dataclass
class KeepAliveHttpProxy:
    """An HTTP proxy that takes absolute-URI requests one after another on a connection (as real proxies
    do); each is sent on to its origin. Records its client connections and the requests it carried."""

    connections: int = 0
    seen: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(Exception):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                first, *lines = head.split("\r\n")
                method, target, _version = first.split(" ")
                self.seen.append(f"{method} {target}")
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                url = urlsplit(target)
                r2, w2 = await asyncio.open_connection(url.hostname, url.port or 80)
                w2.write(f"{method} {url.path or '/'} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                answer_head = (await r2.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                length = int(answer_head.split("content-length:", 1)[1].split("\r\n", 1)[0])  # (never chunked here)
                answer = await r2.readexactly(length)
                w2.close()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer)
                await writer.drain()
        writer.close()


async def test_requests_through_an_http_proxy_reuse_pooled_connections_to_it(site: CountingSite) -> None:
    other = CountingSite()
    other.server = await asyncio.start_server(other._handle, "127.0.0.1", 0)
    proxy = KeepAliveHttpProxy()
    proxy.server = await asyncio.start_server(proxy._handle, "127.0.0.1", 0)
    try:
        async with ForwardingProxy(proxy.url, connect_timeout=5, policy=LOCAL) as fwd, \
                httpx.AsyncClient(proxy=fwd.url) as c:
            answers = [await c.get(f"{u}/{i}") for i, u in enumerate([site.url, site.url, other.url, site.url,
                                                                      other.url])]
            assert [a.text for a in answers] == [f"page /{i}" for i in range(5)]
            # one kept connection to the proxy per destination, in absolute form
            assert proxy.connections == 2 and fwd.stats()["reused"] == 3
            assert proxy.seen == [f"GET {u}/{i}" for i, u in enumerate([site.url, site.url, other.url, site.url,
                                                                       other.url])]
            fwd.set_upstream(None)  # a route change: the proxy's pooled connections are not used again
            assert (await c.get(f"{site.url}/direct")).text == "page /direct"
            assert len(proxy.seen) == 5 and site.seen[-1] == "/direct"
    finally:
        other.server.close()
        proxy.server.close()


async def test_a_refused_destination_through_a_pooled_proxy_connection_is_still_refused(
        site: CountingSite) -> None:
    proxy = KeepAliveHttpProxy()
    proxy.server = await asyncio.start_server(proxy._handle, "127.0.0.1", 0)
    proxy_port = proxy.server.sockets[0].getsockname()[1]
    policy = EgressPolicy.from_settings(f"127.0.0.1:{site.port},127.0.0.1:{proxy_port}", "public")
    try:
        async with ForwardingProxy(proxy.url, connect_timeout=5, policy=policy) as fwd:
            reader, writer = await _raw(fwd)
            writer.write(f"GET {site.url}/ok HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert await _response(reader) == ("HTTP/1.1 200 OK", b"page /ok")
            assert fwd.stats()["idle_upstream"] == 1  # the proxy connection, pooled
            writer.write(b"GET http://127.0.0.1:1/secret HTTP/1.1\r\nHost: x\r\n\r\n")
            status, body = await _response(reader)
            assert status == "HTTP/1.1 403 Forbidden" and b"egress policy" in body
            writer.close()
        assert proxy.seen == [f"GET {site.url}/ok"]  # the refused one never reached the proxy
    finally:
        proxy.server.close()
