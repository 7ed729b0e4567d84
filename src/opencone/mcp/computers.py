"""What the MCP tools (mcp/tools.py) need from the server they run in, as one small interface.

On a single server (and a fleet node) the tools run over the services themselves (``LocalComputers``:
``ComputerService`` in the same process, as before). On a fleet replica, which holds no computer, the
same tools run over the replica's own REST routes, called in-process with the caller's key
(fleet/replica_mcp.py), so an MCP call is routed to the computer's node exactly as a REST call is.
The actions themselves cross that boundary in the canonical model (core/actions.py), through
``POST /computers/{id}/perform`` (api/routes/perform.py): what the tool layer may run, nothing more.

No import of the ``mcp`` SDK here: the route needs none.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from opencone.api.wire.computers import ComputerCreate
from opencone.core import actions as a
from opencone.core.clock import iso
from opencone.core.computers import ActionReport, ComputerView, Step
from opencone.core.errors import InvalidInput
from opencone.core.runtime import Runtime
from opencone.drivers.base import Display

# the canonical kinds the tool layer sends (mcp/tools.py); a group's kind only where the server offers it
TOOL_KINDS = frozenset({
    "click", "move", "mouse_down", "mouse_up", "drag", "scroll", "type", "press_keys", "key_down", "key_up",
    "fill", "select_option", "navigate", "history", "list_tabs", "new_tab", "switch_tab", "close_tab", "wait",
    "screenshot", "snapshot", "markdown", "change_proxy"})
GROUP_KINDS = {"exec": "run_command", "evaluate": "evaluate"}


def allowed_kinds(groups: frozenset[str]) -> frozenset[str]:
    return TOOL_KINDS | {kind for group, kind in GROUP_KINDS.items() if group in groups}


def check_kinds(actions: list[a.Action], groups: frozenset[str]) -> None:
    """Refuse an action the tool layer of this server would not run (an opt-in group it does not offer)."""
    allowed = allowed_kinds(groups)
    for i, act in enumerate(actions):
        if act.kind not in allowed:
            group = next((g for g, k in GROUP_KINDS.items() if k == act.kind), None)
            why = (f"the {group!r} tool group is not enabled on this server (OPENCONE_MCP_GROUPS)" if group
                   else "it is not one the MCP tools run")
            raise InvalidInput(f"actions[{i}]: {act.kind!r} is refused here: {why}", field=f"actions[{i}]",
                               allowed=sorted(allowed))


@dataclass(frozen=True, slots=True)
class View:
    """A computer as the tools show it (from a ``ComputerView``, or a REST answer)."""

    id: str
    kind: str
    status: str
    display: Display
    persistent: bool
    environment_id: str | None
    created_at: str | None
    expires_at: str | None
    idle_expires_at: str | None
    termination_reason: str | None

    @classmethod
    def of(cls, v: ComputerView) -> View:
        return cls(v.id, v.kind, v.status, v.display, v.persistent, v.environment_id, iso(v.created_at),
                   iso(v.expires_at), iso(v.idle_expires_at), v.termination_reason)

    @classmethod
    def from_rest(cls, body: dict[str, Any]) -> View:
        d = body.get("display") or {}
        return cls(str(body["id"]), str(body.get("kind", "browser")), str(body.get("status", "")),
                   Display(int(d.get("width", 0)), int(d.get("height", 0)), float(d.get("scale", 1.0))),
                   bool(body.get("persistent")), body.get("environment_id"), body.get("created_at"),
                   body.get("expires_at"), body.get("idle_expires_at"), body.get("termination_reason"))


@dataclass(frozen=True, slots=True)
class Done:
    """One action's outcome as the tools read it."""

    ok: bool
    error_message: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    image: bytes | None = None
    display: Display | None = None  # the screen's size when the answer says it (saves a lookup)

    @classmethod
    def of(cls, r: ActionReport, display: Display | None = None) -> Done:
        return cls(r.ok, r.error_message, dict(r.outcome.result), r.outcome.image, display)

    def wire(self) -> dict[str, Any]:
        """The JSON of ``POST /computers/{id}/perform``."""
        d = self.display
        return {"ok": self.ok, "error_message": self.error_message, "result": self.result,
                "image": base64.b64encode(self.image).decode() if self.image is not None else None,
                "display": {"width": d.width, "height": d.height, "scale": d.scale} if d else None}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Done:
        d = body.get("display")
        image = body.get("image")
        return cls(bool(body.get("ok")), body.get("error_message"), dict(body.get("result") or {}),
                   base64.b64decode(image) if image else None,
                   Display(int(d["width"]), int(d["height"]), float(d.get("scale", 1.0))) if d else None)


class Computers(Protocol):
    """The caller's computers (bound to its organisation). Failures: ``ServiceError``s."""

    max_side: int  # the longest side of a screenshot image (OPENCONE_MCP_SCREENSHOT_MAX_SIDE)

    async def create(self, body: ComputerCreate) -> View: ...
    async def get(self, computer_id: str) -> View: ...
    async def list(self) -> list[View]: ...
    async def delete(self, computer_id: str) -> None: ...
    async def environments(self) -> list[dict[str, Any]]: ...
    async def display(self, computer_id: str) -> Display: ...
    async def perform(self, computer_id: str, actions: list[a.Action], tab_id: str | None = None) -> Done: ...


class LocalComputers:
    """Over the services of this process (a single server, a fleet node)."""

    def __init__(self, runtime: Runtime, org: str) -> None:
        self.rt, self.org = runtime, org
        self.max_side = runtime.settings.mcp_screenshot_max_side

    async def create(self, body: ComputerCreate) -> View:
        return View.of(await self.rt.computers.create(self.org, body.to_spec(self.rt.settings)))

    async def get(self, computer_id: str) -> View:
        return View.of(await self.rt.computers.get(self.org, computer_id))

    async def list(self) -> list[View]:
        return [View.of(v) for v in await self.rt.computers.list(self.org)]

    async def delete(self, computer_id: str) -> None:
        await self.rt.computers.delete(self.org, computer_id)

    async def environments(self) -> list[dict[str, Any]]:
        return [{"environment_id": e["id"], "kind": e["kind"], "status": e["status"], "saved_at": iso(e["saved_at"]),
                 "size_bytes": e["size_bytes"], "context_id": e["context_id"]}
                for e in await self.rt.environments.list(self.org)]

    async def display(self, computer_id: str) -> Display:
        comp = await self.rt.computers.require_live(self.org, computer_id)
        return comp.driver.display  # type: ignore[no-any-return]

    async def perform(self, computer_id: str, actions: list[a.Action], tab_id: str | None = None) -> Done:
        reports = await self.rt.computers.perform(self.org, computer_id, [Step(actions, tab_id)])
        return Done.of(reports[-1])


def local(runtime: Callable[[], Runtime], org: Callable[[], str]) -> Callable[[], Computers]:
    """The tools' ``computers`` on a server that runs its computers itself."""
    return lambda: LocalComputers(runtime(), org())
