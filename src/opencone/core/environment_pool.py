"""Warm pools per saved environment: computers already restored, so a create (a gym ``reset``)
from that environment takes one instead of unpacking and launching.

``OPENCONE_ENVIRONMENT_POOL="env_a:2,env_b:1"`` names the environments and how many of each
to keep ready. Each gets a ``WarmPool`` (drivers/pool.py: refilled in the background after a
take, never while free memory is below ``OPENCONE_POOL_MEMORY_RESERVE_MB``, closed at
shutdown) whose launch is the environment's own restore: a browser on a fresh copy of the
saved profile, or a desktop with its home, ``/workspace`` and browser profile put back.

A pooled computer is only handed out for the create it matches: the environment's kind, the
pool's display, no stealth or proxy options (those shape the launch itself). When the
environment is saved again (a persistent computer of it ended), the pool's computers show the
old state: the next create from it restores the new state cold, and the pool is made anew.
An environment named before it exists is looked for again every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from opencone.config import Settings
from opencone.core.store.models import EnvironmentRecord
from opencone.drivers.base import Display
from opencone.drivers.pool import PoolPolicy, WarmPool

log = logging.getLogger(__name__)
LOOK_AGAIN_SECONDS = 3.0


def parse(value: str) -> dict[str, tuple[int, tuple[int, int] | None]]:
    """``"env_a:2,env_b@1280x800"`` -> ``{"env_a": (2, None), "env_b": (1, (1280, 800))}``: how many
    of each, and the display they are made with (None: the kind's default); ``ValueError`` naming a
    bad entry."""
    wanted: dict[str, tuple[int, tuple[int, int] | None]] = {}
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        head, _, size = entry.partition("@")
        env_id, _, count = head.partition(":")
        env_id = env_id.strip()
        if not env_id or len(env_id) > 64 or not env_id.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"environment pool entry {entry!r}: expected <environment_id>[:<count>][@<w>x<h>]")
        try:
            n = int(count) if count.strip() else 1
            display = tuple(int(v) for v in size.lower().split("x")) if size.strip() else None
        except ValueError:
            raise ValueError(f"environment pool entry {entry!r}: the count and the size (1280x800) are whole "
                             "numbers") from None
        if not 0 <= n <= 64:
            raise ValueError(f"environment pool entry {entry!r}: the count must be between 0 and 64")
        if display is not None and (len(display) != 2 or not all(64 <= v <= 8192 for v in display)):
            raise ValueError(f"environment pool entry {entry!r}: the size is <width>x<height>, 64 to 8192 each")
        wanted[env_id] = (n, display)  # type: ignore[assignment]
    return wanted


@dataclass(slots=True)
class _Spec:
    """What the environments' restore reads of a create spec."""

    kind: str
    display: Display
    environment_id: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Restoring:
    """What ``EnvironmentService.restore_desktop`` reads of a computer: its driver, sandbox, spec."""

    driver: Any
    sandbox_id: str
    spec: _Spec


@dataclass(slots=True)
class Pooled:
    driver: Any
    archive_mtime_ns: int  # the saved state it was restored from


class EnvironmentPool:
    def __init__(self, settings: Settings, sessions: Any, environments: Any, factories: dict[str, Any]) -> None:
        self.settings = settings
        self.wanted = parse(settings.environment_pool)
        self._sessions = sessions
        self._environments = environments
        self._factories = factories
        self.pools: dict[str, WarmPool[Pooled]] = {}
        self.kinds: dict[str, str] = {}
        self.displays: dict[str, Display] = {}
        self.saved_at: dict[str, int] = {}  # the archive's mtime each pool restores from
        self._counts: dict[str, int] = {}
        self.hits = 0
        self._lookers: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()  # pools of a state saved over, being emptied
        self._closed = False

    async def start(self) -> None:
        """A pool for every wanted environment that exists; the others are looked for again."""
        for env_id, (n, size) in self.wanted.items():
            if n > 0 and not await self._open(env_id, n, size):
                log.warning("environment pool: no saved environment %s yet; looking again every %gs",
                            env_id, LOOK_AGAIN_SECONDS)
                task = asyncio.create_task(self._look_for(env_id, n, size), name=f"env-pool-look-{env_id}")
                self._lookers.add(task)
                task.add_done_callback(self._lookers.discard)

    async def _look_for(self, env_id: str, n: int, size: tuple[int, int] | None) -> None:
        while not self._closed:
            await asyncio.sleep(LOOK_AGAIN_SECONDS)
            with contextlib.suppress(Exception):
                if await self._open(env_id, n, size):
                    return

    async def _open(self, env_id: str, n: int, size: tuple[int, int] | None) -> bool:
        async with self._sessions() as s:
            row = await s.get(EnvironmentRecord, env_id)
        if row is None or row.size_bytes <= 0 or not self._environments.path(env_id).is_file() or self._closed:
            return False
        w, h = size or self.settings.default_display(row.kind)
        self.kinds[env_id], self.displays[env_id], self._counts[env_id] = row.kind, Display(w, h), n
        self._new_pool(env_id)
        log.info("environment pool: keeping %d %s computer(s) of environment %s ready", n, row.kind, env_id)
        return True

    def _new_pool(self, env_id: str) -> None:
        """A pool of ``env_id`` as it is saved now."""
        kind, n = self.kinds[env_id], self._counts[env_id]
        policy = PoolPolicy(floor=n, max=n, parallel=self.settings.pool_launch_parallel,
                            memory_reserve_bytes=self.settings.pool_memory_reserve_mb * 1024 * 1024,
                            idle_seconds=self.settings.pool_idle_seconds,
                            item_bytes_guess=(450 if kind == "desktop" else 200) * 1024 * 1024)
        spec = _Spec(kind, self.displays[env_id], env_id)
        pool: WarmPool[Pooled] = WarmPool(
            f"env-{env_id}", policy, lambda: self._launch(spec), self._dispose,
            healthy=lambda item: self._healthy(env_id, item))
        self.pools[env_id], self.saved_at[env_id] = pool, self._mtime(env_id)
        pool.start()

    def _renew(self, env_id: str) -> None:
        """The environment was saved again: its restored computers show the old state. They go (in
        the background) and a new pool restores the new state."""
        old = self.pools[env_id]
        self._new_pool(env_id)
        task = asyncio.get_running_loop().create_task(old.close(), name=f"env-pool-renew-{env_id}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        log.info("environment pool: environment %s was saved again; restoring it anew", env_id)

    def _mtime(self, env_id: str) -> int:
        try:
            return self._environments.path(env_id).stat().st_mtime_ns  # type: ignore[no-any-return]
        except OSError:
            return -1

    def _healthy(self, env_id: str, item: Pooled) -> bool:
        alive = getattr(item.driver, "alive", True)
        return bool(alive) and item.archive_mtime_ns == self._mtime(env_id)

    async def _launch(self, spec: _Spec) -> Pooled:
        mtime = self._mtime(spec.environment_id)
        if spec.kind == "browser":
            return Pooled(await self._environments.launch_browser(spec), mtime)
        driver = await self._factories["desktop"].create(spec.display, {})
        try:
            await self._environments.restore_desktop(_Restoring(driver, driver.sandbox_id, spec))
        except BaseException:
            await driver.close()
            raise
        return Pooled(driver, mtime)

    async def _dispose(self, item: Pooled) -> None:
        with contextlib.suppress(Exception):
            await item.driver.close()

    # -- the create's side ------------------------------------------------------------------
    def take(self, spec: Any) -> Any:
        """A coroutine giving an already restored driver for ``spec``, or None (no match, or none
        ready: the create restores cold). Decided with no await, so a burst counts exactly."""
        env_id = spec.environment_id
        pool = self.pools.get(env_id) if env_id else None
        if pool is None or self.kinds[env_id] != spec.kind:
            return None
        if self._mtime(env_id) != self.saved_at[env_id]:
            self._renew(env_id)
            return None
        if pool.ready_count == 0:
            return None
        if spec.display != self.displays[env_id] or spec.options.get("stealth") or spec.options.get(
                "use_advanced_proxy"):
            return None
        self.hits += 1
        return self._take(pool)

    async def _take(self, pool: WarmPool[Pooled]) -> Any:
        return (await pool.take()).driver

    def ready(self) -> dict[str, int]:
        return {env_id: p.ready_count for env_id, p in self.pools.items()}

    def watch(self, metrics: Any) -> None:
        """Its figures in GET /metrics, read when scraped."""
        metrics.gauge("opencone_environment_pool_ready", "Computers restored from a saved environment, ready "
                      "to be taken, by environment.", ("environment",),
                      lambda: [((e,), p.ready_count) for e, p in self.pools.items()])
        metrics.counter("opencone_environment_pool_hits", "Creates from a saved environment that took an "
                        "already restored computer.", (), lambda: [((), self.hits)])

    async def close(self) -> None:
        self._closed = True
        for task in list(self._lookers):
            task.cancel()
        await asyncio.gather(*self._lookers, return_exceptions=True)
        await asyncio.gather(*(p.close() for p in self.pools.values()), *self._closing, return_exceptions=True)
