"""Hands out browser computers from a warm pool of launched Chromiums."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from playwright.async_api import Playwright, async_playwright

from opencone.drivers.base import Display, DriverError
from opencone.drivers.chromium.computer import ChromiumComputer
from opencone.drivers.chromium.launcher import chromium_major_version
from opencone.drivers.chromium.proxied import ProxiedChromium
from opencone.drivers.chromium.stealth import DEFAULT as DEFAULT_STEALTH
from opencone.drivers.chromium.stealth import StealthConfig, launch_user_agent
from opencone.drivers.network import NetworkPlan
from opencone.drivers.pool import PoolPolicy, WarmPool
from opencone.drivers.processes import tree_private_bytes
from opencone.drivers.sandbox import Sandbox
from opencone.drivers.sandbox.workspaces import sandbox_ids


class BrowserFactory:
    kind = "browser"

    def __init__(self, executable: str, run_dir: Path, pool: int | PoolPolicy, default: Display, *,
                 proxy_connect_timeout: float = 10.0, advanced_proxy_url: str | None = None,
                 sandbox: Sandbox | None = None, network: NetworkPlan | None = None) -> None:
        self._executable = executable
        # where every browser's traffic may go (its forwarder applies it: drivers/proxy/egress.py)
        self._network = network if network is not None else NetworkPlan()
        # where each browser runs as the sandbox's user (drivers/sandbox): a web page that breaks out
        # of Chromium's renderer then holds an unprivileged process that sees none of the host's files
        self._sandbox = sandbox
        # every browser gets its own forwarding proxy (drivers/proxy), direct until told otherwise
        self._proxy_connect_timeout = proxy_connect_timeout
        self.advanced_proxy_url = advanced_proxy_url
        self._run_dir = run_dir
        self._default = default
        self._playwright: Playwright | None = None
        self._manager = None
        self._chrome_major: str | None = None
        self._pool_user_agent: str | None = None  # what pool browsers start with: the default stealth's
        self.pool: WarmPool[ChromiumComputer] = WarmPool(
            "browser", pool, self._launch, self._dispose, healthy=lambda c: c.alive,
            measure=lambda c: tree_private_bytes(c.process.pid),
            lower_ahead=True,
        )

    async def start(self) -> None:
        self._manager = async_playwright()
        self._playwright = await self._manager.start()
        self._chrome_major = await chromium_major_version(self._executable)
        self._pool_user_agent = launch_user_agent(DEFAULT_STEALTH, self._chrome_major)
        self.pool.start()

    async def _launch(self) -> ChromiumComputer:
        assert self._playwright is not None, "factory not started"
        profile = self.new_profile_dir()
        return await ProxiedChromium.launch_proxied(self._playwright, self._executable, profile,
                                                    Display(self._default.width, self._default.height),
                                                    plan=self._network, relay_dir=self.relay_dir,
                                                    connect_timeout=self._proxy_connect_timeout,
                                                    user_agent=self._pool_user_agent, wrap=self._wrap(profile))

    @property
    def relay_dir(self) -> Path:
        """Where the Unix sockets Playwright reaches browsers' DevTools through live (devtools.py)."""
        return self._run_dir / "devtools"

    @staticmethod
    async def _dispose(computer: ChromiumComputer) -> None:
        await computer.close()

    def user_agent_for(self, stealth: dict[str, object] | None) -> str | None:
        """The user agent a browser for these ``stealth`` options starts with (see stealth.launch_user_agent)."""
        return launch_user_agent(StealthConfig.from_options(stealth), self._chrome_major)

    async def create(self, display: Display, options: Mapping[str, Any] | None = None) -> ChromiumComputer:
        """A browser from the warm pool; launched cold when the ``stealth`` option needs another
        start-up user agent than the pool's (a custom ``user_agent``, or stealth disabled).
        ``use_advanced_proxy`` routes it through the server's upstream proxy."""
        options = options or {}
        use_advanced_proxy, stealth = bool(options.get("use_advanced_proxy")), options.get("stealth")
        self._check_advanced_proxy(use_advanced_proxy)
        user_agent = self.user_agent_for(stealth)
        if user_agent != self._pool_user_agent:
            return await self.create_with_profile(display, self.new_profile_dir(),
                                                  use_advanced_proxy=use_advanced_proxy, user_agent=user_agent)
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

    def _sandboxed(self) -> Sandbox | None:
        return self._sandbox if self._sandbox is not None and self._sandbox.available else None

    def new_profile_dir(self) -> Path:
        """A fresh, unused profile directory (for a new browser, or a restored profile): in the
        sandbox's root, the sandbox user's, where it can reach it; else under the run dir."""
        name = f"browser-{secrets.token_hex(6)}"
        sandbox = self._sandboxed()
        return sandbox.workspaces.ensure(name, "profile") if sandbox else self._run_dir / name

    @property
    def profile_owner(self) -> tuple[int, int] | None:
        """Who must own a restored profile: the sandbox's user, else (None) the server's."""
        return sandbox_ids() if self._sandboxed() else None

    def _wrap(self, profile: Path) -> Callable[[list[str]], list[str]] | None:
        """How a browser on ``profile`` (from ``new_profile_dir``) is started in the sandbox: with
        its profile and nothing else of the host's writable, no /workspace, no display."""
        sandbox = self._sandboxed()
        if sandbox is None or profile.parent != sandbox.workspaces.root:
            return None
        sandbox_id = profile.stem

        def wrap(argv: list[str]) -> list[str]:
            return sandbox.program_line(sandbox_id, argv, cwd="/", x_display=None, workspace=False,
                                        binds=[(profile, str(profile))])
        return wrap

    async def create_with_profile(self, display: Display, profile: Path, *, use_advanced_proxy: bool = False,
                                  user_agent: str | None = None) -> ChromiumComputer:
        """A browser launched cold on ``profile`` (e.g. a restored one): never from the warm pool."""
        assert self._playwright is not None, "factory not started"
        self._check_advanced_proxy(use_advanced_proxy)
        return await ProxiedChromium.launch_proxied(
            self._playwright, self._executable, profile, Display(display.width, display.height, display.scale),
            plan=self._network, relay_dir=self.relay_dir, connect_timeout=self._proxy_connect_timeout,
            upstream=self.advanced_proxy_url if use_advanced_proxy else None, user_agent=user_agent,
            wrap=self._wrap(profile),
        )

    def _check_advanced_proxy(self, use_advanced_proxy: bool) -> None:
        if use_advanced_proxy and not self.advanced_proxy_url:
            raise DriverError("use_advanced_proxy needs an advanced proxy, and this server has none configured "
                              "(set ADVANCED_PROXY_URL or OPENCONE_ADVANCED_PROXY_URL)")

    async def stop(self) -> None:
        await self.pool.close()
        if self._playwright is not None:
            with contextlib.suppress(Exception):
                await self._playwright.stop()
            self._playwright = None
