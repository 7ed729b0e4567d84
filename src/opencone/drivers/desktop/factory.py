"""Hands out desktop computers, from a warm pool when one is configured.

The pool is empty by default: a server that never makes a desktop pays for no
Xvfb and not even for Playwright's driver process, which starts with the first
desktop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from playwright.async_api import Playwright, async_playwright

from opencone.drivers.base import Display, DriverError
from opencone.drivers.desktop.computer import DesktopComputer
from opencone.drivers.network import NetworkPlan
from opencone.drivers.pool import PoolPolicy, WarmPool
from opencone.drivers.sandbox import Sandbox


class DesktopFactory:
    kind = "desktop"

    def __init__(self, chromium_path: str, run_dir: Path, pool: int | PoolPolicy, default: Display,
                 framebuffer: tuple[int, int], sandbox: Sandbox | None = None,
                 network: NetworkPlan | None = None) -> None:
        self._chromium_path = chromium_path
        self._network = network if network is not None else NetworkPlan()  # how desktops' networks are made
        self._sandbox = sandbox  # where each desktop's terminal runs
        self._run_dir = run_dir
        self._default = Display(default.width, default.height)
        self._framebuffer = framebuffer
        self._manager = None
        self._playwright: Playwright | None = None
        self._playwright_lock = asyncio.Lock()
        self.pool: WarmPool[DesktopComputer] = WarmPool(
            "desktop", pool, self._launch_default, self._dispose, healthy=lambda d: d.alive, lower_ahead=True,
        )

    async def start(self) -> None:
        self.pool.start()

    async def _driver(self) -> Playwright:
        async with self._playwright_lock:
            if self._playwright is None:
                self._manager = async_playwright()
                self._playwright = await self._manager.start()
            return self._playwright

    async def _launch(self, display: Display) -> DesktopComputer:
        playwright = await self._driver()
        return await DesktopComputer.launch(playwright, self._chromium_path, self._run_dir, display,
                                            self._framebuffer, self._sandbox, self._network)

    async def _launch_default(self) -> DesktopComputer:
        return await self._launch(self._default)

    @staticmethod
    async def _dispose(desktop: DesktopComputer) -> None:
        await desktop.close()

    async def create(self, display: Display, options: Mapping[str, Any] | None = None) -> DesktopComputer:
        """A desktop from the warm pool when one fits ``display``, else launched cold; it takes no
        options (stealth and the advanced proxy are for browsers: rejected at validation)."""
        if display.scale != 1.0:
            raise DriverError("a desktop's scale_factor is always 1; set the width and height you want instead")
        fits = display.width <= self._framebuffer[0] and display.height <= self._framebuffer[1]
        pooled = self.pool.ready_count or self.pool.launching
        if not fits or (not pooled and (display.width, display.height) != (self._default.width, self._default.height)):
            return await self._launch(display)  # cold, at the right size from the start
        desktop = await self.pool.take()  # ready, or the next launch under way (pool.py)
        try:
            if (display.width, display.height) != (desktop.display.width, desktop.display.height):
                await desktop.set_viewport(display)
        except BaseException:
            await desktop.close()
            raise
        return desktop

    async def stop(self) -> None:
        await self.pool.close()
        if self._playwright is not None:
            with contextlib.suppress(Exception):
                await self._playwright.stop()
            self._playwright = None
