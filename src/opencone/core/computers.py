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
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from opencone.config import Settings
from opencone.core import actions as a
from opencone.core import lifetimes
from opencone.core.clock import Clock, SystemClock, iso
from opencone.core.dispatch import Limits, Outcome, page_context_dict, perform
from opencone.core.errors import Conflict, InvalidInput, LimitReached, NotFound, ServiceError, StartFailed
from opencone.core.events import EventBus, action_fields, clip, completed_fields
from opencone.core.ids import new_id
from opencone.core.lifetimes import EndReason, Lifetime
from opencone.core.metrics import Metrics
from opencone.core.store.batch import BatchedWrites, BatchInserter, write
from opencone.core.store.models import ComputerRecord
from opencone.core.teardowns import Teardowns
from opencone.drivers.base import CommandResult, ComputerDriver, ComputerGone, Display, DriverError

log = logging.getLogger(__name__)

READY, RUNNING, TERMINATED = "ready", "running", "terminated"
BEFORE_CLOSE_SECONDS = 5.0  # a before-close hook that takes longer is cut short: the teardown goes on


_COLUMNS = ComputerRecord.__table__.c
# built once: a statement made per teardown cost ~1 ms of event-loop time (py-spy), a cached one nothing
_MARK_ENDED = update(ComputerRecord.__table__).where(_COLUMNS.id == bindparam("ended_id")).values(
    status=TERMINATED, terminated_at=bindparam("ended_at", type_=_COLUMNS.terminated_at.type),
    termination_reason=bindparam("ended_reason", type_=_COLUMNS.termination_reason.type),
    last_activity_at=bindparam("ended_activity", type_=_COLUMNS.last_activity_at.type),
)


class DriverFactory(Protocol):
    kind: str

    async def start(self) -> None: ...
    async def create(self, display: Display, options: Mapping[str, Any]) -> ComputerDriver:
        """A computer showing ``display``; ``options`` are the create request's (validated) options,
        of which each kind reads its own (a browser: ``use_advanced_proxy``, ``stealth``)."""
        ...
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
    proxy: dict[str, Any] | None = None  # route and bytes of a live computer's forwarding proxy


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
    rendered: dict[str, Any] | None = None  # the wire form, once the edge's renderer has made it


# the edge's renderer of a report (it alone can turn a screenshot into a URL)
Render = Callable[[ActionReport], dict[str, Any]]


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
    warned_deadline: datetime | None = None  # the deadline an ``expiring_soon`` event was sent for

    @property
    def status(self) -> str:
        if self.ending:
            return TERMINATED
        return RUNNING if self.busy else READY

    @property
    def sandbox_id(self) -> str:
        """Whose workspace and caps its commands use: a desktop's own (made with it, for its
        terminal, before it was this computer), else the computer's id."""
        return getattr(self.driver, "sandbox_id", None) or self.id

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
            termination_reason=self.termination_reason, proxy=self._proxy_status(),
        )

    def _proxy_status(self) -> dict[str, Any] | None:
        status = getattr(self.driver, "proxy_status", None)
        return status() if callable(status) else None


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
        case a.Navigate() | a.NewTab() | a.History():
            return settings.navigation_timeout_seconds + 5
        case a.Wait(ms=ms):
            return ms / 1000 + 5
        case a.RunCommand(timeout_seconds=t):
            return t + 5
    return settings.action_timeout_seconds


class ComputerService:
    def __init__(self, settings: Settings, sessions: async_sessionmaker,  # type: ignore[type-arg]
                 factories: dict[str, DriverFactory], clock: Clock | None = None,
                 events: EventBus | None = None) -> None:
        self.settings = settings
        self._sessions = sessions
        self._factories = factories
        self._clock = clock or SystemClock()
        self._live: dict[str, LiveComputer] = {}
        self.events = events or EventBus(self._clock)
        self._starting = 0
        self._starting_kind: dict[str, int] = {}
        # a fleet node's slots per kind (fleet/node.py): every create is held to them, the replicas'
        # and those the node makes itself (a task's, a Notte start's, an OpenEnv reset's) alike
        self.kind_limits: dict[str, int] = {}
        self._ending = 0  # ended computers whose teardown still runs (still in _live until it is done)
        # teardowns (kill, Playwright's close, /proc reads, sandbox clean-up) run off the request, after
        # the wave of deletes that asked for them, a few at a time: they must not take the CPU from creates
        self._teardowns = Teardowns()
        # one write transaction at a time from here: SQLite takes one writer, and concurrent ones
        # wait in its busy handler, which sleeps 1, 2, 5 … 100 ms (measured: 32 creates at once on a
        # full pool, p50 1.5 s, the event loop idle); queued here each waits only for the ones before
        self._writes = asyncio.Lock()
        self._inserts = BatchInserter(lambda: write(self._writes, self._sessions))  # creates' rows, together
        self._ended_rows = BatchedWrites(_MARK_ENDED, lambda: write(self._writes, self._sessions))  # teardowns', too
        self._reaper: asyncio.Task[None] | None = None
        self._limits = Limits(settings.navigation_timeout_seconds, settings.screenshot_quality)
        # hooks the runtime registers: run when a computer ends (e.g. kill its execs), and the
        # sandbox that runs the ``debug`` action
        self.on_end: list[Callable[[str], Awaitable[None]]] = []
        # run in a computer's teardown before its driver closes, with the end reason: what still
        # needs the live computer (a recording takes the frame of the last action)
        self.before_close: list[Callable[[str, str], Awaitable[None]]] = []
        # (computer, action, request_id=...) -> result
        self.run_command: Callable[..., Awaitable[CommandResult]] | None = None
        self.open_file: Callable[..., Any] | None = None  # upload_file's source (core/computer_files.py)
        # saved state of persistent computers (core/environments.py), set by the runtime
        self.environments: Any = None
        self.environment_pool: Any = None  # computers already restored (core/environment_pool.py), set by the runtime
        self.metrics = Metrics()  # GET /metrics: creates and actions are observed here

    # -- start / stop -------------------------------------------------------------------
    async def start(self) -> None:
        await self._mark_orphans_terminated()
        for factory in self._factories.values():
            await factory.start()
        self._reaper = asyncio.create_task(self._reap_forever(), name="reaper")

    async def _mark_orphans_terminated(self) -> None:
        """Records left live by a server that died: their processes are gone."""
        now = self._clock.now()
        async with self._writes, self._sessions() as s, s.begin():
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
        await self._teardowns.drain()  # every process ends with its computer, before the server does
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
        if spec.options.get("use_advanced_proxy"):
            if spec.kind != "browser":
                raise InvalidInput("use_advanced_proxy is available for browser computers only",
                                   field="use_advanced_proxy")
            if not s.advanced_proxy_url:
                raise InvalidInput("use_advanced_proxy needs an advanced proxy, and this server has none "
                                   "configured (set ADVANCED_PROXY_URL or OPENCONE_ADVANCED_PROXY_URL)",
                                   field="use_advanced_proxy")
        if spec.kind == "desktop" and spec.display.scale != 1:
            raise InvalidInput("display.scale must be 1 for a desktop (an X screen has no device scale)",
                               field="display.scale")
        if spec.kind != "browser" and spec.options.get("stealth"):
            raise InvalidInput("stealth options are for browser computers; a desktop's browser runs as it is",
                               field="stealth")
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
        t0 = time.perf_counter()
        self.validate_spec(spec)
        if self.environments is not None:
            await self.environments.check_create(org_id, spec)
        if len(self._live) - self._ending + self._starting >= self.settings.max_computers:
            raise LimitReached(
                f"this server runs at most {self.settings.max_computers} computers at once; "
                "delete one or wait for one to expire",
                limit=self.settings.max_computers,
            )
        limit = self.kind_limits.get(spec.kind)
        if limit is not None:
            held = sum(1 for c in self._live.values() if c.kind == spec.kind and not c.ending)
            if held + self._starting_kind.get(spec.kind, 0) >= limit:
                raise LimitReached(f"this node runs at most {limit} {spec.kind} computers at once; "
                                   "delete one or wait for one to expire", limit=limit)
        self._starting += 1
        self._starting_kind[spec.kind] = self._starting_kind.get(spec.kind, 0) + 1
        try:
            try:
                factory = self._factories[spec.kind]
                pooled = self.environment_pool.take(spec) if self.environment_pool is not None else None
                if pooled is not None:  # already restored from its environment
                    driver, pool_hit = await pooled, True
                elif spec.environment_id and spec.kind == "browser" and self.environments is not None:
                    driver, pool_hit = await self.environments.launch_browser(spec), False  # a restored profile
                else:
                    # read just before the take, with no await between: exact even in a burst
                    pool_hit = factory.pool.ready_count > 0  # type: ignore[attr-defined]
                    driver = await factory.create(spec.display, spec.options)
                if spec.options.get("stealth") and hasattr(driver, "configure_stealth"):
                    try:  # a pool browser gets its computer's stealth options (drivers/chromium/stealth.py)
                        await driver.configure_stealth(spec.options["stealth"])
                    except BaseException:
                        await driver.close()
                        raise
            except ServiceError:
                raise
            except Exception as exc:
                log.exception("could not start a %s computer", spec.kind)
                self.metrics.create_failures.labels(spec.kind).inc()
                raise StartFailed(f"could not start a {spec.kind} computer: {exc}") from exc
            now = self._clock.now()
            comp = LiveComputer(new_id("comp"), org_id, spec.kind, driver, spec, now, now)
            try:
                if spec.environment_id and spec.kind == "desktop" and self.environments is not None and pooled is None:
                    await self.environments.restore_desktop(comp)
                await self._insert(comp)
            except BaseException:
                await driver.close()
                raise
            self._live[comp.id] = comp
            self.events.open(comp.id)
        finally:
            self._starting -= 1
            self._starting_kind[spec.kind] -= 1
        driver.on_gone(lambda reason: self._on_gone(comp, reason))
        self._forward_driver_events(comp)
        d = driver.display
        self.events.publish(comp.id, "created", kind=comp.kind,
                            display={"width": d.width, "height": d.height, "scale": d.scale})
        self.metrics.observe_create(spec.kind, pool_hit, time.perf_counter() - t0)
        return comp.view()

    def _forward_driver_events(self, comp: LiveComputer) -> None:
        """Tab events from drivers that have them (browsers); none once the computer is ending."""
        on_event = getattr(comp.driver, "on_event", None)
        if on_event is None:
            return

        def forward(kind: str, fields: dict[str, Any]) -> None:
            if not comp.ending:
                self.events.publish(comp.id, kind, **fields)

        on_event(forward)

    async def _insert(self, comp: LiveComputer) -> None:
        d, spec = comp.driver.display, comp.spec
        await self._inserts.insert(ComputerRecord(
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
        """Mark ``comp`` ended: from here on it takes no action, is in no listing and reads as
        terminated; its teardown runs in the background (``_teardown``), so a DELETE answers at once."""
        if comp.ending:
            return
        comp.ending = True
        self._ending += 1
        comp.terminated_at = self._clock.now()
        comp.termination_reason = reason.value
        if comp.spec.persistent and self.environments is not None:
            await self.environments.save(comp)  # before the browser is killed; bounded, never raises
        self.events.close(comp.id, reason.value)
        log.info("computer %s ended: %s", comp.id, reason.value)
        self._teardowns.start(functools.partial(self._teardown, comp, reason), f"teardown-{comp.id}")

    async def _teardown(self, comp: LiveComputer, reason: EndReason) -> None:
        for early in self.before_close:
            try:
                await asyncio.wait_for(early(comp.id, reason.value), BEFORE_CLOSE_SECONDS)
            except Exception:
                log.exception("before-close hook for computer %s", comp.id)
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
                await self._ended_rows.write({"ended_id": comp.id, "ended_at": comp.terminated_at,
                                              "ended_reason": reason.value, "ended_activity": comp.last_activity_at})
            self._live.pop(comp.id, None)  # (until here its view says terminated, its row may not yet)
            self._ending -= 1

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

    async def list(self, org_id: str, kind: str = "live", context_id: str | None = None) -> list[ComputerView]:
        if kind == "live":
            views = [c.view() for c in self._live.values() if c.org_id == org_id and not c.ending
                     and (context_id is None or c.spec.context_id == context_id)]
            return sorted(views, key=lambda v: v.created_at)
        async with self._sessions() as s:
            rows = (await s.execute(
                select(ComputerRecord).where(ComputerRecord.org_id == org_id, ComputerRecord.persistent)
                .order_by(ComputerRecord.created_at)
            )).scalars().all()
        return [_view_of(r) for r in rows]

    def live_views(self) -> list[ComputerView]:
        """Every organisation's live computers (a fleet node counts and reports them all)."""
        return [c.view() for c in self._live.values() if not c.ending]

    def environment_in_use(self, env_id: str) -> bool:
        """Whether a computer here will save into environment ``env_id`` when it ends (a persistent one
        made from it, or the one whose id it is), including one whose end is saving now."""
        return any(c.spec.persistent and env_id in (c.spec.environment_id, c.id) for c in self._live.values())

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
        if comp is not None:  # ended, its teardown still running
            raise Conflict(f"computer {computer_id} is terminated ({comp.termination_reason}); create a new one",
                           computer_status=TERMINATED, termination_reason=comp.termination_reason)
        row = await self._row(org_id, computer_id)
        if row is None:
            raise NotFound(f"no computer {computer_id!r}")
        raise Conflict(
            f"computer {computer_id} is terminated ({row.termination_reason or 'ended'}); create a new one",
            computer_status=TERMINATED, termination_reason=row.termination_reason,
        )

    async def check_lifetime(self, org_id: str, computer_id: str) -> ComputerView:
        """The computer, ended first if its lifetime says it must end now: the reaper's rule, applied
        at once for an API whose every access first checks it (a Notte session's idle timeout)."""
        comp = self._live_for(org_id, computer_id)
        if comp is not None and not comp.ending:
            reason = lifetimes.end_reason(self._clock.now(), comp.lifetime())
            if reason is not None and not (reason is EndReason.INACTIVITY and comp.busy):
                await self._end(comp, reason)
        return await self.get(org_id, computer_id)

    async def require_live(self, org_id: str, computer_id: str) -> LiveComputer:
        """The live computer, or NotFound / Conflict (terminated)."""
        return await self._require_live(org_id, computer_id)

    def _touch(self, comp: LiveComputer) -> None:
        comp.last_activity_at = self._clock.now()
        comp.dirty = True

    def touch(self, comp: LiveComputer) -> None:
        """Count work done outside actions (a CDP client's command) as activity."""
        self._touch(comp)

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
                      request_id: str | None = None, render: Render | None = None) -> list[ActionReport]:
        """Run ``steps`` in order under the computer's lock, one report each; stop at the first error.

        ``render`` (from the edge) turns each report into its wire form as soon as it is done, so the
        ``action_completed`` event carries what the client gets (a screenshot's URL among it).
        """
        comp = await self._require_live(org_id, computer_id)
        reports: list[ActionReport] = []
        async with comp.lock:
            comp.busy += 1
            try:
                for step in steps:
                    report = await self._run_step(comp, step, request_id, render)
                    reports.append(report)
                    if not report.ok:
                        break
            finally:
                comp.busy -= 1
                self._touch(comp)
        return reports

    async def _run_step(self, comp: LiveComputer, step: Step, request_id: str | None,
                        render: Render | None = None) -> ActionReport:
        request_id = request_id or new_id("req")
        self.events.publish(comp.id, "action_requested", request_id=request_id,
                            **action_fields(step.actions, step.tab_id))
        report = await self._do_step(comp, step, request_id)
        if render is not None:
            report.rendered = render(report)
            result = dict(report.rendered.get("result") or {})
        else:
            result = dict(report.outcome.result)
            if report.outcome.image is not None:
                result["screenshot"] = True
        self.events.publish(comp.id, "action_completed", request_id=report.request_id,
                            status="success" if report.ok else "error", error_message=report.error_message,
                            tab_id=report.tab_id, result=clip(result), **completed_fields(result))
        return report

    async def _do_step(self, comp: LiveComputer, step: Step, request_id: str) -> ActionReport:
        report = ActionReport(request_id=request_id or new_id("req"), timestamp=self._clock.now(), ok=True)
        driver = comp.driver
        run_command = (functools.partial(self.run_command, comp, request_id=request_id)
                       if self.run_command else None)
        open_file = functools.partial(self.open_file, comp) if self.open_file else None
        for action in step.actions:
            if comp.ending:
                report.ok, report.error_message = False, "the computer was terminated"
                return report
            self._touch(comp)
            timeout = _action_timeout(action, self.settings)
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):  # no extra task per action, unlike wait_for
                    report.outcome = await perform(driver, action, step.tab_id, self._limits, run_command,
                                                   open_file)
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
            self.metrics.observe_action(action.kind, time.perf_counter() - t0, report.ok)
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
            else:
                self._warn_if_expiring(comp, now)
        return ended

    def _warn_if_expiring(self, comp: LiveComputer, now: datetime) -> None:
        """One ``expiring_soon`` event per deadline, within ``expiring_soon_seconds`` of it."""
        lt = comp.lifetime()
        deadline, reason = lifetimes.next_end(lt)
        if reason is EndReason.INACTIVITY and comp.busy:
            return  # activity: the idle deadline moves on when the action ends
        if deadline == comp.warned_deadline:
            return
        period = lt.max_lifetime_seconds if reason is EndReason.MAX_LIFETIME else lt.inactivity_timeout_seconds
        # at most half the period: a short-lived computer is not warned from its first moment
        threshold = min(self.settings.expiring_soon_seconds, period / 2)
        left = (deadline - now).total_seconds()
        if left <= threshold:
            comp.warned_deadline = deadline
            self.events.publish(comp.id, "expiring_soon", reason=reason.value, expires_at=iso(deadline),
                                seconds_left=round(max(left, 0.0), 3))

    async def _flush_activity(self) -> None:
        dirty = [c for c in self._live.values() if c.dirty and not c.ending]
        if not dirty:
            return
        async with self._writes, self._sessions() as s, s.begin():
            for comp in dirty:
                comp.dirty = False
                await s.execute(update(ComputerRecord).where(ComputerRecord.id == comp.id).values(
                    last_activity_at=comp.last_activity_at,
                    display_width=comp.driver.display.width, display_height=comp.driver.display.height,
                    display_scale=comp.driver.display.scale,
                ))

    @property
    def live_count(self) -> int:
        return len(self._live) - self._ending

    def live_computers(self) -> list[LiveComputer]:
        """Every live computer of every organisation (ending ones too): for the server's own status."""
        return list(self._live.values())

