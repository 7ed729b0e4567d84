"""``GET /computers/{id}/screencast``: the computer's screen as server-sent events.

Every frame is one unnamed event whose ``data:`` is JSON
``{"image_data": "<base64 JPEG>", "metadata": {timestamp, width, height, seq, screenshot_width,
screenshot_height, ...}}``: ``width``/``height`` are the JPEG's, ``screenshot_*`` the size whose pixels
actions take (twice the JPEG's for a browser with device scale 2: Chromium casts CSS pixels);
desktops also send ``event: cursor_position`` with ``{"x", "y"}`` when the
pointer moves. Frames come only when the picture changes. With no ``id:``
lines, a ``: heartbeat`` comment every 15 s is safe for the SDK's decoder and
keeps its 60 s read timeout at bay. The stream ends when the computer ends.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from opencone.api.auth import current_org_or_token
from opencone.api.backpressure import Backpressure
from opencone.api.deps import runtime
from opencone.api.errors import problems
from opencone.api.openapi import KEY_OR_TOKEN
from opencone.api.shutdown import stopping
from opencone.core.screencast import ScreencastService, Viewer
from opencone.drivers.screencast import CursorPosition, ScreencastEvent

router = APIRouter(tags=["streams"])

HEARTBEAT_SECONDS = 15.0
QUEUED_LIMIT = 0  # bytes still on their way to the client before the next frame goes
SSE = "text/event-stream"


def encode(event: ScreencastEvent) -> bytes:
    if isinstance(event, CursorPosition):
        return f'event: cursor_position\ndata: {{"x":{event.x},"y":{event.y}}}\n\n'.encode()
    meta = {"timestamp": event.timestamp, "width": event.width, "height": event.height, "seq": event.seq,
            **event.extra}
    # base64 needs no JSON escaping: splice it in rather than re-scan ~100 KB per frame
    return f'data: {{"image_data":"{event.data}","metadata":{json.dumps(meta)}}}\n\n'.encode()


_shutdown_watches: weakref.WeakKeyDictionary[ScreencastService, asyncio.Task[None]] = weakref.WeakKeyDictionary()


def _end_streams_on_shutdown(service: ScreencastService) -> None:
    """At SIGTERM, end every screencast (a clean end of each response) so uvicorn need not wait."""
    if service in _shutdown_watches:
        return
    event = stopping()

    async def watch() -> None:
        await event.wait()
        await service.stop()

    _shutdown_watches[service] = asyncio.create_task(watch(), name="screencast-shutdown-watch")


class _Stream(StreamingResponse):
    def __init__(self, viewer: Viewer, gate: Backpressure, headers: Mapping[str, str]) -> None:
        super().__init__(_events(viewer, gate), media_type=SSE, headers=headers)
        self._viewer = viewer
        self._gate = gate

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self._gate.attach(send)
        try:
            await super().__call__(scope, receive, send)
        finally:
            # also when the client left before the body started (a never-started generator
            # runs no finally): the last viewer to leave stops the capture
            self._viewer.close()


async def _events(viewer: Viewer, gate: Backpressure) -> AsyncIterator[bytes]:
    try:
        yield b": screencast\n\n"  # the headers and a first byte go out now, before any frame
        while True:
            # wait until the client took what was sent, then take the newest frame: the slot
            # kept replacing it meanwhile
            await gate.ready(QUEUED_LIMIT)
            try:
                event = await viewer.next(HEARTBEAT_SECONDS)
            except TimeoutError:
                yield b": heartbeat\n\n"
                continue
            if event is None:
                return
            yield encode(event)
    finally:
        viewer.close()


@router.get("/computers/{computer_id}/screencast", response_class=StreamingResponse,
            responses={200: {"content": {SSE: {}}}, **problems(401, 404, 409, 422)}, openapi_extra=KEY_OR_TOKEN)
async def screencast(computer_id: str, request: Request,
                     org: str = Depends(current_org_or_token)) -> StreamingResponse:
    """Live JPEG frames of the screen while it changes (``?token=<key>`` works in place of the header)."""
    service = runtime(request).screencasts
    _end_streams_on_shutdown(service)
    viewer = await service.watch(org, computer_id)  # 404 / 409 before streaming
    gate = Backpressure()
    return _Stream(viewer, gate, {"cache-control": "no-cache", "x-accel-buffering": "no"})

