"""Shared fixtures: a local web site, and real opencone servers as processes.

Every test drives a real server (``python -m opencone serve``) with real
Chromium through the official ``tzafon`` SDK or httpx; pages come from a web
server these fixtures start on 127.0.0.1, so nothing reaches the internet.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tzafon import AsyncLightcone, Lightcone

PAGES = Path(__file__).with_name("pages")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def site() -> Iterator[str]:
    """Base URL of the test pages (tests/pages), served on 127.0.0.1."""
    handler = functools.partial(_QuietHandler, directory=str(PAGES))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@dataclass
class Server:
    base_url: str
    api_key: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, **kw: Any) -> Lightcone:
        return Lightcone(api_key=self.api_key, base_url=self.base_url, max_retries=0, **kw)

    def async_client(self, **kw: Any) -> AsyncLightcone:
        return AsyncLightcone(api_key=self.api_key, base_url=self.base_url, max_retries=0, **kw)

    def http(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60,
                            headers={"authorization": f"Bearer {key or self.api_key}"})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def chromium_pids(self) -> set[int]:
        """Live processes whose command line points into this server's run dir."""
        needle = str((self.data_dir / "run").resolve())
        pids = set()
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            with contextlib.suppress(psutil.Error):
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                if any(needle in part for part in proc.info["cmdline"] or []):
                    pids.add(proc.pid)
        return pids

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def start_server(tmp: Path, *, api_key: str | None = None, data_dir: Path | None = None,
                 env: dict[str, str] | None = None, timeout: float = 60) -> Server:
    """Start ``opencone serve`` as a process and wait until /health answers."""
    port = free_port()
    data_dir = data_dir or tmp / f"data-{port}"
    api_key = api_key or f"test-{secrets.token_hex(8)}"
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


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One shared server for the tests that do not change server settings."""
    srv = start_server(tmp_path_factory.mktemp("server"), env={"OPENCONE_POOL_SIZE": "2"})
    yield srv
    srv.stop()


@pytest.fixture
def client(server: Server) -> Lightcone:
    return server.client()


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.05) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


STATE = re.compile(r"STATE(\{.*?\})END", re.S)


def page_state(html: str) -> dict[str, Any]:
    """The playground page's event log, read back from its HTML."""
    match = STATE.search(html)
    assert match, "playground state not found in the page HTML"
    return json.loads(match.group(1))


def jpeg_size(data: bytes) -> tuple[int, int]:
    """Width and height from a JPEG's SOF marker."""
    i = 2
    while i < len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return w, h
        i += 2 + length
    raise AssertionError("no SOF marker")
