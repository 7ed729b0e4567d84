"""Tabs of a browser computer; each answers with an ActionResult."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from opencone.api.auth import current_org
from opencone.api.deps import base_url, runtime
from opencone.api.errors import problems
from opencone.api.wire import actions as w
from opencone.core.computers import Step

router = APIRouter(tags=["tabs"], responses={200: {"model": w.ActionResult}, **problems(401, 404, 409)})


class NewTabBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str | None = None


async def _tab_action(request: Request, org: str, computer_id: str, data: dict[str, Any]) -> dict[str, Any]:
    rt = runtime(request)
    reports = await rt.computers.perform(org, computer_id, [Step([w.build("body", data)])],
                                         render=w.renderer(rt.files, base_url(request)))
    return w.action_result(reports[-1], rt.files, base_url(request))


@router.get("/computers/{computer_id}/tabs")
async def list_tabs(computer_id: str, request: Request, org: str = Depends(current_org)) -> dict[str, Any]:
    return await _tab_action(request, org, computer_id, {"kind": "list_tabs"})


@router.post("/computers/{computer_id}/tabs", responses=problems(413, 422))
async def new_tab(computer_id: str, request: Request, body: NewTabBody | None = None,
                  org: str = Depends(current_org)) -> dict[str, Any]:
    return await _tab_action(request, org, computer_id, {"kind": "new_tab", "url": (body or NewTabBody()).url})


@router.post("/computers/{computer_id}/tabs/{tab_id}/switch")
async def switch_tab(computer_id: str, tab_id: str, request: Request,
                     org: str = Depends(current_org)) -> dict[str, Any]:
    return await _tab_action(request, org, computer_id, {"kind": "switch_tab", "tab_id": tab_id})


@router.delete("/computers/{computer_id}/tabs/{tab_id}")
async def close_tab(computer_id: str, tab_id: str, request: Request,
                    org: str = Depends(current_org)) -> dict[str, Any]:
    return await _tab_action(request, org, computer_id, {"kind": "close_tab", "tab_id": tab_id})
