"""Computers: lifecycle, lifetimes, per-computer serialisation, the reaper.

Live computers are held in memory, which is the truth for them; the store gets
every state change (create, end) at once and the last-activity time in
write-behind batches, so a click never waits for a database write. After a
crash, start-up marks the records of computers that were live as terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from opencone.config import Settings
from opencone.core import actions as a
from opencone.core import lifetimes
from opencone.core.clock import Clock, SystemClock
from opencone.core.dispatch import Limits, Outcome, page_context_dict, perform
from opencone.core.errors import Conflict, InvalidInput, LimitReached, NotFound, ServiceError, StartFailed
from opencone.core.ids import new_id
from opencone.core.lifetimes import EndReason, Lifetime
from opencone.core.store.models import ComputerRecord
from opencone.drivers.base import CommandResult, ComputerDriver, ComputerGone, Display, DriverError

log = logging.getLogger(__name__)

READY, RUNNING, TERMINATED = "ready", "running", "terminated"


class DriverFactory(Protocol):
    kind: str

    async def start(self) -> None: ...
    async def create(self, display: Display) -> ComputerDriver: ...
    async def stop(self) -> None: ...


@dataclass(slots=True)
class CreateSpec:
    kind: str
    display: Display
    max_lifetime_seconds: int
    inactivity_timeout_seconds: int
    idle_timeout_enabled: bool
    persistent: bool = False
    environment_id: str | None = None
    context_id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ComputerView:
    """A snapshot of one computer, live or ended, for the edge to render."""

    id: str
    org_id: str
    kind: str
    status: str
    created_at: datetime
    last_activity_at: datetime
    expires_at: datetime
    idle_expires_at: datetime | None
    max_lifetime_seconds: int
    inactivity_timeout_seconds: int
    idle_timeout_enabled: bool
    display: Display
    persistent: bool
    environment_id: str | None
    context_id: str | None
    terminated_at: datetime | None
    termination_reason: str | None


@dataclass(slots=True)
class Step:
    """One wire action: the canonical actions it became, the tab it targets."""

    actions: list[a.Action]
    tab_id: str | None = None
    include_context: bool = False


@dataclass(slots=True)
class ActionReport:
    """The outcome of one action as the services see it."""

    request_id: str
    timestamp: datetime
    ok: bool
    outcome: Outcome = field(default_factory=Outcome)
    error_message: str | None = None
    tab_id: str | None = None
    page_context: dict[str, Any] | None = None


@dataclass(eq=False)
class LiveComputer:
    id: str
    org_id: str
    kind: str
    driver: ComputerDriver
    spec: CreateSpec
    created_at: datetime
    last_activity_at: datetime
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    busy: int = 0
    ending: bool = False
    dirty: bool = False
    terminated_at: datetime | None = None
    termination_reason: str | None = None

    @property
    def status(self) -> str:
        if self.ending:
            return TERMINATED
        return RUNNING if self.busy else READY

    def lifetime(self) -> Lifetime:
        return Lifetime(self.created_at, self.last_activity_at, self.spec.max_lifetime_seconds,
                        self.spec.inactivity_timeout_seconds, self.spec.idle_timeout_enabled)

    def view(self) -> ComputerView:
        lt = self.lifetime()
        return ComputerView(
            id=self.id, org_id=self.org_id, kind=self.kind, status=self.status,
            created_at=self.created_at, last_activity_at=self.last_activity_at,
            expires_at=lifetimes.expires_at(lt), idle_expires_at=lifetimes.idle_expires_at(lt),
            max_lifetime_seconds=self.spec.max_lifetime_seconds,
            inactivity_timeout_seconds=self.spec.inactivity_timeout_seconds,
            idle_timeout_enabled=self.spec.idle_timeout_enabled, display=self.driver.display,
            persistent=self.spec.persistent, environment_id=self.spec.environment_id,
            context_id=self.spec.context_id, terminated_at=self.terminated_at,
            termination_reason=self.termination_reason,
        )


def _view_of(row: ComputerRecord) -> ComputerView:
    lt = Lifetime(row.created_at, row.last_activity_at, row.max_lifetime_seconds,
                  row.inactivity_timeout_seconds, row.idle_timeout_enabled)
    return ComputerView(
        id=row.id, org_id=row.org_id, kind=row.kind, status=row.status, created_at=row.created_at,
        last_activity_at=row.last_activity_at, expires_at=lifetimes.expires_at(lt),
        idle_expires_at=lifetimes.idle_expires_at(lt), max_lifetime_seconds=row.max_lifetime_seconds,
        inactivity_timeout_seconds=row.inactivity_timeout_seconds,
        idle_timeout_enabled=row.idle_timeout_enabled,
        display=Display(row.display_width, row.display_height, row.display_scale),
        persistent=row.persistent, environment_id=row.environment_id, context_id=row.context_id,
        terminated_at=row.terminated_at, termination_reason=row.termination_reason,
    )


def _action_timeout(action: a.Action, settings: Settings) -> float:
    match action:
        case a.Navigate() | a.NewTab():
            return settings.navigation_timeout_seconds + 5
        case a.Wait(ms=ms):
            return ms / 1000 + 5
        case a.RunCommand(timeout_seconds=t):
            return t + 5
    return settings.action_timeout_seconds


class ComputerService:
    def __init__(self, settings: Settings, sessions: async_sessionmaker,  # type: ignore[type-arg]
                 factories: dict[str, DriverFactory], clock: Clock | None = None) -> None:
        self.settings = settings
        self._sessions = sessions
        self._factories = factories
        self._clock = clock or SystemClock()
        self._live: dict[str, LiveComputer] = {}
        self._starting = 0
        self._reaper: asyncio.Task[None] | None = None
        self._limits = Limits(settings.navigation_timeout_seconds, settings.screenshot_quality)
        # hooks the runtime registers: run when a computer ends (e.g. kill its execs), and the
        # sandbox that runs the ``debug`` action
        self.on_end: list[Callable[[str], Awaitable[None]]] = []
        self.run_command: Callable[[LiveComputer, a.RunCommand], Awaitable[CommandResult]] | None = None

    # -- start / stop -------------------------------------------------------------------
    async def start(self) -> None:
        await self._mark_orphans_terminated()
        for factory in self._factories.values():
            await factory.start()
        self._reaper = asyncio.create_task(self._reap_forever(), name="reaper")

    async def _mark_orphans_terminated(self) -> None:
        """Records left live by a server that died: their processes are gone."""
        now = self._clock.now()
        async with self._sessions() as s, s.begin():
            await s.execute(
                update(ComputerRecord).where(ComputerRecord.status != TERMINATED).values(
                    status=TERMINATED, terminated_at=now, termination_reason=EndReason.SERVER_RESTARTED
                )
            )

    async def stop(self) -> None:
        if self._reaper:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(
            *(self._end(c, EndReason.SERVER_SHUTDOWN) for c in list(self._live.values())),
            return_exceptions=True,
        )
        for factory in self._factories.values():
            with contextlib.suppress(Exception):
                await factory.stop()

    # -- lifecycle ----------------------------------------------------------------------
    def validate_spec(self, spec: CreateSpec) -> None:
        s = self.settings
        if spec.kind not in self._factories:
            raise InvalidInput(
                f"kind {spec.kind!r} is not available; allowed: {', '.join(sorted(self._factories))}",
                field="kind", allowed=sorted(self._factories),
            )
        if not 1 <= spec.max_lifetime_seconds <= s.max_lifetime_cap_seconds:
            raise InvalidInput(
                f"max_lifetime_seconds must be between 1 and {s.max_lifetime_cap_seconds}",
                field="max_lifetime_seconds",
            )
        if not 1 <= spec.inactivity_timeout_seconds <= s.inactivity_timeout_cap_seconds:
            raise InvalidInput(
                f"inactivity_timeout_seconds must be between 1 and {s.inactivity_timeout_cap_seconds}",
                field="inactivity_timeout_seconds",
            )

    async def create(self, org_id: str, spec: CreateSpec) -> ComputerView:
        self.validate_spec(spec)
        if len(self._live) + self._starting >= self.settings.max_computers:
            raise LimitReached(
                f"this server runs at most {self.settings.max_computers} computers at once; "
                "delete one or wait for one to expire",
                limit=self.settings.max_computers,
            )
        self._starting += 1
        try:
            try:
                driver = await self._factories[spec.kind].create(spec.display)
            except ServiceError:
                raise
            except Exception as exc:
                log.exception("could not start a %s computer", spec.kind)
                raise StartFailed(f"could not start a {spec.kind} computer: {exc}") from exc
            now = self._clock.now()
            comp = LiveComputer(new_id("comp"), org_id, spec.kind, driver, spec, now, now)
            try:
                await self._insert(comp)
            except BaseException:
                await driver.close()
                raise
            self._live[comp.id] = comp
        finally:
            self._starting -= 1
        driver.on_gone(lambda reason: self._on_gone(comp, reason))
        return comp.view()

    async def _insert(self, comp: LiveComputer) -> None:
        d, spec = comp.driver.display, comp.spec
        async with self._sessions() as s, s.begin():
            s.add(ComputerRecord(
                id=comp.id, org_id=comp.org_id, kind=comp.kind, status=READY, created_at=comp.created_at,
                last_activity_at=comp.last_activity_at, max_lifetime_seconds=spec.max_lifetime_seconds,
                inactivity_timeout_seconds=spec.inactivity_timeout_seconds,
                idle_timeout_enabled=spec.idle_timeout_enabled, display_width=d.width,
                display_height=d.height, display_scale=d.scale, persistent=spec.persistent,
                environment_id=spec.environment_id, context_id=spec.context_id, options=spec.options,
            ))

    def _on_gone(self, comp: LiveComputer, reason: str) -> None:
        asyncio.get_running_loop().create_task(self._end(comp, EndReason(reason)))

    async def _end(self, comp: LiveComputer, reason: EndReason) -> None:
        if comp.ending:
            return
        comp.ending = True
        comp.terminated_at = self._clock.now()
        comp.termination_reason = reason.value
        try:
            await comp.driver.close()
        except Exception:
            log.exception("closing computer %s", comp.id)
        finally:
            for hook in self.on_end:
                try:
                    await hook(comp.id)
                except Exception:
                    log.exception("end hook for computer %s", comp.id)
            with contextlib.suppress(Exception):
                async with self._sessions() as s, s.begin():
                    await s.execute(update(ComputerRecord).where(ComputerRecord.id == comp.id).values(
                        status=TERMINATED, terminated_at=comp.terminated_at, termination_reason=reason.value,
                        last_activity_at=comp.last_activity_at,
                    ))
            self._live.pop(comp.id, None)
            log.info("computer %s ended: %s", comp.id, reason.value)

    async def _row(self, org_id: str, computer_id: str) -> ComputerRecord | None:
        async with self._sessions() as s:
            row = await s.get(ComputerRecord, computer_id)
        return row if row is not None and row.org_id == org_id else None

    def _live_for(self, org_id: str, computer_id: str) -> LiveComputer | None:
        comp = self._live.get(computer_id)
        return comp if comp is not None and comp.org_id == org_id else None

    async def get(self, org_id: str, computer_id: str) -> ComputerView:
        comp = self._live_for(org_id, computer_id)
        if comp is not None:
            return comp.view()
        row = await self._row(org_id, computer_id)
        if row is None:
            raise NotFound(f"no computer {computer_id!r}")
        return _view_of(row)

    async def list(self, org_id: str, kind: str = "live") -> list[ComputerView]:
        if kind == "live":
            views = [c.view() for c in self._live.values() if c.org_id == org_id and not c.ending]
            return sorted(views, key=lambda v: v.created_at)
        async with self._sessions() as s:
            rows = (await s.execute(
                select(ComputerRecord).where(ComputerRecord.org_id == org_id, ComputerRecord.persistent)
                .order_by(ComputerRecord.created_at)
            )).scalars().all()
        return [_view_of(r) for r in rows]

    async def delete(self, org_id: str, computer_id: str) -> None:
        comp = self._live_for(org_id, computer_id)
        if comp is not None:
            await self._end(comp, EndReason.DELETED)
            return
        if await self._row(org_id, computer_id) is None:
            raise NotFound(f"no computer {computer_id!r}")

    async def _require_live(self, org_id: str, computer_id: str) -> LiveComputer:
        comp = self._live_for(org_id, computer_id)
        if comp is not None and not comp.ending:
            return comp
        row = await self._row(org_id, computer_id)
        if row is None:
            raise NotFound(f"no computer {computer_id!r}")
        raise Conflict(
            f"computer {computer_id} is terminated ({row.termination_reason or 'ended'}); create a new one",
            computer_status=TERMINATED, termination_reason=row.termination_reason,
        )

    async def require_live(self, org_id: str, computer_id: str) -> LiveComputer:
        """The live computer, or NotFound / Conflict (terminated)."""
        return await self._require_live(org_id, computer_id)

    def _touch(self, comp: LiveComputer) -> None:
        comp.last_activity_at = self._clock.now()
        comp.dirty = True

    @contextlib.contextmanager
    def active(self, comp: LiveComputer) -> Iterator[None]:
        """Hold ``comp`` busy (never idle) while work outside the action lock runs, such as an exec."""
        comp.busy += 1
        self._touch(comp)
        try:
            yield
        finally:
            comp.busy -= 1
            self._touch(comp)

    async def keepalive(self, org_id: str, computer_id: str) -> ComputerView:
        comp = await self._require_live(org_id, computer_id)
        self._touch(comp)
        return comp.view()

    # -- actions ------------------------------------------------------------------------
    async def perform(self, org_id: str, computer_id: str, steps: list[Step],
                      request_id: str | None = None) -> list[ActionReport]:
        """Run ``steps`` in order under the computer's lock, one report each; stop at the first error."""
        comp = await self._require_live(org_id, computer_id)
        reports: list[ActionReport] = []
        async with comp.lock:
            comp.busy += 1
            try:
                for step in steps:
                    report = await self._run_step(comp, step, request_id)
                    reports.append(report)
                    if not report.ok:
                        break
            finally:
                comp.busy -= 1
                self._touch(comp)
        return reports

    async def _run_step(self, comp: LiveComputer, step: Step, request_id: str | None) -> ActionReport:
        report = ActionReport(request_id=request_id or new_id("req"), timestamp=self._clock.now(), ok=True)
        driver = comp.driver
        run_command = functools.partial(self.run_command, comp) if self.run_command else None
        for action in step.actions:
            if comp.ending:
                report.ok, report.error_message = False, "the computer was terminated"
                return report
            self._touch(comp)
            timeout = _action_timeout(action, self.settings)
            try:
                async with asyncio.timeout(timeout):  # no extra task per action, unlike wait_for
                    report.outcome = await perform(driver, action, step.tab_id, self._limits, run_command)
            except ComputerGone as exc:
                report.ok, report.error_message = False, str(exc)
                return report
            except DriverError as exc:
                report.ok, report.error_message = False, str(exc)
            except TimeoutError:
                report.ok, report.error_message = False, f"{action.kind} timed out after {timeout:g} s"
            except Exception as exc:  # a driver bug must not become a 500 or a hung computer
                log.exception("action %s on %s failed", action.kind, comp.id)
                report.ok, report.error_message = False, f"{action.kind} failed: {exc}"
            if not report.ok:
                break
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                report.tab_id = await driver.current_tab(step.tab_id)
        if step.include_context:
            with contextlib.suppress(Exception):
                report.page_context = page_context_dict(
                    await asyncio.wait_for(driver.page_context(step.tab_id), 5))
        return report

    # -- reaper -------------------------------------------------------------------------
    async def _reap_forever(self) -> None:
        last_flush = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.reaper_interval_seconds)
            try:
                await self.reap_once()
                if loop.time() - last_flush >= 1.0:
                    await self._flush_activity()
                    last_flush = loop.time()
            except Exception:
                log.exception("reaper pass failed")

    async def reap_once(self) -> list[str]:
        now = self._clock.now()
        ended: list[str] = []
        for comp in list(self._live.values()):
            if comp.ending:
                continue
            reason = lifetimes.end_reason(now, comp.lifetime())
            if reason is EndReason.INACTIVITY and comp.busy:
                continue  # an action in flight is activity
            if reason is not None:
                ended.append(comp.id)
                asyncio.get_running_loop().create_task(self._end(comp, reason))
        return ended

    async def _flush_activity(self) -> None:
        dirty = [c for c in self._live.values() if c.dirty and not c.ending]
        if not dirty:
            return
        async with self._sessions() as s, s.begin():
            for comp in dirty:
                comp.dirty = False
                await s.execute(update(ComputerRecord).where(ComputerRecord.id == comp.id).values(
                    last_activity_at=comp.last_activity_at,
                    display_width=comp.driver.display.width, display_height=comp.driver.display.height,
                    display_scale=comp.driver.display.scale,
                ))

    @property
    def live_count(self) -> int:
        return len(self._live)

