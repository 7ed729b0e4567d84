"""The shared action schema of gym steps (and the MCP tools), and the step endpoint's body.

An action is ``{"action": <name>, **args}``; its target is either ``ref`` (an element of a
snapshot, with an optional ``snapshot_id``) or pixels ``x``/``y`` of the screenshot. Each
model here is strict (an unknown field is a 422 naming it) and turns into canonical actions
(core/actions.py) with ``canonical()``; the ranges are checked there, once, for every dialect.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from opencone.api.wire import actions as w
from opencone.core import actions as a
from opencone.core.errors import InvalidInput

Button = Literal["left", "right", "middle"]
_REF = Field(default=None, max_length=24, description="An element of a snapshot (`e5`, `f1e3`), instead of x/y.")
_SNAP = Field(default=None, max_length=64, description="The snapshot `ref` is from; the tab's latest if left out.")
OBSERVE = ("screenshot", "snapshot", "url", "tabs")  # what a step can return beside its action's result


class _Tool(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def canonical(self) -> list[a.Action]:  # pragma: no cover - every subclass has its own
        raise NotImplementedError


class _Target(_Tool):
    ref: str | None = _REF
    snapshot_id: str | None = _SNAP
    x: float | None = None
    y: float | None = None

    def _where(self, required: bool) -> dict[str, Any]:
        """``element`` or ``at`` for the canonical action; a 422 unless exactly one is given."""
        has_point = self.x is not None or self.y is not None
        if self.ref is not None and has_point:
            raise InvalidInput(f"{self._name()}: give either ref or x, y, not both", field="action")
        if self.ref is not None:
            return {"element": w.element(self.ref, self.snapshot_id)}
        if has_point:
            if self.x is None or self.y is None:
                raise InvalidInput(f"{self._name()}: x and y go together", field="action")
            return {"at": {"x": self.x, "y": self.y}}
        if required:
            raise InvalidInput(f"{self._name()}: a target is required: ref (from a snapshot) or x, y "
                               "(pixels of the screenshot)", field="action")
        return {}

    def _name(self) -> str:
        return str(getattr(self, "action", "action"))


class ClickTool(_Target):
    action: Literal["click"]
    button: Button = "left"
    count: Literal[1, 2, 3] = 1

    def canonical(self) -> list[a.Action]:
        return [w.build("action", {"kind": "click", **self._where(True), "button": self.button,
                                   "count": self.count})]


class MoveTool(_Target):
    """Onto an element (a hover) or to a point."""

    action: Literal["move"]

    def canonical(self) -> list[a.Action]:
        return [w.build("action", {"kind": "move", **self._where(True)})]


class MouseDownTool(_Target):
    action: Literal["mouse_down"]
    button: Button = "left"

    def canonical(self) -> list[a.Action]:
        return [w.build("action", {"kind": "mouse_down", **self._where(False), "button": self.button})]


class MouseUpTool(_Target):
    action: Literal["mouse_up"]
    button: Button = "left"

    def canonical(self) -> list[a.Action]:
        return [w.build("action", {"kind": "mouse_up", **self._where(False), "button": self.button})]


class DragTool(_Target):
    action: Literal["drag"]
    to_ref: str | None = Field(default=None, max_length=24)
    to_x: float | None = None
    to_y: float | None = None

    def canonical(self) -> list[a.Action]:
        if self.ref is not None or self.to_ref is not None:
            if self.ref is None or self.to_ref is None or self.x is not None or self.to_x is not None:
                raise InvalidInput("drag: by elements it takes ref and to_ref (and no pixels)", field="action")
            return [w.build("action", {"kind": "drag", "element": w.element(self.ref, self.snapshot_id),
                                       "to_element": w.element(self.to_ref, self.snapshot_id)})]
        if None in (self.x, self.y, self.to_x, self.to_y):
            raise InvalidInput("drag: x, y, to_x and to_y are required (or ref and to_ref)", field="action")
        return [w.build("action", {"kind": "drag", "path": [{"x": self.x, "y": self.y},
                                                            {"x": self.to_x, "y": self.to_y}]})]


class ScrollTool(_Target):
    action: Literal["scroll"]
    dx: float = 0
    dy: float = 0

    def canonical(self) -> list[a.Action]:
        return [w.build("action", {"kind": "scroll", **self._where(False), "dx": self.dx, "dy": self.dy})]


class TypeTool(_Tool):
    action: Literal["type"]
    text: str = Field(max_length=a.MAX_TEXT)

    def canonical(self) -> list[a.Action]:
        return [w.build("action", {"kind": "type", "text": self.text})]


class KeyTool(_Tool):
    action: Literal["key"]
    keys: str | list[str] = Field(description='A chord: "Enter", "ctrl+a", or a list of key names.')

    def canonical(self) -> list[a.Action]:
        keys = self.keys if isinstance(self.keys, list) else _chord(self.keys)
        return [w.build("action", {"kind": "press_keys", "keys": keys})]


def _chord(text: str) -> list[str]:
    """``ctrl+shift+t`` -> its keys; a lone ``+`` (or one ending a chord: ``ctrl++``) is the plus key."""
    text = text.strip()
    if not text:
        raise InvalidInput("key: keys must name at least one key", field="action.keys")
    parts = text.split("+")
    keys = [p.strip() for p in parts if p.strip()]
    if text.endswith("+"):
        keys.append("+")
    return keys


class KeyDownTool(_Tool):
    action: Literal["key_down"]
    key: str = Field(max_length=64)

    def canonical(self) -> list[a.Action]:
        return [w.build("action", {"kind": "key_down", "key": self.key})]


class KeyUpTool(_Tool):
    action: Literal["key_up"]
    key: str = Field(max_length=64)

    def canonical(self) -> list[a.Action]:
        return [w.build("action", {"kind": "key_up", "key": self.key})]


class FillTool(_Tool):
    action: Literal["fill"]
    ref: str = Field(max_length=24)
    snapshot_id: str | None = _SNAP
    text: str = Field(max_length=a.MAX_TEXT)

    def canonical(self) -> list[a.Action]:
        return [w.build("action", {"kind": "fill", "element": w.element(self.ref, self.snapshot_id),
                                   "text": self.text})]


class SelectOptionTool(_Tool):
    action: Literal["select_option"]
    ref: str = Field(max_length=24)
    snapshot_id: str | None = _SNAP
    values: list[str] = Field(min_length=1, max_length=100)

    def canonical(self) -> list[a.Action]:
        return [w.build("action", {"kind": "select_option", "element": w.element(self.ref, self.snapshot_id),
                                   "values": self.values})]


class NavigateTool(_Tool):
    action: Literal["navigate"]
    url: str | None = Field(default=None, max_length=8192)
    direction: Literal["back", "forward", "reload"] | None = None

    @model_validator(mode="after")
    def _one(self) -> NavigateTool:
        if (self.url is None) == (self.direction is None):
            raise ValueError("navigate takes url or direction (back, forward, reload), exactly one")
        return self

    def canonical(self) -> list[a.Action]:
        if self.url is not None:
            return [w.build("action", {"kind": "navigate", "url": self.url})]
        return [w.build("action", {"kind": "history", "op": self.direction})]


class TabsTool(_Tool):
    action: Literal["tabs"]
    op: Literal["list", "new", "switch", "close"] = "list"
    tab_id: str | None = Field(default=None, max_length=128)
    url: str | None = Field(default=None, max_length=8192)

    def canonical(self) -> list[a.Action]:
        if self.op in ("switch", "close") and not self.tab_id:
            raise InvalidInput(f"tabs: op {self.op} needs tab_id (see op list)", field="action.tab_id")
        match self.op:
            case "list":
                return [w.build("action", {"kind": "list_tabs"})]
            case "new":
                return [w.build("action", {"kind": "new_tab", "url": self.url})]
            case "switch":
                return [w.build("action", {"kind": "switch_tab", "tab_id": self.tab_id})]
        return [w.build("action", {"kind": "close_tab", "tab_id": self.tab_id})]


class WaitTool(_Tool):
    action: Literal["wait"]
    ms: int = Field(default=1000, ge=0, le=a.MAX_WAIT_MS)

    def canonical(self) -> list[a.Action]:
        return [w.build("action", {"kind": "wait", "ms": self.ms})]


class ReadPageTool(_Tool):
    action: Literal["read_page"]

    def canonical(self) -> list[a.Action]:
        return [w.build("action", {"kind": "markdown"})]


class ScreenshotTool(_Tool):
    action: Literal["screenshot"]

    def canonical(self) -> list[a.Action]:
        return [w.build("action", {"kind": "screenshot"})]


class SnapshotTool(_Tool):
    action: Literal["snapshot"]
    interactive_only: bool = False
    max_chars: int = Field(default=50_000, ge=200, le=a.MAX_SNAPSHOT_CHARS)

    def canonical(self) -> list[a.Action]:
        return [w.build("action", {"kind": "snapshot", "interactive_only": self.interactive_only,
                                   "max_chars": self.max_chars})]


ToolAction = Annotated[
    ClickTool | MoveTool | MouseDownTool | MouseUpTool | DragTool | ScrollTool | TypeTool | KeyTool
    | KeyDownTool | KeyUpTool | FillTool | SelectOptionTool | NavigateTool | TabsTool | WaitTool
    | ReadPageTool | ScreenshotTool | SnapshotTool,
    Field(discriminator="action"),
]
ACTION_NAMES = ("click", "move", "mouse_down", "mouse_up", "drag", "scroll", "type", "key", "key_down", "key_up",
                "fill", "select_option", "navigate", "tabs", "wait", "read_page", "screenshot", "snapshot")

Observe = Literal["screenshot", "snapshot", "url", "tabs"]


class StepBody(BaseModel):
    """One action of the shared schema, and what to observe after it, in one round trip."""

    model_config = ConfigDict(extra="forbid")
    action: ToolAction | None = Field(default=None, description="The action; none: only observe.")
    observe: list[Observe] = Field(default_factory=lambda: ["screenshot", "snapshot", "url", "tabs"],
                                   max_length=4, description="What to return after the action.")
    interactive_only: bool = Field(default=False, description="The snapshot lists only elements one can act on.")
    snapshot_max_chars: int = Field(default=50_000, ge=200, le=a.MAX_SNAPSHOT_CHARS)
    tab_id: str | None = Field(default=None, max_length=128)
    request_id: str | None = Field(default=None, max_length=128)


class StepTabs(BaseModel):
    tab_id: str
    url: str
    title: str
    is_main: bool


class StepResult(BaseModel):
    """What ``POST /computers/{id}/step`` answers (HTTP 200 whether the action succeeded or not)."""

    status: Literal["success", "error"]
    last_action_error: str | None = Field(description="Why the action failed, for the agent to read; null if it ran.")
    result: dict[str, Any] = Field(description="The action's own result (a snapshot's text, tabs, markdown…).")
    screenshot: str | None = Field(default=None, description="JPEG, base64 (no data: prefix).")
    width: int | None = Field(default=None, description="The screenshot's pixel width.")
    height: int | None = Field(default=None, description="The screenshot's pixel height.")
    snapshot: str | None = Field(default=None, description="The element snapshot, `[ref=eN]` text.")
    snapshot_id: str | None = None
    snapshot_error: str | None = Field(default=None, description="Why no snapshot could be taken.")
    url: str | None = None
    title: str | None = None
    tabs: list[StepTabs] | None = None
    active_tab_id: str | None = None
    request_id: str
    action_ms: float = Field(description="Server time the action took.")
    observe_ms: float = Field(description="Server time the observation took.")
