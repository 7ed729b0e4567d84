"""Teardowns of ended computers: after the wave of ends that asked for them, a few at a time.

A DELETE only marks its computer ended (core/computers.py); what follows (before-close hooks, the
kill, Playwright's close, the end hooks, the row's write) is ~13 ms of event-loop work per browser
(py-spy of the server: 32 deletes at once). Started at once, a wave of deletes (an evaluation's 32
computers, deleted together) ran the first teardowns between the later DELETEs and those waited
behind them: p50 40-113 ms against 12-50 ms for retrieves of the same computers. So a teardown
starts once no computer has ended for ``quiet`` seconds (the wave is answered), at the latest
``cap`` seconds after its own end, and runs with at most ``at_once`` others so creates keep the CPU.
The computer's slot is free from its end, not from its teardown: a create never waits for this.
The teardowns' last step, each computer's row written as terminated, is one transaction for many.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

TEARDOWNS_AT_ONCE = 4
QUIET_SECONDS = 0.05  # ends closer together are one wave (a client sends 32 within ~30 ms; more on a loaded machine)
CAP_SECONDS = 0.25  # a steady stream of ends still gets its teardowns going this soon


class Teardowns:
    def __init__(self, at_once: int = TEARDOWNS_AT_ONCE, quiet: float = QUIET_SECONDS,
                 cap: float = CAP_SECONDS) -> None:
        self._slots = asyncio.Semaphore(at_once)
        self._quiet, self._cap = quiet, cap
        self._last_end = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._hurry = False  # set by ``drain``: the server is stopping, nothing waits for a quiet moment

    def start(self, teardown: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``teardown()`` after the wave this end belongs to; never raises here."""
        loop = asyncio.get_running_loop()
        self._last_end = ended = loop.time()
        task = loop.create_task(self._run(teardown, ended), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, teardown: Callable[[], Awaitable[None]], ended: float) -> None:
        loop = asyncio.get_running_loop()
        while not self._hurry:
            wait = min(self._last_end + self._quiet, ended + self._cap) - loop.time()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        async with self._slots:
            await teardown()

    async def drain(self) -> None:
        """Every teardown started so far, and those they start, done (the server stops)."""
        self._hurry = True
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)

