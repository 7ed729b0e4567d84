"""The MCP tool set: every tool takes ``computer_id`` and runs through the services as REST does.

The tools see the server through ``Backend.computers`` (mcp/computers.py): the services themselves on a
single server, the replica's own REST routes on a fleet replica; one tool layer for both.

One tool set for both protocol eras: the 2026-07-28 protocol has no sessions, so nothing here is
kept per MCP session. The action tools take the arguments of the shared action schema and are
translated by it (api/wire/step.py, what ``POST /computers/{id}/step`` and ``opencone.gym`` take)
into canonical actions (core/actions.py), run by ``ComputerService.perform`` (on the computer's node, in
a fleet): the computer's
lock, its idle timer, its events and the live view see an MCP click as they see a REST one.
Every failure is a ``ToolError``, which the model reads as the tool's result ("ref e41 ... is
stale ... take a new snapshot"), never a protocol error.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ImageContent, TextContent, ToolAnnotations
from pydantic import Field, TypeAdapter, ValidationError

from opencone.api.wire.computers import ComputerCreate, DisplayIn
from opencone.api.wire.step import ToolAction
from opencone.core import actions as a
from opencone.core.errors import ServiceError
from opencone.drivers.base import Display
from opencone.mcp import images
from opencone.mcp.computers import Computers, Done, View

_ACTION: TypeAdapter[a.Action] = TypeAdapter(a.Action)
_SCHEMA: TypeAdapter[ToolAction] = TypeAdapter(ToolAction)  # the shared gym/MCP action schema

ComputerId = Annotated[str, Field(min_length=1, max_length=64, description="The computer's id (computer_create).")]
Ref = Annotated[str | None, Field(default=None, max_length=24,
                                  description="An element's ref from the latest snapshot, e.g. 'e12' (not with x,y).")]
SnapshotId = Annotated[str | None, Field(default=None, max_length=64,
                                         description="The snapshot the ref is from (default: the latest).")]
Coord = Annotated[float | None, Field(default=None, description="Pixels of the last screenshot image (not with ref).")]
ButtonArg = Annotated[Literal["left", "right", "middle"], Field(description="Mouse button.")]

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
ACTS = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True)
CLOSES = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)


@dataclass(frozen=True, slots=True)
class Backend:
    """What the tools need from the server they run in."""

    computers: Callable[[], Computers]  # the calling key's computers (mcp/computers.py)
    base_url: Callable[[], str]  # for the links a computer's view hands out
    groups: frozenset[str]  # opt-in groups this server offers (OPENCONE_MCP_GROUPS)


def _fail(message: str) -> ToolError:
    return ToolError(message)


def _invalid(exc: ValidationError) -> ToolError:
    """A canonical action's validation error in a model's terms: what was wrong, field by field."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"][1:])  # (the first is the union's tag: the action's kind)
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return _fail("; ".join(parts) or str(exc))


def _build(fields: dict[str, Any]) -> a.Action:
    try:
        return _ACTION.validate_python(fields)
    except ValidationError as exc:
        raise _invalid(exc) from None


class Tools:
    """The tools of one MCP server, bound to a ``Backend``."""

    def __init__(self, backend: Backend) -> None:
        self.b = backend

    # -- plumbing ---------------------------------------------------------------------------
    async def _guard(self, work: Awaitable[Any]) -> Any:
        """Service failures (no such computer, terminated, bad input) as tool errors."""
        try:
            return await work
        except ServiceError as exc:
            raise _fail(exc.message) from None

    async def _display(self, computer_id: str) -> Display:
        return await self._guard(self.b.computers().display(computer_id))  # type: ignore[no-any-return]

    def _scale(self, display: Display) -> float:
        return images.scale_for(display, self.b.computers().max_side)

    async def _run(self, computer_id: str, actions: list[a.Action], tab_id: str | None = None) -> Done:
        report: Done = await self._guard(self.b.computers().perform(computer_id, actions, tab_id))
        if not report.ok:
            raise _fail(report.error_message or "the action failed")
        return report

    def _view(self, v: View) -> dict[str, Any]:
        d = v.display
        scale = self._scale(d)
        out: dict[str, Any] = {
            "computer_id": v.id, "kind": v.kind, "status": v.status,
            "display": {"width": d.pixel_width, "height": d.pixel_height},
            "screenshot_size": {"width": round(d.pixel_width * scale), "height": round(d.pixel_height * scale),
                                "scale": round(scale, 6)},
            "persistent": v.persistent, "environment_id": v.environment_id,
            "created_at": v.created_at, "expires_at": v.expires_at, "idle_expires_at": v.idle_expires_at,
        }
        if v.status == "terminated":
            out["termination_reason"] = v.termination_reason
        else:
            out["live_view"] = f"{self.b.base_url()}/live#{v.id}"
        return out

    @staticmethod
    def _done(what: str, report: Done, extra: dict[str, Any] | None = None) -> str:
        result = dict(report.result)
        result.update(extra or {})
        return f"{what}: done" + (f" {json.dumps(result, default=str)}" if result else "")

    # -- lifecycle --------------------------------------------------------------------------
    async def computer_create(
        self,
        kind: Annotated[Literal["browser", "desktop"], Field(description="A Chromium browser or an X11 desktop.")]
        = "browser",
        environment_id: Annotated[str | None, Field(default=None, max_length=64,
                                                    description="Restore a saved environment (environment_list).")]
        = None,
        persistent: Annotated[bool, Field(description="Save the computer's state as an environment when it ends.")]
        = False,
        proxy: Annotated[str | None, Field(default=None, max_length=2048,
                                           description="Route its traffic through this http(s):// or socks5:// "
                                                       "proxy URL.")] = None,
        width: Annotated[int | None, Field(default=None, ge=200, le=3840, description="Screen width.")] = None,
        height: Annotated[int | None, Field(default=None, ge=200, le=2160, description="Screen height.")] = None,
        start_url: Annotated[str | None, Field(default=None, max_length=8192, description="Open this URL.")] = None,
        max_lifetime_seconds: Annotated[int | None, Field(default=None, ge=1)] = None,
        inactivity_timeout_seconds: Annotated[int | None, Field(default=None, ge=1)] = None,
    ) -> str:
        """Create a computer (a browser or a desktop) and return its computer_id: pass it to every other tool."""
        computers = self.b.computers()
        if start_url is not None:
            start = _build({"kind": "navigate", "url": start_url})  # refused before anything starts
        if proxy is not None:
            change = _build({"kind": "change_proxy", "proxy_url": proxy})
        try:  # the REST create body's own checks
            display = DisplayIn(width=width, height=height) if width or height else None
            body = ComputerCreate(kind=kind, environment_id=environment_id, persistent=persistent, display=display,
                                  max_lifetime_seconds=max_lifetime_seconds,
                                  inactivity_timeout_seconds=inactivity_timeout_seconds)
        except ValidationError as exc:
            raise _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
        view = await self._guard(computers.create(body))
        try:
            if proxy is not None:
                await self._run(view.id, [change])
            if start_url is not None:
                await self._run(view.id, [start])
        except BaseException as exc:  # no computer half made: closed, and the reason said
            await asyncio.shield(self._guard(computers.delete(view.id)))
            if isinstance(exc, ToolError):
                raise _fail(f"the computer was closed again: {exc}") from None
            raise
        return json.dumps(self._view(await self._guard(computers.get(view.id))))

    async def computer_list(self) -> str:
        """The live computers of this API key's organisation."""
        views = await self._guard(self.b.computers().list())
        return json.dumps([self._view(v) for v in views])

    async def computer_get(self, computer_id: ComputerId) -> str:
        """One computer: its status, screen size, the screenshot scale, its deadlines."""
        return json.dumps(self._view(await self._guard(self.b.computers().get(computer_id))))

    async def computer_close(self, computer_id: ComputerId) -> str:
        """End a computer (a persistent one is saved as an environment first)."""
        await self._guard(self.b.computers().delete(computer_id))
        return f"computer {computer_id} closed"

    async def environment_list(self) -> str:
        """Saved environments (from persistent computers) that computer_create can restore."""
        return json.dumps(await self._guard(self.b.computers().environments()))

    # -- observation ------------------------------------------------------------------------
    async def screenshot(self, computer_id: ComputerId) -> list[TextContent | ImageContent]:
        """The screen as a JPEG. Pointer tools take x,y in pixels of this image (its scale is stated)."""
        report = await self._run(computer_id, [a.Screenshot()])
        jpeg = report.image
        if jpeg is None:
            raise _fail("the computer returned no screenshot")
        display = report.display or await self._display(computer_id)
        max_side = self.b.computers().max_side
        if images.scale_for(display, max_side) == 1.0 and len(jpeg) <= images.MAX_IMAGE_BYTES:
            fitted = images.fit(jpeg, display, max_side)  # nothing to decode: no thread hop
        else:
            fitted = await asyncio.to_thread(images.fit, jpeg, display, max_side)
        note = (f"screenshot {fitted.width}x{fitted.height} px (scale {fitted.scale:.4g} of the "
                f"{display.pixel_width}x{display.pixel_height} screen); x,y of pointer tools are pixels of this image")
        return [ImageContent(type="image", data=base64.b64encode(fitted.jpeg).decode(), mime_type="image/jpeg"),
                TextContent(type="text", text=note)]

    async def snapshot(
        self, computer_id: ComputerId,
        interactive_only: Annotated[bool, Field(description="Only elements one can act on, as a flat list.")]
        = False,
        viewport_only: Annotated[bool, Field(description="Only what is inside the viewport.")] = False,
        max_chars: Annotated[int, Field(ge=200, le=200_000, description="Cut the text at this length.")] = 40_000,
    ) -> str:
        """The page's elements with [ref=eN] refs (Playwright's aria snapshot): act on them with ref."""
        report = await self._run(computer_id, [a.Snapshot(interactive_only=interactive_only,
                                                          viewport_only=viewport_only, max_chars=max_chars)])
        r = report.result
        head = f"snapshot {r.get('snapshot_id')} of {r.get('url')} ({r.get('title')!r}), tab {r.get('tab_id')}"
        if r.get("truncated"):
            head += " [truncated: use interactive_only, viewport_only or a larger max_chars]"
        return head + "\n" + str(r.get("snapshot", ""))

    async def read_page(
        self, computer_id: ComputerId,
        max_chars: Annotated[int, Field(ge=200, le=400_000, description="Cut the text at this length.")] = 60_000,
    ) -> str:
        """The page's main content as markdown."""
        report = await self._run(computer_id, [a.Markdown(max_chars=max_chars)])
        r = report.result
        return f"# {r.get('title', '')} ({r.get('url', '')})\n\n{r.get('markdown', '')}"

    # -- the shared action schema (api/wire/step.py: what gym steps take) ------------------
    async def _act(self, computer_id: str, name: str, **args: Any) -> Done:
        """The action ``{"action": name, **args}`` of the shared schema, its x,y mapped from the
        screenshot image's pixels to the screen's, translated by that schema and run."""
        given = {k: v for k, v in args.items() if v is not None}
        pixels = [k for k in ("x", "y", "to_x", "to_y") if k in given]
        if pixels:
            scale = self._scale(await self._display(computer_id))
            given.update({k: images.to_screen(given[k], scale) for k in pixels})
        try:
            actions = _SCHEMA.validate_python({"action": name, **given}).canonical()
        except ValidationError as exc:
            raise _invalid(exc) from None
        except ServiceError as exc:  # (InvalidInput: what the schema refused, and why)
            raise _fail(exc.message) from None
        return await self._run(computer_id, actions)

    async def click(self, computer_id: ComputerId, ref: Ref = None, x: Coord = None, y: Coord = None,
                    button: ButtonArg = "left",
                    count: Annotated[Literal[1, 2, 3], Field(description="2: double click.")] = 1,
                    snapshot_id: SnapshotId = None) -> str:
        """Click an element (ref) or a point (x,y of the screenshot image)."""
        report = await self._act(computer_id, "click", ref=ref, x=x, y=y, button=button, count=count,
                                 snapshot_id=snapshot_id)
        return self._done("click", report)

    async def move(self, computer_id: ComputerId, ref: Ref = None, x: Coord = None, y: Coord = None,
                   snapshot_id: SnapshotId = None) -> str:
        """Move the mouse onto an element (ref: a hover) or to x,y of the screenshot image."""
        return self._done("move", await self._act(computer_id, "move", ref=ref, x=x, y=y, snapshot_id=snapshot_id))

    async def mouse_down(self, computer_id: ComputerId, ref: Ref = None, x: Coord = None, y: Coord = None,
                         button: ButtonArg = "left", snapshot_id: SnapshotId = None) -> str:
        """Press a mouse button (on an element's centre, at x,y of the screenshot image, else where the
        mouse is)."""
        return self._done("mouse_down", await self._act(computer_id, "mouse_down", ref=ref, x=x, y=y, button=button,
                                                        snapshot_id=snapshot_id))

    async def mouse_up(self, computer_id: ComputerId, ref: Ref = None, x: Coord = None, y: Coord = None,
                       button: ButtonArg = "left", snapshot_id: SnapshotId = None) -> str:
        """Release a mouse button (on an element's centre, at x,y of the screenshot image, else where the
        mouse is)."""
        return self._done("mouse_up", await self._act(computer_id, "mouse_up", ref=ref, x=x, y=y, button=button,
                                                      snapshot_id=snapshot_id))

    async def drag(self, computer_id: ComputerId, ref: Ref = None, to_ref: Ref = None, x: Coord = None,
                   y: Coord = None, to_x: Coord = None, to_y: Coord = None, snapshot_id: SnapshotId = None) -> str:
        """Drag from ref to to_ref, or from x,y to to_x,to_y (pixels of the screenshot image)."""
        report = await self._act(computer_id, "drag", ref=ref, to_ref=to_ref, x=x, y=y, to_x=to_x, to_y=to_y,
                                 snapshot_id=snapshot_id)
        return self._done("drag", report)

    async def scroll(self, computer_id: ComputerId, ref: Ref = None, x: Coord = None, y: Coord = None,
                     dx: Annotated[float, Field(description="Pixels to scroll right (negative: left).")] = 0,
                     dy: Annotated[float, Field(description="Pixels to scroll down (negative: up).")] = 0,
                     snapshot_id: SnapshotId = None) -> str:
        """Scroll over an element (ref), a point (x,y), or the middle of the screen."""
        report = await self._act(computer_id, "scroll", ref=ref, x=x, y=y, dx=dx, dy=dy, snapshot_id=snapshot_id)
        return self._done("scroll", report)

    async def type(self, computer_id: ComputerId,
                   text: Annotated[str, Field(max_length=a.MAX_TEXT, description="Text to type.")]) -> str:
        """Type text where the focus is (click or fill a field first)."""
        return self._done("type", await self._act(computer_id, "type", text=text))

    async def key(self, computer_id: ComputerId,
                  keys: Annotated[str, Field(min_length=1, max_length=200,
                                             description="A key or chord: 'Enter', 'ctrl+a', 'shift+Tab'.")]) -> str:
        """Press a key or a chord (all down in order, then up)."""
        return self._done("key", await self._act(computer_id, "key", keys=keys))

    async def key_down(self, computer_id: ComputerId,
                       key: Annotated[str, Field(min_length=1, max_length=40, description="One key: 'Shift'.")]) -> str:
        """Hold a key down (until key_up)."""
        return self._done("key_down", await self._act(computer_id, "key_down", key=key))

    async def key_up(self, computer_id: ComputerId,
                     key: Annotated[str, Field(min_length=1, max_length=40, description="One key: 'Shift'.")]) -> str:
        """Release a key held by key_down."""
        return self._done("key_up", await self._act(computer_id, "key_up", key=key))

    async def fill(self, computer_id: ComputerId,
                   ref: Annotated[str, Field(max_length=24, description="The field's ref from the snapshot.")],
                   text: Annotated[str, Field(max_length=a.MAX_TEXT, description="Its new value.")],
                   snapshot_id: SnapshotId = None) -> str:
        """Replace a text field's value."""
        return self._done("fill", await self._act(computer_id, "fill", ref=ref, text=text, snapshot_id=snapshot_id))

    async def select_option(self, computer_id: ComputerId,
                            ref: Annotated[str, Field(max_length=24, description="The <select>'s ref.")],
                            values: Annotated[list[str], Field(min_length=1, max_length=100,
                                                               description="Option values or labels.")],
                            snapshot_id: SnapshotId = None) -> str:
        """Choose options of a <select> by value or label."""
        report = await self._act(computer_id, "select_option", ref=ref, values=values, snapshot_id=snapshot_id)
        return self._done("select_option", report)

    async def navigate(self, computer_id: ComputerId,
                       url: Annotated[str | None, Field(default=None, max_length=8192, description="http(s) URL.")]
                       = None,
                       direction: Annotated[Literal["back", "forward", "reload"] | None, Field(default=None)] = None,
                       ) -> str:
        """Open a URL, or go back, forward, or reload."""
        return self._done("navigate", await self._act(computer_id, "navigate", url=url, direction=direction))

    async def tabs(self, computer_id: ComputerId,
                   op: Annotated[Literal["list", "new", "switch", "close"], Field(description="What to do.")]
                   = "list",
                   tab_id: Annotated[str | None, Field(default=None, max_length=128,
                                                       description="For switch and close.")] = None,
                   url: Annotated[str | None, Field(default=None, max_length=8192, description="For new.")] = None,
                   ) -> str:
        """List the browser's tabs, open one, switch to one or close one."""
        report = await self._act(computer_id, "tabs", op=op, tab_id=tab_id, url=url)
        return json.dumps(report.result)

    async def wait(self, computer_id: ComputerId,
                   ms: Annotated[int, Field(ge=0, le=a.MAX_WAIT_MS, description="Milliseconds.")]) -> str:
        """Wait, holding the computer (its idle timer is reset)."""
        return self._done("wait", await self._act(computer_id, "wait", ms=ms))

    # -- opt-in groups ----------------------------------------------------------------------
    async def exec(self, computer_id: ComputerId,
                   command: Annotated[str, Field(min_length=1, max_length=100_000, description="A shell command.")],
                   timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 120) -> str:
        """Run a shell command in the computer's sandbox (its /workspace); output and exit code."""
        report = await self._run(computer_id, [_build({"kind": "run_command", "command": command,
                                                       "timeout_seconds": timeout_seconds})])
        r = report.result
        return json.dumps({"exit_code": r.get("exit_code"), "stdout": r.get("stdout"), "stderr": r.get("stderr"),
                           "truncated": r.get("truncated")})

    async def evaluate(self, computer_id: ComputerId,
                       expression: Annotated[str, Field(min_length=1, max_length=a.MAX_TEXT,
                                                        description="A JavaScript expression, or a function's "
                                                                    "source (called with no argument).")],
                       max_chars: Annotated[int, Field(ge=100, le=200_000)] = 20_000) -> str:
        """Run JavaScript in the current tab's page; its result as JSON."""
        report = await self._run(computer_id, [_build({"kind": "evaluate", "expression": expression,
                                                       "max_chars": max_chars})])
        r = report.result
        return str(r.get("result")) + (" [truncated]" if r.get("truncated") else "")


# (name, group or None for always, annotations)
TOOLS: list[tuple[str, str | None, ToolAnnotations]] = [
    ("computer_create", None, ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)),
    ("computer_list", None, READ_ONLY), ("computer_get", None, READ_ONLY), ("computer_close", None, CLOSES),
    ("environment_list", None, READ_ONLY),
    ("screenshot", None, READ_ONLY), ("snapshot", None, READ_ONLY), ("read_page", None, READ_ONLY),
    ("click", None, ACTS), ("move", None, ACTS), ("mouse_down", None, ACTS), ("mouse_up", None, ACTS),
    ("drag", None, ACTS), ("scroll", None, ACTS), ("type", None, ACTS), ("key", None, ACTS),
    ("key_down", None, ACTS), ("key_up", None, ACTS), ("fill", None, ACTS), ("select_option", None, ACTS),
    ("navigate", None, ACTS), ("tabs", None, ACTS),
    ("wait", None, ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)),
    ("exec", "exec", ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=True)),
    ("evaluate", "evaluate", ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=True)),
]


def register(server: MCPServer, backend: Backend) -> list[str]:
    """Add the tools ``backend.groups`` allows to ``server``; their names."""
    tools = Tools(backend)
    names = []
    for name, group, hints in TOOLS:
        if group is not None and group not in backend.groups:
            continue
        server.add_tool(getattr(tools, name), name=name, annotations=hints, structured_output=False)
        names.append(name)
    return names
