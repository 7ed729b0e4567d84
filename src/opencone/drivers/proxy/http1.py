"""Just enough HTTP/1.x to be a forwarding proxy: parse and rewrite message heads.

Bodies are never parsed: after the head the bytes are piped as they come.
"""

from __future__ import annotations

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


def parse_head(raw: bytes) -> Head:
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    if not lines or not lines[0]:
        raise ValueError("empty message head")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
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
    head = parse_head(raw)
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


def forward_head(req: Request, *, absolute: bool, proxy_auth: str | None) -> bytes:
    """The request head to send on: origin-form to a server, absolute-form to an HTTP proxy.

    The connection is used for one exchange (``Connection: close``): the forwarder
    then never has to find where a response ends. An Upgrade (WebSocket over plain
    http) keeps its ``Connection: Upgrade``.
    """
    upgrade = req.wants_upgrade
    headers = [(k, v) for k, v in req.head.headers if k.lower() not in _HOP]
    if req.head.get("host") is None:
        headers.insert(0, ("Host", req.target.split("/")[2].rpartition("@")[2]))
    if upgrade:
        headers.append(("Upgrade", req.head.get("upgrade") or ""))
    headers.append(("Connection", "Upgrade" if upgrade else "close"))
    if proxy_auth:
        headers.append(("Proxy-Authorization", proxy_auth))
    line = f"{req.method} {req.target if absolute else req.path} {req.version}"
    return Head(line, headers).encode()


def status_of(head: Head) -> int:
    parts = head.first.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"malformed status line {head.first[:120]!r}")
    return int(parts[1])


def closing_response(head: Head) -> bytes:
    """A response head that tells the client this connection ends after the body."""
    if status_of(head) == 101:
        return head.encode()
    headers = [(k, v) for k, v in head.headers if k.lower() not in ("connection", "proxy-connection", "keep-alive")]
    headers += [("Connection", "close"), ("Proxy-Connection", "close")]
    return Head(head.first, headers).encode()


def error_response(status: str, reason: str, code: str | None = None) -> bytes:
    body = f"opencone proxy: {f'net::{code}: ' if code else ''}{reason}\n".encode()
    safe = reason.replace("\r", " ").replace("\n", " ").encode("ascii", "replace").decode("ascii")
    head = (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\nProxy-Connection: close\r\nX-Opencone-Proxy-Error: {safe}\r\n"
            + (f"X-Opencone-Net-Error: {code}\r\n" if code else "") + "\r\n")
    return head.encode("ascii") + body
