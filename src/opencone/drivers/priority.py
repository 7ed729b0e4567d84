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
  the sandbox's the moment it appears (it is made just before Chromium starts).

Raising undoes both. It needs CAP_SYS_NICE (root, outside a container that drops
it); a server without it launches everything at normal priority, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Iterable

from opencone.drivers.processes import descendants

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


def raise_groups(groups: Iterable[int]) -> None:
    """These process groups (each led by its session's leader: a browser's are) back to normal
    priority: every thread of every process in them, and their sessions' autogroups. (Threads
    the browser itself had set lower are raised too: a small cost for one syscall.)"""
    if not can_raise():
        return
    for group in set(groups):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpriority(os.PRIO_PGRP, group, 0)
        set_session_nice(group, 0)


def raise_tree(pid: int) -> None:
    """``pid``'s process group and those of its descendants back to normal priority (a sandbox
    starts a session of its own inside)."""
    if not can_raise():
        return
    groups = {pid}
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(child))
    raise_groups(groups)


class LaunchPriority:
    """The priority of one launch ahead of demand: ``nice`` to start with, raised to normal
    (``raise_now``) the moment a create waits for it, before or after its first process started."""

    def __init__(self, nice: int | None = None) -> None:
        self.nice = background_nice() if nice is None else nice
        self.raised = False
        self._pid: int | None = None
        self._follow: asyncio.Task[None] | None = None

    def started(self, pid: int, nice: int) -> None:
        """The launch's first process (its session's leader) started, at ``nice``."""
        self._pid = pid
        if nice <= 0:
            return
        if self.raised:  # raised while it was being started
            raise_tree(pid)
            return
        set_session_nice(pid, nice)
        self._follow = asyncio.get_running_loop().create_task(self._lower_new_sessions(pid, nice))

    def finished(self, ok: bool = True) -> None:
        """The launch is over: its processes run (``ok``: their sessions are all there now, the
        sandbox's is lowered if the search has not yet), or it failed."""
        if self._follow is None:
            return
        self._follow.cancel()
        self._follow = None
        if ok and self._pid is not None and not self.raised:
            self._lower_new_session(self._pid, self.nice)

    @staticmethod
    def _lower_new_session(pid: int, nice: int) -> bool:
        """Lower the first session led below ``pid`` (the sandbox's), if there is one yet."""
        for child in descendants(pid):
            with contextlib.suppress(OSError):
                if os.getsid(child) == child:
                    set_session_nice(child, nice)
                    return True
        return False

    async def _lower_new_sessions(self, pid: int, nice: int) -> None:
        """Lower the sandbox's session once bubblewrap has made it (it calls setsid just before
        it starts Chromium): until then its processes are in ours, which is lowered already."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SESSION_POLL_LIMIT_SECONDS
        while loop.time() < deadline and not self.raised:
            if self._lower_new_session(pid, nice):
                self._follow = None
                return
            await asyncio.sleep(SESSION_POLL_SECONDS)

    def raise_now(self) -> None:
        if self.raised:
            return
        self.raised, self.nice = True, 0
        self.finished()
        if self._pid is not None:
            raise_tree(self._pid)
