"""A browser's screencast: CDP ``Page.startScreencast`` on the main tab.

Chromium sends a JPEG whenever the compositor draws a new frame (up to 60 a
second, none while nothing changes) and waits for each frame's
``Page.screencastFrameAck`` before it sends the next, so every frame is
acknowledged at once: the services floor drops frames a viewer has no time
for, Chromium need not. The cast runs on a CDP session of its own, so stopping
it (detach) cannot disturb the tab's session used by actions; it follows the
main tab and the viewport, restarting when either changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from opencone.drivers.base import DriverError
from opencone.drivers.screencast import Emit, Frame, jpeg_size_b64

if TYPE_CHECKING:
    from opencone.drivers.chromium.computer import ChromiumComputer
    from opencone.drivers.chromium.tabs import Tab

log = logging.getLogger(__name__)

WATCH_SECONDS = 0.1  # how often the main tab and the viewport are checked for a change
_META = ("offsetTop", "pageScaleFactor", "deviceWidth", "deviceHeight", "scrollOffsetX", "scrollOffsetY")


class ChromiumScreencast:
    def __init__(self, computer: ChromiumComputer, quality: int = 70) -> None:
        self.computer = computer
        self.quality = quality
        self._acks: set[asyncio.Future[Any]] = set()

    async def run(self, emit: Emit) -> None:
        while self.computer.alive:
            try:
                tab = await self.computer.tabs.get(None)
            except DriverError:  # between tabs: the last one closed, a new one is registering
                await asyncio.sleep(WATCH_SECONDS)
                continue
            try:
                await self._cast(tab, emit)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the tab went away under us: start again on the new main tab
                log.debug("screencast on tab %s stopped: %s", tab.tab_id, exc)
                await asyncio.sleep(WATCH_SECONDS)

    def _unchanged(self, tab: Tab, size: tuple[int, int]) -> bool:
        c = self.computer
        return (c.alive and c.tabs.main_id == tab.tab_id and not tab.page.is_closed()
                and (c.display.pixel_width, c.display.pixel_height) == size)

    async def _cast(self, tab: Tab, emit: Emit) -> None:
        d = self.computer.display
        size = (d.pixel_width, d.pixel_height)
        session = await self.computer.context.new_cdp_session(tab.page)

        def on_frame(params: dict[str, Any]) -> None:
            ack = asyncio.ensure_future(session.send("Page.screencastFrameAck", {"sessionId": params["sessionId"]}))
            self._acks.add(ack)
            ack.add_done_callback(_forget(self._acks))
            meta = params.get("metadata") or {}
            data: str = params["data"]
            w, h = jpeg_size_b64(data) or size
            extra = {k: meta[k] for k in _META if k in meta}
            # Chromium sends CSS-pixel frames when the device scale is not 1; actions take screenshot pixels
            extra.update(screenshot_width=size[0], screenshot_height=size[1], tab_id=tab.tab_id)
            emit(Frame(data, w, h, float(meta.get("timestamp") or time.time()), extra=extra))

        session.on("Page.screencastFrame", on_frame)
        try:
            await session.send("Page.startScreencast", {
                "format": "jpeg", "quality": self.quality, "maxWidth": size[0], "maxHeight": size[1],
                "everyNthFrame": 1,
            })
            while self._unchanged(tab, size):
                await asyncio.sleep(WATCH_SECONDS)
        finally:
            detach = asyncio.ensure_future(session.detach())  # ends the screencast with the session
            self._acks.add(detach)
            detach.add_done_callback(_forget(self._acks))
            with contextlib.suppress(Exception):
                await asyncio.shield(detach)


def _forget(pending: set[asyncio.Future[Any]]) -> Any:
    def done(fut: asyncio.Future[Any]) -> None:
        pending.discard(fut)
        if not fut.cancelled():
            fut.exception()  # a late ack or detach on a closed tab is expected; do not log it
    return done
