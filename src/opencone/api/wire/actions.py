"""Action dialects on the wire, and their translation to canonical actions.

Three dialects arrive here: the bodies of the Lightcone action endpoints
(``/click``, ``/type``…), the ``ComputerAction`` objects of ``/execute`` and
``/batch``, and the OpenAI computer-use actions that SDK users pass straight to
``batch`` (``point_and_type``, ``move``, ``keypress.keys``, ``scroll_x``,
``drag.path``, ``wait`` without ``ms``). All become ``opencone.core.actions``.

Our extensions (core/perception.py): every pointer and typing action takes
``ref`` (with an optional ``snapshot_id``) instead of ``x``/``y``, drags take
``ref`` and ``to_ref``, and ``fill``, ``select_option``, ``snapshot`` and
``markdown`` are actions of their own; ``upload_file`` puts a file of the computer's
(``path`` in its downloads or workspace, ``dir``) into a file input at ``x``/``y`` or ``ref``.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from typing import Any, Literal

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic_core import InitErrorDetails

from opencone.api.json_body import valid_text
from opencone.core import actions as a
from opencone.core.clock import iso
from opencone.core.computers import ActionReport
from opencone.core.errors import InvalidInput
from opencone.core.files import FileStore

ACTION_TYPES = (
    "click", "double_click", "right_click", "drag", "type", "keypress", "scroll", "wait", "screenshot",
    "go_to_url", "debug", "get_html_content", "set_viewport", "list_tabs", "new_tab", "switch_tab",
    "close_tab", "key_down", "key_up", "mouse_down", "mouse_up",
    # OpenAI computer-use actions that SDK users pass to batch as they come from the model
    "point_and_type", "move",
    # ours: on elements of a snapshot (core/perception.py), and the page as a snapshot or markdown
    "fill", "select_option", "snapshot", "markdown", "upload_file",
)
DEFAULT_WAIT_MS = 1000
_SMALL = 64  # (a list this short is cheaper to walk than to serialize)
_BUTTONS = {"left": "left", "right": "right", "middle": "middle", "wheel": "middle",
            "back": "back", "forward": "forward"}

_canonical: TypeAdapter[a.Action] = TypeAdapter(a.Action)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tab_id: str | None = None
    include_context: bool = False
    request_id: str | None = None


_REF = Field(default=None, max_length=64, description="An element of a snapshot (`e5`, `f1e3`), instead of x/y.")
_SNAPSHOT_ID = Field(default=None, max_length=64,
                     description="The snapshot `ref` is from; the tab's latest when left out.")


def _missing(model: str, data: Any, names: list[str]) -> ValidationError:
    """A 'Field required' error on each name, as if they were required fields."""
    return ValidationError.from_exception_data(
        model, [InitErrorDetails(type="missing", loc=(name,), input=data) for name in names])


class PointBody(_Body):
    """``x``/``y`` in screenshot pixels, or ``ref`` (an element of a snapshot)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"anyOf": [{"required": ["x", "y"]},
                                                                          {"required": ["ref"]}]})
    x: float | None = None
    y: float | None = None
    ref: str | None = _REF
    snapshot_id: str | None = _SNAPSHOT_ID

    @model_validator(mode="after")
    def _point_or_ref(self) -> PointBody:
        if self.ref is None and (self.x is None or self.y is None):
            raise _missing(type(self).__name__, self.model_dump(include={"x", "y"}),
                           [k for k in ("x", "y") if getattr(self, k) is None])
        return self


class DragBody(_Body):
    """From ``x1``/``y1`` to ``x2``/``y2``, or from the element ``ref`` onto ``to_ref``."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"anyOf": [
        {"required": ["x1", "y1", "x2", "y2"]}, {"required": ["ref", "to_ref"]}]})
    x1: float | None = None
    y1: float | None = None
    x2: float | None = None
    y2: float | None = None
    ref: str | None = _REF
    to_ref: str | None = Field(default=None, max_length=64, description="The element to drop on (with `ref`).")
    snapshot_id: str | None = _SNAPSHOT_ID

    @model_validator(mode="after")
    def _points_or_refs(self) -> DragBody:
        if self.ref is None and self.to_ref is None:
            missing = [k for k in ("x1", "y1", "x2", "y2") if getattr(self, k) is None]
            if missing:
                raise _missing(type(self).__name__, self.model_dump(include=set(missing)), missing)
        return self


class TypeBody(_Body):
    text: str
    ref: str | None = Field(default=None, max_length=64, description="Click this element of a snapshot first.")
    snapshot_id: str | None = _SNAPSHOT_ID


class FillBody(_Body):
    """Replace the value of the field ``ref`` with ``text``."""

    ref: str = Field(max_length=64)
    text: str
    snapshot_id: str | None = _SNAPSHOT_ID


class SelectBody(_Body):
    """Select, in the ``<select>`` ``ref``, the options whose value or label is one of ``values``."""

    ref: str = Field(max_length=64)
    values: list[str] | None = None
    value: str | None = Field(default=None, description="One value: the same as `values: [value]`.")
    snapshot_id: str | None = _SNAPSHOT_ID


class UploadFileBody(PointBody):
    """Put the computer's file ``path`` (in ``dir``) into the file input at ``x``/``y`` or ``ref``."""

    path: str = Field(max_length=1024, description="A file of the computer's, relative to `dir` "
                                                    "(put there by `PUT /computers/{id}/files/{path}` or a download).")
    dir: Literal["downloads", "workspace"] | None = Field(
        default=None,
        description="`downloads` or `workspace`; a browser's default is downloads, a desktop's workspace.")


class SnapshotBody(_Body):
    """An element snapshot of the tab: Playwright's `[ref=eN]` text (``format: "text"``) or JSON."""

    format: Literal["text", "json"] = "text"
    interactive_only: bool = False
    viewport_only: bool = False
    max_chars: int = Field(default=50_000, ge=200, le=a.MAX_SNAPSHOT_CHARS)
    boxes: bool = Field(default=False, description="The text form with each element's box (screenshot pixels).")


class MarkdownBody(_Body):
    """The page as markdown."""

    main_only: bool = True
    links: bool = True
    images: bool = False
    max_chars: int = Field(default=200_000, ge=200, le=a.MAX_MARKDOWN_CHARS)


class HotkeyBody(_Body):
    keys: list[str]


class KeyBody(_Body):
    key: str


class ScrollBody(_Body):
    dx: float = 0
    dy: float = 0
    x: float | None = None
    y: float | None = None
    ref: str | None = Field(default=None, max_length=64, description="Scroll over this element (into view first).")
    snapshot_id: str | None = _SNAPSHOT_ID


class NavigateBody(_Body):
    url: str


class ScreenshotBody(_Body):
    base64: bool = False


class HtmlBody(_Body):
    auto_detect_encoding: bool = False


class ViewportBody(_Body):
    width: int
    height: int
    scale_factor: float = 1.0


class DebugBody(_Body):
    command: str
    timeout_seconds: float = 120
    max_output_length: int = 65536


class ProxyBody(_Body):
    proxy_url: str | None = None


class PathPoint(BaseModel):
    x: float
    y: float


class DebugSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")
    command: str | None = None
    cwd: str | None = None
    env: dict[str, str] | None = None
    max_output_length: int | None = None
    timeout_seconds: float | None = None
    request_id: str | None = None
    stream: bool | None = None


class ComputerAction(BaseModel):
    """One element of ``/batch`` ``actions`` or ``/execute`` ``action``."""

    model_config = ConfigDict(extra="ignore")

    type: Literal[ACTION_TYPES]  # type: ignore[valid-type]
    x: float | None = None
    y: float | None = None
    x1: float | None = None
    y1: float | None = None
    x2: float | None = None
    y2: float | None = None
    button: str | None = None
    path: list[PathPoint] | str | None = None  # a drag's points; upload_file's file
    dx: float | None = None
    dy: float | None = None
    scroll_x: float | None = None
    scroll_y: float | None = None
    text: str | None = None
    keys: list[str] | None = None
    key: str | None = None
    url: str | None = None
    tab_id: str | None = None
    ms: int | None = None
    settle_ms: int | None = None
    width: int | None = None
    height: int | None = None
    scale_factor: float | None = None
    base64: bool | None = None
    include_context: bool | None = None
    auto_detect_encoding: bool | None = None
    proxy_url: str | None = None
    debug: DebugSpec | None = None
    command: str | None = None
    timeout_seconds: float | None = None
    max_output_length: int | None = None
    # ours: elements of a snapshot, and the snapshot and markdown actions
    ref: str | None = None
    to_ref: str | None = None
    snapshot_id: str | None = None
    values: list[str] | None = None
    value: str | None = None
    format: str | None = None
    interactive_only: bool | None = None
    viewport_only: bool | None = None
    max_chars: int | None = None
    boxes: bool | None = None
    main_only: bool | None = None
    links: bool | None = None
    images: bool | None = None
    dir: str | None = None


class ExecuteBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    action: ComputerAction
    include_context: bool = False
    request_id: str | None = None


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    actions: list[ComputerAction] = Field(min_length=1, max_length=500)
    include_context: bool = False
    request_id: str | None = None


class ActionResult(BaseModel):
    """What every action endpoint answers: HTTP 200 whether the action worked or not (``status``)."""

    model_config = ConfigDict(extra="allow")
    status: Literal["success", "error"]
    error_message: str | None
    result: dict[str, Any] = Field(description="The action's output: `screenshot_url`, `html_content`, `tabs`…")
    timestamp: str
    request_id: str | None
    executed_tab_id: str | None
    page_context: dict[str, Any] | None = None


class BatchResult(BaseModel):
    """``/batch``: every result up to the first error."""

    status: Literal["success", "error"]
    error_message: str | None
    results: list[ActionResult]
    completed: int
    total: int
    request_id: str | None


def build(where: str, data: dict[str, Any]) -> a.Action:
    """Validate a canonical action; a failure names the wire field it came from."""
    try:
        return _canonical.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if p not in (data.get("kind"),))
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise InvalidInput(f"{where}{'.' + loc if loc else ''}: {msg}", field=where) from None


def _need(where: str, **values: Any) -> None:
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise InvalidInput(f"{where}: {', '.join(missing)} required for this action", field=where)


def _point(x: float | None, y: float | None) -> dict[str, float] | None:
    return None if x is None or y is None else {"x": x, "y": y}


def element(ref: str | None, snapshot_id: str | None = None) -> dict[str, str] | None:
    """A canonical ``Element`` for a wire ``ref`` (None without one)."""
    if ref is None:
        return None
    return {"ref": ref, "snapshot_id": snapshot_id} if snapshot_id is not None else {"ref": ref}


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _button(where: str, raw: str | None, default: str = "left") -> str:
    if raw is None:
        return default
    found = _BUTTONS.get(raw.lower())
    if found is None:
        raise InvalidInput(f"{where}.button: {raw!r} is not a button; allowed: {', '.join(_BUTTONS)}")
    return found


def translate(act: ComputerAction, where: str = "action") -> tuple[list[a.Action], str | None]:
    """Canonical actions for one ``ComputerAction``, and the tab it targets."""
    t = act.type
    tab = act.tab_id
    el = element(act.ref, act.snapshot_id)
    match t:
        case "click" | "double_click" | "right_click":
            if el is None:
                _need(where, x=act.x, y=act.y)
            button = "right" if t == "right_click" else _button(where, act.button)
            return [build(where, {"kind": "click", "at": None if el else _point(act.x, act.y), "element": el,
                                  "button": button, "count": 2 if t == "double_click" else 1})], tab
        case "move":
            _need(where, x=act.x, y=act.y)
            return [build(where, {"kind": "move", "at": _point(act.x, act.y)})], tab
        case "mouse_down" | "mouse_up":
            return [build(where, {"kind": t, "at": _point(act.x, act.y),
                                  "button": _button(where, act.button)})], tab
        case "drag" if act.ref is not None or act.to_ref is not None:
            _need(where, ref=act.ref, to_ref=act.to_ref)
            return [build(where, {"kind": "drag", "element": el, "to_element": element(act.to_ref, act.snapshot_id),
                                  "button": _button(where, act.button)})], tab
        case "drag":
            if isinstance(act.path, str):
                raise InvalidInput(f"{where}.path: a drag's path is a list of points ({{x, y}})", field=where)
            if act.path:
                path = [{"x": p.x, "y": p.y} for p in act.path]
            else:
                _need(where, x1=act.x1, y1=act.y1, x2=act.x2, y2=act.y2)
                path = [_point(act.x1, act.y1), _point(act.x2, act.y2)]
            return [build(where, {"kind": "drag", "path": path, "button": _button(where, act.button)})], tab
        case "type" | "point_and_type":
            _need(where, text=act.text)
            at = _point(act.x, act.y) if t == "point_and_type" and el is None else None
            if t == "point_and_type" and el is None:
                _need(where, x=act.x, y=act.y)
            return [build(where, {"kind": "type", "text": act.text, "at": at, "element": el})], tab
        case "fill":
            _need(where, ref=act.ref, text=act.text)
            return [build(where, {"kind": "fill", "element": el, "text": act.text})], tab
        case "select_option":
            values = act.values if act.values is not None else ([act.value] if act.value is not None else None)
            _need(where, ref=act.ref, values=values)
            return [build(where, {"kind": "select_option", "element": el, "values": values})], tab
        case "upload_file":
            if not isinstance(act.path, str):
                raise InvalidInput(f"{where}.path: upload_file needs path, the name of a file of the computer's "
                                   "(in dir: downloads or workspace)", field=where)
            if el is None:
                _need(where, x=act.x, y=act.y)
            return [build(where, {"kind": "upload_file", "path": act.path, "dir": act.dir, "element": el,
                                  "at": None if el else _point(act.x, act.y)})], tab
        case "snapshot":
            return [build(where, {"kind": "snapshot", **_given(
                format=act.format, interactive_only=act.interactive_only, viewport_only=act.viewport_only,
                max_chars=act.max_chars, boxes=act.boxes)})], tab
        case "markdown":
            return [build(where, {"kind": "markdown", **_given(
                main_only=act.main_only, links=act.links, images=act.images, max_chars=act.max_chars)})], tab
        case "keypress":
            keys = act.keys if act.keys is not None else ([act.key] if act.key else None)
            _need(where, keys=keys)
            return [build(where, {"kind": "press_keys", "keys": keys})], tab
        case "key_down" | "key_up":
            keys = [act.key] if act.key else (act.keys or None)
            _need(where, key=keys)
            assert keys is not None
            ordered = keys if t == "key_down" else list(reversed(keys))
            return [build(where, {"kind": t, "key": k}) for k in ordered], tab
        case "scroll":
            x = act.x if act.x is not None else act.x1
            y = act.y if act.y is not None else act.y1
            dx = act.dx if act.dx is not None else (act.scroll_x or 0)
            dy = act.dy if act.dy is not None else (act.scroll_y or 0)
            return [build(where, {"kind": "scroll", "at": None if el else _point(x, y), "element": el,
                                  "dx": dx, "dy": dy})], tab
        case "wait":
            return [build(where, {"kind": "wait", "ms": DEFAULT_WAIT_MS if act.ms is None else act.ms})], tab
        case "screenshot":
            return [build(where, {"kind": "screenshot", "base64": bool(act.base64)})], tab
        case "go_to_url":
            _need(where, url=act.url)
            return [build(where, {"kind": "navigate", "url": act.url})], tab
        case "get_html_content":
            return [build(where, {"kind": "get_html"})], tab
        case "set_viewport":
            _need(where, width=act.width, height=act.height)
            return [build(where, {"kind": "set_viewport", "width": act.width, "height": act.height,
                                  "scale_factor": act.scale_factor or 1.0})], tab
        case "list_tabs":
            return [build(where, {"kind": "list_tabs"})], None
        case "new_tab":
            return [build(where, {"kind": "new_tab", "url": act.url})], None
        case "switch_tab" | "close_tab":
            _need(where, tab_id=act.tab_id)
            return [build(where, {"kind": t, "tab_id": act.tab_id})], None
        case "debug":
            spec = act.debug or DebugSpec()
            command = spec.command or act.command
            _need(where, command=command)
            data: dict[str, Any] = {"kind": "run_command", "command": command}
            timeout = spec.timeout_seconds or act.timeout_seconds
            limit = spec.max_output_length or act.max_output_length
            if timeout is not None:
                data["timeout_seconds"] = timeout
            if limit is not None:
                data["max_output_length"] = limit
            if spec.cwd:
                data["cwd"] = spec.cwd
            if spec.env:
                data["env"] = spec.env
            return [build(where, data)], tab
    raise InvalidInput(f"{where}.type: {t!r} is not supported; allowed: {', '.join(ACTION_TYPES)}")


def renderer(files: FileStore, base: str) -> Callable[[ActionReport], dict[str, Any]]:
    """What the services call to render each report as it is done (its event then carries the same result)."""
    return functools.partial(action_result, files=files, base=base)


def action_result(report: ActionReport, files: FileStore, base: str) -> dict[str, Any]:
    """The Lightcone ``ActionResult`` of one report (made once: a screenshot is stored once)."""
    if report.rendered is not None:
        return report.rendered
    result = dict(report.outcome.result)
    image = report.outcome.image
    if image is not None:
        if report.outcome.image_base64:
            result["screenshot_url"] = "data:image/jpeg;base64," + base64.b64encode(image).decode()
        else:
            result["screenshot_url"] = f"{base}/files/{files.put(image)}"
        result["mime_type"] = "image/jpeg"
    body: dict[str, Any] = {
        "status": "success" if report.ok else "error",
        "error_message": report.error_message,
        "result": result,
        "timestamp": iso(report.timestamp),
        "request_id": report.request_id,
        "executed_tab_id": report.tab_id,
    }
    if report.page_context is not None:
        body["page_context"] = report.page_context
    if any(isinstance(v, list) and len(v) > _SMALL for v in result.values()):
        try:  # a long list (a JSON snapshot's elements): one pass in Rust finds no lone surrogate, most
            pydantic_core.to_json(body)  # often, where valid_text's walk rebuilds every dict in it
            return body
        except pydantic_core.PydanticSerializationError:
            pass
    return valid_text(body)  # a page's text may hold lone surrogates: the client and the event get U+FFFD
