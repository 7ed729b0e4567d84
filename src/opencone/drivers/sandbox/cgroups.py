"""Caps on what one computer's commands may take: processes and memory (cgroups).

Every computer's commands share one control group, with ``pids.max`` (a fork bomb
stops at the cap instead of filling the host's process table) and a memory limit
(the kernel's OOM killer picks inside the group, never the server). Both cgroup
layouts are handled: v2 (one tree, ``<root>/opencone-<pid>/<computer>``) and v1
(the ``pids`` and ``memory`` hierarchies, the same path in each).

Only a server that may write there (root, or a delegated tree) gets caps; any
other logs once and runs commands uncapped. The command starts with a vfork
(runner.py), which leaves no moment to join the group before ``exec``: the
new bwrap is moved right after it starts, and so is any child it has made by
then, parents first (bwrap needs milliseconds to build its namespaces before the
command runs; every process made later is born inside).

A server's groups are named after its pid; at start, groups of servers that are
gone are emptied (SIGKILL) and removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
_PREFIX = "opencone-"


class ExecLimits:
    def __init__(self, max_processes: int, max_memory_bytes: int, root: Path = ROOT) -> None:
        self.max_processes = max_processes
        self.max_memory_bytes = max_memory_bytes
        self._bases: list[Path] = []  # one per hierarchy: this server's group
        self._made: set[str] = set()
        try:
            self._bases = self._setup(root)
        except OSError as exc:
            log.warning("exec commands run without process and memory caps: cannot create control groups "
                        "under %s: %s", root, exc.strerror or exc)

    def _setup(self, root: Path) -> list[Path]:
        if (root / "cgroup.controllers").exists():  # v2
            available = (root / "cgroup.controllers").read_text().split()
            if not {"pids", "memory"} <= set(available):
                raise OSError(0, f"the pids and memory controllers are not available ({' '.join(available)})")
            _write(root / "cgroup.subtree_control", "+pids +memory")
            hierarchies = [root]
        else:  # v1: a hierarchy per controller
            hierarchies = [root / "pids", root / "memory"]
            missing = [h.name for h in hierarchies if not (h / "cgroup.procs").exists()]
            if missing:
                raise OSError(0, f"no cgroup v1 hierarchy for {', '.join(missing)}")
        for hierarchy in hierarchies:
            _remove_stale(hierarchy)
        bases = []
        for hierarchy in hierarchies:
            base = hierarchy / f"{_PREFIX}{os.getpid()}"
            base.mkdir(exist_ok=True)
            bases.append(base)
            if hierarchy == root and (root / "cgroup.controllers").exists():
                _write(base / "cgroup.subtree_control", "+pids +memory")
        return bases

    def add(self, computer_id: str, pid: int) -> None:
        """Put process ``pid`` (a just-started bwrap) and whatever it started into the computer's group."""
        if not self._bases:
            return
        groups = self._groups(computer_id)
        if computer_id not in self._made:
            for group in groups:
                group.mkdir(exist_ok=True)
                for name, value in (("pids.max", self.max_processes), ("memory.max", self.max_memory_bytes),
                                    ("memory.limit_in_bytes", self.max_memory_bytes)):
                    if (group / name).exists():
                        _write(group / name, str(value))
            self._made.add(computer_id)
        # a process, then the children it has once it is in: a fork racing with the move
        # finishes before the move does (the kernel serialises the two), so a child not
        # seen here was born inside
        todo = [pid]
        while todo:
            one = todo.pop()
            try:
                for group in groups:
                    _write(group / "cgroup.procs", str(one))
            except ProcessLookupError:  # it ended meanwhile
                continue
            todo += _children(one)

    def remove(self, computer_id: str) -> None:
        """Kill what is left in the computer's group and remove it."""
        if computer_id in self._made:
            self._made.discard(computer_id)
            for group in self._groups(computer_id):
                _kill_and_remove(group)

    def close(self) -> None:
        for computer_id in list(self._made):
            self.remove(computer_id)
        for base in self._bases:
            _kill_and_remove(base)
        self._bases = []

    def _groups(self, computer_id: str) -> list[Path]:
        return [base / computer_id for base in self._bases]


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:  # one write() per value, as the cgroup files want
        f.write(value)


def _children(pid: int) -> list[int]:
    """The children of every thread of ``pid``."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(child) for child in f.read().split()]
    return out


def _pids_in(group: Path) -> list[int]:
    pids: list[int] = []
    for procs in group.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def _kill_and_remove(group: Path) -> None:
    if not group.exists():
        return
    for _ in range(50):
        pids = _pids_in(group)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            for child in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                child.rmdir()
            group.rmdir()
            return
        except OSError:  # processes still exiting
            time.sleep(0.01)
    log.warning("could not remove control group %s", group)


def _remove_stale(hierarchy: Path) -> None:
    """Groups of opencone servers that are no longer running (or of an earlier life of this pid)."""
    for group in hierarchy.glob(f"{_PREFIX}*"):
        try:
            pid = int(group.name.removeprefix(_PREFIX))
        except ValueError:
            continue
        if pid == os.getpid() or not Path(f"/proc/{pid}").exists():
            _kill_and_remove(group)
