"""Recordings: a computer's screen as an H.264 MP4, with the timeline of what it ran.

A recording watches the computer's screencast like any viewer (core/screencast.py), so it gets
a frame only when the screen changed, and follows the computer's event bus for the timeline.
Frames go to one encoder thread per recording through a one-frame slot: when the encoder is
busy (or the recording's frame-rate cap says wait), a newer frame replaces the waiting one, so
a busy screen never queues and an action never waits for the encoder. The video's clock is the
frames' capture times (drivers/encoder.py); each timeline entry's offset is its event's time
on the same scale.

Files, under ``<data_dir>/recordings/``: ``<id>.mp4`` (fragmented: playable while it grows)
and ``<id>.timeline.jsonl`` (one line per event, appended as they come). The row (the store's
``recordings``) is written at start and at stop; a server that died mid-recording leaves rows
``recording``, which the next start finalises (``ready``, ``stop_reason: server_restarted``)
from what the file holds, or marks ``broken``.

Storage: recordings count against the organisation's storage cap together with saved
environments. Starting one at or over the cap is refused; one that reaches it is stopped
(``recording_stopped`` with ``reason: storage_cap``) within a second.

When the computer ends, its recordings are deleted unless kept (``recording: {"keep": true}``
or a ``persistent`` computer); kept ones stay until ``DELETE /recordings/{id}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from opencone.config import Settings
from opencone.core.clock import Clock, iso
from opencone.core.computers import ComputerService
from opencone.core.errors import Conflict, InvalidInput, NotFound
from opencone.core.events import EventBus, Subscription
from opencone.core.ids import new_id
from opencone.core.lifetimes import EndReason
from opencone.core.screencast import ScreencastService, Viewer
from opencone.core.store.models import RecordingRecord
from opencone.drivers.encoder import Mp4Writer, probe
from opencone.drivers.screencast import CursorPosition, Frame

log = logging.getLogger(__name__)

RECORDING, READY, BROKEN = "recording", "ready", "broken"
THREAD_PREFIX = "opencone-rec"  # the encoder threads' names, as the kernel shows them (``top -H``)
# what the timeline keeps of the computer's events, and of each only the small fields
TIMELINE_TYPES = frozenset({"action_requested", "action_completed", "exec_started", "exec_exit", "navigated",
                            "tab_opened", "tab_closed", "tab_crashed"})
_DROP_FIELDS = ("computer_id", "seq", "result", "stdout", "stderr")
CAP_CHECK_SECONDS = 1.0
ENCODER_NICE = 10
FIRST_FRAME_WAIT = 2.0  # at stop, how long to wait for a first frame that has not come yet
STOP_SETTLE = 0.15  # at stop, the frame of an action that has just answered
START_FRAME_WAIT = 1.0  # how long a start waits for the screen's first frame

Usage = Callable[[str], Awaitable[int]]


def _encoder_thread_setup(name: str) -> None:
    """Give the encoder thread a kernel name (/proc/<pid>/task/*/comm), so it can be seen and counted,
    and a lower priority (nice 10): on a busy machine the server's event loop and the browsers come
    first, and the encoder, whose slot keeps only the newest frame, encodes fewer frames instead."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), ENCODER_NICE)  # this thread only (Linux)


@dataclass(eq=False)
class _Active:
    """One recording in progress: its encoder thread and frame slot, and its followers."""

    id: str
    org_id: str
    computer_id: str
    kind: str
    keep: bool
    started_at: datetime  # the service clock's start (event timestamps are on it)
    started_wall: float  # time.time() at the start (frame capture times are on it)
    video: Path
    timeline: Path
    max_fps: float
    crf: int
    pool: ThreadPoolExecutor = field(init=False)
    writer: Mp4Writer | None = None
    failed: str | None = None
    finishing: bool = False
    stopping: bool = False  # no frame taken any more
    offered: bool = False
    first: Frame | None = None  # the first frame, until encoded
    pending: Frame | None = None  # the newest frame since, until encoded
    scheduled: bool = False
    next_allowed: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    first_frame: threading.Event = field(default_factory=threading.Event)  # encoded
    seen: asyncio.Event = field(default_factory=asyncio.Event)  # offered
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    viewer: Viewer | None = None
    subscription: Subscription | None = None
    timeline_file: Any = None
    timeline_bytes: int = 0
    last_frame: Frame | None = None  # offered again when only the pointer moved
    pointer: tuple[int, int] | None = None  # where a desktop's screencast last saw it: drawn in

    def __post_init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=THREAD_PREFIX, initializer=_encoder_thread_setup,
                                       initargs=(f"{THREAD_PREFIX}-{self.id[4:12]}",))

    # -- the event loop's side --------------------------------------------------------------
    def offer(self, frame: Frame) -> None:
        """The newest frame; never waits (the encoder takes the newest when it is ready)."""
        with self.lock:
            if self.stopping:
                return
            if self.offered:
                self.pending = frame
            else:  # the first picture is never replaced: it is the screen at the start
                self.offered, self.first = True, frame
            if self.scheduled:
                return
            self.scheduled = True
        self.pool.submit(self._drain)

    @property
    def size(self) -> int:
        return (self.writer.size if self.writer is not None else 0) + self.timeline_bytes

    # -- the encoder thread's side ------------------------------------------------------------
    def _drain(self) -> None:
        wait = self.next_allowed - time.monotonic()
        if wait > 0:  # the frame-rate cap: newer frames replace the waiting one meanwhile
            time.sleep(wait)
        with self.lock:
            if self.first is not None:
                frame, self.first = self.first, None
            else:
                frame, self.pending = self.pending, None
        if frame is not None and self.failed is None:
            try:
                self._write(frame)
            except Exception as exc:
                log.exception("recording %s: encoding failed", self.id)
                self.failed = f"encoding failed: {exc}"
            self.next_allowed = time.monotonic() + 1.0 / self.max_fps
        with self.lock:
            again = (self.pending is not None or self.first is not None) and not self.stopping
            self.scheduled = again
        if again:
            self.pool.submit(self._drain)

    def _write(self, frame: Frame) -> None:
        jpeg = base64.b64decode(frame.data)
        now = time.time()
        taken = frame.timestamp if abs(frame.timestamp - now) < 5 else now  # a clock we do not share: ours
        if self.writer is None:
            self.writer = Mp4Writer(self.video, frame.width, frame.height, crf=self.crf)
        self.writer.write_jpeg(jpeg, max(taken - self.started_wall, 0.0), self.pointer)
        self.first_frame.set()

    def flush(self) -> None:
        """Everything up to now into the file (the last picture repeated now)."""
        if self.writer is not None and not self.writer.closed and self.failed is None:
            self.writer.repeat(time.time() - self.started_wall)

    def close(self, end: float) -> None:
        with self.lock:
            frames, self.first, self.pending = [f for f in (self.first, self.pending) if f is not None], None, None
        for frame in frames:
            if self.failed is None:
                with contextlib.suppress(Exception):  # the newest picture, still waiting for the fps cap
                    self._write(frame)
        if self.writer is not None:
            try:
                self.writer.close(end)
            except Exception as exc:
                log.exception("recording %s: closing the video failed", self.id)
                self.failed = self.failed or f"closing the video failed: {exc}"


def recording_dict(row: RecordingRecord, active: _Active | None = None) -> dict[str, Any]:
    """A recording as the services describe it (the edge adds its URLs)."""
    out: dict[str, Any] = {
        "id": row.id, "computer_id": row.computer_id, "kind": row.kind, "status": row.status, "keep": row.keep,
        "started_at": iso(row.started_at), "ended_at": iso(row.ended_at),
        "duration_seconds": round(row.duration_seconds, 3), "size_bytes": row.size_bytes,
        "width": row.width, "height": row.height, "frames": row.frames,
        "stop_reason": row.stop_reason, "error": row.error,
    }
    if active is not None:  # live figures of a recording in progress
        w = active.writer
        out.update(duration_seconds=round(time.time() - active.started_wall, 3), size_bytes=active.size,
                   width=w.width if w else 0, height=w.height if w else 0, frames=w.frames if w else 0)
    return out


class RecordingService:
    def __init__(self, settings: Settings, sessions: async_sessionmaker,  # type: ignore[type-arg]
                 clock: Clock, computers: ComputerService, screencasts: ScreencastService,
                 events: EventBus) -> None:
        self.settings = settings
        self.root = (settings.data_dir / "recordings").resolve()
        self._sessions = sessions
        self._clock = clock
        self._computers = computers
        self._screencasts = screencasts
        self._events = events
        self._active: dict[str, _Active] = {}  # by computer id
        self._starting: set[str] = set()  # computers whose recording is being set up
        # computers this process recorded: only theirs can have rows to drop at their end (a dead
        # process's unkept rows go at start), so every other end skips the query (~4 ms a teardown)
        self._recorded: set[str] = set()
        self._monitor: asyncio.Task[None] | None = None
        # the organisation's stored bytes, recordings included (set by the runtime: saved environments'
        # usage, which adds ours); without it, recordings alone
        self.org_usage: Usage | None = None
        computers.before_close.append(self._computer_closing)
        computers.on_end.append(self._computer_ended)

    # -- start-up ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Finalise what a dead server left recording; drop files no row knows (the database is migrated)."""
        self.root.mkdir(parents=True, exist_ok=True)
        async with self._sessions() as s:
            rows = list((await s.execute(select(RecordingRecord))).scalars())
        known = {r.id for r in rows}
        for path in self.root.iterdir():
            rec_id = path.name.split(".", 1)[0]
            if rec_id not in known:
                log.warning("removing %s: no recording records it", path.name)
                path.unlink(missing_ok=True)
        for row in rows:
            if row.status == RECORDING:
                await self._recover(row)
        # computers end with their server: what was not kept goes with them
        async with self._sessions() as s:
            gone = [r for r in (await s.execute(select(RecordingRecord).where(~RecordingRecord.keep))).scalars()]
        for row in gone:
            await self._remove(row.id)

    async def _recover(self, row: RecordingRecord) -> None:
        found = await asyncio.to_thread(probe, self.video_path(row.id))
        size = sum(p.stat().st_size for p in (self.video_path(row.id), self.timeline_path(row.id)) if p.is_file())
        async with self._sessions() as s, s.begin():
            fresh = await s.get(RecordingRecord, row.id)
            if fresh is None:
                return
            fresh.ended_at = fresh.ended_at or self._clock.now()
            fresh.stop_reason, fresh.size_bytes = "server_restarted", size
            if found is None:
                fresh.status, fresh.error = BROKEN, "the server stopped before any frame was written"
            else:
                fresh.status = READY
                fresh.duration_seconds, fresh.frames = found.duration, found.frames
                fresh.width, fresh.height = found.width, found.height
        log.warning("recording %s was cut short by a server stop: %s", row.id,
                    "no frame kept" if found is None else f"{found.frames} frames, {found.duration:.1f} s kept")

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        for active in list(self._active.values()):
            await self._finish(active, "server_shutdown")

    # -- paths ------------------------------------------------------------------------------
    def video_path(self, rec_id: str) -> Path:
        return self.root / f"{rec_id}.mp4"

    def timeline_path(self, rec_id: str) -> Path:
        return self.root / f"{rec_id}.timeline.jsonl"

    # -- storage ----------------------------------------------------------------------------
    async def usage(self, org_id: str) -> int:
        """Bytes of this organisation's recordings, those in progress as they are now."""
        live = [a for a in self._active.values() if a.org_id == org_id]
        async with self._sessions() as s:
            stored = (await s.execute(
                select(func.coalesce(func.sum(RecordingRecord.size_bytes), 0))
                .where(RecordingRecord.org_id == org_id, RecordingRecord.status != RECORDING)
            )).scalar_one()
        return int(stored) + sum(a.size for a in live)

    async def _org_usage(self, org_id: str) -> int:
        return await (self.org_usage or self.usage)(org_id)

    async def check_room(self, org_id: str, *, field: str = "recording", conflict: bool = False) -> None:
        cap = self.settings.storage_cap_bytes
        used = await self._org_usage(org_id)
        if used >= cap:
            msg = (f"this organisation stores {used} bytes (saved environments and recordings), at or over its cap "
                   f"of {cap} bytes (OPENCONE_STORAGE_CAP_BYTES); delete recordings (DELETE /recordings/{{id}}) or "
                   "environments (DELETE /environments/{id}) to record again")
            raise (Conflict if conflict else InvalidInput)(msg, field=field, used_bytes=used, cap_bytes=cap)

    # -- start / stop -----------------------------------------------------------------------
    async def start_recording(self, org_id: str, computer_id: str, keep: bool = False,
                              *, checked: bool = False) -> dict[str, Any]:
        """Record the live computer's screen from now on. ``checked``: the cap was checked already."""
        comp = await self._computers.require_live(org_id, computer_id)
        if computer_id in self._active:
            raise Conflict(f"computer {computer_id} is already being recorded ({self._active[computer_id].id}); "
                           f"stop it first with POST /computers/{computer_id}/recording/stop",
                           recording_id=self._active[computer_id].id)
        if computer_id in self._starting:
            raise Conflict(f"a recording of computer {computer_id} is starting; stop it first with "
                           f"POST /computers/{computer_id}/recording/stop")
        self._starting.add(computer_id)  # (two starts at once: the second is the 409 above)
        try:
            if not checked:
                await self.check_room(org_id, conflict=True)
            return await self._start(comp, keep)
        finally:
            self._starting.discard(computer_id)

    async def _start(self, comp: Any, keep: bool) -> dict[str, Any]:
        org_id, computer_id = comp.org_id, comp.id
        self.root.mkdir(parents=True, exist_ok=True)
        rec_id = new_id("rec")
        active = _Active(rec_id, org_id, computer_id, comp.kind, keep or comp.spec.persistent, self._clock.now(),
                         time.time(), self.video_path(rec_id), self.timeline_path(rec_id),
                         self.settings.recording_max_fps, self.settings.recording_crf)
        row = RecordingRecord(id=rec_id, org_id=org_id, computer_id=computer_id, kind=comp.kind, status=RECORDING,
                              keep=active.keep, started_at=active.started_at, duration_seconds=0.0, size_bytes=0,
                              width=0, height=0, frames=0)
        self._recorded.add(computer_id)  # (before the row: an end that comes meanwhile still looks)
        async with self._sessions() as s, s.begin():
            s.add(row)
        self._active[computer_id] = active
        try:
            active.timeline_file = await asyncio.to_thread(open, active.timeline, "a", encoding="utf-8")
            active.subscription = self._events.subscribe(computer_id)
            active.viewer = await self._screencasts.watch(org_id, computer_id)
        except BaseException:
            await self._finish(active, "error")
            raise
        active.tasks = [asyncio.create_task(self._follow_frames(active), name=f"recording-frames-{rec_id}"),
                        asyncio.create_task(self._follow_events(active), name=f"recording-events-{rec_id}")]
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.create_task(self._watch_caps(), name="recording-caps")
        # the screen as it is now, before the start answers: an action right after it is recorded after it
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_FRAME_WAIT):
                await active.seen.wait()
        self._events.publish(computer_id, "recording_started", recording_id=rec_id, keep=active.keep)
        log.info("recording %s of computer %s started", rec_id, computer_id)
        return recording_dict(row, active)

    async def stop_recording(self, org_id: str, computer_id: str) -> dict[str, Any]:
        await self._computers.require_live(org_id, computer_id)
        active = self._active.get(computer_id)
        if active is None:
            raise Conflict(f"computer {computer_id} is not being recorded; start with "
                           f"POST /computers/{computer_id}/recording/start")
        return await self._finish(active, "stopped")

    async def _finish(self, active: _Active, reason: str, settle: bool = False) -> dict[str, Any]:
        """Stop following, close the video, write the row; the recording's dict. ``settle``: the
        screen is still live, so wait for the frames of what has just happened (as a stop does)."""
        if active.finishing:  # another stop is finishing it: wait for that one
            while self._active.get(active.computer_id) is active:
                await asyncio.sleep(0.02)
            return await self._dict_of(active.id)
        active.finishing = True
        if reason in ("stopped", "deleted") or settle:
            if not active.first_frame.is_set():
                # a stop right after the start: the screencast's first frame is on its way
                await asyncio.to_thread(active.first_frame.wait, FIRST_FRAME_WAIT)
            # an action's frame comes a moment after the action answered (the compositor draws it
            # next): a stop right after an action still records it
            await asyncio.sleep(STOP_SETTLE)
        with active.lock:
            active.stopping = True
        end = time.time() - active.started_wall
        for task in active.tasks:
            task.cancel()
        if active.viewer is not None:
            active.viewer.close()
        if active.subscription is not None:
            self._events.unsubscribe(active.subscription)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(active.pool, active.close, end)  # after any frame already queued
        active.pool.shutdown(wait=False)
        if active.timeline_file is not None:
            await asyncio.to_thread(active.timeline_file.close)
        w = active.writer
        status, error = READY, active.failed
        if w is None:
            status, error = BROKEN, error or "no frame was captured before the recording stopped"
        elif error:
            status = BROKEN
        async with self._sessions() as s, s.begin():
            row = await s.get(RecordingRecord, active.id)
            if row is not None:
                row.status, row.error, row.stop_reason = status, error, reason
                row.ended_at = self._clock.now()
                row.duration_seconds = w.duration if w else 0.0
                row.size_bytes = active.size
                row.frames, row.width, row.height = (w.frames, w.width, w.height) if w else (0, 0, 0)
        self._active.pop(active.computer_id, None)
        self._events.publish(active.computer_id, "recording_stopped", recording_id=active.id, reason=reason,
                             status=status, duration_seconds=round(w.duration, 3) if w else 0.0,
                             size_bytes=active.size)
        log.info("recording %s of computer %s stopped (%s): %s", active.id, active.computer_id, reason, status)
        return await self._dict_of(active.id)

    async def _dict_of(self, rec_id: str) -> dict[str, Any]:
        async with self._sessions() as s:
            row = await s.get(RecordingRecord, rec_id)
        if row is None:
            raise NotFound(f"no recording {rec_id!r}")
        return recording_dict(row)

    # -- followers --------------------------------------------------------------------------
    async def _follow_frames(self, active: _Active) -> None:
        viewer = active.viewer
        assert viewer is not None
        while True:
            event = await viewer.next()
            if event is None:  # the cast ended (its computer is going): the end hook finishes the recording
                return
            if isinstance(event, Frame):
                active.last_frame = event
                active.offer(event)
                active.seen.set()
            elif isinstance(event, CursorPosition):  # a desktop's: the grab has no pointer in it
                active.pointer = (event.x, event.y)
                if active.last_frame is not None:  # the same screen, now, the pointer moved
                    active.offer(dataclasses.replace(active.last_frame, timestamp=time.time()))

    async def _follow_events(self, active: _Active) -> None:
        sub = active.subscription
        assert sub is not None
        while not sub.finished:
            for ev in await sub.next_batch(30.0):
                if ev.type in TIMELINE_TYPES:
                    self._note(active, ev.body)

    def _note(self, active: _Active, body: dict[str, Any]) -> None:
        try:
            at = datetime.fromisoformat(str(body["timestamp"]).replace("Z", "+00:00"))
            offset = max((at - active.started_at).total_seconds(), 0.0)
        except (KeyError, ValueError):
            offset = max(time.time() - active.started_wall, 0.0)
        entry = {"offset_seconds": round(offset, 3),
                 **{k: v for k, v in body.items() if k not in _DROP_FIELDS}}
        if body.get("type") == "action_completed" and isinstance(body.get("result"), dict):
            code = body["result"].get("exit_code")
            if code is not None:
                entry["exit_code"] = code
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
        active.timeline_file.write(line)
        active.timeline_file.flush()  # one small write per event: the timeline survives a crash
        active.timeline_bytes += len(line.encode())

    async def _watch_caps(self) -> None:
        """Stop the recordings of an organisation that reached its storage cap."""
        while self._active:
            await asyncio.sleep(CAP_CHECK_SECONDS)
            for org_id in {a.org_id for a in self._active.values()}:
                try:
                    used = await self._org_usage(org_id)
                except Exception:
                    log.exception("could not read the storage use of %s", org_id)
                    continue
                if used >= self.settings.storage_cap_bytes:
                    for active in [a for a in self._active.values() if a.org_id == org_id]:
                        log.warning("recording %s stopped: its organisation reached its storage cap", active.id)
                        await self._finish(active, "storage_cap")

    # -- the computer's end -----------------------------------------------------------------
    async def _computer_closing(self, computer_id: str, reason: str) -> None:
        """Finish the recording while the computer still draws: the last action's frame (which
        comes a moment after the action answered) is in it even when a DELETE follows at once."""
        active = self._active.get(computer_id)
        if active is not None:
            crashed = reason in (EndReason.BROWSER_CRASHED, EndReason.DESKTOP_CRASHED)
            await self._finish(active, "computer_ended", settle=not crashed)

    async def _computer_ended(self, computer_id: str) -> None:
        active = self._active.get(computer_id)
        if active is not None:
            await self._finish(active, "computer_ended")
        if computer_id not in self._recorded:
            return
        self._recorded.discard(computer_id)
        async with self._sessions() as s:
            gone = [r.id for r in (await s.execute(
                select(RecordingRecord).where(RecordingRecord.computer_id == computer_id, ~RecordingRecord.keep)
            )).scalars()]
        for rec_id in gone:
            await self._remove(rec_id)

    async def _remove(self, rec_id: str) -> None:
        async with self._sessions() as s, s.begin():
            await s.execute(delete(RecordingRecord).where(RecordingRecord.id == rec_id))
        for path in (self.video_path(rec_id), self.timeline_path(rec_id)):
            path.unlink(missing_ok=True)
        log.info("recording %s deleted", rec_id)

    # -- reading ----------------------------------------------------------------------------
    async def _row(self, org_id: str, rec_id: str) -> RecordingRecord:
        async with self._sessions() as s:
            row = await s.get(RecordingRecord, rec_id)
        if row is None or row.org_id != org_id:
            raise NotFound(f"no recording {rec_id!r}")
        return row

    async def _latest_of(self, org_id: str, computer_id: str) -> RecordingRecord:
        active = self._active.get(computer_id)
        async with self._sessions() as s:
            if active is not None and active.org_id == org_id:
                row = await s.get(RecordingRecord, active.id)
            else:
                row = (await s.execute(
                    select(RecordingRecord).where(RecordingRecord.org_id == org_id,
                                                  RecordingRecord.computer_id == computer_id)
                    .order_by(RecordingRecord.started_at.desc()).limit(1)
                )).scalars().first()
        if row is None:
            await self._computers.get(org_id, computer_id)  # 404 for a computer that is not this org's
            raise NotFound(f"computer {computer_id} has no recording; create it with \"recording\": true or "
                           f"POST /computers/{computer_id}/recording/start")
        return row

    def _active_of(self, row: RecordingRecord) -> _Active | None:
        active = self._active.get(row.computer_id)
        return active if active is not None and active.id == row.id else None

    async def get(self, org_id: str, rec_id: str) -> dict[str, Any]:
        row = await self._row(org_id, rec_id)
        return recording_dict(row, self._active_of(row))

    async def latest(self, org_id: str, computer_id: str) -> dict[str, Any]:
        row = await self._latest_of(org_id, computer_id)
        return recording_dict(row, self._active_of(row))

    async def list(self, org_id: str, computer_id: str | None = None) -> list[dict[str, Any]]:
        q = select(RecordingRecord).where(RecordingRecord.org_id == org_id)
        if computer_id is not None:
            q = q.where(RecordingRecord.computer_id == computer_id)
        async with self._sessions() as s:
            rows = (await s.execute(q.order_by(RecordingRecord.started_at))).scalars().all()
        return [recording_dict(r, self._active_of(r)) for r in rows]

    async def video(self, org_id: str, rec_id: str | None = None,
                    computer_id: str | None = None) -> tuple[Path, int, str]:
        """The MP4's path, how many of its bytes to serve (all complete fragments of one in progress)
        and the recording's id."""
        row = await (self._row(org_id, rec_id) if rec_id else self._latest_of(org_id, computer_id or ""))
        path = self.video_path(row.id)
        active = self._active_of(row)
        if active is not None:
            if not active.first_frame.is_set():
                await asyncio.to_thread(active.first_frame.wait, FIRST_FRAME_WAIT)
            with contextlib.suppress(RuntimeError):  # (shut down: the recording is stopping right now)
                await asyncio.get_running_loop().run_in_executor(active.pool, active.flush)
            if active.writer is not None:
                return path, active.writer.size, row.id
        if not path.is_file():
            raise NotFound(f"recording {row.id} has no video ({row.status}: {row.error or 'no frame captured'})")
        return path, path.stat().st_size, row.id

    async def timeline(self, org_id: str, rec_id: str | None = None,
                       computer_id: str | None = None) -> dict[str, Any]:
        """The recording and its timeline: each action once, from its request to its completion, and the
        other events (navigations, tabs, shell commands) as they came."""
        row = await (self._row(org_id, rec_id) if rec_id else self._latest_of(org_id, computer_id or ""))
        lines = await asyncio.to_thread(_read_lines, self.timeline_path(row.id))
        return {"recording": recording_dict(row, self._active_of(row)), **build_timeline(lines)}

    async def delete(self, org_id: str, rec_id: str) -> None:
        row = await self._row(org_id, rec_id)
        active = self._active_of(row)
        if active is not None:
            await self._finish(active, "deleted")
        await self._remove(row.id)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            with contextlib.suppress(ValueError):  # a line cut short by a crash
                out.append(json.loads(line))
    return out


def build_timeline(lines: list[dict[str, Any]]) -> dict[str, Any]:
    actions: list[dict[str, Any]] = []
    by_request: dict[str, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    for entry in lines:
        kind = entry.get("type")
        if kind == "action_requested":
            item = {"request_id": entry.get("request_id"), "offset_seconds": entry["offset_seconds"],
                    "end_offset_seconds": None, "kind": entry.get("kind"), "tab_id": entry.get("tab_id"),
                    "status": None, "error_message": None, "timestamp": entry.get("timestamp")}
            for key in ("action", "actions"):
                if key in entry:
                    item[key] = entry[key]
            actions.append(item)
            if item["request_id"]:
                by_request[str(item["request_id"])] = item
        elif kind == "action_completed":
            done = by_request.pop(str(entry.get("request_id")), None)
            if done is not None:
                done.update(end_offset_seconds=entry["offset_seconds"], status=entry.get("status"),
                            error_message=entry.get("error_message"))
                if entry.get("tab_id"):
                    done["tab_id"] = entry["tab_id"]
                if "exit_code" in entry:
                    done["exit_code"] = entry["exit_code"]
        else:
            events.append(entry)
    return {"actions": actions, "events": events}
