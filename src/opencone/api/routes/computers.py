"""Computer lifecycle: create, list, retrieve, delete, status, keepalive."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from opencone.api.auth import current_org
from opencone.api.deps import base_url, runtime
from opencone.api.wire.computers import ComputerCreate, computer_response, status_response
from opencone.core.clock import iso

router = APIRouter(tags=["computers"])


@router.post("/computers")
async def create_computer(request: Request, body: ComputerCreate | None = None,
                          org: str = Depends(current_org)) -> dict[str, Any]:
    rt = runtime(request)
    spec = (body or ComputerCreate()).to_spec(rt.settings)
    view = await rt.computers.create(org, spec)
    return computer_response(view, base_url(request))


@router.get("/computers")
async def list_computers(request: Request, type: Literal["live", "persistent"] = Query("live"),
                         org: str = Depends(current_org)) -> list[dict[str, Any]]:
    views = await runtime(request).computers.list(org, type)
    base = base_url(request)
    return [computer_response(v, base) for v in views]


@router.get("/computers/{computer_id}")
async def retrieve_computer(computer_id: str, request: Request,
                            org: str = Depends(current_org)) -> dict[str, Any]:
    view = await runtime(request).computers.get(org, computer_id)
    return computer_response(view, base_url(request))


@router.delete("/computers/{computer_id}", status_code=204)
async def delete_computer(computer_id: str, request: Request, org: str = Depends(current_org)) -> Response:
    await runtime(request).computers.delete(org, computer_id)
    return Response(status_code=204)


@router.get("/computers/{computer_id}/status")
async def computer_status(computer_id: str, request: Request, org: str = Depends(current_org)) -> dict[str, Any]:
    return status_response(await runtime(request).computers.get(org, computer_id))


@router.post("/computers/{computer_id}/keepalive")
async def keepalive(computer_id: str, request: Request, org: str = Depends(current_org)) -> dict[str, Any]:
    view = await runtime(request).computers.keepalive(org, computer_id)
    body = status_response(view)
    body["message"] = f"idle timer reset; idle until {iso(view.idle_expires_at) or 'never'}"
    return body
