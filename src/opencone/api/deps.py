"""Small request helpers shared by the routers."""

from __future__ import annotations

from fastapi import Request

from opencone.core.runtime import Runtime


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def base_url(request: Request) -> str:
    """The absolute base for links we hand out (screenshot URLs, endpoints)."""
    configured = request.app.state.runtime.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")
