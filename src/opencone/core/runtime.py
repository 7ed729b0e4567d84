"""Everything a running server holds, started and stopped in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from opencone.config import Settings
from opencone.core.accounts import KEYS_CHANGED, Accounts
from opencone.core.clock import Clock, FileOffsetClock, SystemClock
from opencone.core.computer_files import ComputerFiles
from opencone.core.computers import ComputerService
from opencone.core.environment_pool import EnvironmentPool
from opencone.core.environments import EnvironmentService
from opencone.core.events import EventBus, Limits
from opencone.core.exec import ExecService
from opencone.core.files import FileStore
from opencone.core.metrics import watch_runtime
from opencone.core.recording import RecordingService
from opencone.core.screencast import ScreencastService
from opencone.core.store.db import make_engine, migrate, sessionmaker
from opencone.drivers.base import Display
from opencone.drivers.chromium.factory import BrowserFactory
from opencone.drivers.desktop.factory import DesktopFactory
from opencone.drivers.network import NetworkPlan
from opencone.drivers.pool import PoolPolicy
from opencone.drivers.processes import kill_leftovers
from opencone.drivers.proxy.egress import EgressPolicy
from opencone.drivers.sandbox import Sandbox, Workspaces
from opencone.drivers.sandbox.disk import WorkspaceDisks
from opencone.drivers.sandbox.workspaces import sandbox_ids

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or (FileOffsetClock(settings.test_clock_file) if settings.test_clock_file else SystemClock())
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(settings.resolved_database_url)
        self.sessions = sessionmaker(self.engine)
        self.accounts = Accounts(self.sessions, self.clock, settings.data_dir / KEYS_CHANGED)
        self.files = FileStore(settings.files_dir, settings.file_ttl_seconds)
        # exec commands, every desktop's terminal, every browser
        cap = settings.exec_workspace_max_mb
        workspaces = Workspaces(settings.run_dir, settings.exec_workspace_dir,
                                WorkspaceDisks(cap, sandbox_ids()) if cap else None)
        sandbox = Sandbox(workspaces, network=settings.exec_network, max_processes=settings.exec_max_processes,
                          max_memory_bytes=settings.exec_max_memory_mb * 1024 * 1024)
        # where computers' traffic may go (the API's own port never, whatever the settings), and how
        self.egress = EgressPolicy.from_settings(settings.egress_allow, settings.egress_policy, [settings.port])
        network = NetworkPlan(self.egress, settings.network_namespaces)
        reserve = settings.pool_memory_reserve_mb * 1024 * 1024
        self.browsers = BrowserFactory(
            settings.browser_executable, settings.run_dir,
            PoolPolicy(floor=settings.pool_size, max=settings.pool_max, parallel=settings.pool_launch_parallel,
                       memory_reserve_bytes=reserve, idle_seconds=settings.pool_idle_seconds),
            Display(settings.default_width, settings.default_height),
            proxy_connect_timeout=settings.proxy_connect_timeout_seconds,
            advanced_proxy_url=settings.advanced_proxy_url, sandbox=sandbox, network=network,
        )
        self.desktops = DesktopFactory(
            settings.chromium_path, settings.run_dir,
            PoolPolicy(floor=settings.desktop_pool_size, max=settings.desktop_pool_max,
                       parallel=settings.pool_launch_parallel, memory_reserve_bytes=reserve,
                       idle_seconds=settings.pool_idle_seconds, item_bytes_guess=450 * 1024 * 1024),
            Display(*settings.default_display("desktop")),
            (settings.desktop_max_width, settings.desktop_max_height), sandbox, network=network,
        )
        self.events = EventBus(self.clock, Limits(queue_events=settings.events_queue_size,
                                                  history_events=settings.events_history_size))
        self.computers = ComputerService(
            settings, self.sessions, {"browser": self.browsers, "desktop": self.desktops}, self.clock, self.events
        )
        self.screencasts = ScreencastService(self.computers)
        self.exec = ExecService(self.computers, sandbox, settings.exec_max_output_bytes)
        self.computer_files = ComputerFiles(self.computers, sandbox, settings.max_upload_bytes)
        self.environments = EnvironmentService(settings, self.sessions, self.clock, self.browsers, sandbox.workspaces)
        self.computers.environments = self.environments
        # computers kept ready already restored from saved environments (OPENCONE_ENVIRONMENT_POOL)
        self.environment_pool = EnvironmentPool(settings, self.sessions, self.environments,
                                                {"browser": self.browsers, "desktop": self.desktops})
        self.computers.environment_pool = self.environment_pool
        self.metrics = self.computers.metrics  # GET /metrics: the services' figures, read when scraped
        watch_runtime(self.metrics, self)
        self.environment_pool.watch(self.metrics)
        self.recordings = RecordingService(settings, self.sessions, self.clock, self.computers, self.screencasts,
                                           self.events)
        self.environments.other_usage = self.recordings.usage  # one storage cap for both
        self.recordings.org_usage = self.environments.usage
        self.first_key: str | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        killed = kill_leftovers(self.settings.run_dir)
        if killed:
            log.warning("killed %d processes left behind by an earlier server", killed)
        self.exec.start()
        await migrate(self.engine)
        await self.accounts.ensure_org()
        if self.settings.api_key:
            await self.accounts.ensure_key(self.settings.api_key)
        elif not await self.accounts.has_keys():
            self.first_key = await self.accounts.create_key(name="first-start")
        await self.environments.start()
        await self.recordings.start()
        await self.computers.start()
        await self.environment_pool.start()  # (after the factories: a desktop's restore takes a desktop)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="file-sweeper")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(60)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.files.sweep)

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        await self.recordings.stop()
        await self.screencasts.stop()
        await self.environment_pool.close()  # its computers end before the factories stop
        await self.computers.stop()
        self.exec.stop()
        await asyncio.to_thread(self.files.close)
        await self.engine.dispose()
