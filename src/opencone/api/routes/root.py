"""``GET /``: where a person (or a script) who opens the server's address should go next.

A browser gets a small page leading to the live view and the API docs; a client that asks for
JSON (``Accept: application/json``) gets the server's name, version and the same links.
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from opencone import __version__
from opencone.api.deps import base_url

router = APIRouter(tags=["health"])

LINKS = {
    "live": ("/live", "Live view: watch a computer's screen and take over its mouse and keyboard"),
    "docs": ("/docs", "API documentation (interactive)"),
    "openapi": ("/openapi.json", "OpenAPI document"),
    "health": ("/health", "Liveness and capacity (no key)"),
    "status": ("/status", "The whole server at a glance (operator key; `opencone status`)"),
    "metrics": ("/metrics", "Prometheus metrics (operator key unless OPENCONE_METRICS_PUBLIC)"),
}

_HEADERS = {"content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                                       "form-action 'none'; frame-ancestors 'none'",
            "referrer-policy": "no-referrer", "x-content-type-options": "nosniff"}


def _wants_json(accept: str) -> bool:
    """JSON when the client names it before (or instead of) HTML: curl's */* gets the page."""
    kinds = [part.split(";", 1)[0].strip().lower() for part in accept.split(",")]
    for kind in kinds:
        if kind in ("application/json", "application/problem+json"):
            return True
        if kind in ("text/html", "application/xhtml+xml"):
            return False
    return False


def _page(base: str) -> str:
    items = "\n".join(f'<li><a href="{escape(base + path)}">{escape(path)}</a> — {escape(what)}</li>'
                      for path, what in LINKS.values())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>opencone {escape(__version__)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;color:#222}}
a{{color:#0b5cad}}code{{background:#f2f2f2;padding:0 .2em}}</style></head>
<body><h1>opencone <small>{escape(__version__)}</small></h1>
<p>Self-hosted computers for AI agents, over the Lightcone API. Point the <code>tzafon</code> SDK here:
<code>LIGHTCONE_BASE_URL={escape(base)}</code>.</p>
<ul>
{items}
</ul></body></html>
"""


@router.get("/", include_in_schema=False, response_model=None)
async def root(request: Request) -> HTMLResponse | JSONResponse:
    base = base_url(request)
    if _wants_json(request.headers.get("accept", "")):
        return JSONResponse({"name": "opencone", "version": __version__,
                             "links": {name: base + path for name, (path, _what) in LINKS.items()}})
    return HTMLResponse(_page(base), headers=_HEADERS)
