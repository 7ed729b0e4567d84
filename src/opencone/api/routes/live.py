"""``GET /live``: the live view, one self-contained HTML page (no build step, nothing external).

The page itself needs no key: it asks for one, keeps it in sessionStorage, and
sends it as a Bearer header to the normal REST endpoints and the screencast.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["live view"])

# the page runs only its own inline script and style, talks only to this server, and shows frames as blob: images
_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}


@cache
def _page(name: str = "live.html") -> str:
    return resources.files("opencone.api").joinpath(f"static/{name}").read_text(encoding="utf-8")


@router.get("/live", response_class=HTMLResponse, include_in_schema=False)
async def live_view() -> HTMLResponse:
    """The live view: pick a computer, watch its screen, take over its mouse and keyboard."""
    return HTMLResponse(_page(), headers=_HEADERS)


# the replay page also plays this server's MP4s in a <video>
_REPLAY_HEADERS = {**_HEADERS, "content-security-policy": _HEADERS["content-security-policy"] + "; media-src 'self'"}


@router.get("/live/replay", response_class=HTMLResponse, include_in_schema=False)
async def replay_view() -> HTMLResponse:
    """Recordings: pick one, play it, click an action of its timeline to see that moment."""
    return HTMLResponse(_page("replay.html"), headers=_REPLAY_HEADERS)
