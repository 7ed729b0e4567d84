"""The one canonical action model.

Every wire dialect (Lightcone endpoint bodies, ``ComputerAction`` types, the
OpenAI computer-use actions, Notte steps) is translated at the edge into one
of these. A driver implements each of them once. Coordinates are screenshot
pixels; validation of ranges that do not depend on a live computer happens
here, so bad input is rejected before it reaches a browser.

A pointer or typing action targets a point or an ``Element``: a ref from an
element snapshot (``[ref=e5]``, core/perception.py), which the browser resolves
to the element itself, or a Playwright selector (for the Notte adapters).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from opencone.core.exec_limits import check_command, check_cwd, check_env
from opencone.core.keys import normalize_chord, normalize_key
from opencone.drivers import confined

MAX_COORD = 100_000.0
MAX_TEXT = 100_000
MAX_WAIT_MS = 60_000
REF_PATTERN = r"^(f[0-9]{1,9})?e[0-9]{1,9}$"  # Playwright's aria refs: e5 in the page, f1e3 in a frame
MAX_SNAPSHOT_CHARS = 2_000_000
MAX_MARKDOWN_CHARS = 5_000_000

Button = Literal["left", "right", "middle", "back", "forward"]


ALLOWED_SCHEMES = ("http", "https", "about", "data")


def check_url(url: str) -> str:
    """Accept web URLs only: a browser computer must not read the server's files."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ALLOWED_SCHEMES:
        raise ValueError(f"URL scheme must be one of {', '.join(ALLOWED_SCHEMES)}; got {url[:100]!r}")
    if parts.scheme in ("http", "https") and not parts.hostname:
        raise ValueError(f"URL has no host: {url[:100]!r}")
    if parts.scheme == "about" and url != "about:blank":
        raise ValueError("the only about: URL allowed is about:blank")
    return url


class _Action(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Point(BaseModel):
    model_config = ConfigDict(frozen=True)
    x: float
    y: float

    @field_validator("x", "y")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v) or v < 0 or v > MAX_COORD:
            raise ValueError(f"coordinate must be a finite number between 0 and {MAX_COORD:g}")
        return v


class Element(BaseModel):
    """An element to act on instead of a point: ``ref`` from an element snapshot (of the snapshot
    ``snapshot_id``, else of the tab's latest), or a Playwright ``selector``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ref: str | None = Field(default=None, pattern=REF_PATTERN, max_length=24)
    snapshot_id: str | None = Field(default=None, min_length=1, max_length=64)
    selector: str | None = Field(default=None, min_length=1, max_length=4000)

    @model_validator(mode="after")
    def _one(self) -> Element:
        if (self.ref is None) == (self.selector is None):
            raise ValueError("give an element as ref (from a snapshot) or as selector, not both or neither")
        if self.snapshot_id is not None and self.ref is None:
            raise ValueError("snapshot_id goes with ref")
        return self

    def describe(self) -> str:
        return self.ref if self.ref is not None else f"selector {self.selector!r}"


def _no_element() -> Element | None:
    """An optional element target, left out of a dump when absent: a point action's events and
    dumps stay as they were before elements existed."""
    return Field(default=None, exclude_if=lambda v: v is None)  # type: ignore[no-any-return]


def _at_most_one_target(at: Point | None, element: Element | None, required: bool) -> None:
    if at is not None and element is not None:
        raise ValueError("give either a point (x, y) or an element (ref), not both")
    if required and at is None and element is None:
        raise ValueError("a point (x, y) or an element (ref) is required")


class Click(_Action):
    kind: Literal["click"] = "click"
    at: Point | None = None
    button: Button = "left"
    count: Literal[1, 2, 3] = 1
    element: Element | None = _no_element()

    @model_validator(mode="after")
    def _target(self) -> Click:
        _at_most_one_target(self.at, self.element, required=True)
        return self


class MoveMouse(_Action):
    """To a point, or onto an element (its centre, scrolled into view: a hover)."""

    kind: Literal["move"] = "move"
    at: Point | None = None
    element: Element | None = _no_element()

    @model_validator(mode="after")
    def _target(self) -> MoveMouse:
        _at_most_one_target(self.at, self.element, required=True)
        return self


class MouseDown(_Action):
    """At a point, on an element's centre, or where the pointer is."""

    kind: Literal["mouse_down"] = "mouse_down"
    at: Point | None = None
    button: Button = "left"
    element: Element | None = _no_element()

    @model_validator(mode="after")
    def _target(self) -> MouseDown:
        _at_most_one_target(self.at, self.element, required=False)
        return self


class MouseUp(_Action):
    """At a point, on an element's centre, or where the pointer is."""

    kind: Literal["mouse_up"] = "mouse_up"
    at: Point | None = None
    button: Button = "left"
    element: Element | None = _no_element()

    @model_validator(mode="after")
    def _target(self) -> MouseUp:
        _at_most_one_target(self.at, self.element, required=False)
        return self


class Drag(_Action):
    """Along ``path`` (two points or more), or from the element ``element`` onto ``to_element``."""

    kind: Literal["drag"] = "drag"
    path: list[Point] = Field(default_factory=list, max_length=1000)
    button: Button = "left"
    element: Element | None = _no_element()
    to_element: Element | None = _no_element()

    @model_validator(mode="after")
    def _target(self) -> Drag:
        if self.element is None and self.to_element is None:
            if len(self.path) < 2:
                raise ValueError("path: a drag needs at least 2 points (or element and to_element)")
        elif self.element is None or self.to_element is None or self.path:
            raise ValueError("a drag by element needs both element and to_element (ref and to_ref), and no points")
        return self


class TypeText(_Action):
    kind: Literal["type"] = "type"
    text: str = Field(max_length=MAX_TEXT)
    at: Point | None = None  # point_and_type: click here first
    element: Element | None = _no_element()  # or click this element first

    @model_validator(mode="after")
    def _target(self) -> TypeText:
        _at_most_one_target(self.at, self.element, required=False)
        return self


class Fill(_Action):
    """Replace the value of a text field (or contenteditable) with ``text``."""

    kind: Literal["fill"] = "fill"
    element: Element
    text: str = Field(max_length=MAX_TEXT)


class SelectOption(_Action):
    """Select the options of a ``<select>`` whose value or label is one of ``values``."""

    kind: Literal["select_option"] = "select_option"
    element: Element
    values: list[Annotated[str, Field(max_length=1000)]] = Field(min_length=1, max_length=100)


FileDir = Literal["downloads", "workspace"]


class UploadFile(_Action):
    """Put a file of the computer's (``path`` in ``dir``: its downloads or workspace, the kind's
    default when absent) into the file input at a point or ``element``."""

    kind: Literal["upload_file"] = "upload_file"
    path: str = Field(min_length=1, max_length=confined.MAX_PATH_CHARS)
    dir: FileDir | None = None
    at: Point | None = None
    element: Element | None = _no_element()

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        try:
            confined.split(v)
        except confined.PathRefused as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _target(self) -> UploadFile:
        _at_most_one_target(self.at, self.element, required=True)
        return self


class PressKeys(_Action):
    """A chord: every key goes down in order, then up in reverse."""

    kind: Literal["press_keys"] = "press_keys"
    keys: list[str] = Field(min_length=1, max_length=16)

    @field_validator("keys")
    @classmethod
    def _canonical(cls, v: list[str]) -> list[str]:
        return normalize_chord(v)


class KeyDown(_Action):
    kind: Literal["key_down"] = "key_down"
    key: str

    @field_validator("key")
    @classmethod
    def _canonical(cls, v: str) -> str:
        return normalize_key(v)


class KeyUp(_Action):
    kind: Literal["key_up"] = "key_up"
    key: str

    @field_validator("key")
    @classmethod
    def _canonical(cls, v: str) -> str:
        return normalize_key(v)


class Scroll(_Action):
    kind: Literal["scroll"] = "scroll"
    at: Point | None = None  # None: the middle of the screen
    dx: float = 0.0
    dy: float = 0.0
    element: Element | None = _no_element()  # or over this element (scrolled into view first)

    @field_validator("dx", "dy")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v) or abs(v) > MAX_COORD:
            raise ValueError(f"scroll delta must be a finite number within ±{MAX_COORD:g}")
        return v

    @model_validator(mode="after")
    def _target(self) -> Scroll:
        _at_most_one_target(self.at, self.element, required=False)
        return self


class Wait(_Action):
    kind: Literal["wait"] = "wait"
    ms: int = Field(ge=0, le=MAX_WAIT_MS)


class Screenshot(_Action):
    kind: Literal["screenshot"] = "screenshot"
    base64: bool = False


class Navigate(_Action):
    kind: Literal["navigate"] = "navigate"
    url: str

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_url(v)


class GetHtml(_Action):
    kind: Literal["get_html"] = "get_html"


class History(_Action):
    """The browser's back, forward or reload."""

    kind: Literal["history"] = "history"
    op: Literal["back", "forward", "reload"]


class Snapshot(_Action):
    """An element snapshot of the tab (core/perception.py): Playwright's ``[ref=eN]`` text, or JSON."""

    kind: Literal["snapshot"] = "snapshot"
    format: Literal["text", "json"] = "text"
    interactive_only: bool = False  # only the elements one can act on, as a flat list
    viewport_only: bool = False  # only what is (partly) inside the viewport, with its ancestors
    max_chars: int = Field(default=50_000, ge=200, le=MAX_SNAPSHOT_CHARS)
    boxes: bool = False  # the text form with each element's box, in screenshot pixels (JSON always has them)


class Markdown(_Action):
    """The page as markdown (core/markdown.py)."""

    kind: Literal["markdown"] = "markdown"
    main_only: bool = True  # the main content: no navigation, header, footer, aside, forms
    links: bool = True  # links as [text](url); without, their text only
    images: bool = False  # images as ![alt](url), and listed
    max_chars: int = Field(default=200_000, ge=200, le=MAX_MARKDOWN_CHARS)


class Evaluate(_Action):
    """JavaScript in the tab's page (an expression, or a function's source, called with no argument):
    its result as JSON, cut at ``max_chars``. What a CDP client of the computer can do anyway; the MCP
    tools offer it only in their opt-in ``evaluate`` group."""

    kind: Literal["evaluate"] = "evaluate"
    expression: str = Field(min_length=1, max_length=MAX_TEXT)
    max_chars: int = Field(default=20_000, ge=100, le=1_000_000)


class SetViewport(_Action):
    kind: Literal["set_viewport"] = "set_viewport"
    width: int = Field(ge=200, le=3840)
    height: int = Field(ge=200, le=2160)
    scale_factor: float = Field(default=1.0, ge=0.25, le=4.0)


class ListTabs(_Action):
    kind: Literal["list_tabs"] = "list_tabs"


class NewTab(_Action):
    kind: Literal["new_tab"] = "new_tab"
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return check_url(v) if v else None


class SwitchTab(_Action):
    kind: Literal["switch_tab"] = "switch_tab"
    tab_id: str


class CloseTab(_Action):
    kind: Literal["close_tab"] = "close_tab"
    tab_id: str


class RunCommand(_Action):
    """A shell command in the computer's sandbox (the ``debug`` action); the same limits as /exec."""

    kind: Literal["run_command"] = "run_command"
    command: str = Field(min_length=1)
    timeout_seconds: float = Field(default=120, gt=0, le=3600)
    max_output_length: int = Field(default=65536, ge=1, le=16 * 1024 * 1024)
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("command")
    @classmethod
    def _command(cls, v: str) -> str:
        return check_command(v)

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, v: str | None) -> str | None:
        return None if v is None else check_cwd(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v)


class ChangeProxy(_Action):
    kind: Literal["change_proxy"] = "change_proxy"
    proxy_url: str | None = None


Action = Annotated[
    Click | MoveMouse | MouseDown | MouseUp | Drag | TypeText | PressKeys | KeyDown | KeyUp | Scroll
    | Wait | Screenshot | Navigate | GetHtml | SetViewport | ListTabs | NewTab | SwitchTab | CloseTab
    | RunCommand | ChangeProxy | Fill | SelectOption | History | Snapshot | Markdown | UploadFile | Evaluate,
    Field(discriminator="kind"),
]
