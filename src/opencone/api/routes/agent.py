"""``/agent/tasks``: start agent tasks, follow them (SSE), steer them (pause, resume, messages,
cancel). The loop runs in the server (agent/loop.py); a stream is only a view of its event log,
so dropping one never stops a task, and ``GET /agent/tasks/{id}/stream`` with
``Last-Event-ID: N`` (or ``?from=N+1``) picks it up after event N.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from opencone.agent.events import TERMINAL, VERBOSE_ONLY, TaskLog, heartbeat_frame, unnumbered_frame
from opencone.agent.service import AgentService, TaskView
from opencone.api.auth import current_org, current_org_or_token
from opencone.api.deps import base_url
from opencone.api.errors import problems
from opencone.api.json_body import JsonBody
from opencone.api.openapi import KEY_OR_TOKEN
from opencone.api.routes.events import SSE_HEADERS
from opencone.api.shutdown import stopping
from opencone.api.wire.agent import Message, TaskStart, start_response, task_response

router = APIRouter(tags=["agent"])
HEARTBEAT_SECONDS = 15.0
_STREAM = {200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events of the task"}}


def agents(request: Request) -> AgentService:
    return request.app.state.agents  # type: ignore[no-any-return]


_watches: weakref.WeakKeyDictionary[AgentService, asyncio.Task[None]] = weakref.WeakKeyDictionary()


def _end_tasks_on_shutdown(service: AgentService) -> None:
    """At SIGTERM the running tasks end (``failed``, ``server_shutdown``), so their streams close
    with a terminal event and uvicorn need not wait for them."""
    if service in _watches:
        return
    event = stopping()

    async def watch() -> None:
        await event.wait()
        await service.stop()

    _watches[service] = asyncio.create_task(watch(), name="agent-shutdown-watch")


def _after(from_seq: int | None, last_event_id: str | None) -> int:
    if from_seq is not None:
        return max(0, from_seq - 1)
    if last_event_id and last_event_id.strip().isdigit():
        return int(last_event_id.strip())
    return 0


def _stream(task_log: TaskLog | None, view: TaskView, after: int, concise: bool, clock: Any) -> StreamingResponse:
    async def frames() -> AsyncIterator[bytes]:
        if task_log is None:  # ended long ago (or before a restart): its end, from the record
            kind = view.status if view.status in TERMINAL else "failed"
            yield unnumbered_frame({"type": kind, "task_id": view.id, "status": view.status, "reason": view.reason,
                                    "exit_code": view.exit_code, "result": view.result, "error": view.error,
                                    "steps": view.steps})
            return
        seq = after
        while True:
            batch = await task_log.wait(seq, HEARTBEAT_SECONDS)
            if batch:
                seq = batch[-1].seq
                out = b"".join(ev.frame for ev in batch if not (concise and ev.type in VERBOSE_ONLY))
                if out:
                    yield out
            elif task_log.closed:
                return
            else:
                yield heartbeat_frame(view.id, clock)

    return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)


async def _start(request: Request, body: TaskStart, org: str) -> tuple[AgentService, TaskView, bool]:
    service = agents(request)
    view, reused = await service.start_task(org, body.to_spec(), base_url(request))
    return service, view, reused


@router.post("/agent/tasks", responses=problems(400, 401, 404, 409, 413, 422, 429, 503))
async def start_task(body: TaskStart, request: Request, org: str = Depends(current_org)) -> JsonBody:
    """Start a task; answers at once with its ``task_id`` (``reused: true`` for a retried start with
    the same ``idempotency_key``)."""
    _, view, reused = await _start(request, body, org)
    return JsonBody(start_response(view, reused))


@router.post("/agent/tasks/stream", response_class=StreamingResponse,
             responses={**_STREAM, **problems(400, 401, 404, 409, 413, 422, 429, 503)})
async def start_task_stream(body: TaskStart, request: Request, org: str = Depends(current_org)) -> StreamingResponse:
    """Start a task and stream its events from the first (a retried start streams the same task)."""
    service, view, _ = await _start(request, body, org)
    _end_tasks_on_shutdown(service)
    task_log, view = await service.event_log(org, view.id)
    return _stream(task_log, view, 0, body.stream_mode == "concise", request.app.state.runtime.clock)


@router.get("/agent/tasks", responses=problems(401, 422))
async def list_tasks(request: Request,
                     status: Literal["queued", "running", "paused", "completed", "failed", "cancelled",
                                     "max_steps"] | None = Query(None),
                     limit: int = Query(50, ge=1, le=500),
                     org: str = Depends(current_org)) -> list[dict[str, Any]]:
    """The organisation's tasks, newest first."""
    return [task_response(v) for v in await agents(request).list(org, status, limit)]


@router.get("/agent/tasks/{task_id}", responses=problems(401, 404))
async def retrieve_task(task_id: str, request: Request, org: str = Depends(current_org)) -> JsonBody:
    """``task_id``, ``status``, ``exit_code`` (0 only for ``completed``) and the rest of the record."""
    return JsonBody(task_response(await agents(request).get(org, task_id)))


@router.get("/agent/tasks/{task_id}/stream", response_class=StreamingResponse,
            responses={**_STREAM, **problems(401, 404, 422)}, openapi_extra=KEY_OR_TOKEN)
async def task_stream(task_id: str, request: Request,
                      from_seq: int | None = Query(None, alias="from", ge=0, description="Events from this id on."),
                      stream_mode: Literal["verbose", "concise"] | None = Query(None),
                      last_event_id: str | None = Header(None),
                      org: str = Depends(current_org_or_token)) -> StreamingResponse:
    """Re-attach to a task's events: after ``Last-Event-ID`` (or from ``?from=``), none lost or twice;
    a task that has ended gives the rest of its events and its terminal one."""
    service = agents(request)
    task_log, view = await service.event_log(org, task_id)
    _end_tasks_on_shutdown(service)
    concise = stream_mode == "concise" if stream_mode is not None else _task_concise(service, org, task_id)
    return _stream(task_log, view, _after(from_seq, last_event_id), concise, request.app.state.runtime.clock)


def _task_concise(service: AgentService, org: str, task_id: str) -> bool:
    run = service.run_of(org, task_id)
    return run is not None and run.spec.stream_mode == "concise"


@router.post("/agent/tasks/{task_id}/messages", responses=problems(401, 404, 409, 413, 422))
async def inject_message(task_id: str, body: Message, request: Request, org: str = Depends(current_org)) -> JsonBody:
    """Queue a message for the model: it goes with the next model request (``{"status": "queued"}``)."""
    return JsonBody({"status": await agents(request).inject(org, task_id, body.message), "task_id": task_id})


@router.post("/agent/tasks/{task_id}/pause", responses=problems(401, 404, 409))
async def pause_task(task_id: str, request: Request, org: str = Depends(current_org)) -> JsonBody:
    """Pause between steps: no model request while paused; a call in flight finishes, its actions wait."""
    return JsonBody({"status": await agents(request).pause(org, task_id), "task_id": task_id})


@router.post("/agent/tasks/{task_id}/resume", responses=problems(401, 404, 409))
async def resume_task(task_id: str, request: Request, org: str = Depends(current_org)) -> JsonBody:
    return JsonBody({"status": await agents(request).resume(org, task_id), "task_id": task_id})


@router.post("/agent/tasks/{task_id}/cancel", responses=problems(401, 404))
async def cancel_task(task_id: str, request: Request, org: str = Depends(current_org)) -> JsonBody:
    """Cancel a task (its computer ends with it unless kept); an ended task answers its status."""
    return JsonBody({"status": await agents(request).cancel(org, task_id), "task_id": task_id})
