"""A task's event log: what ``/agent/tasks/stream`` sends, kept whole for re-attaching.

Every event is a JSON object with ``type``, ``task_id``, ``seq`` (1, 2, …; also its SSE
``id:``) and ``timestamp``. The log keeps every event of the task, so a reader that
re-attaches with ``Last-Event-ID: N`` gets exactly the events after N, none lost and none
twice, whether the task still runs or has ended. The terminal event (``completed``,
``failed``, ``cancelled``, ``max_steps``) is the last; after it the log is closed and every
stream ends.

Framing is the ``tzafon`` SDK's (lightcone-api.md §5.10): ``id: N``, ``event: <type>``, one
``data:`` line of JSON; heartbeats are JSON data events too (``{"type": "heartbeat"}``, no
``id:``), never a comment-only block, and there is no ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from opencone.core.clock import Clock, iso

TERMINAL = ("completed", "failed", "cancelled", "max_steps")
# what a concise stream leaves out (spec §a.4): the step-by-step detail
VERBOSE_ONLY = ("step_started", "action", "action_result")


class TaskEvent:
    __slots__ = ("seq", "type", "body", "_frame")

    def __init__(self, body: dict[str, Any]) -> None:
        self.seq: int = body["seq"]
        self.type: str = body["type"]
        self.body = body
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        """The SSE block, encoded once for every reader."""
        if self._frame is None:
            data = json.dumps(self.body, ensure_ascii=False, separators=(",", ":"), default=str)
            self._frame = f"id: {self.seq}\nevent: {self.type}\ndata: {data}\n\n".encode()
        return self._frame


def unnumbered_frame(body: dict[str, Any]) -> bytes:
    """A data event outside the log's numbering (no ``id:``): a heartbeat, or the rebuilt end of
    a task whose log is gone."""
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"event: {body['type']}\ndata: {data}\n\n".encode()


def heartbeat_frame(task_id: str, clock: Clock) -> bytes:
    body = json.dumps({"type": "heartbeat", "task_id": task_id, "timestamp": iso(clock.now())})
    return f"data: {body}\n\n".encode()


class TaskLog:
    """The events of one task, in order; readers wait on it without holding anything."""

    def __init__(self, task_id: str, clock: Clock) -> None:
        self.task_id = task_id
        self._clock = clock
        self.events: list[TaskEvent] = []
        self.closed = False
        self._changed = asyncio.Event()

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    def emit(self, kind: str, /, **fields: Any) -> TaskEvent | None:
        """Append an event (none once the terminal one is in)."""
        if self.closed:
            return None
        body = {"type": kind, "task_id": self.task_id, "seq": self.last_seq + 1,
                "timestamp": iso(self._clock.now()), **fields}
        event = TaskEvent(body)
        self.events.append(event)
        if kind in TERMINAL:
            self.closed = True
        self._wake()
        return event

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def after(self, seq: int) -> list[TaskEvent]:
        """The events with a ``seq`` above ``seq`` (seqs are 1…n, so this is a slice)."""
        return self.events[max(0, seq):]

    async def wait(self, seq: int, timeout: float) -> list[TaskEvent]:
        """Events after ``seq``; if there are none yet, wait up to ``timeout`` for some."""
        found = self.after(seq)
        if found or self.closed:
            return found
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            return []
        return self.after(seq)
