"""Bearer API keys; each key belongs to one organisation."""

from __future__ import annotations

from fastapi import Request

from opencone.core.errors import ServiceError


class Unauthorized(ServiceError):
    status = 401


async def current_org(request: Request) -> str:
    """FastAPI dependency: the organisation of the request's API key, or 401."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing API key; send the header 'Authorization: Bearer <key>'")
    org = await request.app.state.runtime.accounts.org_for_key(key.strip())
    if org is None:
        raise Unauthorized("invalid or revoked API key")
    return org
