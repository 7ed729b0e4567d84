"""Child processes (Chromium, Xvfb, openbox…) started off the event loop, with no Python between
fork and exec.

Why not ``asyncio.create_subprocess_exec``: under uvicorn the loop is uvloop, whose libuv spawn
forks the whole server process (page tables and all) on the event loop's thread and waits there
until the child has exec'd; a ``preexec_fn`` (the parent-death signal, a uid switch, a network
namespace) then runs Python in the child meanwhile. With 300 MiB resident that blocked the loop
~5.5 ms per spawn at rest, and a burst's pool refill did it for every browser it launched, under
every create of the burst (py-spy: a fifth of the loop's busy samples). Here the fork is the
standard library's vfork, on a thread of its own, and what the ``preexec_fn`` did is done after
exec by util-linux's ``nsenter`` (into the namespace) and ``setpriv`` (the uid, the groups, the
parent-death signal).

The parent-death signal follows the *thread* that made the child, so every child is made by
one long-lived thread, which ends only with the server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from opencone.drivers import pipes, priority
from opencone.drivers.netns import NetNamespace

_SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="opencone-spawn")


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/bin/{name}"  # util-linux: on every Debian system


SETPRIV, NSENTER, NICE = _tool("setpriv"), _tool("nsenter"), _tool("nice")


def prefix(ids: tuple[int, int] | None = None, netns: NetNamespace | None = None, nice: int = 0) -> list[str]:
    """The words before a command that give it the ``nice`` value (drivers/priority.py), put it in
    ``netns``, make it ``ids`` (uid, gid, no other group) and have it SIGKILLed when the server
    goes: in that order (entering a namespace needs root; the signal is set after the uid switch,
    which would clear it)."""
    words: list[str] = [NICE, "-n", str(nice)] if nice else []
    if netns is not None:
        words += [NSENTER, f"--net=/proc/self/fd/{netns.fd}", "--"]
    words.append(SETPRIV)
    if ids is not None:
        uid, gid = ids
        words += ["--reuid", str(uid), "--regid", str(gid), "--clear-groups"]
    return [*words, "--pdeathsig", "KILL", "--"]


class Spawned:
    """A started child: what the drivers used of asyncio's ``Process`` (``pid``, ``returncode``,
    ``wait``, ``stderr`` as a stream). It is reaped as soon as it exits, as asyncio's own children
    are: a zombie would keep its process group alive for ``kill_group``'s whole grace."""

    def __init__(self, popen: subprocess.Popen[bytes], stderr: asyncio.StreamReader | None) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stderr = stderr
        self._ended = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        try:
            self._pidfd: int | None = os.pidfd_open(self.pid)
        except ProcessLookupError:  # gone already
            self._pidfd = None
            self._reap()
            return
        self._loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self._popen.wait()  # (it has exited: this only reaps)
        self._ended.set()

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode if self._ended.is_set() else None

    async def wait(self) -> int:
        await self._ended.wait()
        code = self._popen.returncode
        assert code is not None
        return code


async def spawn(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Any = None,
                pass_fds: tuple[int, ...] = (), stderr_pipe: bool = False,
                ids: tuple[int, int] | None = None, netns: NetNamespace | None = None) -> Spawned:
    """``cmd`` in a session of its own (its pid is its process group), stdin and stdout on
    /dev/null, stderr a stream when ``stderr_pipe`` (else /dev/null), as ``ids`` in ``netns``
    when given, dying with the server; at the lowest priority when a warm pool's launch ahead of
    demand starts it (drivers/priority.py). OSError when it cannot be started."""
    if shutil.which(cmd[0], path=(env or os.environ).get("PATH")) is None:  # (setpriv would only exit 127)
        raise FileNotFoundError(f"no executable {cmd[0]!r}")
    launch = priority.current.get()
    nice = launch.nice if launch is not None else 0
    argv = [*prefix(ids, netns, nice), *cmd]
    fds = (*pass_fds, netns.fd) if netns is not None else pass_fds

    read_end, write_end = os.pipe() if stderr_pipe else (-1, subprocess.DEVNULL)

    def start() -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=write_end,
                                    env=env, cwd=cwd, pass_fds=fds, start_new_session=True)
        finally:
            if stderr_pipe:
                os.close(write_end)  # the child's now

    loop = asyncio.get_running_loop()
    try:
        popen = await loop.run_in_executor(_SPAWNER, start)
    except BaseException:
        if stderr_pipe:
            os.close(read_end)
        raise
    spawned = Spawned(popen, pipes.stream(read_end, loop) if stderr_pipe else None)  # (not connect_read_pipe)
    if launch is not None:
        launch.started(spawned, nice)
    return spawned
