"""``POST /computers/{id}/perform``: canonical actions (core/actions.py) run as the MCP tools run them.

The route the MCP tool layer uses where it does not run beside the computers (a fleet replica,
fleet/replica_mcp.py): the replica forwards it to the computer's node like any other action route.
It takes only what the tools send (mcp/computers.py: ``run_command`` and ``evaluate`` only where this
server offers their opt-in group), so it opens nothing the MCP tools do not. Not in the OpenAPI
document: the public dialects are the Lightcone routes, ``/step`` and MCP.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from opencone.api.auth import current_org
from opencone.api.deps import runtime
from opencone.api.errors import describe_validation
from opencone.api.json_body import JsonBody, valid_text
from opencone.core import actions as a
from opencone.core.computers import Step
from opencone.core.errors import InvalidInput
from opencone.mcp.computers import Done, check_kinds

router = APIRouter(tags=["actions"])
_ACTIONS: TypeAdapter[list[a.Action]] = TypeAdapter(list[a.Action])
MAX_ACTIONS = 8  # a tool call sends one or two


class PerformBody(BaseModel):
    actions: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ACTIONS)
    tab_id: str | None = Field(default=None, max_length=128)


@router.post("/computers/{computer_id}/perform", include_in_schema=False)
async def perform(computer_id: str, body: PerformBody, request: Request, org: str = Depends(current_org)) -> JsonBody:
    rt = runtime(request)
    try:
        actions = _ACTIONS.validate_python(body.actions)
    except ValidationError as exc:
        detail, items = describe_validation(list(exc.errors()))
        raise InvalidInput(f"actions: {detail}", field="actions", errors=items) from None
    check_kinds(actions, frozenset(g for g in rt.settings.mcp_groups.split(",") if g))
    reports = await rt.computers.perform(org, computer_id, [Step(actions, body.tab_id)])
    comp = await rt.computers.require_live(org, computer_id)
    done = Done.of(reports[-1], comp.driver.display)
    return JsonBody(valid_text(done.wire()))
