"""Upstream proxy URLs: parse, validate, and show them without the password."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SCHEMES = ("http", "https", "socks5", "socks5h")
_FORMS = "http://[user:password@]host:port, https://…, socks5://… or socks5h://…"


@dataclass(frozen=True, slots=True)
class UpstreamProxy:
    scheme: str  # http | https | socks5 (socks5h is stored as socks5: both resolve names at the proxy)
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def is_socks(self) -> bool:
        return self.scheme == "socks5"

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def masked(self) -> str:
        """The URL as it may be shown in a status or a log: the password is never included."""
        auth = ""
        if self.username is not None:
            auth = f"{self.username}:***@" if self.password else f"{self.username}@"
        return f"{self.scheme}://{auth}{self.address}"

    def basic_auth(self) -> str | None:
        """The ``Proxy-Authorization`` value for an HTTP(S) proxy, or None without credentials."""
        if self.username is None:
            return None
        raw = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def __repr__(self) -> str:  # keeps the password out of tracebacks and logs
        return f"UpstreamProxy({self.masked!r})"


def parse_proxy_url(url: str) -> UpstreamProxy:
    """Validate an upstream proxy URL; a ValueError says what is wrong with it."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"the proxy URL is empty; expected {_FORMS}")
    text = url.strip()
    if any(ord(c) < 33 or c == "\x7f" for c in text):
        raise ValueError("the proxy URL must not contain spaces or control characters")
    if "://" not in text:
        raise ValueError(f"the proxy URL has no scheme; expected {_FORMS}")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported proxy scheme {parts.scheme!r}; use http, https, socks5 or socks5h")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("the proxy URL must not have a path, query or fragment; expected scheme://host:port")
    host = parts.hostname
    if not host:
        raise ValueError(f"the proxy URL has no host; expected {_FORMS}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the proxy URL's port must be a number from 1 to 65535") from None
    if port is None:
        raise ValueError("the proxy URL has no port; write it as scheme://host:port")
    if not 1 <= port <= 65535:
        raise ValueError("the proxy URL's port must be a number from 1 to 65535")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if scheme.startswith("socks5") and username is not None:
        # RFC 1929 gives each field one length byte
        if not 1 <= len(username.encode()) <= 255 or len((password or "").encode()) > 255:
            raise ValueError("a SOCKS5 username must be 1 to 255 bytes long and its password at most 255 bytes")
    return UpstreamProxy("socks5" if scheme == "socks5h" else scheme, host, port, username, password)
