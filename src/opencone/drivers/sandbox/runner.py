"""Start a sandboxed command and stream what it writes, as it writes it.

Each command gets its own pipes, so concurrent commands never mix output.
bwrap runs in a session of its own; killing that process group kills bwrap,
whose pid-namespace init then takes every process of the command with it.

The command starts with ``subprocess.Popen`` (which uses vfork) rather than the
event loop's subprocess support: uvloop forks, and copying the server's page
tables cost more than the whole sandbox start. Exit is awaited with a pidfd.

Nothing of the request reaches the programs that start the sandbox (setpriv,
bubblewrap: host code, run as the server's user): they get a fixed
environment, and bubblewrap reads its options, the command's environment and
the command itself from a descriptor (launch.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from opencone.drivers.netns import NetNamespace
from opencone.drivers.pipes import FdReader
from opencone.drivers.sandbox import bwrap
from opencone.drivers.sandbox.cgroups import ExecLimits
from opencone.drivers.sandbox.launch import LAUNCH_ENV, Launch, through_descriptor
from opencone.drivers.sandbox.workspaces import Workspaces, sandbox_ids

log = logging.getLogger(__name__)

Stream = Literal["stdout", "stderr"]
_HIGH_WATER = 16  # queued chunks before the pipes pause: a slow reader stalls the command, not our memory


def _entering(netns: NetNamespace | None, argv: list[str]) -> list[str]:
    """``argv`` started inside ``netns``: nsenter (as the server's user, before anything drops
    privileges) joins it through the server's own descriptor, so Popen keeps its vfork path."""
    if netns is None:
        return argv
    nsenter = shutil.which("nsenter") or "nsenter"
    return [nsenter, f"--net=/proc/{os.getpid()}/fd/{netns.fd}", *argv]


def _too_old(bwrap_path: str) -> str | None:
    """bubblewrap's version when it is older than 0.8 (no ``--disable-userns``), else None."""
    try:
        out = subprocess.run([bwrap_path, "--version"], capture_output=True, text=True, timeout=10,
                             env=LAUNCH_ENV).stdout
        version = tuple(int(part) for part in out.split()[-1].split(".")[:2])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None  # (an odd build: let the first command say what is wrong)
    return None if version >= (0, 8) else ".".join(map(str, version))


class SandboxUnavailable(Exception):
    """Exec cannot run on this server (no bwrap, no workspace root)."""


@dataclass(slots=True)
class Output:
    stream: Stream
    data: bytes


@dataclass(slots=True)
class Exited:
    code: int  # -1: timed out or killed
    timed_out: bool = False
    truncated: bool = False


class _Pipe(asyncio.Protocol):
    """One output pipe feeding the shared queue; ``None`` marks its end."""

    def __init__(self, stream: Stream, queue: asyncio.Queue[Output | None], file: object) -> None:
        self.stream = stream
        self.queue = queue
        self.file = file
        self.transport: asyncio.ReadTransport | None = None
        self.paused = False
        self._ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.queue.put_nowait(Output(self.stream, data))
        if self.queue.qsize() >= _HIGH_WATER and self.transport and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.queue.put_nowait(None)


async def _exit_status(proc: subprocess.Popen[bytes]) -> int:
    """Wait for ``proc`` without a thread: its pidfd becomes readable when it exits."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return proc.wait()  # already reaped
    except (AttributeError, OSError):
        return await asyncio.to_thread(proc.wait)
    done = loop.create_future()
    loop.add_reader(pidfd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return proc.wait()


class Execution:
    """One running command. Iterate ``events()`` once; ``kill()`` ends it early."""

    def __init__(self, proc: subprocess.Popen[bytes], timeout: float, max_output_bytes: int | None) -> None:
        self._proc = proc
        self._limit = max_output_bytes
        self._kept = 0
        self.truncated = False
        self.timed_out = False
        self.killed = False
        self._pipes: list[_Pipe] = []
        self._timer = asyncio.get_running_loop().call_later(timeout, self._time_out)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _time_out(self) -> None:
        self.timed_out = True
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole group, unless the command already ended (its pgid could be reused)."""
        self._timer.cancel()
        if self._proc.poll() is not None:
            return
        self.killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)

    def _keep(self, data: bytes) -> bytes:
        if self._limit is None:
            return data
        room = self._limit - self._kept
        if len(data) > room:
            # past the cap output is drained and dropped: the command runs on (its timeout bounds it)
            self.truncated = True
            data = data[:max(room, 0)]
        self._kept += len(data)
        return data

    async def close(self) -> None:
        """Kill the command if it still runs, close its pipes, reap it; safe to call twice."""
        self.kill()
        for pipe in self._pipes:
            if pipe.transport:
                pipe.transport.close()  # the transport owns its descriptor and closes it
        attached = {id(pipe.file) for pipe in self._pipes}
        for file in (self._proc.stdout, self._proc.stderr):
            if file is not None and id(file) not in attached:
                file.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_exit_status(self._proc), 5)

    async def events(self) -> AsyncIterator[Output | Exited]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Output | None] = asyncio.Queue()
        pipes = self._pipes
        try:
            for stream, file in (("stdout", self._proc.stdout), ("stderr", self._proc.stderr)):
                pipe = _Pipe(stream, queue, file)  # type: ignore[arg-type]
                pipes.append(pipe)
                # one owner for the descriptor: uvloop's connect_read_pipe closes it twice (drivers/pipes.py)
                assert file is not None
                fd = os.dup(file.fileno())
                file.close()
                FdReader(loop, fd, pipe)
            open_pipes = len(pipes)
            while open_pipes:
                item = await queue.get()
                if queue.qsize() < _HIGH_WATER // 2:
                    for pipe in pipes:
                        pipe.resume()
                if item is None:
                    open_pipes -= 1
                    continue
                data = self._keep(item.data)
                if data:
                    yield Output(item.stream, data)
            rc = await _exit_status(self._proc)
            self._timer.cancel()
            code = -1 if self.timed_out or self.killed or rc < 0 else rc
            yield Exited(code, self.timed_out, self.truncated)
        finally:
            await self.close()  # a consumer that stops early (client gone, cancelled) ends the command


class Sandbox:
    """Runs commands for computers; owns their workspaces."""

    def __init__(self, workspaces: Workspaces, *, network: bool = False, bwrap_path: str = "bwrap",
                 max_processes: int = 256, max_memory_bytes: int = 2 << 30) -> None:
        self.workspaces = workspaces
        self.network = network
        self.max_processes, self.max_memory_bytes = max_processes, max_memory_bytes
        self.limits: ExecLimits | None = None  # per-computer caps, where the server may set them
        self._bwrap = shutil.which(bwrap_path)
        # as root, bwrap must start as the sandbox uid (see workspaces.py); setpriv switches to it,
        # which keeps Popen on its fast vfork path (user=/group= would force a fork)
        self._setpriv = shutil.which("setpriv")
        self._problem: str | None = None
        self._started = False
        self._preparing: dict[tuple[str, str | None], asyncio.Future[Path]] = {}  # being made (``prepare``)

    def start(self) -> None:
        """Clean up after a crashed server and make the workspace root; never fails the server."""
        if self._bwrap is None:
            self._problem = "bubblewrap (bwrap) is not installed on the server"
        elif (old := _too_old(self._bwrap)) is not None:
            self._problem = f"bubblewrap {old} is installed; exec needs 0.8 or later (--disable-userns)"
        elif sandbox_ids() is not None and self._setpriv is None:
            self._problem = "setpriv (util-linux) is not installed on the server"
        else:
            try:
                killed = self.workspaces.reset()
                if killed:
                    log.warning("killed %d sandboxed commands left behind by an earlier server", killed)
            except Exception as exc:
                self._problem = f"the workspace directory is not usable: {exc}"
            if not self._problem:
                self.limits = ExecLimits(self.max_processes, self.max_memory_bytes)
        self._started = True
        if self._problem:
            log.warning("exec is unavailable: %s", self._problem)

    @property
    def available(self) -> bool:
        """Whether commands can run here (known once ``start`` has run)."""
        return self._started and self._problem is None and self._bwrap is not None

    @property
    def executable(self) -> str:
        """What a sandboxed process runs as, seen from the host (its pidfile entry)."""
        return self._bwrap or "bwrap"

    def command_line(self, sandbox_id: str, command: str, *, cwd: str = bwrap.WORKSPACE,
                     x_display: int | None = None, netns: NetNamespace | None = None,
                     env: dict[str, str] | None = None) -> list[str]:
        """The argv that runs ``command`` in the sandbox ``sandbox_id`` (a computer's own), every
        option on it; ``env``: the command's whole environment (``bwrap.environment``). Run it with
        ``LAUNCH_ENV``. ``launch`` is the same without the host paths, the environment and the
        command on the host's process list: what the server runs."""
        exe = self._usable_bwrap()
        env = bwrap.environment({}, x_display) if env is None else env
        argv = self._as_sandbox_user(bwrap.command_line(self.workspace(sandbox_id), command, cwd,
                                                        network=self.network, x_display=x_display, bwrap=exe,
                                                        binds=self._binds(sandbox_id, ()), env=env,
                                                        marker=self.workspaces.marker))
        return _entering(netns, argv) if self.network else argv

    def launch(self, sandbox_id: str, command: str, *, cwd: str = bwrap.WORKSPACE, env: dict[str, str],
               x_display: int | None = None, netns: NetNamespace | None = None) -> Launch:
        """How to start ``command`` in the sandbox ``sandbox_id`` with the environment ``env``
        (``bwrap.environment``): all of it handed to bubblewrap through a descriptor (launch.py).
        With the network on, it runs in ``netns`` (the computer's commands' namespace, whose way
        out is its forwarder), or on the host's network when the server has no namespaces."""
        exe = self._usable_bwrap()
        options = bwrap.command_options(self.workspace(sandbox_id), command, cwd, env, network=self.network,
                                        x_display=x_display, binds=self._binds(sandbox_id, ()))
        prefix = _entering(netns if self.network else None, self._as_sandbox_user([]))
        return through_descriptor(prefix, exe, options, bwrap.pid1(self.workspaces.marker))

    def program_line(self, sandbox_id: str, argv: Sequence[str], *, cwd: str, x_display: int | None,
                     binds: Sequence[tuple[Path, str]] = (), workspace: bool = True) -> list[str]:
        """The argv that runs the program ``argv`` in the sandbox ``sandbox_id`` (with its
        /workspace unless ``workspace`` is false), in the network it is started in whatever the
        exec setting: a browser's namespace (drivers/netns.py), where its forwarder listens and
        the server reaches its DevTools port."""
        exe = self._usable_bwrap()
        return self._as_sandbox_user(bwrap.program_line(self.workspace(sandbox_id) if workspace else None, argv,
                                                        cwd, network=True, x_display=x_display, bwrap=exe,
                                                        binds=self._binds(sandbox_id, binds)))

    def _usable_bwrap(self) -> str:
        if not self.available or self._bwrap is None:
            raise SandboxUnavailable(f"exec is unavailable: {self._problem or 'not started'}")
        return self._bwrap

    def _binds(self, sandbox_id: str, binds: Sequence[tuple[Path, str]]) -> list[tuple[Path, str]]:
        """A sandbox with a home (a desktop's) has it at /home/user in all it runs, exec included."""
        home = self.workspaces.home(sandbox_id)
        return [*([(home, bwrap.HOME_DIR)] if home.is_dir() else []), *binds]

    def _as_sandbox_user(self, argv: list[str]) -> list[str]:
        ids = sandbox_ids()
        if ids is not None and self._setpriv:
            return [self._setpriv, f"--reuid={ids[0]}", f"--regid={ids[1]}", "--clear-groups", *argv]
        return argv

    def cap(self, sandbox_id: str, pid: int) -> None:
        """Put the just-started sandbox ``pid`` under its computer's caps; kill it if that fails."""
        if self.limits is None:
            return
        try:
            self.limits.add(sandbox_id, pid)
        except OSError as exc:  # never run a command outside its caps
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            raise SandboxUnavailable(f"could not cap the command's processes and memory: {exc}") from None

    async def spawn(self, sandbox_id: str, command: str, *, cwd: str = bwrap.WORKSPACE,
                    env: dict[str, str] | None = None, x_display: int | None = None, timeout: float,
                    max_output_bytes: int | None = None, netns: NetNamespace | None = None) -> Execution:
        launch = self.launch(sandbox_id, command, cwd=cwd, env=bwrap.environment(env or {}, x_display),
                             x_display=x_display, netns=netns)
        try:
            proc = subprocess.Popen(  # a vfork + exec: about a millisecond, fine on the loop
                launch.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=launch.env, cwd="/", start_new_session=True, pass_fds=launch.pass_fds,
            )
        finally:
            launch.close()
        try:
            self.cap(sandbox_id, proc.pid)
        except SandboxUnavailable:
            proc.wait()
            raise
        return Execution(proc, timeout, max_output_bytes)

    def stop(self) -> None:
        if self.limits is not None:
            self.limits.close()
        self.workspaces.close()

    async def prepare(self, sandbox_id: str, name: str | None = None) -> Path:
        """The workspace (or the part ``name``: a desktop's home), made off the event loop (a capped
        one is mkfs and mount: ~25 ms) and once: a second caller meanwhile waits for the first. A
        caller cancelled meanwhile (a pool closing) still waits for it: what it then removes is mounted."""
        key = (sandbox_id, name)
        making = self._preparing.get(key)
        if making is None:
            path = self.workspaces.part(sandbox_id, name) if name else self.workspaces.path(sandbox_id)
            if path.is_dir():  # (made: whatever mounts it is done, or in ``_preparing``)
                return path
            making = asyncio.ensure_future(asyncio.to_thread(self.workspaces.ensure, sandbox_id, name))
            self._preparing[key] = making
            making.add_done_callback(lambda _f: self._preparing.pop(key, None))
        try:
            return await asyncio.shield(making)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await making
            raise

    def workspace(self, sandbox_id: str) -> Path:
        """The host directory behind ``/workspace``, created on first use."""
        return self.workspaces.ensure(sandbox_id)

    async def remove(self, sandbox_id: str) -> None:
        """End what runs in the sandbox and remove its workspace (again: nothing happens)."""
        if self.limits is not None:
            await asyncio.to_thread(self.limits.remove, sandbox_id)
        await asyncio.to_thread(self.workspaces.remove, sandbox_id)
