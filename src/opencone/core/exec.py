"""Shell commands on a computer: validation, ownership, decoded output.

Exec runs beside actions, not under the computer's action lock, so a long
build does not hold up clicks; every command has its own pipes, so concurrent
commands never mix output. Every command belongs to its computer: when the
computer ends, its commands are killed and its workspace is removed.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import os
import posixpath
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from opencone.core import actions as a
from opencone.core.computers import ComputerService, LiveComputer
from opencone.core.errors import Conflict, InvalidInput, ServiceError
from opencone.core.events import EventBus
from opencone.core.exec_limits import check_command, check_cwd, check_env
from opencone.core.ids import new_id
from opencone.drivers.base import CommandResult, DriverError
from opencone.drivers.sandbox import WORKSPACE, Execution, Exited, Output, Sandbox, SandboxUnavailable, display_number

DEFAULT_TIMEOUT_SECONDS = 120.0
MAX_TIMEOUT_SECONDS = 3600.0


class Unavailable(ServiceError):
    """Exec cannot run on this server (no bubblewrap, unusable workspace dir)."""

    status = 503


class ExecRequest(BaseModel):
    """A validated command: ``cwd`` is normalised to an absolute path inside /workspace."""

    model_config = ConfigDict(extra="ignore")

    command: str
    cwd: str = WORKSPACE
    env: dict[str, str] = {}
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    request_id: str | None = Field(default=None, max_length=128, description="Correlates the command's events.")

    @field_validator("command")
    @classmethod
    def _command(cls, v: str) -> str:
        return check_command(v)

    @field_validator("cwd", mode="before")
    @classmethod
    def _cwd(cls, v: Any) -> Any:
        if v is None or v == "":
            return WORKSPACE
        if not isinstance(v, str):
            return v  # the str check reports it
        check_cwd(v)  # an OS path: no NUL, valid Unicode
        # relative paths are relative to /workspace; '..' may not climb out of it
        path = posixpath.normpath(posixpath.join(WORKSPACE, v))
        if path != WORKSPACE and not path.startswith(WORKSPACE + "/"):
            raise ValueError(f"must be inside {WORKSPACE} (got {v!r})")
        return path

    @field_validator("env", mode="before")
    @classmethod
    def _env_default(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v)  # names, NUL, Unicode, and the kernel's size limits

    @field_validator("timeout_seconds", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> Any:
        if v is None:
            return DEFAULT_TIMEOUT_SECONDS
        if isinstance(v, int | float) and not isinstance(v, bool) and not 0 < v <= MAX_TIMEOUT_SECONDS:
            raise ValueError(f"must be above 0 and at most {MAX_TIMEOUT_SECONDS:g}")
        return v


def parse_request(data: Any) -> ExecRequest:
    """``data`` (decoded JSON) as an ExecRequest, or InvalidInput saying what is wrong."""
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object with at least 'command'")
    try:
        return ExecRequest.model_validate(data)
    except ValidationError as exc:
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err["loc"]) or "body"
            msg = str(err["msg"]).removeprefix("Value error, ")
            parts.append(f"{where}: {msg}")
        raise InvalidInput("; ".join(parts)) from None


@dataclass(slots=True)
class ExecEvent:
    type: Literal["stdout", "stderr", "exit"]
    data: str = ""
    code: int = 0
    timed_out: bool = False
    truncated: bool = False


@dataclass(slots=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str
    output: str  # stdout and stderr interleaved as produced
    truncated: bool = False
    timed_out: bool = False


def _check_cwd(workspace: Path, cwd: str) -> None:
    """The cwd must be a directory inside the workspace; symlinks may not lead out of it."""
    if cwd == WORKSPACE:
        return
    root = os.path.realpath(workspace)
    real = os.path.realpath(os.path.join(root, posixpath.relpath(cwd, WORKSPACE)))
    if not (real == root or real.startswith(root + os.sep)) or not os.path.isdir(real):
        raise InvalidInput(f"cwd {cwd!r} is not a directory inside {WORKSPACE}", field="cwd")


class _Tap:
    """Puts one command's raw output and its exit on the computer's event stream (never blocks)."""

    def __init__(self, bus: EventBus, computer_id: str, request_id: str, req: ExecRequest) -> None:
        self._bus, self._cid, self.request_id = bus, computer_id, request_id
        self._exited = False
        bus.publish(computer_id, "exec_started", request_id=request_id, command=req.command, cwd=req.cwd,
                    timeout_seconds=req.timeout_seconds)

    def __call__(self, ev: Output | Exited) -> None:
        if isinstance(ev, Exited):
            self._exited = True
            self._bus.publish(self._cid, "exec_exit", request_id=self.request_id, exit_code=ev.code,
                              timed_out=ev.timed_out, truncated=ev.truncated)
        else:
            self._bus.publish(self._cid, "exec_output", request_id=self.request_id,
                              data=base64.b64encode(ev.data).decode(), is_stderr=ev.stream == "stderr")

    def close(self) -> None:
        """A command whose reader went away (or whose computer ended) still gets its exit event."""
        if not self._exited:
            self._exited = True
            self._bus.publish(self._cid, "exec_exit", request_id=self.request_id, exit_code=-1, killed=True)


async def _decoded(execution: Execution, tap: _Tap) -> AsyncIterator[ExecEvent]:
    """Output as text; an incremental decoder per stream never splits a UTF-8 sequence."""
    decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in ("stdout", "stderr")}
    async with contextlib.aclosing(execution.events()) as events:
        async for ev in events:
            tap(ev)
            if isinstance(ev, Exited):
                for stream, dec in decoders.items():
                    if tail := dec.decode(b"", final=True):
                        yield ExecEvent(stream, tail)  # type: ignore[arg-type]
                yield ExecEvent("exit", code=ev.code, timed_out=ev.timed_out, truncated=ev.truncated)
                return
            if text := decoders[ev.stream].decode(ev.data):
                yield ExecEvent(ev.stream, text)


class ExecService:
    def __init__(self, computers: ComputerService, sandbox: Sandbox, max_output_bytes: int) -> None:
        self._computers = computers
        self._sandbox = sandbox
        self._max_output = max_output_bytes
        self._running: dict[str, set[Execution]] = {}
        self.started = 0  # commands started since the server started (GET /metrics)
        computers.on_end.append(self._computer_ended)
        computers.run_command = self._run_action

    @property
    def running_count(self) -> int:
        return sum(len(runs) for runs in list(self._running.values()))

    def start(self) -> None:
        self._sandbox.start()

    def stop(self) -> None:
        """After every computer has ended (and with it every command)."""
        self._sandbox.stop()

    async def stream(self, org_id: str, computer_id: str, req: ExecRequest) -> AsyncIterator[ExecEvent]:
        """Output events as produced, then one ``exit``; nothing is buffered or capped."""
        comp = await self._computers.require_live(org_id, computer_id)
        async with self._started(comp, req, None) as (execution, tap):
            async with contextlib.aclosing(_decoded(execution, tap)) as events:
                async for ev in events:
                    yield ev

    async def run(self, org_id: str, computer_id: str, req: ExecRequest,
                  max_output_bytes: int | None = None) -> ExecResult:
        """Run to the end and return the output, capped at ``max_output_bytes`` (server default)."""
        comp = await self._computers.require_live(org_id, computer_id)
        return await self._collect(comp, req, max_output_bytes or self._max_output)

    async def _collect(self, comp: LiveComputer, req: ExecRequest, limit: int) -> ExecResult:
        parts: dict[str, list[str]] = {"stdout": [], "stderr": [], "both": []}
        async with self._started(comp, req, limit) as (execution, tap):
            async with contextlib.aclosing(_decoded(execution, tap)) as events:
                async for ev in events:
                    if ev.type == "exit":
                        return ExecResult(ev.code, "".join(parts["stdout"]), "".join(parts["stderr"]),
                                          "".join(parts["both"]), ev.truncated, ev.timed_out)
                    parts[ev.type].append(ev.data)
                    parts["both"].append(ev.data)
        raise Unavailable("the command ended without an exit status")  # not reached: events end with exit

    @contextlib.asynccontextmanager
    async def _started(self, comp: LiveComputer, req: ExecRequest,
                       limit: int | None) -> AsyncIterator[tuple[Execution, _Tap]]:
        try:
            workspace = await self._sandbox.prepare(comp.sandbox_id)
            _check_cwd(workspace, req.cwd)
            env, netns = req.env, None
            command_network = getattr(comp.driver, "command_network", None)
            if self._sandbox.network and callable(command_network):
                # the computer's own namespace and route (its forwarder), unless the request's env says otherwise
                netns, proxy_env = await command_network()
                env = {**proxy_env, **req.env}
            settle_input = getattr(comp.driver, "settle_input", None)
            if callable(settle_input):  # a desktop: the command's X clients must see the input sent before it
                with contextlib.suppress(DriverError):  # (a desktop that is gone: the command finds out)
                    await settle_input()
            execution = await self._sandbox.spawn(
                comp.sandbox_id, req.command, cwd=req.cwd, env=env, timeout=req.timeout_seconds,
                x_display=display_number(getattr(comp.driver, "x_display", None)), max_output_bytes=limit,
                netns=netns,
            )
        except SandboxUnavailable as exc:
            raise Unavailable(str(exc)) from None
        except OSError as exc:
            raise Unavailable(f"could not start the sandbox: {exc}") from exc
        self.started += 1
        running = self._running.setdefault(comp.id, set())
        running.add(execution)
        tap = _Tap(self._computers.events, comp.id, req.request_id or new_id("exec"), req)
        try:
            if comp.ending:  # the computer ended while we were starting: its hook has already run
                raise Conflict(f"computer {comp.id} is terminated; create a new one", computer_status="terminated")
            with self._computers.active(comp):
                yield execution, tap
        finally:
            tap.close()
            await execution.close()
            command_ended = getattr(comp.driver, "command_ended", None)
            if callable(command_ended):  # a desktop: what the command drew is encoded ahead of a screenshot
                command_ended()
            running.discard(execution)
            if not running and self._running.get(comp.id) is running:
                del self._running[comp.id]
            if comp.ending:
                await self._sandbox.remove(comp.sandbox_id)

    async def _computer_ended(self, computer_id: str) -> None:
        """Its commands are killed here; its sandbox goes with its driver (a desktop's) or here."""
        for execution in self._running.pop(computer_id, set()):
            execution.kill()
        await self._sandbox.remove(computer_id)

    async def _run_action(self, comp: LiveComputer, action: a.RunCommand,
                          request_id: str | None = None) -> CommandResult:
        """The ``debug`` action: buffered, capped at its ``max_output_length``; its events carry the action's id."""
        try:
            req = parse_request({"command": action.command, "cwd": action.cwd, "env": action.env,
                                 "timeout_seconds": action.timeout_seconds, "request_id": request_id})
            res = await self._collect(comp, req, action.max_output_length)
        except ServiceError as exc:
            raise DriverError(exc.message) from None
        output = res.output
        if res.truncated:
            output += f"\n[output truncated after {action.max_output_length} bytes]"
        return CommandResult(res.exit_code, res.stdout, res.stderr, res.truncated, res.timed_out,
                             extra={"output": output})
