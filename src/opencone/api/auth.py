"""API keys; each key belongs to one organisation.

Every route takes ``Authorization: Bearer <key>``. Streams, the CDP endpoint
and the live view also take ``?token=<key>``, because browsers' EventSource,
Playwright's ``connect_over_cdp`` and Puppeteer cannot always set a header.
A token in a URL is never logged: the server runs without an access log.
"""

from __future__ import annotations

import logging
import re

from starlette.requests import HTTPConnection

from opencone.core.errors import ServiceError


class Unauthorized(ServiceError):
    status = 401


_TOKEN = re.compile(r"([?&]token=)[^&\s\"']+", re.I)


class RedactTokens(logging.Filter):
    """uvicorn logs every WebSocket handshake with its query string: hide the ``?token=`` key."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN.sub(r"\1<redacted>", a) if isinstance(a, str) else a for a in record.args)
        return True


REDACT_TOKENS = RedactTokens()  # one instance: addFilter ignores a filter it already has


def presented_key(conn: HTTPConnection, allow_query: bool) -> str | None:
    """The key a request carries: the Bearer header, else (where allowed) ``?token=``."""
    scheme, _, key = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return key.strip()
    if allow_query:
        token = conn.query_params.get("token", "").strip()
        return token or None
    return None


async def org_for(conn: HTTPConnection, allow_query: bool = False) -> str | None:
    """The organisation of the connection's key, or None (for WebSockets, which cannot get a 401 body)."""
    key = presented_key(conn, allow_query)
    if key is None:
        return None
    return await conn.app.state.runtime.accounts.org_for_key(key)  # type: ignore[no-any-return]


async def _require(conn: HTTPConnection, allow_query: bool) -> str:
    key = presented_key(conn, allow_query)
    if key is None:
        how = "the header 'Authorization: Bearer <key>'"
        if allow_query:
            how += " or the query parameter ?token=<key>"
        raise Unauthorized(f"missing API key; send {how}")
    org = await conn.app.state.runtime.accounts.org_for_key(key)
    if org is None:
        raise Unauthorized("invalid or revoked API key")
    return org  # type: ignore[no-any-return]


async def current_org(conn: HTTPConnection) -> str:
    """FastAPI dependency: the organisation of the request's Bearer key, or 401."""
    return await _require(conn, allow_query=False)


async def current_org_or_token(conn: HTTPConnection) -> str:
    """As ``current_org``, also accepting ``?token=<key>`` (streams, CDP, live view)."""
    return await _require(conn, allow_query=True)
