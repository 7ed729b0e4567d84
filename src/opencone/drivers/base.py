"""What every computer driver offers to the services floor."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection


class DriverError(Exception):
    """An action failed inside a live computer; the computer itself is fine."""


class ComputerGone(DriverError):
    """The computer's processes are gone (crash, kill); it cannot act any more."""


@dataclass(slots=True)
class TabInfo:
    tab_id: str
    url: str
    title: str
    is_main: bool


@dataclass(slots=True)
class PageContext:
    url: str
    title: str
    tab_id: str | None
    is_main_tab: bool
    viewport_width: int
    viewport_height: int
    page_width: int
    page_height: int
    scroll_x: float
    scroll_y: float
    device_scale_factor: float


@dataclass(slots=True)
class Display:
    width: int
    height: int
    scale: float = 1.0

    @property
    def pixel_width(self) -> int:
        """Width of a screenshot in pixels; coordinates on the wire are in these."""
        return round(self.width * self.scale)

    @property
    def pixel_height(self) -> int:
        return round(self.height * self.scale)


@dataclass(slots=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str
    truncated: bool = False
    timed_out: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class CdpEndpoint:
    """A computer's own browser as the CDP proxy reaches it."""

    # a WebSocket to the browser's DevTools (websockets' connect options); the port is on the
    # loopback of the browser's own network namespace, so only the server reaches it
    connect: Callable[..., Awaitable[ClientConnection]]
    product: str  # "Chrome/<version>", for /json/version
    files_dir: str  # the one directory a CDP client may download into and upload from, as the browser sees it
    host_files_dir: str | None = None  # the same directory as the server finds it, if elsewhere (a desktop's home)


@dataclass(slots=True)
class UploadSource:
    """A file of the computer's, opened by the services (never through a link) for a file input:
    the driver reads ``fd`` (and does not close it)."""

    fd: int
    name: str
    size: int


@dataclass(slots=True)
class PageSnapshot:
    """What a browser offers for an element snapshot: Playwright's own ``aria_snapshot(mode="ai",
    boxes=True)`` text (boxes in CSS pixels of each frame's viewport), and what is needed to read
    those boxes in screenshot pixels."""

    text: str
    url: str
    title: str
    tab_id: str
    viewport: tuple[float, float]  # the page's viewport, CSS px
    scale: float  # screenshot pixels per CSS pixel
    origin: tuple[float, float] = (0.0, 0.0)  # where the viewport's top left is in the screenshot, screenshot px
    document: str = ""  # the identity of the main frame's document: a new document has another


@dataclass(slots=True, frozen=True)
class FrameProbe:
    """An ``<iframe>`` of the latest snapshot, looked at again: the identity of the document in
    it, and where its viewport is (its content box) in its parent frame's viewport, CSS px."""

    document: str
    content: tuple[float, float, float, float]


@dataclass(slots=True, frozen=True)
class ElementTarget:
    """An element an action targets, as the services resolved it: a ref of a snapshot (with the
    document it was taken in, so the browser refuses it in another), or a selector."""

    ref: str | None = None
    document: str | None = None
    selector: str | None = None
    description: str = ""  # 'button "Buy"' of the snapshot, for messages
    snapshot_id: str | None = None
    main_frame: bool = True  # the ref is of the page itself, not of a frame in it


class Perceives(Protocol):
    """Optional for a driver: element snapshots and actions on elements (browsers, a desktop's browser)."""

    async def page_snapshot(self, tab: str | None) -> PageSnapshot: ...
    async def probe_frames(self, refs: list[str], tab: str | None) -> dict[str, FrameProbe | None]:
        """Each iframe ref of the latest snapshot looked at again; None for one no longer on the page."""
        ...

    async def element_click(self, target: ElementTarget, button: str, count: int, tab: str | None) -> None: ...
    async def element_type(self, target: ElementTarget, text: str, tab: str | None) -> None: ...
    async def element_fill(self, target: ElementTarget, text: str, tab: str | None) -> None: ...
    async def element_select(self, target: ElementTarget, values: list[str], tab: str | None) -> list[str]: ...
    async def element_scroll(self, target: ElementTarget, dx: float, dy: float, tab: str | None) -> None: ...
    async def element_drag(self, source: ElementTarget, dest: ElementTarget, tab: str | None) -> None: ...
    async def element_pointer(self, op: str, target: ElementTarget, button: str, tab: str | None) -> None: ...
    async def history(self, op: str, timeout: float, tab: str | None) -> None: ...
    async def page_source(self, tab: str | None) -> tuple[str, str, str]:
        """The tab's HTML, URL and title, in one look (for markdown)."""
        ...


# (event type, fields): tab_opened / tab_closed / navigated from a browser
DriverEventCallback = Callable[[str, dict[str, Any]], None]


class EmitsEvents(Protocol):
    """Optional for a driver: it reports what happens inside it (tabs opening, pages navigating)."""

    def on_event(self, callback: DriverEventCallback) -> None: ...


class ComputerDriver(Protocol):
    """One live computer. ``tab`` selects a browser tab; None means the main tab."""

    kind: str
    display: Display

    def on_gone(self, callback: Callable[[str], None]) -> None:
        """Register a callback run once if the computer's processes die on their own."""

    async def click(self, x: float, y: float, button: str, count: int, tab: str | None) -> None: ...
    async def move(self, x: float, y: float, tab: str | None) -> None: ...
    async def mouse_down(self, x: float | None, y: float | None, button: str, tab: str | None) -> None: ...
    async def mouse_up(self, x: float | None, y: float | None, button: str, tab: str | None) -> None: ...
    async def drag(self, path: list[tuple[float, float]], button: str, tab: str | None) -> None: ...
    async def type_text(self, text: str, tab: str | None) -> None: ...
    async def press_keys(self, keys: list[str], tab: str | None) -> None: ...
    async def key_down(self, key: str, tab: str | None) -> None: ...
    async def key_up(self, key: str, tab: str | None) -> None: ...
    async def scroll(self, x: float, y: float, dx: float, dy: float, tab: str | None) -> None: ...
    async def screenshot(self, quality: int, tab: str | None) -> bytes: ...
    async def navigate(self, url: str, timeout: float, tab: str | None) -> None: ...
    async def html(self, tab: str | None) -> str: ...
    async def set_viewport(self, display: Display) -> None: ...
    async def list_tabs(self) -> list[TabInfo]: ...
    async def new_tab(self, url: str | None, timeout: float) -> TabInfo: ...
    async def switch_tab(self, tab: str) -> TabInfo: ...
    async def close_tab(self, tab: str) -> None: ...
    async def current_tab(self, tab: str | None) -> str | None: ...
    async def page_context(self, tab: str | None) -> PageContext | None: ...
    async def cdp_endpoint(self) -> CdpEndpoint:
        """The browser's DevTools endpoint (a desktop starts its browser if needed)."""
        ...

    async def close(self) -> None: ...
