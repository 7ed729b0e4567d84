"""Open a byte stream to host:port, directly or through an upstream proxy.

SOCKS5 (RFC 1928, with RFC 1929 username/password) is done here by hand: the
client side is about forty lines, and a library (python-socks) would bring a
second socket layer under asyncio streams for no gain. Names are always sent to
the SOCKS proxy unresolved (remote DNS), so socks5:// and socks5h:// behave the
same: a browser behind a proxy should not leak its lookups to the local resolver.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import ssl
import struct

from opencone.drivers.proxy.egress import EgressPolicy, EgressRefused
from opencone.drivers.proxy.errors import UpstreamError
from opencone.drivers.proxy.http1 import parse_head, status_of
from opencone.drivers.proxy.url import UpstreamProxy

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
READ_LIMIT = 256 * 1024  # StreamReader buffer: large reads, and the longest head we accept

_SOCKS_REPLIES = {
    1: "general SOCKS server failure", 2: "connection not allowed by ruleset", 3: "network unreachable",
    4: "host unreachable", 5: "connection refused by the destination", 6: "TTL expired",
    7: "command not supported", 8: "address type not supported",
}


async def _connect(host: str, port: int, what: str, policy: EgressPolicy, tls: ssl.SSLContext | None = None, *,
                   proxy: bool = False) -> Streams:
    """A connection to one of ``host``'s addresses that ``policy`` lets through, tried in order."""
    failed = "ERR_PROXY_CONNECTION_FAILED" if proxy else None
    try:
        addresses = await policy.resolve(host, port)
    except EgressRefused as exc:
        if proxy:  # (the message names the proxy: it is not the page's own destination)
            raise EgressRefused(f"{what}: {exc}") from None
        raise
    except OSError as exc:
        raise UpstreamError(f"cannot connect to {what}: {_reason(exc)}", failed or _net_error(exc)) from None
    error: OSError | None = None
    for address in addresses:
        try:
            return await asyncio.open_connection(address, port, limit=READ_LIMIT, ssl=tls,
                                                 server_hostname=host if tls else None)
        except ssl.SSLError as exc:
            raise UpstreamError(f"TLS handshake with {what} failed: {exc.reason or exc}",
                                "ERR_PROXY_CERTIFICATE_INVALID") from None
        except OSError as exc:
            error = exc
    assert error is not None  # (resolve returns at least one address)
    raise UpstreamError(f"cannot connect to {what}: {_reason(error)}", failed or _net_error(error)) from None


def _net_error(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return "ERR_NAME_NOT_RESOLVED"
    if isinstance(exc, ConnectionRefusedError):
        return "ERR_CONNECTION_REFUSED"
    return "ERR_CONNECTION_FAILED"


def _reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if exc.errno:  # asyncio words a refusal "Connect call failed (...)"; the errno says it plainly
        return os.strerror(exc.errno).lower()
    return str(exc) or exc.__class__.__name__


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


async def open_route(upstream: UpstreamProxy | None, host: str, port: int, *, timeout: float,
                     tls: ssl.SSLContext | None, policy: EgressPolicy) -> Streams:
    """A stream to host:port: direct, through a CONNECT tunnel, or through SOCKS5; wherever it
    leads, ``policy`` is asked first (an upstream proxy resolves names itself: there only
    what the destination says of itself can be checked)."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    what = f"upstream proxy {upstream.masked}" if upstream else target
    try:
        async with asyncio.timeout(timeout):
            if upstream is None:
                return await _connect(host, port, target, policy)
            policy.check_unresolved(host, port)
            reader, writer = await open_proxy(upstream, tls, policy)
            try:
                if upstream.is_socks:
                    await _socks5(reader, writer, upstream, host, port)
                else:
                    await _http_connect(reader, writer, upstream, target)
            except BaseException:
                _close(writer)
                raise
            return reader, writer
    except TimeoutError:
        if upstream:
            raise UpstreamError(f"timed out after {timeout:g} s opening a connection to {target} via {what}",
                                "ERR_PROXY_CONNECTION_FAILED") from None
        raise UpstreamError(f"timed out after {timeout:g} s connecting to {target}",
                            "ERR_CONNECTION_TIMED_OUT") from None


async def open_proxy(upstream: UpstreamProxy, tls: ssl.SSLContext | None, policy: EgressPolicy) -> Streams:
    """A connection to the proxy itself (TLS for an https:// proxy)."""
    return await _connect(upstream.host, upstream.port, f"upstream proxy {upstream.masked}", policy,
                          tls if upstream.scheme == "https" else None, proxy=True)


async def _http_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: UpstreamProxy,
                        target: str) -> None:
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    auth = upstream.basic_auth()
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    try:
        await writer.drain()
        head = parse_head(await reader.readuntil(b"\r\n\r\n"))
        status = status_of(head)
    except (asyncio.IncompleteReadError, ConnectionError):
        raise UpstreamError(f"upstream proxy {upstream.masked} closed the connection before answering "
                            f"CONNECT {target}") from None
    except (asyncio.LimitOverrunError, ValueError):
        raise UpstreamError(f"upstream proxy {upstream.masked} sent a malformed answer to CONNECT") from None
    if status == 200:
        return
    line = head.first.split(" ", 1)[1] if " " in head.first else head.first
    if status == 407:
        why = "rejected the credentials" if auth else "requires credentials (user:password@ in the proxy URL)"
        raise UpstreamError(f"upstream proxy {upstream.masked} {why}: {line}")
    raise UpstreamError(f"upstream proxy {upstream.masked} refused CONNECT {target}: {line}")


def _socks_address(host: str) -> bytes:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        if len(name) > 255:
            raise UpstreamError(f"host name too long for SOCKS5: {host[:60]}…") from None
        return b"\x03" + bytes([len(name)]) + name
    return (b"\x01" if ip.version == 4 else b"\x04") + ip.packed


async def _socks5(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: UpstreamProxy,
                  host: str, port: int) -> None:
    name = f"SOCKS5 proxy {upstream.masked}"
    failed = "ERR_SOCKS_CONNECTION_FAILED"
    try:
        methods = b"\x00\x02" if upstream.username is not None else b"\x00"
        writer.write(b"\x05" + bytes([len(methods)]) + methods)
        ver, method = await reader.readexactly(2)
        if ver != 5:
            raise UpstreamError(f"{name} does not speak SOCKS5 (version byte {ver})", failed)
        if method == 0xFF:
            raise UpstreamError(f"{name} accepts none of our authentication methods"
                                + ("" if upstream.username else "; it may need user:password@ in the URL"), failed)
        if method == 2:
            if upstream.username is None:
                raise UpstreamError(f"{name} requires a username and password", failed)
            user, pw = upstream.username.encode(), (upstream.password or "").encode()
            writer.write(b"\x01" + bytes([len(user)]) + user + bytes([len(pw)]) + pw)
            _ver, status = await reader.readexactly(2)
            if status != 0:
                raise UpstreamError(f"{name} rejected the username/password", failed)
        elif method != 0:
            raise UpstreamError(f"{name} chose an authentication method we did not offer ({method})", failed)
        writer.write(b"\x05\x01\x00" + _socks_address(host) + struct.pack("!H", port))
        ver, rep, _rsv, atyp = await reader.readexactly(4)
        if rep != 0:
            code = {5: "ERR_CONNECTION_REFUSED", 4: "ERR_SOCKS_CONNECTION_HOST_UNREACHABLE"}.get(rep, failed)
            raise UpstreamError(f"{name} could not connect to {host}:{port}: "
                                f"{_SOCKS_REPLIES.get(rep, f'error {rep}')}", code)
        if atyp == 1:
            await reader.readexactly(4 + 2)
        elif atyp == 4:
            await reader.readexactly(16 + 2)
        elif atyp == 3:
            (length,) = await reader.readexactly(1)
            await reader.readexactly(length + 2)
        else:
            raise UpstreamError(f"{name} sent a malformed reply (address type {atyp})", failed)
    except (asyncio.IncompleteReadError, ConnectionError):
        raise UpstreamError(f"{name} closed the connection during the handshake", failed) from None
