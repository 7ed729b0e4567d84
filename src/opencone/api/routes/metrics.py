"""The server seen whole: ``GET /metrics`` (Prometheus) and ``GET /status`` (``opencone status``).

Both are about every organisation's computers at once, so they are the operator's: they take a
key of the default organisation (the one ``OPENCONE_API_KEY`` and ``opencone keys create``
make), and any other organisation's key is a 403. ``OPENCONE_METRICS_PUBLIC=true`` opens
``/metrics`` to a scraper without a key (it holds counts, no ids); ``/status`` lists computers
and their organisations, and always takes the key.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from fastapi import APIRouter, Request, Response

from opencone import __version__
from opencone.api.auth import current_org
from opencone.api.deps import runtime
from opencone.api.errors import problems
from opencone.core.accounts import DEFAULT_ORG_ID
from opencone.core.clock import iso
from opencone.core.errors import ServiceError
from opencone.core.metrics import CONTENT_TYPE, host_figures

router = APIRouter(tags=["operations"])


class Forbidden(ServiceError):
    status = 403


async def _operator(request: Request) -> None:
    org = await current_org(request)  # 401 without a valid key
    if org != DEFAULT_ORG_ID:
        raise Forbidden("this endpoint shows the whole server; it takes a key of the default organisation "
                        f"({DEFAULT_ORG_ID}: OPENCONE_API_KEY, or `opencone keys create` without --new-org)")


_TEXT = {"content": {"text/plain": {"schema": {"type": "string"}}},
         "description": "Prometheus text exposition format 0.0.4"}


@router.get("/metrics", response_class=Response, responses={200: _TEXT, **problems(401, 403)})
async def metrics(request: Request) -> Response:
    """Prometheus metrics of the whole server (see the README's Operations section for each name)."""
    rt = runtime(request)
    if not rt.settings.metrics_public:
        await _operator(request)
    return Response(rt.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/status", responses=problems(401, 403))
async def status(request: Request) -> dict[str, Any]:
    """The running server at a glance: computers (by kind, status, organisation), pools, streams,
    commands, agent tasks, and the machine's load and memory."""
    await _operator(request)
    rt = runtime(request)
    live = rt.computers.live_computers()
    now = rt.clock.now()
    pools = []
    for kind, factory in (("browser", rt.browsers), ("desktop", rt.desktops)):
        pool = factory.pool
        target = getattr(pool, "target", None)
        pools.append({
            "pool": kind, "ready": pool.ready_count, "launching": getattr(pool, "launching", 0),
            "floor": pool.size, "target": target() if callable(target) else pool.size,
            "max": getattr(getattr(pool, "policy", None), "max", pool.size),
            "misses": getattr(pool, "misses", 0), "launch_failures": getattr(pool, "failures", 0),
        })
    agents = getattr(request.app.state, "agents", None)
    tasks = Counter(r.status for r in list(agents.runs.values()) if not r.ended) if agents is not None else {}
    host = await asyncio.to_thread(host_figures)  # psutil reads /proc: off the event loop
    return {
        "version": __version__,
        "uptime_seconds": round(time.time() - rt.metrics.started_at, 1),
        "max_computers": rt.settings.max_computers,
        "computers": {
            "live": len(live),
            "by_kind": dict(Counter(c.kind for c in live)),
            "by_status": dict(Counter(c.status for c in live)),
            "by_org": dict(Counter(c.org_id for c in live)),
            "list": [{"id": c.id, "org_id": c.org_id, "kind": c.kind, "status": c.status,
                      "created_at": iso(c.created_at), "age_seconds": round((now - c.created_at).total_seconds(), 1),
                      "idle_seconds": round((now - c.last_activity_at).total_seconds(), 1)}
                     for c in sorted(live, key=lambda c: c.created_at)],
        },
        "pools": pools,
        "streams": {"event_subscribers": rt.events.subscriber_total, "screencast_viewers": rt.screencasts.viewer_total},
        "exec": {"running": rt.exec.running_count, "started": rt.exec.started},
        "agent_tasks": dict(tasks),
        "host": host,
    }
