"""A minimal CDP client on one browser-level websocket, with flat sessions.

Commands are queued and written in order without waiting for their answers, so
several can be in flight at once (the overrides of a paused target, the events of
one click); each answer resolves its own future. Used where Playwright's
CDPSession cannot go: the flat child sessions of auto-attached targets
(stealth.py), and input that should not take the detour through Playwright's
node driver (computer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection

log = logging.getLogger(__name__)


class CdpConnection:
    """A minimal flat-session CDP client: commands are queued and sent in order, never awaited to send."""

    def __init__(self, ws: ClientConnection, on_event: Callable[[str, dict[str, Any], str | None], None]) -> None:
        self._ws = ws
        self._on_event = on_event
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self.closed = False
        self._writer = asyncio.ensure_future(self._write())
        self._reader = asyncio.ensure_future(self._read())

    def send(self, method: str, params: dict[str, Any] | None = None,
             session_id: str | None = None) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)  # fire-and-forget commands must not log "never retrieved"
        if self.closed:
            future.set_exception(ConnectionError("the browser's DevTools connection is closed"))
            return future
        msg_id = next(self._ids)
        self._pending[msg_id] = future
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        self._outbox.put_nowait(json.dumps(message))
        return future

    async def _write(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                await self._ws.send(await self._outbox.get())

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                message = json.loads(raw)
                if "id" in message:
                    future = self._pending.pop(message["id"], None)
                    if future is None or future.done():
                        continue
                    if "error" in message:
                        future.set_exception(RuntimeError(message["error"].get("message", "CDP error")))
                    else:
                        future.set_result(message.get("result", {}))
                else:
                    try:
                        self._on_event(message.get("method", ""), message.get("params", {}), message.get("sessionId"))
                    except Exception:  # one bad event must not stop the others
                        log.exception("CDP: handling %s failed", message.get("method"))
        except Exception:
            pass  # the browser went away; pending commands fail below
        finally:
            self.closed = True
            self._writer.cancel()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the browser's DevTools connection closed"))
            self._pending.clear()

    async def close(self) -> None:
        self.closed = True
        self._writer.cancel()
        self._reader.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ws.close(), 1)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
