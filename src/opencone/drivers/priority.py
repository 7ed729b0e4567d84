"""CPU priority of the processes a warm pool launches ahead of demand.

A pool refill launches browsers while the computers just handed out are at work: on
2 cores ten launches ahead of demand took the CPU from ten live browsers' first
page loads (measured: the loads' CPU doubled and their wall time with it). So a
launch nobody waits for starts at the lowest priority and is raised back to normal
when a create takes it, or comes to wait for it while it is still starting: the
machine's idle time builds the pool, and a busy machine serves its live computers
first. A launch a create waits for starts at normal priority.

Two knobs, because of the scheduler's autogroups (``kernel.sched_autogroup_enabled``,
on by default): every session (``setsid``) is one group that competes with the others
as a whole, whatever its threads' nice values; and each browser runs in sessions of
its own (ours, and its sandbox's: bubblewrap's ``--new-session``). Measured here: a
busy loop at nice 19 in a session of its own still took half a core from one at 0.
So a launch ahead of demand gets

- ``nice`` 19 for its every thread (util-linux ``nice`` before the command, inherited;
  this is what counts where autogroups do not apply: a cgroup other than the root);
- nice 19 for each of its sessions' autogroup (``/proc/<pid>/autogroup``): ours at once,
  a sandbox's the moment it appears (bubblewrap makes it just before its command starts).

The launch does not pass its priority down: the pool sets it for the launch's task
(``current``), and ``drivers/spawn.py``, which starts every child a computer has
(Chromium, Xvfb, openbox, the terminal), applies it. So a desktop's four programs are
lowered, and raised, together.

Raising undoes both. It needs CAP_SYS_NICE (root, outside a container that drops
it); a server without it launches everything at normal priority, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import threading
from typing import Protocol

from opencone.drivers.processes import children, descendants

log = logging.getLogger(__name__)

BACKGROUND_NICE = 19
SESSION_POLL_SECONDS = 0.005  # how soon a sandbox's new session is lowered too
SESSION_POLL_LIMIT_SECONDS = 10.0


@functools.cache
def can_raise() -> bool:
    """Whether this process may lower a nice value (probed on a throwaway thread: on Linux a
    nice value is per thread, so the probe changes no other thread's)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            now = os.getpriority(os.PRIO_PROCESS, 0)
            os.setpriority(os.PRIO_PROCESS, 0, min(now + 1, 19))
            os.setpriority(os.PRIO_PROCESS, 0, now)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="opencone-nice-probe")
    thread.start()
    thread.join()
    if not result[0]:
        log.info("pool launches run at normal CPU priority: this server may not raise a priority (CAP_SYS_NICE)")
    return result[0]


def background_nice() -> int:
    """The nice value of a launch nobody waits for: the lowest, where it can be raised again."""
    return BACKGROUND_NICE if can_raise() else 0


def set_session_nice(pid: int, nice: int) -> None:
    """The nice value of the autogroup of ``pid``'s session (no such file: autogroups are off)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/autogroup", "w") as f:
        f.write(str(nice))


def raise_tree(pid: int) -> None:
    """``pid`` and every process below it back to normal priority: each process group once, and
    each session's autogroup once, through any of its members (a session's leader may be gone:
    Chromium's crash handler is left in one whose leader exited)."""
    if not can_raise():
        return
    groups, sessions = set(), {}
    for member in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(member))
            sessions.setdefault(os.getsid(member), member)
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpriority(os.PRIO_PGRP, group, 0)
    for member in sessions.values():
        set_session_nice(member, 0)


class Started(Protocol):
    """A process a launch started (drivers/spawn.py's ``Spawned``)."""

    pid: int

    @property
    def returncode(self) -> int | None: ...


class LaunchPriority:
    """The priority of one launch ahead of demand, for every process it starts (``spawn`` reads
    it from ``current``): ``nice`` to start with, raised to normal by ``raise_now`` the moment a
    create waits for the launch or takes what it made."""

    def __init__(self, nice: int | None = None) -> None:
        self.nice = background_nice() if nice is None else nice
        self.raised = False
        self._started: list[Started] = []
        self._follows: list[asyncio.Task[None]] = []
        self._sessions: set[int] = set()  # sessions below the started ones, lowered already

    def started(self, proc: Started, nice: int) -> None:
        """``proc`` (its session's leader) was started at ``nice`` for this launch."""
        self._started.append(proc)
        if nice <= 0:
            return
        if self.raised:  # raised while it was being started
            raise_tree(proc.pid)
            return
        set_session_nice(proc.pid, nice)
        with contextlib.suppress(OSError):
            self._sessions.add(os.getsid(proc.pid))
        self._follows.append(asyncio.get_running_loop().create_task(self._lower_new_session_soon(proc.pid, nice)))

    def finished(self) -> None:
        """The launch is over: its processes' sessions are all there now (the ones not yet seen
        are lowered now), and no new process is started for it."""
        follows, self._follows = self._follows, []
        for task in follows:
            task.cancel()
        if not self.raised and self.nice > 0:
            for proc in self._alive():
                self._lower_new_sessions(descendants(proc.pid), self.nice)

    def raise_now(self) -> None:
        if self.raised:
            return
        self.raised, self.nice = True, 0
        self.finished()
        for proc in self._alive():
            raise_tree(proc.pid)

    def _alive(self) -> list[Started]:
        # (an ended one's pid may be another process's by now)
        return [proc for proc in self._started if proc.returncode is None]

    async def _lower_new_session_soon(self, pid: int, nice: int) -> None:
        """While the launch runs, lower a session made right below ``pid`` as soon as it appears: a
        sandbox's (bubblewrap calls setsid just before it starts its command; until then its
        processes are in ours, which is lowered already). Only ``pid``'s own children are looked
        at, with a growing pause: a walk of a browser's whole tree costs ~0.5 ms of the event loop,
        which every 5 ms was a tenth of it per launch. Sessions deeper down (a terminal's shell,
        Chromium's crash handler) are lowered by ``finished``'s one walk of the tree."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + SESSION_POLL_LIMIT_SECONDS, SESSION_POLL_SECONDS
        # one new session is looked for: once it is lowered, the walks stop (they went on for the
        # whole launch, 20-30 of them on a loaded machine, ~9 ms of the loop per launch measured)
        while loop.time() < deadline and not self.raised:
            if self._lower_new_sessions(children(pid), nice):
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _lower_new_sessions(self, pids: list[int], nice: int) -> int:
        """Lower the sessions of ``pids`` not lowered yet; how many there were."""
        lowered = 0
        for child in pids:
            with contextlib.suppress(OSError):
                session = os.getsid(child)
                if session not in self._sessions:
                    set_session_nice(child, nice)  # (a member's file sets its session's autogroup)
                    self._sessions.add(session)
                    lowered += 1
        return lowered


# the launch ahead of demand the running task is doing (set by the warm pool for the launch's task,
# and inherited by every task it starts): what drivers/spawn.py starts then runs at its priority
current: contextvars.ContextVar[LaunchPriority | None] = contextvars.ContextVar("opencone_launch_priority",
                                                                                default=None)


def lowered() -> bool:
    """Whether what the running task starts now runs at a lowered priority (it may take longer)."""
    priority = current.get()
    return priority is not None and priority.nice > 0
