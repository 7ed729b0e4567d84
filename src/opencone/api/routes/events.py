"""``GET /computers/{id}/events``: everything that happens on a computer, as Server-Sent Events.

Framing (the SDK's SSE decoder rules, spec §5.10-5.11): every block is one
``data:`` line of JSON with a ``type``; events of the computer's sequence carry
``id: <seq>``, so there is never a comment-only block: keep-alives are
``{"type":"heartbeat"}`` data events. No ``event:`` names (EventSource's
``onmessage`` sees everything), no ``[DONE]``.

The stream opens with ``{"type":"subscribed","last_seq":N}``, so a client knows
it is live, and ends after the computer's ``terminated`` event. A terminated
computer answers 200 with that one event, then closes (not 409: a client that
subscribes just as the computer ends gets the same clean ending either way).
Resume with ``Last-Event-ID: <seq>`` (events after it) or ``?from=<seq>``
(events from it on), as far as the small per-computer ring reaches; a gap is
reported as a ``dropped`` event.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from opencone.api.auth import current_org_or_token
from opencone.api.deps import runtime
from opencone.api.errors import problems
from opencone.api.openapi import KEY_OR_TOKEN
from opencone.api.shutdown import stopping
from opencone.core.clock import iso
from opencone.core.events import EventBus, Subscription, encode, meta
from opencone.core.lifetimes import EndReason

log = logging.getLogger(__name__)
router = APIRouter(tags=["events"])

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _after_seq(from_seq: int | None, last_event_id: str | None) -> int | None:
    """The last seq the client has: ``?from=N`` means it wants N on; ``Last-Event-ID: N`` that it has N."""
    if from_seq is not None:
        return from_seq - 1
    if last_event_id and last_event_id.strip().isdigit():
        return int(last_event_id.strip())
    return None


_shutdown_watches: weakref.WeakKeyDictionary[EventBus, asyncio.Task[None]] = weakref.WeakKeyDictionary()


def _end_streams_on_shutdown(bus: EventBus) -> None:
    """At SIGTERM, end every stream with ``terminated`` (server_shutdown), so uvicorn need not wait for them."""
    if bus in _shutdown_watches:
        return
    event = stopping()

    async def watch() -> None:
        await event.wait()
        bus.close_all(EndReason.SERVER_SHUTDOWN.value)

    _shutdown_watches[bus] = asyncio.create_task(watch(), name="events-shutdown-watch")


async def _watch_disconnect(request: Request, sub: Subscription) -> None:
    """End the subscription as soon as the client goes, not at the next heartbeat."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    sub.cancel()


@router.get("/computers/{computer_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}, **problems(401, 404, 422)},
            openapi_extra=KEY_OR_TOKEN)
async def computer_events(
    computer_id: str, request: Request,
    from_seq: int | None = Query(None, alias="from", ge=0, description="Replay kept events from this seq on."),
    last_event_id: str | None = Header(None),
    org: str = Depends(current_org_or_token),
) -> StreamingResponse:
    """Server-Sent Events: lifecycle, actions (requested/completed), exec output, tabs; ends at ``terminated``."""
    rt = runtime(request)
    view = await rt.computers.get(org, computer_id)  # 404 for unknown or another organisation's computer
    bus: EventBus = rt.events
    _end_streams_on_shutdown(bus)
    after = _after_seq(from_seq, last_event_id)
    heartbeat = rt.settings.events_heartbeat_seconds
    clock = rt.clock

    async def frames() -> AsyncIterator[bytes]:
        # subscribed here, not before: a response that never starts leaves no subscription behind
        sub = bus.subscribe(computer_id, after)
        if sub is None:  # ended long ago (or before a restart): its last word, rebuilt from the record
            yield encode({"type": "terminated", "computer_id": computer_id,
                          "timestamp": iso(view.terminated_at), "reason": view.termination_reason}).frame
            return
        watcher = asyncio.create_task(_watch_disconnect(request, sub))
        try:
            if bus.is_live(computer_id):  # a live computer's stream opens with this; an ended one's is its end
                yield meta(computer_id, "subscribed", clock, last_seq=bus.last_seq(computer_id)).frame
            while not sub.finished:
                batch = await sub.next_batch(heartbeat)
                if batch:
                    yield b"".join(ev.frame for ev in batch)
                elif not sub.finished:
                    yield meta(computer_id, "heartbeat", clock).frame
        except Exception as exc:  # headers are sent: say what went wrong in the stream's own terms
            log.exception("event stream of %s failed", computer_id)
            yield b'event: error\ndata: {"type":"error","message":"' + type(exc).__name__.encode() + b'"}\n\n'
        finally:
            watcher.cancel()
            bus.unsubscribe(sub)

    return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)
