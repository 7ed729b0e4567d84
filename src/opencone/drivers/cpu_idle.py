"""How much of the machine's CPU went unused lately, in cores.

A warm pool launches ahead of demand only with CPU the live computers leave over
(drivers/pool.py). Its browsers start at the lowest priority (drivers/priority.py),
but the server's own share of a launch (spawning, Playwright's connection, stealth,
the first tab: about 18 ms of the server's CPU and 18 ms of Playwright's driver per
browser, measured) runs at normal priority, beside the live computers' page loads.

Time spent at a raised nice value counts as spare: that is the pool's own launches
(and other background work), which yield to everything else anyway.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import psutil


class IdleCores:
    """Called, the average number of idle cores since the previous call at least ``min_window``
    seconds before (a call sooner gets the same figure again); all cores before the first window."""

    def __init__(self, read: Callable[[], Any] = psutil.cpu_times, clock: Callable[[], float] = time.monotonic,
                 min_window: float = 0.05) -> None:
        self._read = read
        self._clock = clock
        self._min_window = min_window
        self._last: tuple[float, float] | None = None  # (when, spare CPU seconds so far)
        self._value = float(os.cpu_count() or 1)

    def __call__(self) -> float:
        now, spare = self._clock(), self._spare()
        if self._last is None:
            self._last = (now, spare)
        elif now - self._last[0] >= self._min_window:
            self._value = max(0.0, (spare - self._last[1]) / (now - self._last[0]))
            self._last = (now, spare)
        return self._value

    def _spare(self) -> float:
        times = self._read()  # seconds, summed over the cores, since boot
        return float(times.idle + getattr(times, "iowait", 0.0) + getattr(times, "nice", 0.0))
