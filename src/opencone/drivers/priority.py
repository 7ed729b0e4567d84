"""CPU priority of the processes a warm pool launches ahead of demand.

A pool refill launches browsers while the computers just handed out are at work: on
2 cores ten launches ahead of demand took the CPU from ten live browsers' first
page loads (measured: the loads' CPU doubled and their wall time with it). So a
launch nobody waits for starts at the lowest priority (``nice`` 19, inherited by
every process and thread it makes) and is raised back to normal when a create
takes it, or comes to wait for it while it is still starting: the machine's idle
time builds the pool, and a busy machine serves its live computers first. A
launch a create waits for starts at normal priority.

Raising a priority needs CAP_SYS_NICE (root, outside a container that drops it);
a server without it launches everything at normal priority, as before.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Iterable

from opencone.drivers.processes import descendants

log = logging.getLogger(__name__)

BACKGROUND_NICE = 19


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


def raise_groups(groups: Iterable[int]) -> None:
    """Every thread of every process in these process groups back to normal priority (nice 0).
    (Threads the browser itself had set lower are raised too: a small cost for one syscall.)"""
    if not can_raise():
        return
    for group in set(groups):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpriority(os.PRIO_PGRP, group, 0)


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

    def started(self, pid: int, nice: int) -> None:
        """The launch's first process (its group's leader) started, at ``nice``."""
        self._pid = pid
        if nice > 0 and self.raised:  # raised while it was being started
            raise_tree(pid)

    def raise_now(self) -> None:
        if self.raised:
            return
        self.raised, self.nice = True, 0
        if self._pid is not None:
            raise_tree(self._pid)
