"""One agent task, step by step, on the server (a dropped stream never stops it).

A step is one model call. Before it: honour cancel, the wall clock (paused time not counted)
and pause; take a screenshot; deliver the injected messages. Then the model decides
(``adapter.decide``, with a timeout, and retries with back-off on a retryable failure, each
reported as an ``error`` event); its text and actions become events; the actions run in order
**through ``ComputerService.perform``**, exactly as the REST API runs them (the computer's lock,
its idle timer, its ``/events``); their outcomes go back to the model with the next screenshot.

It ends on the model's done signal (``completed``, or ``failed`` when it said it failed),
``max_steps``, ``max_duration_seconds`` (``cancelled``, reason ``max_duration``), a cancel, too
many failures in a row or a stuck loop (``failed``, reasons ``repeated_failures`` / ``stuck``),
or the computer ending under it (``failed``, ``computer_gone``). Exactly one terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opencone.agent.adapters.base import (
    Adapter,
    Call,
    Conversation,
    Decision,
    ModelCallError,
    ModelError,
    ModelOutputError,
    ModelTurn,
    Observation,
    Outcome,
    Screenshot,
    Text,
    Usage,
)
from opencone.agent.events import TaskLog
from opencone.agent.spec import (
    CANCELLED,
    COMPLETED,
    FAILED,
    MAX_STEPS,
    PAUSED,
    QUEUED,
    RUNNING,
    TaskSpec,
    instructions,
)
from opencone.core import actions as a
from opencone.core.computers import ComputerService, Render, Step
from opencone.core.errors import ServiceError

log = logging.getLogger(__name__)

# actions after which the screen may still be changing when they return
_INPUT = (a.Click, a.TypeText, a.PressKeys, a.Scroll, a.Drag, a.KeyUp, a.MouseUp, a.Navigate)


@dataclass(slots=True)
class Limits:
    """The server's settings for every task (``OPENCONE_AGENT_*``, ``OPENCONE_MODEL_*``)."""

    max_steps: int = 100
    max_failures: int = 3
    stuck_repeats: int = 4
    model_timeout: float = 120.0
    model_retries: int = 2
    settle_seconds: float = 0.25
    keepalive_seconds: float = 15.0


@dataclass(slots=True)
class Ending:
    """How a task ended: its terminal status, why, and its result or error."""

    status: str
    reason: str
    result: str | None = None
    error: str | None = None


class Stop(Exception):  # noqa: N818 (a control-flow signal, not an error)
    def __init__(self, end: Ending) -> None:
        super().__init__(end.reason)
        self.end = end


@dataclass(eq=False)
class TaskRun:
    """The state of one running task; the service holds it while it runs."""

    task_id: str
    org_id: str
    spec: TaskSpec
    model_id: str
    adapter: Adapter
    max_images: int
    computers: ComputerService
    render: Render
    log: TaskLog
    limits: Limits
    computer_id: str
    kind: str
    owns_computer: bool
    persist: Callable[[TaskRun], Awaitable[None]]  # the record, after every step and at the end
    status: str = QUEUED
    steps: int = 0
    usage: Usage = field(default_factory=Usage)
    result: str | None = None
    error: str | None = None
    reason: str | None = None
    started: float | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    paused_total: float = 0.0
    paused_since: float | None = None
    inbox: list[str] = field(default_factory=list)
    cancel_requested: bool = False
    items: list[Any] = field(default_factory=list)
    failures: int = 0
    seen: list[tuple[str, str]] = field(default_factory=list)
    recorded_at: float = 0.0
    task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    # -- control, from the API ------------------------------------------------------------------
    def pause(self) -> str:
        if self.status in (RUNNING, QUEUED):
            self.status = PAUSED
            self.paused_since = time.monotonic()
            self.log.emit("paused", step=self.steps)
            self._poke()
        return self.status

    def resume(self) -> str:
        if self.status == PAUSED:
            if self.paused_since is not None:
                self.paused_total += time.monotonic() - self.paused_since
            self.paused_since = None
            self.status = RUNNING
            self.log.emit("resumed", step=self.steps)
            self._poke()
        return self.status

    def inject(self, message: str) -> None:
        self.inbox.append(message)
        self._poke()

    def cancel(self) -> None:
        self.cancel_requested = True
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def active_seconds(self) -> float:
        """Time the task has run, paused time left out."""
        if self.started is None:
            return 0.0
        paused = self.paused_total + (time.monotonic() - self.paused_since if self.paused_since else 0.0)
        return time.monotonic() - self.started - paused

    @property
    def ended(self) -> bool:
        return self.status in (COMPLETED, FAILED, CANCELLED, MAX_STEPS)

    # -- the run --------------------------------------------------------------------------------
    async def run(self) -> None:
        end: Ending
        keepalive = asyncio.create_task(self._keep_alive(), name=f"keepalive-{self.task_id}")
        try:
            end = await self._run()
        except Stop as stop:
            end = stop.end
        except asyncio.CancelledError:
            end = Ending(FAILED, "server_shutdown", error="the server shut down while the task was running")
            self._finish(end)
            raise
        except Exception as exc:  # a bug must end the task cleanly, never leave it running
            log.exception("agent task %s failed", self.task_id)
            end = Ending(FAILED, "internal_error", error=f"internal error: {type(exc).__name__}: {exc}")
        finally:
            keepalive.cancel()
        self._finish(end)
        await self._teardown()
        try:
            await self.persist(self)
        except Exception:
            log.exception("could not record the end of agent task %s", self.task_id)

    def _finish(self, end: Ending) -> None:
        if self.ended:
            return
        if self.paused_since is not None:
            self.paused_total += time.monotonic() - self.paused_since
            self.paused_since = None
        self.status, self.reason, self.result, self.error = end.status, end.reason, end.result, end.error
        self.ended_at = datetime.now(UTC)
        body: dict[str, Any] = {"status": end.status, "reason": end.reason, "exit_code": self.exit_code,
                                "steps": self.steps, "computer_id": self.computer_id,
                                "usage": {"input_tokens": self.usage.input_tokens,
                                          "output_tokens": self.usage.output_tokens}}
        if end.result is not None or end.status == COMPLETED:
            body["result"] = end.result
        if end.error is not None:
            body["error"] = end.error
        self.log.emit(end.status, **body)

    @property
    def exit_code(self) -> int | None:
        if not self.ended:
            return None
        return 0 if self.status == COMPLETED else 1

    async def _teardown(self) -> None:
        terminate = self.spec.terminate_on_completion
        if terminate is None:
            terminate = self.owns_computer
        if terminate:
            with contextlib.suppress(ServiceError, Exception):
                await self.computers.delete(self.org_id, self.computer_id)

    async def _keep_alive(self) -> None:
        """The computer's idle timer would run out while the model thinks or the task is paused."""
        while True:
            await asyncio.sleep(self.limits.keepalive_seconds)
            with contextlib.suppress(Exception):
                await self.computers.keepalive(self.org_id, self.computer_id)

    async def _run(self) -> Ending:
        self.status = PAUSED if self.status == PAUSED else RUNNING
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)
        if self.paused_since is not None:  # paused before it started
            self.paused_since = self.started
        self.log.emit("task_started", computer_id=self.computer_id, model=self.model_id, kind=self.kind,
                      instruction=self.spec.instruction, metadata=self.spec.metadata)
        await self.persist(self)
        if self.spec.start_url:
            report = await self._perform([a.Navigate(url=self.spec.start_url)])
            if not report[0].ok:
                raise Stop(Ending(FAILED, "start_url_failed",
                                    error=f"could not open start_url: {report[0].error_message}"))
        for turn in self.spec.context:
            self.items.append(Text(turn["content"], turn["role"], "context"))  # type: ignore[arg-type]
        self.items.append(Text(self.spec.instruction, "user", "instruction"))
        max_steps = self.spec.max_steps or self.limits.max_steps
        outcomes: tuple[Outcome, ...] = ()
        # the start navigate is an action too: on a desktop its first paint reaches the X screen a
        # little after the navigate answered, and the first look must see the page
        acted = bool(self.spec.start_url)
        while True:
            await self._checkpoint()
            if acted and self.limits.settle_seconds:
                await asyncio.sleep(self.limits.settle_seconds)
            shot = await self._screenshot()
            self._observe(shot, outcomes)
            self._deliver()
            self.steps += 1
            self.log.emit("step_started", step=self.steps)
            decision = await self._decide(shot)
            if decision is None:  # a failed or unusable answer: noted; the next step asks again
                outcomes, acted = (), False
                if self.steps >= max_steps:
                    return Ending(MAX_STEPS, "max_steps", error=f"stopped after {self.steps} steps")
                continue
            self.items.append(ModelTurn(decision))
            self._tell(decision)
            if decision.ask_user:
                self.log.emit("message", step=self.steps, text=decision.ask_user, asks_user=True)
                self.pause()
            await self._checkpoint()  # paused: the decided actions wait for the resume
            outcomes, acted = await self._execute(decision)
            await self._record()
            if decision.done:
                if decision.success:
                    return Ending(COMPLETED, "done", result=decision.result)
                return Ending(FAILED, "model_gave_up", result=decision.result,
                                error=decision.result or "the model said the task failed")
            self._check_stuck(shot, decision)
            if self.steps >= max_steps:
                return Ending(MAX_STEPS, "max_steps", error=f"stopped after {self.steps} steps "
                                f"(max_steps={max_steps})")

    # -- a step's parts -------------------------------------------------------------------------
    async def _record(self) -> None:
        """The record, at most once a second while the task runs (its start and end always)."""
        now = time.monotonic()
        if now - self.recorded_at >= 1.0:
            self.recorded_at = now
            await self.persist(self)

    async def _checkpoint(self) -> None:
        """Cancel, the wall clock, pause: between steps and before actions run."""
        while True:
            if self.cancel_requested:
                raise Stop(Ending(CANCELLED, "cancelled", error="cancelled"))
            limit = self.spec.max_duration_seconds
            if limit is not None and self.active_seconds >= limit:
                raise Stop(Ending(CANCELLED, "max_duration",
                                    error=f"max_duration_seconds ({limit}) reached after {self.steps} steps"))
            if self.status != PAUSED:
                return
            changed = self._changed
            await changed.wait()

    def _remaining(self) -> float | None:
        limit = self.spec.max_duration_seconds
        return None if limit is None else max(0.0, limit - self.active_seconds)

    async def _perform(self, actions: list[a.Action]) -> list[Any]:
        try:
            return await self.computers.perform(self.org_id, self.computer_id, [Step([act]) for act in actions],
                                                render=self.render)
        except ServiceError as exc:  # the computer ended (409) or is gone (404)
            raise Stop(Ending(FAILED, "computer_gone", error=f"the task's computer is gone: {exc.message}")) from None

    async def _screenshot(self) -> Screenshot:
        reports = await self._perform([a.Screenshot()])
        report = reports[0]
        if not report.ok or report.outcome.image is None:
            raise Stop(Ending(FAILED, "screenshot_failed", error=f"screenshot failed: {report.error_message}"))
        shot = Screenshot.from_bytes(report.outcome.image, "image/jpeg")
        event: dict[str, Any] = {"step": self.steps + 1, "width": shot.width, "height": shot.height}
        if self.spec.screenshot_mode == "base64":
            event["image"] = shot.data_url()
        else:
            event["url"] = (report.rendered or {}).get("result", {}).get("screenshot_url")
        self.log.emit("screenshot", **event)
        return shot

    def _observe(self, shot: Screenshot, outcomes: tuple[Outcome, ...]) -> None:
        """The new screen goes after the last turn; after a failed call it replaces the screen
        that call was shown (same outcomes), so the transcript never holds two in a row."""
        last = self.items[-1] if self.items else None
        if isinstance(last, Observation):
            self.items[-1] = Observation(shot, last.outcomes)
            return
        if isinstance(last, Text) and last.kind == "note":
            for n in range(len(self.items) - 1, -1, -1):
                item = self.items[n]
                if isinstance(item, Observation):
                    self.items[n] = Observation(shot, item.outcomes)
                    return
                if isinstance(item, ModelTurn):
                    break
        self.items.append(Observation(shot, outcomes))

    def _deliver(self) -> None:
        """Injected messages reach the model with the next request, after the screen."""
        while self.inbox:
            message = self.inbox.pop(0)
            self.items.append(Text(message, "user", "injected"))
            self.log.emit("message_injected", step=self.steps + 1, message=message)

    def conversation(self, shot: Screenshot) -> Conversation:
        return Conversation(instructions(self.kind, shot.width, shot.height, self.spec.system_prompt),
                            tuple(self.items), (shot.width, shot.height), self.kind,  # type: ignore[arg-type]
                            self.spec.temperature, self.max_images)

    async def _decide(self, shot: Screenshot) -> Decision | None:
        """One model call, retried on retryable failures; None when this step got no decision."""
        conv = self.conversation(shot)
        on_text = None
        if self.spec.stream_deltas:
            def on_text(delta: str) -> None:
                self.log.emit("progress_update", step=self.steps, delta=delta)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._call(conv, on_text)
            except ModelOutputError as exc:
                self.usage += exc.usage
                self.log.emit("error", step=self.steps, code=exc.code, message=str(exc), retrying=True,
                              raw=_clip(exc.native))
                self.items.append(Text(f"Your last answer could not be used: {exc}. Look at the newest "
                                       "screenshot and answer again, using the computer tool.", "user", "note"))
                self._failed(str(exc))
                return None
            except ModelCallError as exc:
                retry = exc.retryable and attempt <= self.limits.model_retries
                self.log.emit("error", step=self.steps, code=exc.code, message=str(exc), status=exc.status,
                              retrying=retry, attempt=attempt)
                if not exc.retryable:
                    raise Stop(Ending(FAILED, "model_error", error=str(exc))) from None
                if not retry:
                    self._failed(str(exc))
                    return None
                await self._backoff(attempt, exc.retry_after)
            except ModelError as exc:
                raise Stop(Ending(FAILED, "model_error", error=str(exc))) from None

    async def _call(self, conv: Conversation, on_text: Any) -> Decision:
        """``decide`` bounded by the model timeout and what is left of max_duration_seconds, and
        abandoned at once on a cancel."""
        remaining = self._remaining()
        timeout = self.limits.model_timeout if remaining is None else min(self.limits.model_timeout, remaining + 0.05)
        call = asyncio.ensure_future(self.adapter.decide(conv, on_text))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                changed = self._changed
                waiter = asyncio.ensure_future(changed.wait())
                done, _ = await asyncio.wait({call, waiter}, timeout=max(0.0, deadline - loop.time()),
                                             return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if call in done:
                    return call.result()
                if self.cancel_requested:
                    raise Stop(Ending(CANCELLED, "cancelled", error="cancelled"))
                if not done:  # the timeout
                    if remaining is not None and self._remaining() == 0.0:
                        limit = self.spec.max_duration_seconds
                        raise Stop(Ending(CANCELLED, "max_duration",
                                            error=f"max_duration_seconds ({limit}) reached during a model call"))
                    raise ModelCallError(f"the model did not answer within {timeout:g} s", retryable=True)
        finally:
            if not call.done():
                call.cancel()
                with contextlib.suppress(BaseException):
                    await call

    async def _backoff(self, attempt: int, retry_after: float | None) -> None:
        delay = retry_after if retry_after is not None and 0 < retry_after <= 60 else \
            min(8.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.75, 1.0)
        remaining = self._remaining()
        if remaining is not None:
            delay = min(delay, remaining)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), delay)
        if self.cancel_requested:
            raise Stop(Ending(CANCELLED, "cancelled", error="cancelled"))

    def _failed(self, why: str) -> None:
        self.failures += 1
        if self.failures >= self.limits.max_failures:
            raise Stop(Ending(FAILED, "repeated_failures",
                                error=f"{self.failures} failures in a row; the last: {why}"))

    def _tell(self, decision: Decision) -> None:
        self.usage += decision.usage
        if decision.text:
            self.log.emit("message", step=self.steps, text=decision.text)
        if decision.safety_checks:
            self.log.emit("safety_check", step=self.steps, checks=list(decision.safety_checks),
                          acknowledged=True)
        for call in decision.calls:
            for n, act in enumerate(call.actions):
                self.log.emit("action", step=self.steps, call_id=call.id, action=lightcone_action(act),
                              **({"raw": _clip(call.native)} if n == 0 else {}))

    async def _execute(self, decision: Decision) -> tuple[tuple[Outcome, ...], bool]:
        """Run every call's actions in order, stopping at the first failure; each call's outcome."""
        outcomes: list[Outcome] = []
        broken = False
        acted = False
        ran_ok = 0
        for call in decision.calls:
            if broken:
                outcomes.append(Outcome(call.id, False, "not run: an earlier action failed", ran=False))
                continue
            if call.error or call.function:
                why = call.error or f"there is no function {call.function!r} here"
                self.log.emit("error", step=self.steps, code="bad_action", message=f"{call.name}: {why}",
                              retrying=True, call_id=call.id, raw=_clip(call.native))
                outcomes.append(Outcome(call.id, False, why, ran=False))
                continue
            outcome = await self._run_call(call)
            acted = acted or any(isinstance(x, _INPUT) for x in call.actions)
            outcomes.append(outcome)
            if outcome.ok:
                ran_ok += 1
            else:
                broken = True
        if decision.calls and not ran_ok and not decision.done:
            self._failed("no action of the step worked")
        elif ran_ok:
            self.failures = 0
        return tuple(outcomes), acted

    async def _run_call(self, call: Call) -> Outcome:
        for act in call.actions:
            if self.cancel_requested:
                raise Stop(Ending(CANCELLED, "cancelled", error="cancelled"))
            limit = self.spec.max_duration_seconds
            if limit is not None and self.active_seconds >= limit:
                raise Stop(Ending(CANCELLED, "max_duration", error=f"max_duration_seconds ({limit}) reached"))
            report = (await self._perform([act]))[0]
            fields: dict[str, Any] = {"step": self.steps, "call_id": call.id, "action_type": lightcone_action(act)
                                      ["type"], "ok": report.ok, "request_id": report.request_id}
            if not report.ok:
                fields["error"] = report.error_message
            self.log.emit("action_result", **fields)
            if not report.ok:
                return Outcome(call.id, False, report.error_message)
        return Outcome(call.id, True)

    def _check_stuck(self, shot: Screenshot, decision: Decision) -> None:
        """The same actions on the same screen, again and again: the model is not getting anywhere."""
        if not decision.actions:
            return
        key = (hashlib.sha1(shot.data).hexdigest(), repr([lightcone_action(x) for x in decision.actions]))
        self.seen.append(key)
        repeats = self.limits.stuck_repeats
        if len(self.seen) >= repeats and len(set(self.seen[-repeats:])) == 1:
            raise Stop(Ending(FAILED, "stuck", error=f"stuck: the same actions on the same screen {repeats} "
                                "times in a row"))


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else round(v, 1)


def lightcone_action(act: a.Action) -> dict[str, Any]:
    """A canonical action as a Lightcone ``ComputerAction`` (screenshot pixels), for events."""
    match act:
        case a.Click(at=p, button=button, count=count):
            if button == "right" and count == 1:
                return {"type": "right_click", "x": _num(p.x), "y": _num(p.y)}
            if count == 2 and button == "left":
                return {"type": "double_click", "x": _num(p.x), "y": _num(p.y)}
            out: dict[str, Any] = {"type": "click", "x": _num(p.x), "y": _num(p.y), "button": button}
            if count > 1:
                out["count"] = count
            return out
        case a.MoveMouse(at=p):
            return {"type": "move", "x": _num(p.x), "y": _num(p.y)}
        case a.MouseDown(at=p) | a.MouseUp(at=p):
            out = {"type": act.kind}
            if p is not None:
                out.update(x=_num(p.x), y=_num(p.y))
            return out
        case a.Drag(path=path):
            if len(path) == 2:
                return {"type": "drag", "x1": _num(path[0].x), "y1": _num(path[0].y), "x2": _num(path[1].x),
                        "y2": _num(path[1].y)}
            return {"type": "drag", "path": [{"x": _num(p.x), "y": _num(p.y)} for p in path]}
        case a.TypeText(text=text, at=p):
            if p is not None:
                return {"type": "point_and_type", "x": _num(p.x), "y": _num(p.y), "text": text}
            return {"type": "type", "text": text}
        case a.PressKeys(keys=keys):
            return {"type": "keypress", "keys": list(keys)}
        case a.KeyDown(key=key) | a.KeyUp(key=key):
            return {"type": act.kind, "key": key}
        case a.Scroll(at=p, dx=dx, dy=dy):
            out = {"type": "scroll", "dx": _num(dx), "dy": _num(dy)}
            if p is not None:
                out.update(x=_num(p.x), y=_num(p.y))
            return out
        case a.Wait(ms=ms):
            return {"type": "wait", "ms": ms}
        case a.Navigate(url=url):
            return {"type": "go_to_url", "url": url}
    return {"type": act.kind}


def _clip(value: Any, limit: int = 20_000) -> Any:
    """A provider payload for an event, without megabytes of base64 in it."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "…"
    if isinstance(value, dict):
        return {k: _clip(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip(v, limit) for v in value[:200]]
    return value
