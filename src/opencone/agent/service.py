"""Agent tasks while the server runs: starting them (model, computer, idempotency, the cap on
running tasks), their controls, their event logs and their records.

The edge builds one ``AgentService`` beside the ``Gateway`` (api/app.py) and gives it the
renderer of action reports (screenshots become capability URLs there); the service drives
computers only through ``ComputerService``, as any HTTP client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from opencone.agent.adapters import adapter_for
from opencone.agent.adapters.base import Adapter
from opencone.agent.events import TaskLog
from opencone.agent.loop import Limits, TaskRun
from opencone.agent.spec import FAILED, QUEUED, TERMINAL, TaskSpec
from opencone.core import actions as a
from opencone.core.computers import CreateSpec, Render, Step
from opencone.core.errors import Conflict, InvalidInput, LimitReached, NotFound, ServiceError, StartFailed
from opencone.core.ids import new_id
from opencone.core.runtime import Runtime
from opencone.core.store.models import TaskRecord
from opencone.drivers.base import Display
from opencone.gateway.registry import NoModelConfigured, UnknownModel
from opencone.gateway.service import Gateway

log = logging.getLogger(__name__)

ENDED_LOGS_KEPT = 200  # event logs of ended tasks kept for re-attaching (then a stream gets the record's end)
ENDED_LOG_SECONDS = 600.0


class ModelNotConfigured(ServiceError):
    """No model is configured at all (the message names the settings)."""

    status = 400


@dataclass(slots=True)
class TaskView:
    """One task as the edge renders it, running or ended."""

    id: str
    status: str
    exit_code: int | None
    model: str
    kind: str
    computer_id: str | None
    instruction: str
    steps: int
    result: str | None
    error: str | None
    reason: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    usage: dict[str, int]
    metadata: dict[str, str]
    idempotency_key: str | None
    last_event_id: int | None = None


class AgentService:
    def __init__(self, runtime: Runtime, gateway: Gateway, render_for: Callable[[str], Render],
                 limits: Limits | None = None) -> None:
        self.runtime = runtime
        self.gateway = gateway
        self.settings = runtime.settings
        self.render_for = render_for
        s = self.settings
        self.limits = limits or Limits(
            max_steps=s.agent_max_steps, max_failures=s.agent_max_failures,
            settle_seconds=s.agent_settle_ms / 1000, model_timeout=s.model_timeout_seconds,
            model_retries=s.model_max_retries,
            keepalive_seconds=max(1.0, min(15.0, s.default_inactivity_timeout_seconds / 4)))
        self.runs: dict[str, TaskRun] = {}
        self.logs: OrderedDict[str, tuple[TaskLog, float]] = OrderedDict()  # ended tasks' logs, oldest first
        self.ended: Counter[str] = Counter()  # tasks ended, by status (GET /metrics)
        self._adapters: dict[str, tuple[Adapter, int]] = {}
        self._keys: dict[tuple[str, str], asyncio.Lock] = {}
        self._sessions = runtime.sessions
        self._clock = runtime.clock
        self.stopping = False

    # -- start / stop -----------------------------------------------------------------------
    async def start(self) -> None:
        """Tasks a dead server left running cannot go on: their computers are gone."""
        now = self._clock.now()
        async with self._sessions() as s, s.begin():
            await s.execute(update(TaskRecord).where(TaskRecord.status.not_in(TERMINAL)).values(
                status=FAILED, reason="server_restarted", exit_code=1, ended_at=now,
                error="the server restarted while the task was running"))

    async def stop(self) -> None:
        """End every running task (``failed``, ``server_shutdown``); again is a no-op."""
        self.stopping = True
        runs = [r for r in self.runs.values() if r.task is not None]
        for run in runs:
            assert run.task is not None
            run.task.cancel()
        for run in runs:
            with contextlib.suppress(BaseException):
                await run.task  # type: ignore[misc]
            with contextlib.suppress(Exception):
                await self._persist(run)

    # -- models ---------------------------------------------------------------------------
    def adapter(self, model: str | None) -> tuple[str, Adapter, int]:
        """(model id, its adapter, max images) or the registry's error as a 4xx."""
        registry = self.gateway.models
        try:
            entry = registry.resolve(model)
        except NoModelConfigured as exc:
            raise ModelNotConfigured(str(exc), field="model") from None
        except UnknownModel as exc:
            raise NotFound(str(exc), field="model") from None
        cached = self._adapters.get(entry.id)
        if cached is not None:
            return entry.id, *cached
        up = self.gateway.upstreams
        # no retries in the SDK: the loop retries itself and reports each retry as an event
        client = up.anthropic(entry) if entry.provider == "anthropic" else up.openai(entry)
        client = client.with_options(max_retries=0)
        try:
            adapter = adapter_for(entry, client)
        except ValueError as exc:
            raise InvalidInput(f"model {entry.id!r}: {exc}", field="model") from None
        self._adapters[entry.id] = (adapter, entry.max_images)
        return entry.id, adapter, entry.max_images

    # -- starting ---------------------------------------------------------------------------
    def _active(self, org_id: str | None = None) -> list[TaskRun]:
        return [r for r in self.runs.values() if not r.ended and (org_id is None or r.org_id == org_id)]

    async def start_task(self, org_id: str, spec: TaskSpec, base_url: str) -> tuple[TaskView, bool]:
        """Start a task (or find the one this idempotency key started): its view and whether it was
        reused."""
        if spec.idempotency_key:
            lock = self._keys.setdefault((org_id, spec.idempotency_key), asyncio.Lock())
            async with lock:
                found = await self._by_key(org_id, spec.idempotency_key)
                if found is not None:
                    return found, True
                return await self._start(org_id, spec, base_url), False
        return await self._start(org_id, spec, base_url), False

    async def _by_key(self, org_id: str, key: str) -> TaskView | None:
        for run in self.runs.values():
            if run.org_id == org_id and run.spec.idempotency_key == key:
                return self._view_of_run(run, await self._row(org_id, run.task_id))
        async with self._sessions() as s:
            row = (await s.execute(select(TaskRecord).where(TaskRecord.org_id == org_id,
                                                            TaskRecord.idempotency_key == key))).scalar_one_or_none()
        return _view_of_row(row) if row is not None else None

    async def _start(self, org_id: str, spec: TaskSpec, base_url: str) -> TaskView:
        model_id, adapter, max_images = self.adapter(spec.model)
        if self.stopping:
            raise StartFailed("the server is shutting down")
        if len(self._active()) >= self.settings.max_running_tasks:
            raise LimitReached(f"this server runs at most {self.settings.max_running_tasks} agent tasks at once "
                               "(OPENCONE_MAX_RUNNING_TASKS); wait for one to end or cancel one",
                               limit=self.settings.max_running_tasks)
        computer_id, kind, owns = await self._computer(org_id, spec)
        now = self._clock.now()
        task_id = new_id("task")
        row = TaskRecord(id=task_id, org_id=org_id, status=QUEUED, instruction=spec.instruction, model=model_id,
                         kind=kind, computer_id=computer_id, params=spec.to_dict(), task_metadata=spec.metadata,
                         idempotency_key=spec.idempotency_key, created_at=now, steps=0, usage={})
        try:
            async with self._sessions() as s, s.begin():
                s.add(row)
        except IntegrityError:
            if owns:
                with contextlib.suppress(Exception):
                    await self.runtime.computers.delete(org_id, computer_id)
            raise Conflict("a task with this idempotency_key is being started; retry") from None
        except BaseException:
            if owns:
                with contextlib.suppress(Exception):
                    await self.runtime.computers.delete(org_id, computer_id)
            raise
        task_log = TaskLog(task_id, self._clock)
        run = TaskRun(task_id=task_id, org_id=org_id, spec=spec, model_id=model_id, adapter=adapter,
                      max_images=max_images, computers=self.runtime.computers, render=self.render_for(base_url),
                      log=task_log, limits=self.limits, computer_id=computer_id, kind=kind, owns_computer=owns,
                      persist=self._persist)
        self.runs[task_id] = run
        run.task = asyncio.create_task(self._drive(run), name=f"agent-{task_id}")
        return self._view_of_run(run, row)

    async def _drive(self, run: TaskRun) -> None:
        try:
            await run.run()
        finally:
            self.runs.pop(run.task_id, None)
            self.ended[run.status] += 1
            self._keep_log(run.task_id, run.log)

    def _keep_log(self, task_id: str, task_log: TaskLog) -> None:
        loop = asyncio.get_running_loop()
        self.logs[task_id] = (task_log, loop.time())
        while len(self.logs) > ENDED_LOGS_KEPT:
            self.logs.popitem(last=False)
        while self.logs:
            oldest, (_, at) = next(iter(self.logs.items()))
            if loop.time() - at < ENDED_LOG_SECONDS:
                break
            self.logs.pop(oldest)

    async def _computer(self, org_id: str, spec: TaskSpec) -> tuple[str, str, bool]:
        """(computer id, kind, made for this task): a live computer reused, a saved one restored, or a
        new one, as ``computer_id`` and ``on_missing_computer`` say."""
        computers = self.runtime.computers
        if spec.computer_id:
            try:
                live = await computers.require_live(org_id, spec.computer_id)
            except (NotFound, Conflict):
                live = None
            if live is not None:
                if spec.kind and spec.kind != live.kind:
                    raise InvalidInput(f"computer {live.id} is a {live.kind}, not a {spec.kind}", field="kind")
                if spec.viewport_width or spec.viewport_height:
                    d = live.driver.display
                    await computers.perform(org_id, live.id, [Step([a.SetViewport(
                        width=spec.viewport_width or d.width, height=spec.viewport_height or d.height,
                        scale_factor=d.scale)])])
                return live.id, live.kind, False
            if spec.on_missing_computer == "fail":
                raise NotFound(f"computer {spec.computer_id!r} is not live (on_missing_computer is 'fail')",
                               field="computer_id")
            try:
                saved = await self.runtime.environments.get(org_id, spec.computer_id)
            except NotFound:
                saved = None
            if saved is not None:
                view = await computers.create(org_id, self._create_spec(spec, saved["kind"], spec.computer_id))
                return view.id, view.kind, True
            if spec.on_missing_computer != "create_new":
                raise NotFound(f"computer {spec.computer_id!r} is neither live nor a saved session "
                               "(on_missing_computer 'create_new' makes a new one instead)", field="computer_id")
        kind = spec.kind or ("browser" if spec.start_url else "desktop")
        env_id = spec.environment_id
        if env_id:
            saved = await self.runtime.environments.get(org_id, env_id)
            kind = spec.kind or saved["kind"]
        view = await computers.create(org_id, self._create_spec(spec, kind, env_id))
        return view.id, view.kind, True

    def _create_spec(self, spec: TaskSpec, kind: str, environment_id: str | None) -> CreateSpec:
        s = self.settings
        lifetime = s.default_max_lifetime_seconds
        if spec.max_duration_seconds:
            lifetime = max(lifetime, spec.max_duration_seconds + 600)
        width, height = s.default_display(kind)
        return CreateSpec(kind=kind, display=Display(spec.viewport_width or width, spec.viewport_height or height),
                          max_lifetime_seconds=min(lifetime, s.max_lifetime_cap_seconds),
                          inactivity_timeout_seconds=s.default_inactivity_timeout_seconds,
                          idle_timeout_enabled=True, persistent=spec.persistent, environment_id=environment_id)

    # -- records --------------------------------------------------------------------------
    async def _persist(self, run: TaskRun) -> None:
        values: dict[str, Any] = {"status": run.status, "steps": run.steps, "result": run.result,
                                  "error": run.error, "exit_code": run.exit_code, "reason": run.reason,
                                  "usage": {"input_tokens": run.usage.input_tokens,
                                            "output_tokens": run.usage.output_tokens}}
        if run.started is not None:
            values["started_at"] = run.started_at
        if run.ended_at is not None:
            values["ended_at"] = run.ended_at
        async with self._sessions() as s, s.begin():
            await s.execute(update(TaskRecord).where(TaskRecord.id == run.task_id).values(**values))

    async def _row(self, org_id: str, task_id: str) -> TaskRecord | None:
        async with self._sessions() as s:
            row = await s.get(TaskRecord, task_id)
        return row if row is not None and row.org_id == org_id else None

    # -- reading --------------------------------------------------------------------------
    def run_of(self, org_id: str, task_id: str) -> TaskRun | None:
        run = self.runs.get(task_id)
        return run if run is not None and run.org_id == org_id else None

    async def get(self, org_id: str, task_id: str) -> TaskView:
        # the run first: it leaves memory only once its record is final, so a record read after
        # missing the run is never older than the run was
        run = self.run_of(org_id, task_id)
        row = await self._row(org_id, task_id)
        if row is None:
            raise NotFound(f"no task {task_id!r}")
        return self._view_of_run(run, row) if run is not None else _view_of_row(row)

    async def list(self, org_id: str, status: str | None = None, limit: int = 50) -> list[TaskView]:
        running = {r.task_id: r for r in self.runs.values() if r.org_id == org_id}  # before the rows (see get)
        q = select(TaskRecord).where(TaskRecord.org_id == org_id)
        if status is not None:
            q = q.where(TaskRecord.status == status)
        async with self._sessions() as s:
            rows = (await s.execute(q.order_by(TaskRecord.created_at.desc()).limit(limit))).scalars().all()
        out = []
        for row in rows:
            run = running.get(row.id)
            out.append(self._view_of_run(run, row) if run is not None else _view_of_row(row))
        return out

    async def event_log(self, org_id: str, task_id: str) -> tuple[TaskLog | None, TaskView]:
        """The task's event log (None when it ended long ago) and its view."""
        view = await self.get(org_id, task_id)
        run = self.run_of(org_id, task_id)
        if run is not None:
            return run.log, view
        kept = self.logs.get(task_id)
        return (kept[0] if kept else None), view

    def _view_of_run(self, run: TaskRun, row: TaskRecord | None) -> TaskView:
        return TaskView(
            id=run.task_id, status=run.status, exit_code=run.exit_code, model=run.model_id, kind=run.kind,
            computer_id=run.computer_id, instruction=run.spec.instruction, steps=run.steps, result=run.result,
            error=run.error, reason=run.reason, created_at=row.created_at if row else self._clock.now(),
            started_at=run.started_at, ended_at=run.ended_at,
            usage={"input_tokens": run.usage.input_tokens, "output_tokens": run.usage.output_tokens},
            metadata=run.spec.metadata, idempotency_key=run.spec.idempotency_key, last_event_id=run.log.last_seq)

    # -- controls -------------------------------------------------------------------------
    async def _live_run(self, org_id: str, task_id: str, what: str) -> TaskRun:
        run = self.run_of(org_id, task_id)
        if run is not None and not run.ended:
            return run
        view = await self.get(org_id, task_id)  # 404 for another organisation's or none
        raise Conflict(f"task {task_id} has ended ({view.status}); it cannot be {what}", task_status=view.status)

    async def pause(self, org_id: str, task_id: str) -> str:
        return (await self._live_run(org_id, task_id, "paused")).pause()

    async def resume(self, org_id: str, task_id: str) -> str:
        return (await self._live_run(org_id, task_id, "resumed")).resume()

    async def inject(self, org_id: str, task_id: str, message: str) -> str:
        (await self._live_run(org_id, task_id, "sent a message")).inject(message)
        return "queued"

    async def cancel(self, org_id: str, task_id: str, wait: float = 5.0) -> str:
        run = self.run_of(org_id, task_id)
        if run is None or run.ended:
            return (await self.get(org_id, task_id)).status
        run.cancel()
        if run.task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(run.task), wait)
        return run.status


def _view_of_row(row: TaskRecord) -> TaskView:
    usage = row.usage or {}
    return TaskView(
        id=row.id, status=row.status, exit_code=row.exit_code, model=row.model, kind=row.kind,
        computer_id=row.computer_id, instruction=row.instruction, steps=row.steps, result=row.result,
        error=row.error, reason=row.reason, created_at=row.created_at, started_at=row.started_at,
        ended_at=row.ended_at, usage={"input_tokens": int(usage.get("input_tokens", 0)),
                                      "output_tokens": int(usage.get("output_tokens", 0))},
        metadata=dict(row.task_metadata or {}), idempotency_key=row.idempotency_key)
