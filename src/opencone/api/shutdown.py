"""Know when the server begins to stop, so endless streams can end cleanly.

uvicorn waits for open responses before it shuts the application down, and a
live stream never ends by itself: it would hold the shutdown until uvicorn's
graceful timeout and then be cut off mid-chunk. uvicorn says nothing to the
application until then, so ``stopping()`` wraps the SIGINT/SIGTERM handlers
uvicorn installed (it restores its own when it is done) to set an event that
streams can wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from types import FrameType
from typing import Any

_events: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}


def stopping() -> asyncio.Event:
    """An event set when the server receives SIGINT or SIGTERM; call from the event loop."""
    loop = asyncio.get_running_loop()
    event = _events.get(loop)
    if event is None:
        event = _events[loop] = asyncio.Event()
        if threading.current_thread() is threading.main_thread():  # only there can handlers be set
            for sig in (signal.SIGINT, signal.SIGTERM):
                _chain(sig, loop, event)
    return event


def _chain(sig: signal.Signals, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
    previous = signal.getsignal(sig)
    if not callable(previous):
        return  # not uvicorn's handler (default or ignored): leave the signal alone

    def handler(signum: int, frame: FrameType | None) -> Any:
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(event.set)  # signal-safe: it only writes to the loop's wake-up pipe
        return previous(signum, frame)

    signal.signal(sig, handler)
