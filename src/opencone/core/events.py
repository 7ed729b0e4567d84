"""A per-computer event bus: what ``GET /computers/{id}/events`` streams.

Publishing never waits and never fails. Each subscriber has a bounded queue
(events and bytes); when it is full, new events are dropped for that
subscriber only and counted, and it receives one ``dropped`` event in their
place once it has room again, so a stalled client costs memory up to its bound
and the computer nothing. A small ring of recent events per computer lets a
client that reconnects resume after the last ``seq`` it saw.

Every event is a dict with ``type``, ``computer_id``, ``timestamp`` and a
per-computer ``seq`` (1, 2, ...). Meta events that are not part of the
computer's history (``subscribed``, ``heartbeat``, ``dropped``) carry no
``seq``. The computer's last event is ``terminated``; after it every
subscription ends.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from opencone.core import actions as a
from opencone.core.clock import Clock, SystemClock, iso

TERMINATED = "terminated"
MAX_EVENT_STRING = 1 << 20  # longer strings in results (html, data URLs) are clipped, so one event fits a queue


class Event:
    """One event. Its SSE block is encoded on first use, once for every subscriber: most
    actions run with nobody subscribed, and then only the replay history keeps them."""

    __slots__ = ("seq", "type", "body", "_frame")

    def __init__(self, body: dict[str, Any]) -> None:
        self.seq: int | None = body.get("seq")
        self.type = str(body["type"])
        self.body = body
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        """The whole SSE block: ``id:`` only for events with a ``seq``; the JSON is one line
        (json.dumps escapes newlines)."""
        if self._frame is None:
            data = json.dumps(self.body, ensure_ascii=False, separators=(",", ":"), default=str)
            head = f"id: {self.seq}\n" if self.seq is not None else ""
            self._frame = f"{head}data: {data}\n\n".encode()
        return self._frame

    @property
    def size(self) -> int:
        return len(self.frame)

    @property
    def weight(self) -> int:
        """Its size if encoded, else a cheap estimate (for the history's byte bound)."""
        return len(self._frame) if self._frame is not None else 32 + _estimate(self.body)


def _estimate(value: Any) -> int:
    """Roughly the JSON size of ``value``, without encoding it."""
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, dict):
        return sum(len(k) + 4 + _estimate(v) for k, v in value.items()) + 2
    if isinstance(value, list | tuple):
        return sum(_estimate(v) + 1 for v in value) + 2
    return 8


def encode(body: dict[str, Any]) -> Event:
    return Event(body)


@dataclass(frozen=True, slots=True)
class Limits:
    queue_events: int = 1000
    queue_bytes: int = 16 << 20
    history_events: int = 256
    history_bytes: int = 1 << 20
    ended_kept: int = 256  # ended computers whose ``terminated`` event is kept for late subscribers


class Subscription:
    """One reader. ``next()`` gives events in order; ``finished`` once the stream is over."""

    def __init__(self, computer_id: str, limits: Limits, clock: Clock) -> None:
        self.computer_id = computer_id
        self._limits = limits
        self._clock = clock
        self._queue: deque[Event] = deque()
        self._bytes = 0
        self._dropped = 0
        self._dropped_seqs: tuple[int | None, int | None] = (None, None)
        self._wake = asyncio.Event()
        self._ended = False  # the terminal event is queued: nothing more will come
        self._cancelled = False

    @property
    def finished(self) -> bool:
        """True once the terminal event was handed out, or the reader went away."""
        return self._cancelled or (self._ended and not self._queue and not self._dropped)

    @property
    def dropped_total(self) -> int:
        return self._dropped

    def offer(self, ev: Event, *, terminal: bool = False) -> None:
        """Queue ``ev`` unless the queue is full (then count it); the terminal event always gets in."""
        if self._ended or self._cancelled:
            return
        full = len(self._queue) >= self._limits.queue_events or self._bytes + ev.size > self._limits.queue_bytes
        if full and not terminal and self._queue:
            self._dropped += 1
            first, _last = self._dropped_seqs
            self._dropped_seqs = (first if first is not None else ev.seq, ev.seq)
            return
        self._flush_dropped()
        self._queue.append(ev)
        self._bytes += ev.size
        self._ended = terminal
        self._wake.set()

    def _flush_dropped(self) -> None:
        """The ``dropped`` marker goes where the gap is, before the next event that fits."""
        if not self._dropped:
            return
        first, last = self._dropped_seqs
        ev = encode({"type": "dropped", "computer_id": self.computer_id, "timestamp": iso(self._clock.now()),
                     "count": self._dropped, "first_seq": first, "last_seq": last})
        self._dropped, self._dropped_seqs = 0, (None, None)
        self._queue.append(ev)
        self._bytes += ev.size

    def cancel(self) -> None:
        self._cancelled = True
        self._queue.clear()
        self._bytes = 0
        self._wake.set()

    def drain(self, max_bytes: int = 256 << 10) -> list[Event]:
        """Queued events, oldest first, up to about ``max_bytes`` (at least one if any)."""
        if not self._queue and self._dropped:
            self._flush_dropped()  # caught up: report the gap now rather than at the next event
        out: list[Event] = []
        size = 0
        while self._queue and (not out or size + self._queue[0].size <= max_bytes):
            ev = self._queue.popleft()
            self._bytes -= ev.size
            size += ev.size
            out.append(ev)
        return out

    async def next_batch(self, timeout: float) -> list[Event]:
        """Events as soon as there are any; [] after ``timeout`` seconds without one, or when finished."""
        while not self.finished:
            batch = self.drain()
            if batch:
                return batch
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                return []
        return []


class _Channel:
    def __init__(self, computer_id: str) -> None:
        self.computer_id = computer_id
        self.next_seq = 1
        self.history: deque[tuple[Event, int]] = deque()  # with the weight counted for it
        self.history_bytes = 0
        self.subscribers: set[Subscription] = set()
        self.final: Event | None = None


class EventBus:
    def __init__(self, clock: Clock | None = None, limits: Limits | None = None) -> None:
        self._clock = clock or SystemClock()
        self.limits = limits or Limits()
        self._live: dict[str, _Channel] = {}
        self._ended: OrderedDict[str, _Channel] = OrderedDict()

    def open(self, computer_id: str) -> None:
        self._live.setdefault(computer_id, _Channel(computer_id))

    def publish(self, computer_id: str, type: str, **fields: Any) -> int | None:
        """Send an event to every subscriber of the computer; its ``seq``, or None if the computer is not live."""
        ch = self._live.get(computer_id)
        if ch is None:
            return None
        ev = self._stamp(ch, type, fields)
        for sub in ch.subscribers:
            sub.offer(ev)
        self._remember(ch, ev)
        return ev.seq

    def close(self, computer_id: str, reason: str, **fields: Any) -> None:
        """Deliver the final ``terminated`` event and end every subscription."""
        ch = self._live.pop(computer_id, None)
        if ch is None:
            return
        ch.final = self._stamp(ch, TERMINATED, {"reason": reason, **fields})
        for sub in ch.subscribers:
            sub.offer(ch.final, terminal=True)
        ch.subscribers.clear()
        ch.history.clear()  # an ended computer keeps only its last word
        ch.history_bytes = 0
        self._ended[computer_id] = ch
        while len(self._ended) > self.limits.ended_kept:
            self._ended.popitem(last=False)

    def close_all(self, reason: str) -> None:
        """End every stream (the server is stopping: its computers end with it)."""
        for computer_id in list(self._live):
            self.close(computer_id, reason)

    def subscribe(self, computer_id: str, after_seq: int | None = None) -> Subscription | None:
        """A new subscription; with ``after_seq``, first the kept events after it. None if unknown here."""
        ch = self._live.get(computer_id) or self._ended.get(computer_id)
        if ch is None:
            return None
        sub = Subscription(computer_id, self.limits, self._clock)
        if after_seq is not None:
            kept = [ev for ev, _w in ch.history if ev.seq is not None and ev.seq > after_seq]
            oldest = kept[0].seq if kept else ch.next_seq
            assert oldest is not None
            if ch.final is None and oldest - after_seq - 1 > 0:
                # older events are no longer kept: say so, as for a slow reader
                sub._dropped, sub._dropped_seqs = oldest - after_seq - 1, (after_seq + 1, oldest - 1)
            for ev in kept:
                sub.offer(ev)
        if ch.final is not None:
            sub.offer(ch.final, terminal=True)
        else:
            ch.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.cancel()
        ch = self._live.get(sub.computer_id)
        if ch is not None:
            ch.subscribers.discard(sub)

    def is_live(self, computer_id: str) -> bool:
        return computer_id in self._live

    def last_seq(self, computer_id: str) -> int | None:
        ch = self._live.get(computer_id) or self._ended.get(computer_id)
        return None if ch is None else ch.next_seq - 1

    @property
    def subscriber_total(self) -> int:
        """Open subscriptions over every live computer (GET /metrics)."""
        return sum(len(ch.subscribers) for ch in list(self._live.values()))

    def subscriber_count(self, computer_id: str) -> int:
        ch = self._live.get(computer_id)
        return 0 if ch is None else len(ch.subscribers)

    # -- internals ----------------------------------------------------------------------
    def _stamp(self, ch: _Channel, type: str, fields: dict[str, Any]) -> Event:
        body = {"type": type, "computer_id": ch.computer_id, "timestamp": iso(self._clock.now()),
                "seq": ch.next_seq, **fields}
        ch.next_seq += 1
        return encode(body)

    def _remember(self, ch: _Channel, ev: Event) -> None:
        lim = self.limits
        weight = ev.weight
        ch.history.append((ev, weight))
        ch.history_bytes += weight
        while ch.history and (len(ch.history) > lim.history_events or ch.history_bytes > lim.history_bytes):
            ch.history_bytes -= ch.history.popleft()[1]


def meta(computer_id: str, type: str, clock: Clock, **fields: Any) -> Event:
    """An event outside the computer's sequence (no ``seq``, no SSE ``id:``)."""
    return encode({"type": type, "computer_id": computer_id, "timestamp": iso(clock.now()), **fields})


# -- bodies of action events (built here so core/computers.py stays about computers) -----
def action_fields(actions: Iterable[a.Action], tab_id: str | None) -> dict[str, Any]:
    dumped = [act.model_dump(mode="json") for act in actions]
    out: dict[str, Any] = {"kind": dumped[0]["kind"] if dumped else None, "tab_id": tab_id}
    if len(dumped) == 1:
        out["action"] = dumped[0]
    else:
        out["actions"] = dumped
    return out


def clip(value: Any) -> Any:
    """``value`` with every string longer than MAX_EVENT_STRING cut to it (marked with a trailing note)."""
    if isinstance(value, str) and len(value) > MAX_EVENT_STRING:
        return value[:MAX_EVENT_STRING] + f"…[{len(value) - MAX_EVENT_STRING} characters clipped in the event]"
    if isinstance(value, dict):
        return {k: clip(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clip(v) for v in value]
    return value


def completed_fields(result: dict[str, Any]) -> dict[str, Any]:
    """Extra top-level fields of ``action_completed``: shell output as the docs describe, ``image_url`` alias."""
    out: dict[str, Any] = {}
    if "exit_code" in result:
        out.update(exit_code=result.get("exit_code"), stdout=result.get("stdout"), stderr=result.get("stderr"))
    url = result.get("screenshot_url")
    if isinstance(url, str) and not url.startswith("data:"):
        out["image_url"] = url  # community clients grep events for image_url
    return out
