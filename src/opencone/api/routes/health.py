"""Liveness and capacity, without auth."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from opencone import __version__
from opencone.api.deps import runtime

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    rt = runtime(request)
    return {
        "status": "ok",
        "version": __version__,
        "computers": rt.computers.live_count,
        "max_computers": rt.settings.max_computers,
        "warm_browsers": rt.browsers.pool.ready_count,
        "warm_desktops": rt.desktops.pool.ready_count,
    }
