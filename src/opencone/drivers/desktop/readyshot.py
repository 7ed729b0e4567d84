"""Encode a desktop's screen ahead of the screenshot an agent takes after acting.

An agent acts, gives the screen a moment to settle, then looks. Grabbing and
encoding the screen costs about as much as the whole HTTP round trip around it,
so in that moment the screen is looked at a few times on the X thread: each look
is one XDAMAGE round trip, and a grab and encode only when something was drawn
since the last (screen.py keeps the JPEG). The screenshot that follows then finds
nothing drawn since and answers with that JPEG at once; if something was drawn
after the last look it grabs afresh, as always, so it never shows an old screen.

A shell command that ends counts as input: what it ran may have drawn.
The looks follow the last input at growing intervals and stop at the next input,
at the screenshot, or after the last interval, so an idle desktop costs nothing
and a busy one at most one encode per look. They start only once the desktop's
client has taken a screenshot (at that quality), and a look is skipped while
the X thread has other work queued: input always comes first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

LOOKS = (0.012, 0.03, 0.06, 0.12, 0.25, 0.5)  # seconds after the last input


class ReadyShot:
    def __init__(self, look: Callable[[int], asyncio.Future[Any] | None]) -> None:
        """``look(quality)`` queues one look on the X thread (None when it is busy)."""
        self._look = look
        self._quality: int | None = None  # of the last screenshot; None: no screenshot taken yet
        self._timer: asyncio.TimerHandle | None = None
        self._generation = 0  # bumped by every input: a look of an older one schedules nothing

    def after_input(self) -> None:
        self._stop()
        if self._quality is not None:
            self._schedule(0, self._generation)

    def screenshot_taken(self, quality: int) -> None:
        self._quality = quality
        self._stop()

    def close(self) -> None:
        self._quality = None
        self._stop()

    def _stop(self) -> None:
        self._generation += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, step: int, generation: int) -> None:
        wait = LOOKS[step] - (LOOKS[step - 1] if step else 0.0)
        self._timer = asyncio.get_running_loop().call_later(wait, self._fire, step, generation)

    def _fire(self, step: int, generation: int) -> None:
        self._timer = None
        if generation != self._generation or self._quality is None:
            return
        future = self._look(self._quality)
        if step + 1 >= len(LOOKS):
            return
        if future is None:
            self._schedule(step + 1, generation)
        else:
            future.add_done_callback(lambda f: self._next(f, step + 1, generation))

    def _next(self, future: asyncio.Future[Any], step: int, generation: int) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # the desktop went away, or its X server refused: the screenshot will say
        if generation == self._generation:
            self._schedule(step, generation)
