"""A per-computer forwarding proxy: Chromium talks HTTP proxy to it on 127.0.0.1.

Chromium is started once with ``--proxy-server`` pointing here, and never learns
where its traffic really goes: ``set_upstream`` changes the route at runtime
(direct, or an http/https/socks5 upstream) without touching the browser or its tabs.

* CONNECT (https, wss, and ws through Chromium) becomes a tunnel: after the
  handshake, bytes are copied in 256 KiB reads, counted per read, never inspected.
* Plain http arrives as an absolute-URI request. The client connection is kept
  alive: after a response framed by Content-Length or chunked coding is relayed in
  full, the next request is read from it, and checked by the egress policy like
  the first (a response without framing ends the connection). A request with
  ambiguous framing (the smuggling forms, http1.py) gets 400 and a close. The
  upstream connection goes back to a small idle pool keyed by (route, host, port),
  direct, through a SOCKS5 upstream or an HTTP(S) upstream proxy, and is only ever
  reused for that same checked destination on that same route (``IDLE_TIMEOUT``).
  To an HTTP proxy a kept connection could serve any destination, but a proxy that
  splices a connection to the first origin (against RFC 9112) would then send the
  next destination's request to the first one: per destination, it cannot.
* A route that cannot be opened gets ``502 Bad Gateway`` with the reason in the
  body and in ``X-Opencone-Proxy-Error`` (the Chromium net error it stands for in
  ``X-Opencone-Net-Error``). Chromium turns a failed CONNECT into
  net::ERR_TUNNEL_CONNECTION_FAILED and shows a failed plain-http request as the
  502 page, so the driver asks ``failure_for(url)`` for the real cause.
* ``set_upstream`` drops the connections opened on the old route (see there).

It runs on the server's event loop: a few µs of Python per 256 KiB chunk, and
one listening socket per computer while idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from opencone.drivers.proxy.dial import READ_LIMIT, UpstreamError, open_proxy, open_route
from opencone.drivers.proxy.egress import EgressPolicy, EgressRefused, destination
from opencone.drivers.proxy.http1 import (
    UNTIL_CLOSE,
    Request,
    client_response,
    copy_body,
    error_response,
    forward_head,
    parse_head,
    parse_request,
    persistent,
    request_framing,
    response_framing,
    reusable,
    status_of,
)
from opencone.drivers.proxy.url import UpstreamProxy, parse_proxy_url

log = logging.getLogger(__name__)

CHUNK = 256 * 1024  # the transport reads up to 256 KiB at a time; match it
HEAD_TIMEOUT = 30.0  # a client that opens a connection and says nothing is dropped
IDLE_TIMEOUT = 4.0  # a pooled upstream connection unused this long is closed (servers drop theirs at 5 s+)
IDLE_PER_KEY = 4  # idle upstream connections kept per (route, destination)
IDLE_MAX = 32  # and in all, per forwarder

PoolKey = tuple["UpstreamProxy | None", str]  # (route, destination(host, port))


_BETWEEN = object()  # a client connection between two requests: on no route (set_upstream leaves it be)


class _Idle(NamedTuple):
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    timer: asyncio.TimerHandle


class Failure(NamedTuple):
    code: str  # a Chromium net error name: ERR_CONNECTION_REFUSED, ERR_PROXY_CONNECTION_FAILED…
    reason: str
    at: float  # time.monotonic()


class ForwardingProxy:
    def __init__(self, upstream: str | None = None, *, connect_timeout: float = 10.0,
                 upstream_tls: ssl.SSLContext | None = None, host: str = "127.0.0.1",
                 policy: EgressPolicy | None = None) -> None:
        """``upstream_tls`` verifies https:// upstream proxies; the system CAs when None.
        ``policy``: where connections may go (egress.py); public addresses only when None."""
        self._upstream = self._parse(upstream)
        self.policy = policy if policy is not None else EgressPolicy()
        # told of every connection the policy refused: (host, port, reason)
        self.on_refused: Callable[[str, int, str], None] | None = None
        self.connect_timeout = connect_timeout
        self._tls = upstream_tls
        self._host = host
        self._server: asyncio.Server | None = None
        self._also: list[asyncio.Server] = []  # listeners in other networks (``also_listen``)
        self._closed = False
        self._handlers: dict[asyncio.Task[Any], Any] = {}  # → its request's route, or _BETWEEN
        self.bytes_sent = 0  # client → destination (request bytes, including heads sent on)
        self.bytes_received = 0  # destination → client
        self.connections = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._recent_errors: dict[str, Failure] = {}  # "host:port" → why its route last failed
        self._idle: dict[PoolKey, list[_Idle]] = {}  # upstream connections waiting for a next request
        self.reused = 0  # plain-http requests sent on a pooled upstream connection

    # -- life -------------------------------------------------------------------------
    async def start(self, sock: socket.socket | None = None) -> ForwardingProxy:
        """Listen on a free port of ``host``, or on ``sock``: a listening socket made elsewhere
        (inside a computer's network namespace, drivers/netns.py, where only its browser is)."""
        if sock is not None:
            self._server = await asyncio.start_server(self._handle, sock=sock, limit=READ_LIMIT)
        else:
            self._server = await asyncio.start_server(self._handle, self._host, 0, limit=READ_LIMIT, backlog=512)
        return self

    async def also_listen(self, sock: socket.socket) -> str:
        """Take connections on ``sock`` as well (a listener in another network namespace: a
        computer's shell commands'), on the same route; the proxy URL for that network."""
        server = await asyncio.start_server(self._handle, sock=sock, limit=READ_LIMIT)
        self._also.append(server)
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> ForwardingProxy:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        assert self._server is not None, "forwarder not started"
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """What to give Chromium as ``--proxy-server`` (an address in the network it listens in)."""
        assert self._server is not None, "forwarder not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def close(self) -> None:
        """Stop listening and end every open connection."""
        self._closed = True
        for server in [self._server, *self._also]:
            if server is not None:
                server.close()
        self._also.clear()
        self._drop(lambda _route: True)
        self._drop_idle()
        tasks = list(self._handlers)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    # -- route ------------------------------------------------------------------------
    @staticmethod
    def _parse(url: str | None) -> UpstreamProxy | None:
        return parse_proxy_url(url) if url is not None and url.strip() else None

    @property
    def upstream(self) -> UpstreamProxy | None:
        return self._upstream

    async def check_upstream(self, url: str | None) -> None:
        """Refuse (ValueError, EgressRefused) an upstream that is malformed or that the policy
        refuses, before it is set: its name is resolved now, and again at every connection."""
        new = self._parse(url)
        if new is not None:
            try:
                await self.policy.resolve(new.host, new.port)
            except OSError:
                pass  # a name that does not resolve (yet) fails at connection time, with its reason
            except EgressRefused as exc:
                raise EgressRefused(f"upstream proxy {new.masked}: {exc}") from None

    def set_upstream(self, url: str | None, *, drop_open: bool = True) -> None:
        """Route new connections through ``url`` (None or "" = direct).

        A bad URL raises ValueError and leaves the route as it was. With
        ``drop_open`` (the default) connections opened on the old route are closed:
        Chromium keeps https tunnels alive for minutes and would otherwise go on
        using the old upstream for those sites. It reconnects through the new one
        (and retries idempotent requests that fail on a reused connection); a
        transfer in flight at that moment fails. ``drop_open=False`` lets them finish.
        """
        new = self._parse(url)
        if new == self._upstream:
            return
        self._upstream = new
        self._recent_errors.clear()
        self._drop_idle()  # whatever drop_open says, no new request goes over the old route
        if drop_open:  # (a kept-alive client connection between requests takes its next on the new route)
            self._drop(lambda route: route is not _BETWEEN and route != new)

    def _drop(self, which: Any) -> None:
        for task, route in list(self._handlers.items()):
            if which(route):
                task.cancel()

    def error_for(self, url: str, since: float | None = None) -> str | None:
        failure = self.failure_for(url, since)
        return failure.reason if failure else None

    def failure_for(self, url: str, since: float | None = None) -> Failure | None:
        """Why the last connection to this URL's host:port failed here, if it did
        (and, with ``since``, did at or after that ``time.monotonic()``).

        Chromium reports a failed CONNECT only as net::ERR_TUNNEL_CONNECTION_FAILED;
        the driver asks this to say why. Keyed by host:port because Chromium also
        makes background requests whose failures must not be blamed on a page.
        """
        parts = urlsplit(url)
        if not parts.hostname:
            return None
        try:
            port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
        except ValueError:
            return None
        found = self._recent_errors.get(destination(parts.hostname, port))
        if found is None or (since is not None and found.at < since):
            return None
        return found

    def stats(self) -> dict[str, Any]:
        return {
            "upstream": self._upstream.masked if self._upstream else None,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "connections": self.connections,
            "open_connections": len(self._handlers),
            "idle_upstream": sum(len(v) for v in self._idle.values()),
            "reused": self.reused,
            "errors": self.errors,
            "last_error": self.last_error,
        }

    # -- one client connection ----------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closed:  # accepted just before close(): nothing may start now
            writer.close()
            return
        self.connections += 1
        try:
            while not self._closed:
                self._handlers[task] = _BETWEEN
                try:
                    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
                    req = parse_request(raw)
                    framing = 0 if req.method == "CONNECT" else request_framing(req.head)
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    return
                except asyncio.LimitOverrunError:
                    writer.write(error_response("431 Request Header Fields Too Large", "request head too large"))
                    return
                except ValueError as exc:
                    writer.write(error_response("400 Bad Request", str(exc)))
                    return
                route = self._upstream  # fixed for this request (set_upstream ends it, see there)
                self._handlers[task] = route
                try:
                    if req.method == "CONNECT":
                        await self._tunnel(req, reader, writer, route)
                        return
                    if not await self._forward(req, framing, reader, writer, route):
                        return
                except UpstreamError as exc:
                    self._fail(writer, exc, req.host, req.port)
                    return
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # a peer went away, or close() / a route change ended this connection
        finally:
            self._handlers.pop(task, None)
            with contextlib.suppress(Exception):
                writer.close()

    def _fail(self, writer: asyncio.StreamWriter, exc: UpstreamError, host: str, port: int) -> None:
        target = destination(host, port)
        reason = str(exc)
        self.errors += 1
        self.last_error, self.last_error_at = reason, time.time()
        self._recent_errors.pop(target, None)
        self._recent_errors[target] = Failure(exc.code, reason, time.monotonic())
        if len(self._recent_errors) > 64:
            del self._recent_errors[next(iter(self._recent_errors))]
        # a refused or unreachable destination is a page's business (its error, an egress_blocked
        # event), not the operator's: debug, or a busy server's log is nothing else
        log.debug("proxy %s: %s", self.port if self._server else "?", reason)
        refused = isinstance(exc, EgressRefused)
        if refused and self.on_refused is not None:
            with contextlib.suppress(Exception):
                self.on_refused(host, port, reason)
        if not writer.is_closing():
            writer.write(error_response("403 Forbidden" if refused else "502 Bad Gateway", reason, exc.code))

    async def _tunnel(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      route: UpstreamProxy | None) -> None:
        r_reader, r_writer = await open_route(route, req.host, req.port, timeout=self.connect_timeout,
                                              tls=self._tls_for(route), policy=self.policy)
        self._recent_errors.pop(destination(req.host, req.port), None)
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            for w in (writer, r_writer):  # room for a whole chunk in flight before drain() waits
                w.transport.set_write_buffer_limits(high=4 * CHUNK, low=CHUNK)
            await asyncio.gather(self._pump(reader, r_writer, True), self._pump(r_reader, writer, False))
        finally:
            r_writer.close()

    # -- plain http ---------------------------------------------------------------------
    async def _forward(self, req: Request, framing: int, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, route: UpstreamProxy | None) -> bool:
        """One request and its response; True when the client connection may carry the next."""
        via_proxy = route is not None and not route.is_socks
        if req.wants_upgrade:  # a WebSocket over plain http: one exchange, then bytes both ways
            r_reader, r_writer = await self._dial(req, route, via_proxy)
            try:
                self._send_head(req, r_writer, route, via_proxy, keep_alive=False)
                body = asyncio.create_task(self._pump(reader, r_writer, True))
                try:
                    await self._relay_response(req, r_reader, writer, route if via_proxy else None, False)
                finally:
                    body.cancel()
            finally:
                r_writer.close()
            return False
        poolable = True
        key: PoolKey = (route, destination(req.host, req.port))
        for attempt in (0, 1):
            pooled = await self._take(key, req, route) if poolable and attempt == 0 else None
            if pooled is None:
                r_reader, r_writer = await self._dial(req, route, via_proxy)
            else:
                r_reader, r_writer = pooled
                self.reused += 1
            keep_up = False
            try:
                self._send_head(req, r_writer, route, via_proxy, keep_alive=poolable)
                try:
                    await copy_body(reader, r_writer, framing, self._count_sent, CHUNK)
                except ValueError as exc:  # a bad chunk: nothing more of it goes anywhere
                    writer.write(error_response("400 Bad Request", str(exc)))
                    return False
                except asyncio.IncompleteReadError:
                    return False  # the client left in the middle of its body
                try:
                    keep_client, keep_up = await self._relay_response(
                        req, r_reader, writer, route if via_proxy else None, persistent(req.head, req.version))
                except UpstreamError as exc:
                    # a pooled connection the server closed meanwhile: once more on a new one
                    if pooled is not None and framing == 0 and exc.code == "ERR_EMPTY_RESPONSE":
                        continue
                    raise
                return keep_client
            finally:
                if keep_up and poolable:
                    self._give(key, r_reader, r_writer)
                else:
                    r_writer.close()
        raise AssertionError("unreachable")  # (the second attempt returns or raises)

    async def _dial(self, req: Request, route: UpstreamProxy | None,
                    via_proxy: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if route is not None and via_proxy:
            try:
                self.policy.check_unresolved(req.host, req.port)
                async with asyncio.timeout(self.connect_timeout):
                    return await open_proxy(route, self._tls_for(route), self.policy)
            except TimeoutError:
                raise UpstreamError(f"timed out after {self.connect_timeout:g} s connecting to "
                                    f"upstream proxy {route.masked}", "ERR_PROXY_CONNECTION_FAILED") from None
        return await open_route(route, req.host, req.port, timeout=self.connect_timeout,
                                tls=self._tls_for(route), policy=self.policy)

    def _send_head(self, req: Request, r_writer: asyncio.StreamWriter, route: UpstreamProxy | None,
                   via_proxy: bool, *, keep_alive: bool) -> None:
        head = forward_head(req, absolute=via_proxy, proxy_auth=route.basic_auth() if route and via_proxy else None,
                            keep_alive=keep_alive)
        r_writer.write(head)
        self.bytes_sent += len(head)
        self._recent_errors.pop(destination(req.host, req.port), None)

    def _count_sent(self, n: int) -> None:
        self.bytes_sent += n

    def _count_received(self, n: int) -> None:
        self.bytes_received += n

    async def _relay_response(self, req: Request, r_reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              proxy: UpstreamProxy | None, client_keeps: bool) -> tuple[bool, bool]:
        """Relay one response (and any 1xx before it); (client connection reusable, upstream reusable)."""
        where = f"upstream proxy {proxy.masked}" if proxy else f"{req.host}:{req.port}"
        while True:
            try:
                response = parse_head(await r_reader.readuntil(b"\r\n\r\n"))
                status = status_of(response)
                framing = response_framing(req.method, status, response)
            except ConnectionError:
                raise UpstreamError(f"{where} reset the connection without answering", "ERR_EMPTY_RESPONSE") from None
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise UpstreamError(f"{where} closed the connection without answering",
                                        "ERR_EMPTY_RESPONSE") from None
                writer.write(exc.partial)  # not HTTP/1.x: hand over what came, then stop
                self.bytes_received += len(exc.partial)
                return False, False
            except (asyncio.LimitOverrunError, ValueError):
                raise UpstreamError(f"{where} sent a malformed response head", "ERR_INVALID_HTTP_RESPONSE") from None
            if proxy is not None and status == 407:
                why = "rejected the credentials" if proxy.username else "requires credentials (user:password@)"
                raise UpstreamError(f"upstream proxy {proxy.masked} {why} (407)")
            if 100 <= status < 200 and status != 101:  # 100 Continue, 103 Early Hints: the answer follows
                out = client_response(response, keep_alive=True)
                writer.write(out)
                self.bytes_received += len(out)
                continue
            break
        if status == 101 or framing == UNTIL_CLOSE:
            out = client_response(response, keep_alive=False)
            writer.write(out)
            self.bytes_received += len(out)
            await self._pump(r_reader, writer, False)
            return False, False
        keep_client = client_keeps and not self._closed
        out = client_response(response, keep_alive=keep_client)
        writer.write(out)
        self.bytes_received += len(out)
        try:
            await copy_body(r_reader, writer, framing, self._count_received, CHUNK)
        except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return False, False  # the response broke off midway: the client sees its connection end
        await writer.drain()
        return keep_client, reusable(response, framing)

    # -- the idle pool of upstream connections --------------------------------------------
    async def _take(self, key: PoolKey, req: Request,
                    route: UpstreamProxy | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A pooled connection for this destination on this route, once the policy has let the
        request through again (direct: to the very address the connection is open to)."""
        if not self._idle.get(key):
            return None
        if route is None:
            try:
                addresses = await self.policy.resolve(req.host, req.port)  # EgressRefused: the request's 403
            except OSError:
                return None  # does not resolve now: a new dial says so, with its reason
        else:
            self.policy.check_unresolved(req.host, req.port)
            addresses = None
        idle = self._idle.get(key, [])
        while idle:
            entry = idle.pop()
            entry.timer.cancel()
            peer = entry.writer.get_extra_info("peername")
            stale = entry.reader.at_eof() or entry.writer.is_closing()
            if stale or (addresses is not None and (not peer or str(peer[0]) not in addresses)):
                entry.writer.close()
                continue
            if not idle:
                self._idle.pop(key, None)
            return entry.reader, entry.writer
        self._idle.pop(key, None)
        return None

    def _give(self, key: PoolKey, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        idle = self._idle.setdefault(key, [])
        total = sum(len(v) for v in self._idle.values())
        if (self._closed or key[0] != self._upstream or reader.at_eof() or writer.is_closing()
                or len(idle) >= IDLE_PER_KEY or total >= IDLE_MAX):
            writer.close()
            if not idle:
                self._idle.pop(key, None)
            return
        timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._expire, key, writer)
        idle.append(_Idle(reader, writer, timer))

    def _expire(self, key: PoolKey, writer: asyncio.StreamWriter) -> None:
        idle = self._idle.get(key, [])
        for entry in list(idle):
            if entry.writer is writer:
                idle.remove(entry)
        if not idle:
            self._idle.pop(key, None)
        writer.close()

    def _drop_idle(self) -> None:
        """Close every pooled upstream connection (a route change, or the forwarder closing)."""
        idle, self._idle = self._idle, {}
        for entries in idle.values():
            for entry in entries:
                entry.timer.cancel()
                entry.writer.close()

    def _tls_for(self, route: UpstreamProxy | None) -> ssl.SSLContext | None:
        if route is None or route.scheme != "https":
            return None
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, outgoing: bool) -> None:
        """Copy until EOF, then pass the EOF on (half-close) where the transport can."""
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    break
                dst.write(data)
                if outgoing:
                    self.bytes_sent += len(data)
                else:
                    self.bytes_received += len(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()
            else:
                dst.close()  # TLS cannot half-close: end the tunnel
        except (ConnectionError, OSError):
            dst.close()
