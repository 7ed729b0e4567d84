"""Hands out browser computers from a warm pool of launched Chromiums."""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

from playwright.async_api import Playwright, async_playwright

from opencone.drivers.base import Display, DriverError
from opencone.drivers.chromium.computer import ChromiumComputer
from opencone.drivers.chromium.proxied import ProxiedChromium
from opencone.drivers.pool import WarmPool


class BrowserFactory:
    kind = "browser"

    def __init__(self, executable: str, run_dir: Path, pool_size: int, default: Display, *,
                 proxy_connect_timeout: float = 10.0, advanced_proxy_url: str | None = None) -> None:
        self._executable = executable
        # every browser gets its own forwarding proxy (drivers/proxy), direct until told otherwise
        self._proxy_connect_timeout = proxy_connect_timeout
        self.advanced_proxy_url = advanced_proxy_url
        self._run_dir = run_dir
        self._default = default
        self._playwright: Playwright | None = None
        self._manager = None
        self.pool: WarmPool[ChromiumComputer] = WarmPool(
            "browser", pool_size, self._launch, self._dispose, healthy=lambda c: c.alive
        )

    async def start(self) -> None:
        self._manager = async_playwright()
        self._playwright = await self._manager.start()
        self.pool.start()

    async def _launch(self) -> ChromiumComputer:
        assert self._playwright is not None, "factory not started"
        profile = self._run_dir / f"browser-{secrets.token_hex(6)}"
        return await ProxiedChromium.launch_proxied(self._playwright, self._executable, profile,
                                                    Display(self._default.width, self._default.height),
                                                    connect_timeout=self._proxy_connect_timeout)

    @staticmethod
    async def _dispose(computer: ChromiumComputer) -> None:
        await computer.close()

    async def create(self, display: Display, *, use_advanced_proxy: bool = False) -> ChromiumComputer:
        if use_advanced_proxy and not self.advanced_proxy_url:
            raise DriverError("use_advanced_proxy needs an advanced proxy, and this server has none configured "
                              "(set ADVANCED_PROXY_URL or OPENCONE_ADVANCED_PROXY_URL)")
        computer = await self.pool.take()
        try:
            if use_advanced_proxy and isinstance(computer, ProxiedChromium):
                await computer.change_proxy(self.advanced_proxy_url)
            if (display.width, display.height, display.scale) != (
                computer.display.width, computer.display.height, computer.display.scale
            ):
                await computer.set_viewport(display)
        except BaseException:
            await computer.close()
            raise
        return computer

    def new_profile_dir(self) -> Path:
        """A fresh, unused profile directory under the run dir (for a restored profile)."""
        return self._run_dir / f"browser-{secrets.token_hex(6)}"

    async def create_with_profile(self, display: Display, profile: Path, *,
                                  use_advanced_proxy: bool = False) -> ChromiumComputer:
        """A browser launched cold on ``profile`` (a restored one): never from the warm pool."""
        assert self._playwright is not None, "factory not started"
        if use_advanced_proxy and not self.advanced_proxy_url:
            raise DriverError("use_advanced_proxy needs an advanced proxy, and this server has none configured "
                              "(set ADVANCED_PROXY_URL or OPENCONE_ADVANCED_PROXY_URL)")
        return await ProxiedChromium.launch_proxied(
            self._playwright, self._executable, profile, Display(display.width, display.height, display.scale),
            connect_timeout=self._proxy_connect_timeout,
            upstream=self.advanced_proxy_url if use_advanced_proxy else None,
        )

    async def stop(self) -> None:
        await self.pool.close()
        if self._playwright is not None:
            with contextlib.suppress(Exception):
                await self._playwright.stop()
            self._playwright = None
