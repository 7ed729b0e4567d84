"""Computer lifecycle: create, list, retrieve, delete, status, keepalive."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from opencone.api.auth import current_org
from opencone.api.deps import base_url, runtime
from opencone.api.errors import problems
from opencone.api.json_body import JsonBody
from opencone.api.wire.computers import ComputerCreate, RecordingIn, computer_response, status_response
from opencone.api.wire.environments import environment_response
from opencone.api.wire.recordings import recording_response
from opencone.core.clock import iso

router = APIRouter(tags=["computers"])


@router.post("/computers", responses=problems(401, 404, 409, 413, 422, 429, 503))
async def create_computer(request: Request, body: ComputerCreate | None = None,
                          org: str = Depends(current_org)) -> dict[str, Any]:
    rt = runtime(request)
    body = body or ComputerCreate()
    spec = body.to_spec(rt.settings)
    if body.recording:  # refused before anything starts when the organisation's storage is full
        await rt.recordings.check_room(org)
    view = await rt.computers.create(org, spec)
    out = computer_response(view, base_url(request))
    if body.recording:
        keep = isinstance(body.recording, RecordingIn) and body.recording.keep
        try:
            rec = await rt.recordings.start_recording(org, view.id, keep, checked=True)
        except BaseException:
            await rt.computers.delete(org, view.id)  # no computer half made: unrecorded when asked to record
            raise
        out["recording"] = recording_response(rec, base_url(request))
    return out


@router.get("/computers", responses=problems(401, 422))
async def list_computers(request: Request, type: Literal["live", "persistent"] = Query("live"),
                         context_id: str | None = Query(None, max_length=256),
                         org: str = Depends(current_org)) -> list[dict[str, Any]]:
    rt = runtime(request)
    if type == "persistent":  # the saved environments (core/environments.py)
        return [environment_response(e) for e in await rt.environments.list(org, context_id)]
    views = await rt.computers.list(org, type, context_id)
    base = base_url(request)
    return [computer_response(v, base) for v in views]


@router.get("/environments", responses=problems(401, 422))
async def list_environments(request: Request, context_id: str | None = Query(None, max_length=256),
                            org: str = Depends(current_org)) -> list[dict[str, Any]]:
    return [environment_response(e) for e in await runtime(request).environments.list(org, context_id)]


@router.get("/environments/{environment_id}", responses=problems(401, 404))
async def retrieve_environment(environment_id: str, request: Request,
                               org: str = Depends(current_org)) -> dict[str, Any]:
    return environment_response(await runtime(request).environments.get(org, environment_id))


@router.delete("/environments/{environment_id}", status_code=204, responses=problems(401, 404))
async def delete_environment(environment_id: str, request: Request, org: str = Depends(current_org)) -> Response:
    """Delete a saved environment and its stored state; 404 when it is not this organisation's."""
    await runtime(request).environments.delete(org, environment_id)
    return Response(status_code=204)


@router.get("/computers/{computer_id}", responses=problems(401, 404))
async def retrieve_computer(computer_id: str, request: Request,
                            org: str = Depends(current_org)) -> JsonBody:
    view = await runtime(request).computers.get(org, computer_id)
    return JsonBody(computer_response(view, base_url(request)))


@router.delete("/computers/{computer_id}", status_code=204, responses=problems(401, 404))
async def delete_computer(computer_id: str, request: Request, org: str = Depends(current_org)) -> Response:
    await runtime(request).computers.delete(org, computer_id)
    return Response(status_code=204)


@router.get("/computers/{computer_id}/status", responses=problems(401, 404))
async def computer_status(computer_id: str, request: Request, org: str = Depends(current_org)) -> JsonBody:
    return JsonBody(status_response(await runtime(request).computers.get(org, computer_id)))


@router.post("/computers/{computer_id}/keepalive", responses=problems(401, 404, 409))
async def keepalive(computer_id: str, request: Request, org: str = Depends(current_org)) -> JsonBody:
    view = await runtime(request).computers.keepalive(org, computer_id)
    body = status_response(view)
    body["message"] = f"idle timer reset; idle until {iso(view.idle_expires_at) or 'never'}"
    return JsonBody(body)
