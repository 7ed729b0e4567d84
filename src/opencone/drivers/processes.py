"""Process groups owned by a computer, and the clean-up after a crash.

Every process a computer starts runs in its own session (and so its own process
group), with a parent-death signal so it dies with the server (drivers/spawn.py). Each carries a
marker path under the server's run directory on its command line, which lets
the next start find and kill leftovers of a server that was killed; a process
that cannot carry one (Xvfb) is listed in a ``*.pids`` file in that directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

import psutil


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def kill_group(pgid: int, grace: float = 1.0) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after ``grace`` seconds.

    ``grace=0`` kills at once: for a computer with nothing to save that is the
    fastest clean end (Chromium takes ~130 ms to exit on SIGTERM).
    """
    try:
        os.killpg(pgid, signal.SIGKILL if grace <= 0 else signal.SIGTERM)
    except ProcessLookupError:
        return
    if grace <= 0:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        await asyncio.sleep(0.02)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return


def processes_under(marker: Path) -> list[psutil.Process]:
    """Processes whose command line mentions ``marker`` (a directory we own)."""
    return processes_mentioning(str(marker))


def processes_mentioning(needle: str) -> list[psutil.Process]:
    """Processes whose command line mentions ``needle``, this one aside."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if proc.pid != os.getpid() and any(needle in part for part in cmd):
            found.append(proc)
    return found


def children(pid: int) -> list[int]:
    """The direct children of ``pid``, from /proc (its threads' ``children`` lists): no scan of
    every process on the host, as psutil's ``children()`` makes (~65 us per host process)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, breadth first (the subtree only)."""
    found, todo = [], children(pid)
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo += children(child)
    return found


def tree_private_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its subtree less what is shared (statm): about what one
    more such tree takes from the machine (a summed RSS counts shared pages once per process)."""
    page, total = os.sysconf("SC_PAGE_SIZE"), 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/statm") as f:
                fields = f.read().split()
            total += (int(fields[1]) - int(fields[2])) * page
        except (OSError, ValueError, IndexError):
            continue
    return total


def cmdline(pid: int) -> list[str]:
    """A process's command line ([] once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


def write_pidfile(path: Path, pids: dict[int, str]) -> None:
    """Record ``pid -> executable`` for processes whose command line cannot carry a marker (Xvfb)."""
    path.write_text("".join(f"{pid} {exe}\n" for pid, exe in pids.items()))


def _pidfile_processes(run_dir: Path) -> list[psutil.Process]:
    """Processes listed in ``run_dir/*.pids`` that still run the executable recorded there."""
    found = []
    for pidfile in run_dir.glob("*.pids"):
        for line in pidfile.read_text(errors="replace").splitlines():
            pid_text, _, exe = line.partition(" ")
            try:
                proc = psutil.Process(int(pid_text))
                cmd = proc.cmdline()
            except (ValueError, psutil.Error):
                continue
            if cmd and cmd[0] == exe:  # the pid may have been reused by something else since
                found.append(proc)
    return found


def kill_leftovers(run_dir: Path) -> int:
    """Kill every process a previous server left under ``run_dir``; wipe the dir."""
    victims = processes_under(run_dir)
    if run_dir.exists():
        known = {p.pid for p in victims}
        victims += [p for p in _pidfile_processes(run_dir) if p.pid not in known and p.pid != os.getpid()]
    for proc in victims:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=3)
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return len(victims)
