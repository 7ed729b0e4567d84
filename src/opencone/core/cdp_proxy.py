"""The CDP proxy: one client WebSocket ⇄ the computer's own browser DevTools WebSocket.

Messages are pumped both ways unchanged, except client commands that
``cdp_policy`` refuses or rewrites. The proxy is the only way in: Chromium
listens on 127.0.0.1 only. Closing the client socket closes only the
proxy's upstream connection, never the computer; the computer ending (its
browser killed) closes the client with 1001 and the reason. Every client
command counts as activity, so an automation session does not idle out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any, Protocol

import websockets
from websockets.asyncio.client import ClientConnection

from opencone.core.cdp_policy import CdpPolicy, relabel_error
from opencone.core.computers import ComputerService, LiveComputer
from opencone.core.errors import Conflict, ServiceError
from opencone.drivers.base import CdpEndpoint, DriverError

log = logging.getLogger(__name__)

GOING_AWAY = 1001
_RESPONSE = re.compile(r'\{"id":(\d+),"(?:result|error)"')  # how Chromium starts a command's answer


class Unreachable(ServiceError):
    """The computer is live but its browser does not take a DevTools connection."""

    status = 503


class ClientSocket(Protocol):
    """The client side, as the edge adapts its WebSocket."""

    async def receive(self) -> str | bytes | None: ...  # None once the client has gone
    async def send(self, data: str | bytes) -> None: ...
    async def close(self, code: int, reason: str) -> None: ...


async def endpoint(comp: LiveComputer) -> CdpEndpoint:
    """The computer's browser endpoint, or Conflict when it has none."""
    try:
        return await comp.driver.cdp_endpoint()
    except DriverError as exc:
        raise Conflict(f"computer {comp.id} has no browser to connect to: {exc}") from None


def _close_reason(text: str) -> str:
    return text.encode()[:123].decode(errors="ignore")  # a close frame's reason is at most 123 bytes


class CdpSession:
    """One client connection, its upstream socket to the browser, and the policy between them."""

    def __init__(self, service: ComputerService, comp: LiveComputer, upstream: ClientConnection,
                 policy: CdpPolicy) -> None:
        self._service = service
        self._comp = comp
        self._up = upstream
        self._policy = policy
        self._relabel: dict[Any, tuple[str | None, str]] = {}  # command id → (session, target id)
        self._send_lock = asyncio.Lock()

    @classmethod
    async def open(cls, service: ComputerService, comp: LiveComputer) -> CdpSession:
        """Connect to the browser first, so a failure can still be an HTTP error to the client."""
        ep = await endpoint(comp)
        try:
            # no size limit: screenshots and DOM snapshots can be many MB; no pings: a local socket
            upstream = await ep.connect(max_size=None, compression=None, ping_interval=None, open_timeout=10,
                                        close_timeout=1)
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            raise Unreachable(f"computer {comp.id}'s browser did not accept a DevTools connection: {exc}") from None
        return cls(service, comp, upstream, CdpPolicy(ep.files_dir, ep.host_files_dir))

    async def close(self) -> None:
        """Drop the upstream connection (a client that left before the handshake finished)."""
        await self._up.close()

    async def run(self, client: ClientSocket) -> None:
        """Pump until either side leaves; then close the other side."""
        tasks = {asyncio.create_task(self._upward(client)), asyncio.create_task(self._downward(client))}
        driver = self._comp.driver
        counted = hasattr(driver, "cdp_clients")  # a browser's driver catches up before a navigate then
        if counted:
            driver.cdp_clients += 1  # type: ignore[attr-defined]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if counted:
                driver.cdp_clients -= 1  # type: ignore[attr-defined]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._up.close()
        failed = [t.exception() for t in done if t.exception() is not None]
        if any(t.exception() is None and t.result() == "client" for t in done):
            return  # the client left: nothing happens to the computer
        if failed:
            log.warning("CDP proxy for %s failed: %r", self._comp.id, failed[0])
            await client.close(1011, "internal error in the CDP proxy")
            return
        code, reason = await self._why_browser_left()
        await client.close(code, _close_reason(reason))

    async def _to_client(self, client: ClientSocket, data: str | bytes) -> None:
        async with self._send_lock:  # two pumps may answer the client
            await client.send(data)

    async def _upward(self, client: ClientSocket) -> str:
        while True:
            data = await client.receive()
            if data is None:
                return "client"
            self._service.touch(self._comp)
            verdict = self._policy.check(data)
            if verdict.reply is not None:
                try:
                    await self._to_client(client, verdict.reply)
                except Exception:
                    return "client"
                continue
            if verdict.relabel is not None:
                self._relabel[verdict.msg_id] = (verdict.session, verdict.relabel)
            try:
                assert verdict.forward is not None
                await self._up.send(verdict.forward)
            except websockets.ConnectionClosed:
                return "browser"

    async def _downward(self, client: ClientSocket) -> str:
        try:
            async for data in self._up:
                if self._relabel and isinstance(data, str):
                    data = self._maybe_relabel(data)
                try:
                    await self._to_client(client, data)
                except Exception:
                    return "client"
        except websockets.ConnectionClosed:
            pass
        return "browser"

    def _maybe_relabel(self, data: str) -> str:
        match = _RESPONSE.match(data)
        if match is None or int(match.group(1)) not in self._relabel:
            return data  # events and other answers pass untouched, unparsed
        with contextlib.suppress(ValueError):
            session = json.loads(data).get("sessionId")
            want, ident = self._relabel[int(match.group(1))]
            if session == want:
                del self._relabel[int(match.group(1))]
                relabelled = relabel_error(data, ident)
                return relabelled if isinstance(relabelled, str) else data
        return data

    async def _why_browser_left(self) -> tuple[int, str]:
        comp = self._comp
        # a browser that died on its own ends its computer a moment later
        for _ in range(20):
            if comp.ending:
                break
            await asyncio.sleep(0.025)
        if comp.ending:
            return GOING_AWAY, f"computer {comp.id} ended ({comp.termination_reason or 'terminated'})"
        if comp.kind == "desktop":
            return GOING_AWAY, "the desktop's browser closed; connect again to start a new one"
        return GOING_AWAY, "the browser closed the DevTools connection"
