"""Where a desktop's X calls run: its own thread, or the event loop for a send.

An Xlib ``Display`` is neither thread-safe nor non-blocking, so every call that
may wait for the X server (a reply, a screenshot, a wait for the window manager)
runs on the desktop's one thread, in the order it was asked for. Input that only
sends requests (a click's events) does not wait for the X server; handing it to
the thread and back costs two thread wake-ups, more than the send itself, so
it runs on the event loop at once when the thread has nothing queued. The lock
keeps the two apart; the queue count keeps the order.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class XThread:
    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._lock = threading.Lock()  # held while a call uses the connection, on the thread or the loop
        self._queued = 0  # calls handed to the thread and not finished (counted on the event loop)

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            return fn(*args)

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn`` for the thread, after every call queued before it."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, self._locked, fn, *args)
        self._queued += 1
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: asyncio.Future[Any]) -> None:
        self._queued -= 1

    @property
    def busy(self) -> bool:
        """Whether calls are queued or running on the thread."""
        return self._queued > 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.submit(fn, *args)

    def now(self, fn: Callable[..., T], *args: Any,
            only_if: Callable[[], bool] | None = None) -> tuple[bool, T | None]:
        """Run ``fn`` here, at once, if the thread is idle with nothing queued and ``only_if()``
        (asked with the connection held) says yes: (True, its result); else (False, None).

        Only for calls that send and return without waiting for the X server: the
        event loop must never wait on it.
        """
        if self._queued or not self._lock.acquire(blocking=False):
            return False, None
        try:
            if only_if is not None and not only_if():
                return False, None
            return True, fn(*args)
        finally:
            self._lock.release()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
