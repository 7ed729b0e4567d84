"""A browser computer whose traffic goes through its own forwarding proxy.

Chromium is launched once, in the computer's network namespace
(drivers/network.py), with ``--proxy-server`` pointing at a ForwardingProxy that
listens there; ``change_proxy`` only changes the forwarder's upstream, so the
browser, its tabs and its cookies stay as they are.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from playwright.async_api import Playwright

from opencone.drivers.base import Display, DriverError
from opencone.drivers.chromium.computer import ChromiumComputer
from opencone.drivers.chromium.launcher import proxy_flags
from opencone.drivers.network import ComputerNetwork, NetworkPlan
from opencone.drivers.proxy import ForwardingProxy
from opencone.drivers.proxy.control import RoutedThroughProxy
from opencone.drivers.proxy.egress import EgressRefused


class ProxiedChromium(RoutedThroughProxy, ChromiumComputer):
    proxy: ForwardingProxy | None = None

    @classmethod
    async def launch_proxied(cls, playwright: Playwright, executable: str, profile_dir: Path, display: Display,
                             *, plan: NetworkPlan, relay_dir: Path, connect_timeout: float = 10.0,
                             upstream: str | None = None, **launch: Any) -> ProxiedChromium:
        """A browser in a network of its own, as ``plan`` says (drivers/network.py);
        ``relay_dir`` holds the socket Playwright reaches its DevTools through."""
        network = await ComputerNetwork.open(plan, upstream=upstream, connect_timeout=connect_timeout)
        try:
            try:
                await network.proxy.check_upstream(upstream)
            except EgressRefused as exc:
                raise DriverError(f"the proxy is refused: {exc}") from None
            extra = [*(launch.pop("extra_args", None) or []), *proxy_flags(network.proxy.url)]
            computer = await cls.launch(playwright, executable, profile_dir, display, extra_args=extra,
                                        netns=network.namespace, relay_dir=relay_dir, **launch)
        except BaseException:
            await network.close()
            raise
        assert isinstance(computer, ProxiedChromium)
        network.guard(computer.process.devtools.port)
        computer.network, computer.proxy = network, network.proxy
        network.report_refusals(lambda kind, fields: computer.tabs.emit(kind, **fields))
        return computer

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            if self.network is not None:
                await self.network.close()

    async def navigate(self, url: str, timeout: float, tab: str | None) -> None:
        """As the base class, with the error a browser without the forwarder would give.

        A failed CONNECT reaches Playwright only as net::ERR_TUNNEL_CONNECTION_FAILED,
        and a failed plain-http request as the forwarder's 502 page, which loads fine;
        the forwarder knows the real cause (ERR_CONNECTION_REFUSED, the upstream's answer…).
        """
        started = time.monotonic()
        try:
            await super().navigate(url, timeout, tab)
        except DriverError as exc:
            if "net::ERR_" in str(exc):
                await self._settle_error_page(tab)
            failure = self.proxy.failure_for(url, since=started) if self.proxy else None
            if failure is None:
                raise
            raise DriverError(f"navigation to {url} failed: net::{failure.code} ({failure.reason})") from None
        failure = self.proxy.failure_for(url, since=started) if self.proxy else None
        if failure is not None:
            raise DriverError(f"navigation to {url} failed: net::{failure.code} ({failure.reason})")

    async def _settle_error_page(self, tab: str | None) -> None:
        # Chromium commits its error page a moment after goto fails; a navigation started
        # before that is "interrupted by another navigation to chrome-error://chromewebdata/".
        with contextlib.suppress(Exception):
            t = await self._tab(tab)
            await t.page.wait_for_url("chrome-error://**", timeout=2000)
