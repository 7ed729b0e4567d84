"""Small helpers shared by the hand-run benchmarks in this folder (never run in CI).

Percentiles and memory (PSS) of process trees; the server process and the local
web site come from ``opencone.testing``, as in the tests.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from opencone.testing import Server, Site, free_port, pids_with, start_server

__all__ = ["Server", "Site", "free_port", "loadavg", "null_http", "percentile", "pids_with", "pss_kib",
           "start_server", "summary", "total_pss_mib", "user_data_dirs"]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, like numpy's default."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "min": None, "max": None}
    return {"n": len(values), "p50": statistics.median(values), "p95": percentile(values, 95),
            "min": min(values), "max": max(values)}


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


# -- processes and memory ---------------------------------------------------------------------
def pss_kib(pid: int) -> int:
    """Proportional set size of one process in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def total_pss_mib(pids: set[int] | list[int]) -> float:
    return sum(pss_kib(p) for p in pids) / 1024


def user_data_dirs(pids: set[int]) -> set[str]:
    """The distinct ``--user-data-dir`` values (one per browser) among ``pids``."""
    dirs = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            for part in psutil.Process(pid).cmdline():
                if part.startswith("--user-data-dir="):
                    dirs.add(part.split("=", 1)[1])
    return dirs


@contextlib.contextmanager
def null_http() -> Iterator[str]:
    """The base URL of bench/null_http.py, running until the block ends."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("null_http.py")), str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"{base}/ready", json={})
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the null HTTP server did not start")
            time.sleep(0.05)
        yield base
    finally:
        proc.kill()
        proc.wait()
