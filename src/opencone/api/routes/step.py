"""``POST /computers/{id}/step``: one action of the shared schema and the observation after it.

A gym step (opencone.gym), an OpenEnv step (routes/openenv.py) and an MCP tool call take the
same action; here it runs through ``ComputerService.perform`` like any REST action (lock, idle
timer, ``/events``), then the observation is taken in the same request: tabs with the page's
url and title, a screenshot (base64 JPEG inline: no second fetch of a capability URL) and an
element snapshot. A failed action is not an HTTP error: its message comes back as
``last_action_error`` with the observation, for the agent to act on.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from fastapi import APIRouter, Depends, Request

from opencone.api.auth import current_org
from opencone.api.deps import runtime
from opencone.api.errors import problems
from opencone.api.json_body import JsonBody, valid_text
from opencone.api.wire import actions as w
from opencone.api.wire.step import Observe, StepBody, StepResult, ToolAction
from opencone.core import actions as a
from opencone.core.computers import Step
from opencone.core.ids import new_id
from opencone.core.runtime import Runtime

router = APIRouter(tags=["actions"])
SNAPSHOT_RETRY_SECONDS = 0.2


async def run_step(rt: Runtime, org: str, computer_id: str, action: ToolAction | None,
                   observe: list[Observe] | tuple[Observe, ...], *, tab_id: str | None = None,
                   request_id: str | None = None, interactive_only: bool = False,
                   snapshot_max_chars: int = 50_000) -> dict[str, Any]:
    """The step's answer (``StepResult``'s shape). Raises the services' errors (404, 409, 422)."""
    request_id = request_id or new_id("req")
    actions = action.canonical() if action is not None else []  # a 422 before the computer is touched
    out: dict[str, Any] = {"status": "success", "last_action_error": None, "result": {}, "request_id": request_id}
    t0 = time.perf_counter()
    if actions:
        report = (await rt.computers.perform(org, computer_id, [Step(actions, tab_id)], request_id=request_id))[-1]
        out["result"] = dict(report.outcome.result)
        if not report.ok:
            out["status"], out["last_action_error"] = "error", report.error_message
        if report.outcome.image is not None and "screenshot" not in observe:
            out["screenshot"] = base64.b64encode(report.outcome.image).decode()
        tab_id = tab_id or (report.outcome.result.get("tab_id") if action is not None and action.action == "tabs"
                            else None)
    t1 = time.perf_counter()
    out["action_ms"] = round((t1 - t0) * 1000, 3)
    steps: list[tuple[str, Step]] = []
    if "tabs" in observe or "url" in observe:
        steps.append(("tabs", Step([a.ListTabs()], tab_id, include_context="url" in observe)))
    if "screenshot" in observe:
        steps.append(("screenshot", Step([a.Screenshot()], tab_id)))
    if "snapshot" in observe:
        steps.append(("snapshot", Step([w.build("observe", {
            "kind": "snapshot", "interactive_only": interactive_only, "max_chars": snapshot_max_chars})], tab_id)))
    for name, obs_step in steps:  # each on its own: one failing (a desktop has no snapshot) spares the others
        report = (await rt.computers.perform(org, computer_id, [obs_step], request_id=request_id))[0]
        if name == "snapshot" and not report.ok:  # once more: a page the action set navigating may be settling
            await asyncio.sleep(SNAPSHOT_RETRY_SECONDS)
            report = (await rt.computers.perform(org, computer_id, [obs_step], request_id=request_id))[0]
        _observed(out, name, report, observe)
    out["observe_ms"] = round((time.perf_counter() - t1) * 1000, 3)
    comp = await rt.computers.require_live(org, computer_id)
    if out.get("screenshot") is not None:
        out["width"], out["height"] = comp.driver.display.pixel_width, comp.driver.display.pixel_height
    return valid_text(out)  # type: ignore[no-any-return]


def _observed(out: dict[str, Any], name: str, report: Any, observe: Any) -> None:
    result = report.outcome.result
    if name == "tabs":
        if report.ok and "tabs" in observe:
            out["tabs"] = [{"tab_id": t["tab_id"], "url": t["url"], "title": t["title"], "is_main": t["is_main"]}
                           for t in result.get("tabs", [])]
        out["active_tab_id"] = report.tab_id
        if report.page_context is not None:
            out["url"], out["title"] = report.page_context.get("url"), report.page_context.get("title")
    elif name == "screenshot" and report.outcome.image is not None:
        out["screenshot"] = base64.b64encode(report.outcome.image).decode()
    elif name == "snapshot":
        if report.ok:
            out["snapshot"], out["snapshot_id"] = result.get("snapshot"), result.get("snapshot_id")
        else:
            out["snapshot"], out["snapshot_error"] = "", report.error_message


@router.post("/computers/{computer_id}/step",
             responses={200: {"model": StepResult}, **problems(401, 404, 409, 413, 422)})
async def step(computer_id: str, body: StepBody, request: Request, org: str = Depends(current_org)) -> JsonBody:
    """Ours: run one action of the shared schema (`{"action": "click", "ref": "e5"}`, pixels or refs)
    and return what `observe` asks for after it (screenshot as base64 JPEG, `[ref=eN]` snapshot, url,
    title, tabs) in the same round trip. A failed action answers 200 with `status: "error"` and
    `last_action_error`; no `action` only observes."""
    out = await run_step(runtime(request), org, computer_id, body.action, body.observe, tab_id=body.tab_id,
                         request_id=body.request_id, interactive_only=body.interactive_only,
                         snapshot_max_chars=body.snapshot_max_chars)
    return JsonBody(out)
