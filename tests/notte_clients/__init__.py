"""The real Notte clients as test tools, each in its own virtual environment.

``notte==1.2.1`` (the seed era) and ``notte-sdk`` pin dependencies the project's own
environment must not take (Pillow < 12, litellm), so scripts/setup.sh --test installs
each into ``.venv/notte-seed`` and ``.venv/notte-sdk``, and a test drives one through a
small script (``seed.py``, ``sdk.py`` here) over a pipe: one JSON call per line, one JSON
answer per line. The client process may reach 127.0.0.1 only: its proxy settings point
anywhere else at a closed port (the SDK's telemetry is off, its PyPI version check
skipped).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
VENVS = HERE.parents[1] / ".venv"


class ClientFailed(Exception):
    """The client raised: its error, as ``Type: message``."""


class NotteProcess:
    def __init__(self, era: str, base_url: str, api_key: str, log: Path) -> None:
        python = VENVS / f"notte-{era}" / "bin" / "python"
        if not python.exists():
            message = f"{python} is missing: scripts/setup.sh --test installs the Notte clients"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        dead = "http://127.0.0.1:9"
        env = {**os.environ, "NOTTE_API_KEY": api_key, "NOTTE_API_URL": base_url, "NOTTE_SERVER_URL": base_url,
               "DISABLE_TELEMETRY": "true", "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead,
               "https_proxy": dead, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        self._log = log.open("ab")
        self.proc = subprocess.Popen([str(python), "-u", str(HERE / f"{era}.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True, env=env)

    def call(self, name: str, timeout: float = 60, **args: Any) -> Any:
        """The client's answer to one call; ClientFailed with its error if it raised."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"call": name, "args": args}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the Notte client did not answer {name} in {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the Notte client exited ({self.proc.poll()}); see {self._log.name}")
        answer = json.loads(line)
        if "error" in answer:
            raise ClientFailed(answer["error"])
        return answer["ok"]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()
