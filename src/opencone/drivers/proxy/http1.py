"""Just enough HTTP/1.x to be a forwarding proxy: parse and rewrite message heads, and find
where a body ends (Content-Length or chunked framing) so a connection can carry the next one.

Bodies are copied as they come, never decoded: only the chunked framing is read, to know
where the message ends. A request whose framing is ambiguous (both Content-Length and
Transfer-Encoding, two Content-Lengths, a bad chunk size: the request-smuggling forms,
RFC 9112 §6.3 and §11.2) is refused before anything of it past the head is trusted.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

# Hop-by-hop headers (RFC 9110 §7.6.1) plus the proxy ones; never forwarded as they came.
_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "te",
        "trailer", "upgrade"}


@dataclass(slots=True)
class Head:
    first: str  # request line or status line
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def encode(self) -> bytes:
        lines = [self.first, *(f"{k}: {v}" for k, v in self.headers), "", ""]
        return "\r\n".join(lines).encode("latin-1")


def parse_head(raw: bytes, *, strict: bool = False) -> Head:
    """``strict`` (a client's request): a bare CR or LF inside a line is refused, since a
    server behind us may take it for a line end and read a header we never saw."""
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    if not lines or not lines[0]:
        raise ValueError("empty message head")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if strict and ("\n" in line or "\r" in line):
            raise ValueError(f"a bare CR or LF in header line {line[:80]!r}")
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"malformed header line {line[:80]!r}")
        headers.append((name, value.strip()))
    return Head(lines[0], headers)


def split_authority(authority: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port)."""
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = authority.rpartition(":") if ":" in authority else (authority, "", "")
    if not port_text:
        if default_port is None:
            raise ValueError(f"no port in {authority!r}")
        port_text = str(default_port)
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad host:port {authority!r}")
    return host, int(port_text)


@dataclass(slots=True)
class Request:
    method: str
    target: str  # as sent: an authority for CONNECT, an absolute URI otherwise
    version: str
    head: Head
    host: str
    port: int
    path: str  # origin-form, for sending straight to the server

    @property
    def wants_upgrade(self) -> bool:
        tokens = {t.strip().lower() for t in (self.head.get("connection") or "").split(",")}
        return "upgrade" in tokens and self.head.get("upgrade") is not None


def parse_request(raw: bytes) -> Request:
    head = parse_head(raw, strict=True)
    if "\n" in head.first or "\r" in head.first:
        raise ValueError(f"a bare CR or LF in the request line {head.first[:120]!r}")
    parts = head.first.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"malformed request line {head.first[:120]!r}")
    method, target, version = parts
    if method == "CONNECT":
        host, port = split_authority(target)
        return Request(method, target, version, head, host, port, "")
    url = urlsplit(target)
    if url.scheme.lower() != "http" or not url.netloc:
        raise ValueError(f"a proxy request needs an absolute http:// URL (https goes through CONNECT), "
                         f"got {target[:120]!r}")
    host, port = split_authority(url.netloc.rpartition("@")[2], 80)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    return Request(method, target, version, head, host, port, path)


def forward_head(req: Request, *, absolute: bool, proxy_auth: str | None, keep_alive: bool = False) -> bytes:
    """The request head to send on: origin-form to a server, absolute-form to an HTTP proxy.

    ``keep_alive``: the connection may carry further requests afterwards (the forwarder
    pools it); otherwise ``Connection: close``. An Upgrade (WebSocket over plain http)
    keeps its ``Connection: Upgrade``.
    """
    upgrade = req.wants_upgrade
    headers = [(k, v) for k, v in req.head.headers if k.lower() not in _HOP]
    if req.head.get("host") is None:
        headers.insert(0, ("Host", req.target.split("/")[2].rpartition("@")[2]))
    if upgrade:
        headers.append(("Upgrade", req.head.get("upgrade") or ""))
    headers.append(("Connection", "Upgrade" if upgrade else "keep-alive" if keep_alive else "close"))
    if proxy_auth:
        headers.append(("Proxy-Authorization", proxy_auth))
    line = f"{req.method} {req.target if absolute else req.path} {req.version}"
    return Head(line, headers).encode()


def status_of(head: Head) -> int:
    parts = head.first.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"malformed status line {head.first[:120]!r}")
    return int(parts[1])


def client_response(head: Head, *, keep_alive: bool) -> bytes:
    """The response head for the client: the upstream's own connection headers are not its
    business; it is told whether this client connection carries another request."""
    if status_of(head) == 101:
        return head.encode()
    headers = [(k, v) for k, v in head.headers if k.lower() not in ("connection", "proxy-connection", "keep-alive")]
    if not keep_alive:
        headers += [("Connection", "close"), ("Proxy-Connection", "close")]
    return Head(head.first, headers).encode()


def tokens(head: Head, *names: str) -> set[str]:
    """The comma-separated tokens of the named headers (every occurrence), lower-cased."""
    wanted = {n.lower() for n in names}
    return {t.strip().lower() for k, v in head.headers if k.lower() in wanted for t in v.split(",") if t.strip()}


def persistent(head: Head, version: str) -> bool:
    """Whether the sender of this message keeps the connection open after it (RFC 9112 §9.3)."""
    said = tokens(head, "connection", "proxy-connection")
    if "close" in said:
        return False
    return version == "HTTP/1.1" or "keep-alive" in said


CHUNKED = -1  # a body framing: chunked transfer coding
UNTIL_CLOSE = -2  # a response body that ends when the connection does
_DIGITS = re.compile(r"[0-9]{1,18}")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?\r\n")


def _values(head: Head, name: str) -> list[str]:
    return [v for k, v in head.headers if k.lower() == name]


def request_framing(head: Head) -> int:
    """A request body's length (0: none) or CHUNKED; ValueError when the framing is ambiguous
    or malformed, which a proxy must answer with 400 and a close, never guess."""
    te, cl = _values(head, "transfer-encoding"), _values(head, "content-length")
    if te and cl:
        raise ValueError("both Transfer-Encoding and Content-Length: the body's end is ambiguous")
    if te:
        if len(te) > 1 or te[0].lower() != "chunked":
            raise ValueError(f"unsupported Transfer-Encoding {', '.join(te)[:60]!r}: "
                             "only a single 'chunked' is allowed")
        return CHUNKED
    if len(cl) > 1:
        raise ValueError("more than one Content-Length")
    if cl:
        if not _DIGITS.fullmatch(cl[0]):
            raise ValueError(f"bad Content-Length {cl[0][:40]!r}")
        return int(cl[0])
    return 0


def response_framing(method: str, status: int, head: Head) -> int:
    """A response body's length, CHUNKED or UNTIL_CLOSE (RFC 9112 §6.3); ValueError when
    its Content-Length is malformed or contradicts itself."""
    if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return 0
    te, cl = _values(head, "transfer-encoding"), _values(head, "content-length")
    if te:  # (wins over a Content-Length; the connection is not reused then: see reusable())
        codings = [t.strip().lower() for v in te for t in v.split(",")]
        return CHUNKED if codings[-1] == "chunked" else UNTIL_CLOSE
    if cl:
        values = {v.strip() for v in cl for v in v.split(",")}
        if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
            raise ValueError(f"bad Content-Length {', '.join(cl)[:60]!r}")
        return int(values.pop())
    return UNTIL_CLOSE


def reusable(head: Head, framing: int) -> bool:
    """Whether the upstream connection may carry another request after this response."""
    version = head.first.split(" ", 1)[0]
    both = bool(_values(head, "transfer-encoding")) and bool(_values(head, "content-length"))
    return framing != UNTIL_CLOSE and not both and persistent(head, version)


async def copy_body(src: asyncio.StreamReader, dst: asyncio.StreamWriter, framing: int,
                    count: Callable[[int], None], chunk: int = 256 * 1024) -> None:
    """Copy one message body framed as ``framing`` (not UNTIL_CLOSE) from ``src`` to ``dst``,
    bytes as they came. IncompleteReadError when ``src`` ends early; ValueError on a bad chunk."""
    if framing == CHUNKED:
        await _copy_chunked(src, dst, count, chunk)
        return
    left = framing
    while left > 0:
        data = await src.read(min(chunk, left))
        if not data:
            raise asyncio.IncompleteReadError(b"", left)
        left -= len(data)
        dst.write(data)
        count(len(data))
        await dst.drain()


async def _line(src: asyncio.StreamReader) -> bytes:
    try:
        return await src.readuntil(b"\r\n")
    except asyncio.LimitOverrunError:
        raise ValueError("a chunk-size or trailer line too long") from None


async def _copy_chunked(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: Callable[[int], None],
                        chunk: int) -> None:
    while True:
        line = await _line(src)
        match = _CHUNK_SIZE.fullmatch(line)
        if match is None:
            raise ValueError(f"bad chunk size line {line[:40]!r}")
        size = int(match.group(1), 16)
        dst.write(line)
        count(len(line))
        if size == 0:
            break
        await copy_body(src, dst, size, count, chunk)
        if await src.readexactly(2) != b"\r\n":
            raise ValueError("a chunk not followed by CRLF")
        dst.write(b"\r\n")
        count(2)
    for _ in range(100):  # trailer fields, then the empty line that ends the message
        line = await _line(src)
        if b"\n" in line[:-2] or b"\r" in line[:-2]:
            raise ValueError("a bare CR or LF in a trailer")
        dst.write(line)
        count(len(line))
        if line == b"\r\n":
            await dst.drain()
            return
    raise ValueError("too many trailer fields")


def error_response(status: str, reason: str, code: str | None = None) -> bytes:
    body = f"opencone proxy: {f'net::{code}: ' if code else ''}{reason}\n".encode()
    safe = reason.replace("\r", " ").replace("\n", " ").encode("ascii", "replace").decode("ascii")
    head = (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\nProxy-Connection: close\r\nX-Opencone-Proxy-Error: {safe}\r\n"
            + (f"X-Opencone-Net-Error: {code}\r\n" if code else "") + "\r\n")
    return head.encode("ascii") + body
