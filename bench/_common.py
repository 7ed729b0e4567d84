"""Small helpers shared by the hand-run benchmarks in this folder (never run in CI).

A real ``opencone serve`` process started the way tests/conftest.py does it, a
quiet local web site, percentiles, and memory (PSS) of process trees.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


# -- a local web site -----------------------------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class Site:
    """Serve ``root`` over http on 127.0.0.1 from a daemon thread."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# -- an opencone server as a process ---------------------------------------------------------
@dataclass
class Server:
    base_url: str
    api_key: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def run_dir(self) -> str:
        return str((self.data_dir / "run").resolve())

    def client(self, **kw: Any) -> Any:
        from tzafon import Lightcone

        return Lightcone(api_key=self.api_key, base_url=self.base_url, max_retries=0, **kw)

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.base_url}/health", timeout=10).json()

    def wait_warm(self, size: int, timeout: float = 60) -> float:
        """Wait until the warm pool holds ``size`` browsers; return the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.health().get("warm_browsers", 0) >= size:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise TimeoutError(f"warm pool did not reach {size} in {timeout}s")

    def chromium_pids(self) -> set[int]:
        """Live processes whose command line points into this server's run dir."""
        return pids_with(self.run_dir)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def start_server(tmp: Path, env: dict[str, str] | None = None, timeout: float = 60) -> Server:
    """Start ``python -m opencone serve`` and wait until /health answers (as tests/conftest.py does)."""
    port = free_port()
    data_dir = tmp / f"data-{port}"
    api_key = f"bench-{secrets.token_hex(8)}"
    log_path = tmp / f"server-{port}.log"
    full_env = {**os.environ, "OPENCONE_API_KEY": api_key, "OPENCONE_POOL_SIZE": "1", **(env or {})}
    log_file = log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "opencone", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env=full_env, stdout=log_file, stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{port}", api_key, data_dir, proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not start in {timeout}s:\n{server.log()}")


# -- processes and memory ---------------------------------------------------------------------
def pids_with(needle: str) -> set[int]:
    """Live (non-zombie) processes with ``needle`` somewhere on their command line."""
    pids = set()
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(needle in part for part in proc.info["cmdline"] or []):
                pids.add(proc.pid)
    return pids


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
