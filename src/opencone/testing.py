"""Real opencone servers as processes, and a local web site: what the test suite and
the hand-run benchmarks both start (tests/conftest.py, bench/_common.py).

Nothing here fakes a part: ``start_server`` runs ``python -m opencone serve`` with
the interpreter it is called from and waits until ``/health`` answers.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

if TYPE_CHECKING:  # the SDK is a test dependency, not the server's
    from tzafon import AsyncLightcone, Lightcone


def loopback_up() -> None:
    """``ip link set lo up`` without iproute2 (SIOCGIFFLAGS/SIOCSIFFLAGS on ``lo``): for the Ray tests and
    benchmark, which run in a private network namespace of their own (``unshare -n``) that starts with
    its loopback down."""
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, struct.pack("16sh", b"lo", 0)))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 0x1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class Site:
    """Serve the files of ``root`` over http on 127.0.0.1 from a daemon thread."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def pids_with(needle: str) -> set[int]:
    """Live (not zombie) processes with ``needle`` in their command line."""
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(needle in part for part in proc.info["cmdline"] or []):
                found.add(proc.pid)
    return found


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

    def client(self, **kw: Any) -> Lightcone:
        from tzafon import Lightcone

        return Lightcone(api_key=self.api_key, base_url=self.base_url, max_retries=0, **kw)

    def async_client(self, **kw: Any) -> AsyncLightcone:
        from tzafon import AsyncLightcone

        return AsyncLightcone(api_key=self.api_key, base_url=self.base_url, max_retries=0, **kw)

    def http(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60,
                            headers={"authorization": f"Bearer {key or self.api_key}"})

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.base_url}/health", timeout=10).json()  # type: ignore[no-any-return]

    def wait_warm(self, size: int, timeout: float = 60) -> float:
        """Wait until the warm pool holds ``size`` browsers; return the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.health().get("warm_browsers", 0) >= size:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise TimeoutError(f"warm pool did not reach {size} in {timeout}s")

    @property
    def sandbox_root(self) -> Path:
        """Where this server keeps workspaces, desktops' homes and browsers' profiles."""
        from opencone.drivers.sandbox import choose_root

        return choose_root(Path(self.run_dir))

    def chromium_pids(self) -> set[int]:
        """Live processes whose command line points into this server's run dir or sandbox root
        (where browsers keep their profiles): its browsers, and its commands if any run."""
        return pids_with(self.run_dir) | pids_with(str(self.sandbox_root))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


# Set by a test module that runs API tests against another database (tests/test_postgres_api.py): every
# server started without its own OPENCONE_DATABASE_URL gets the database it returns for the server's data
# dir (a fresh one per data dir, the same one for a restart on that dir).
database_factory: Callable[[Path], str] | None = None


def start_server(tmp: Path, *, api_key: str | None = None, data_dir: Path | None = None,
                 env: dict[str, str] | None = None, timeout: float = 60) -> Server:
    """Start ``opencone serve`` as a process (pool of 1 and 127.0.0.1 allowed unless ``env`` says otherwise);
    wait until /health answers."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir or tmp / f"data-{port}"
    api_key = api_key or f"test-{secrets.token_hex(8)}"
    log_path = tmp / f"server-{port}.log"
    # the tests' own pages and proxies are on 127.0.0.1, which the egress policy refuses by default:
    # allowed, as a user with a local test site would (the egress tests start servers without it)
    full_env = {**os.environ, "OPENCONE_API_KEY": api_key, "OPENCONE_POOL_SIZE": "1",
                "OPENCONE_EGRESS_ALLOW": "127.0.0.1",
                # a server that dies in C (a signal) says where in its log, not silently
                "PYTHONFAULTHANDLER": "1", **(env or {})}
    if database_factory is not None and "OPENCONE_DATABASE_URL" not in (env or {}):
        full_env["OPENCONE_DATABASE_URL"] = database_factory(data_dir.resolve())
    with log_path.open("ab") as log_file:  # the child keeps its own descriptor
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
