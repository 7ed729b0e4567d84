"""The tabs of one browser: Playwright pages keyed by their CDP target id.

Pages opened by the page itself (``window.open``, ``target=_blank``) or by a CDP
client arrive through the context's ``page`` event; registering one needs a CDP
round trip, so registrations are tracked and awaited before any tab lookup.

A tab whose renderer crashed (killed, out of memory) cannot be used again: Playwright
refuses every call on a crashed page. It is replaced by a new blank tab, in its
place as the main tab if it was that, and a ``tab_crashed`` event says so; the
replacement is awaited like a registration, so the next action finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from playwright.async_api import BrowserContext, CDPSession, Frame, Page

from opencone.drivers.base import DriverError


@dataclass(slots=True)
class Tab:
    tab_id: str
    page: Page
    cdp: CDPSession
    # input state ChromiumComputer keeps beside Playwright's: keys and buttons held by
    # key_down/mouse_down (Playwright adds them to its clicks), and where a click sent on
    # opencone's own connection left the pointer (Playwright's mouse does not know)
    held: set[str] = field(default_factory=set)
    stale_pointer: tuple[float, float] | None = None


class TabRegistry:
    def __init__(self, context: BrowserContext, prepare: Callable[[Tab], Awaitable[None]]) -> None:
        self._context = context
        self._prepare = prepare
        self._tabs: dict[str, Tab] = {}
        self._by_page: dict[Page, str] = {}
        self._pending: set[asyncio.Task[Tab | None]] = set()
        self._inflight: dict[Page, asyncio.Future[Tab]] = {}
        self._replacements: set[Page] = set()  # new pages that stand in for crashed ones: not popups
        self.main_id: str | None = None
        # tab events (tab_opened, tab_closed, navigated) for whoever watches the computer
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        context.on("page", self._on_page)

    async def adopt_existing(self) -> None:
        for page in self._context.pages:
            await self.register(page)

    def _on_page(self, page: Page) -> None:
        task = asyncio.ensure_future(self._register_popup(page))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _register_popup(self, page: Page) -> Tab | None:
        with contextlib.suppress(Exception):
            tab = await self.register(page)
            if page not in self._replacements:
                self.main_id = tab.tab_id  # a tab the page opened comes to the front, as in a browser
            return tab
        return None

    async def register(self, page: Page) -> Tab:
        known = self._by_page.get(page)
        if known:
            return self._tabs[known]
        inflight = self._inflight.get(page)
        if inflight is not None:  # the page event and new_tab race for the same page
            return await asyncio.shield(inflight)
        future: asyncio.Future[Tab] = asyncio.get_running_loop().create_future()
        self._inflight[page] = future
        try:
            tab = await self._create(page)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # consumed: nobody else may be waiting
            raise
        else:
            future.set_result(tab)
            return tab
        finally:
            self._inflight.pop(page, None)

    async def _create(self, page: Page) -> Tab:
        cdp = await self._context.new_cdp_session(page)
        info = await cdp.send("Target.getTargetInfo")
        tab = Tab(info["targetInfo"]["targetId"], page, cdp)
        self._tabs[tab.tab_id] = tab
        self._by_page[page] = tab.tab_id
        page.on("close", lambda _p: self.forget(tab.tab_id))
        page.on("framenavigated", lambda frame: self._navigated(tab, frame))
        page.on("crash", lambda _p: self._crashed(tab))
        self.emit("tab_opened", tab_id=tab.tab_id, url=page.url)  # before any await: it precedes its navigations
        await self._prepare(tab)
        if self.main_id is None:
            self.main_id = tab.tab_id
        return tab

    def emit(self, kind: str, **fields: Any) -> None:
        for listener in self.listeners:
            with contextlib.suppress(Exception):  # a listener's bug must not break the browser
                listener(kind, fields)

    def _navigated(self, tab: Tab, frame: Frame) -> None:
        if frame.parent_frame is None and self.listeners:
            self.emit("navigated", tab_id=tab.tab_id, url=frame.url)

    def _crashed(self, tab: Tab) -> None:
        task = asyncio.ensure_future(self._replace(tab))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _replace(self, crashed: Tab) -> Tab | None:
        """A new blank tab for ``crashed`` (main if it was main), then the crashed one closed."""
        url, was_main = crashed.page.url, self.main_id == crashed.tab_id
        try:
            page = await self._context.new_page()
            self._replacements.add(page)
            tab = await self.register(page)
        except Exception as exc:  # the browser itself is going: its computer ends
            self.emit("tab_crashed", tab_id=crashed.tab_id, url=url, replaced_by=None, error=str(exc))
            return None
        finally:
            with contextlib.suppress(Exception):
                await crashed.page.close()
            self.forget(crashed.tab_id)
        if was_main:
            self.main_id = tab.tab_id
        self.emit("tab_crashed", tab_id=crashed.tab_id, url=url, replaced_by=tab.tab_id)
        return tab

    def forget(self, tab_id: str) -> None:
        tab = self._tabs.pop(tab_id, None)
        if tab is None:
            return
        self._by_page.pop(tab.page, None)
        self._replacements.discard(tab.page)
        if self.main_id == tab_id:
            self.main_id = next(reversed(self._tabs), None)
        self.emit("tab_closed", tab_id=tab_id)

    async def settle(self) -> None:
        """Wait for tabs that are still being registered."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def get(self, tab_id: str | None) -> Tab:
        await self.settle()
        wanted = tab_id or self.main_id
        tab = self._tabs.get(wanted) if wanted else None
        if tab is None or tab.page.is_closed():
            if tab_id:
                raise DriverError(f"no tab {tab_id!r}; list the tabs with GET /computers/{{id}}/tabs")
            raise DriverError("the browser has no open tab")
        return tab

    def all(self) -> list[Tab]:
        return [t for t in self._tabs.values() if not t.page.is_closed()]

    def __len__(self) -> int:
        return len(self.all())
