"""A desktop's screencast: JPEG frames of the X screen when it changes, and the pointer.

X has no frame clock to follow, so the screen is polled at up to ``FPS`` a
second on the desktop's X thread. A poll costs almost nothing while the screen
is still: XDAMAGE (on a connection of the cast's own) says whether anything was
drawn since the last poll, and only then is the screen grabbed (mss, XShm)
and hashed band by band (the 32-row bands of stripjpeg.py). Only when some
band's pixels really differ from the last frame sent is a frame made, and only
those bands are encoded again (simplejpeg, 4:2:0, fast DCT): a caret's blink
costs one band, not the whole screen. The pointer position comes with every poll
and is sent when it moved.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import mss
import numpy

from opencone.drivers.base import ComputerGone, DriverError
from opencone.drivers.desktop.damage import DamageWatch
from opencone.drivers.desktop.stripjpeg import BAND, BandedJpeg
from opencone.drivers.screencast import CursorPosition, Emit, Frame

log = logging.getLogger(__name__)

T = TypeVar("T")
FPS = 30.0
XCall = Callable[..., Awaitable[Any]]


@dataclass(slots=True)
class _Poll:
    frame: Frame | None
    pointer: tuple[int, int]


class _Watcher:
    """The blocking half, used only on the desktop's X thread."""

    def __init__(self, name: str, quality: int) -> None:
        self.quality = quality
        self.changes = DamageWatch(name)
        self.display = self.changes.display
        self.root = self.display.screen().root
        self._mss: mss.MSS | None = None
        self._mss_size = (0, 0)
        self._frames = BandedJpeg()
        self._last: tuple[tuple[int, int], list[int]] = ((0, 0), [])  # size and band crc32s of the last frame sent
        self._first = True

    def _grabber(self, w: int, h: int) -> mss.MSS:
        # mss sizes its XShm buffer for the screen it sees at creation: make a new one when it grew
        if self._mss is None or w > self._mss_size[0] or h > self._mss_size[1]:
            if self._mss is not None:
                self._mss.close()
            self._mss = mss.MSS(display=self.display.get_display_name())
            self._mss_size = (w, h)
        return self._mss

    def poll(self, size: tuple[int, int]) -> _Poll:
        damaged = self.changes.take() or self._first  # (re-armed before the grab)
        ptr = self.root.query_pointer()
        pointer = (int(ptr.root_x), int(ptr.root_y))
        self._first = False
        return _Poll(self._frame(size) if damaged else None, pointer)

    def _frame(self, size: tuple[int, int]) -> Frame | None:
        w, h = size
        taken = time.time()
        shot = self._grabber(w, h).grab({"left": 0, "top": 0, "width": w, "height": h})
        raw, step = memoryview(shot.raw), w * 4 * BAND
        sums = [zlib.crc32(raw[i:i + step]) for i in range(0, len(raw), step)]
        size, last = self._last
        drawn: list[tuple[int, int]] | None = None  # None: a new size, every band
        if size == (w, h):
            drawn = [(b * BAND, BAND) for b, (new, old) in enumerate(zip(sums, last, strict=True)) if new != old]
            if not drawn:  # drawn, but to the same pixels (a caret redrawn, a window re-exposed)
                return None
        pixels = numpy.frombuffer(shot.raw, numpy.uint8).reshape(h, w, 4)
        jpeg = self._frames.encode(pixels, self.quality, drawn)
        self._last = ((w, h), sums)
        return Frame(base64.b64encode(jpeg).decode("ascii"), w, h, taken,
                     extra={"screenshot_width": w, "screenshot_height": h})

    def close(self) -> None:
        if self._mss is not None:
            self._mss.close()
        self.changes.close()


class DesktopScreencast:
    """``xcall`` runs a function on the desktop's X thread (ComputerGone once the desktop is gone);
    ``size`` (called there) is the screen's current size."""

    def __init__(self, name: str, xcall: XCall, size: Callable[[], tuple[int, int]],
                 alive: Callable[[], bool], quality: int = 70, fps: float = FPS) -> None:
        self.name = name
        self._xcall = xcall
        self._size = size
        self._alive = alive
        self.quality = quality
        self.interval = 1.0 / fps

    def _poll(self, watcher: _Watcher) -> _Poll:
        return watcher.poll(self._size())

    async def run(self, emit: Emit) -> None:
        try:
            watcher: _Watcher = await self._xcall(_Watcher, self.name, self.quality)
        except ComputerGone:
            return
        loop = asyncio.get_running_loop()
        pointer: tuple[int, int] | None = None
        try:
            next_tick = loop.time()
            while self._alive():
                try:
                    polled: _Poll = await self._xcall(self._poll, watcher)
                except ComputerGone:
                    return
                except DriverError as exc:  # e.g. a resize in between; the next poll sees the new size
                    log.debug("desktop screencast poll on %s failed: %s", self.name, exc)
                    polled = _Poll(None, pointer or (0, 0))
                if polled.frame is not None:
                    emit(polled.frame)
                if polled.pointer != pointer:
                    pointer = polled.pointer
                    emit(CursorPosition(*pointer))
                next_tick = max(next_tick + self.interval, loop.time())  # never catch up in a burst
                await asyncio.sleep(next_tick - loop.time())
        finally:
            with contextlib.suppress(Exception):  # ComputerGone: the X server took the connection along
                await asyncio.shield(self._xcall(watcher.close))
