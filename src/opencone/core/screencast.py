"""Screencasts: one capture per computer, fanned out to every viewer.

The capture starts with the first viewer and stops when the last one leaves.
Each viewer holds a slot, not a queue: the newest frame (and the newest
pointer position) replaces whatever it had not sent yet, so a viewer that
falls behind gets the current picture, never a backlog, and a slow viewer
cannot slow the others or the capture. A viewer that joins a running cast
gets its last frame at once. Streams end when the computer ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Protocol

from opencone.core.computers import ComputerService
from opencone.core.errors import InvalidInput
from opencone.drivers.screencast import CursorPosition, Frame, ScreencastEvent, ScreencastSource

log = logging.getLogger(__name__)


class _Castable(Protocol):
    def screencast(self) -> ScreencastSource: ...


class Viewer:
    """One subscriber's slot."""

    def __init__(self, cast: _Cast) -> None:
        self._cast = cast
        self._frame: Frame | None = None
        self._cursor: CursorPosition | None = None
        self._wake = asyncio.Event()
        self.ended = False

    def offer(self, event: ScreencastEvent) -> None:
        if isinstance(event, Frame):
            self._frame = event
        else:
            self._cursor = event
        self._wake.set()

    def end(self) -> None:
        self.ended = True
        self._wake.set()

    async def next(self, timeout: float | None = None) -> ScreencastEvent | None:
        """The newest pending event; None once the stream has ended; TimeoutError after ``timeout`` idle."""
        while True:
            if self._cursor is not None:  # tiny, and it makes the picture feel alive: before the frame
                event: ScreencastEvent = self._cursor
                self._cursor = None
                return event
            if self._frame is not None:
                event, self._frame = self._frame, None
                return event
            if self.ended:
                return None
            self._wake.clear()
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    def close(self) -> None:
        self._cast.leave(self)


class _Cast:
    """The one capture of one computer."""

    def __init__(self, service: ScreencastService, computer_id: str, source: ScreencastSource) -> None:
        self.service = service
        self.computer_id = computer_id
        self.viewers: set[Viewer] = set()
        self.last_frame: Frame | None = None
        self.last_cursor: CursorPosition | None = None
        self.seq = 0
        self.task = asyncio.create_task(self._run(source), name=f"screencast-{computer_id}")
        log.info("screencast of %s started", computer_id)

    async def _run(self, source: ScreencastSource) -> None:
        try:
            await source.run(self.emit)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("screencast of %s failed", self.computer_id)
        self.finish()  # the computer is gone (or the capture broke): end every stream

    def emit(self, event: ScreencastEvent) -> None:
        if isinstance(event, Frame):
            self.seq += 1
            event = dataclasses.replace(event, seq=self.seq)
            self.last_frame = event
        else:
            self.last_cursor = event
        for viewer in self.viewers:
            viewer.offer(event)

    def join(self) -> Viewer:
        viewer = Viewer(self)
        if self.last_cursor is not None:
            viewer.offer(self.last_cursor)
        if self.last_frame is not None:
            viewer.offer(self.last_frame)
        self.viewers.add(viewer)
        return viewer

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        if not self.viewers:
            self.stop()

    def stop(self) -> None:
        if self.service._forget(self):
            log.info("screencast of %s stopped: no viewers left", self.computer_id)
        self.task.cancel()

    def finish(self) -> None:
        if self.service._forget(self):
            log.info("screencast of %s ended with its computer", self.computer_id)
        for viewer in list(self.viewers):
            viewer.end()


class ScreencastService:
    def __init__(self, computers: ComputerService) -> None:
        self._computers = computers
        self._casts: dict[str, _Cast] = {}
        computers.on_end.append(self._computer_ended)

    async def watch(self, org_id: str, computer_id: str) -> Viewer:
        """A new viewer of the computer's screen; NotFound / Conflict (terminated) as for actions."""
        comp = await self._computers.require_live(org_id, computer_id)
        cast = self._casts.get(computer_id)
        if cast is None:
            driver: _Castable = comp.driver  # type: ignore[assignment]
            if not hasattr(driver, "screencast"):
                raise InvalidInput(f"a {comp.kind} computer has no screencast")
            cast = _Cast(self, computer_id, driver.screencast())
            self._casts[computer_id] = cast
        return cast.join()

    def _forget(self, cast: _Cast) -> bool:
        if self._casts.get(cast.computer_id) is cast:
            del self._casts[cast.computer_id]
            return True
        return False

    async def _computer_ended(self, computer_id: str) -> None:
        cast = self._casts.get(computer_id)
        if cast is not None:
            cast.task.cancel()
            cast.finish()
            await asyncio.wait([cast.task], timeout=2)  # let the capture let go of the computer

    async def stop(self) -> None:
        for cast in list(self._casts.values()):
            cast.task.cancel()
            cast.finish()

    @property
    def viewer_total(self) -> int:
        """Open screencast streams over every computer (GET /metrics)."""
        return sum(len(cast.viewers) for cast in list(self._casts.values()))

    @property
    def active(self) -> int:
        """Computers being cast right now."""
        return len(self._casts)
