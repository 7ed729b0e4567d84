"""Start the fake model server as a process and talk to its test hooks."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

TESTS = Path(__file__).resolve().parent.parent
MODEL_APIS = ("responses", "chat", "messages")


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class FakeModels:
    """A running fake (see the package docstring for what it speaks)."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, api_key: str, stderr_path: Path) -> None:
        self.process = process
        self.port = port
        self.api_key = api_key
        self.stderr_path = stderr_path
        self.url = f"http://127.0.0.1:{port}"
        self._http = httpx.Client(base_url=self.url, timeout=30)

    # base URLs, as each SDK wants them
    @property
    def base_url(self) -> str:
        """For the ``openai`` SDK (``OPENAI_BASE_URL``): it appends ``/responses``, ``/chat/completions``."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """For the ``anthropic`` SDK (``ANTHROPIC_BASE_URL``): it appends ``/v1/messages`` itself."""
        return self.url

    @property
    def lightcone_base_url(self) -> str:
        """For the ``tzafon`` SDK (``LIGHTCONE_BASE_URL``): it appends ``/v1/responses``."""
        return self.url

    def dialect_base_url(self, dialect: str) -> str:
        """An OpenAI base URL whose chat completions always answer in ``dialect``, whatever the model."""
        return f"{self.url}/dialect/{dialect}/v1"

    def openai_env(self) -> dict[str, str]:
        return {"OPENAI_API_KEY": self.api_key, "OPENAI_BASE_URL": self.base_url}

    def anthropic_env(self) -> dict[str, str]:
        return {"ANTHROPIC_API_KEY": self.api_key, "ANTHROPIC_BASE_URL": self.anthropic_base_url}

    def server_env(self, key_env: str = "FAKE_MODELS_API_KEY") -> dict[str, str]:
        """The environment for an opencone server whose every provider is this fake: the vendors'
        variables (``openai/<name>``, ``anthropic/<name>``, ``tzafon.*`` ids) and ``key_env``,
        the key the ``models_toml`` entries name."""
        return {**self.openai_env(), **self.anthropic_env(), "OPENCONE_LIGHTCONE_API_KEY": self.api_key,
                "OPENCONE_LIGHTCONE_BASE_URL": self.lightcone_base_url, key_env: self.api_key}

    def models_toml(self, key_env: str = "FAKE_MODELS_API_KEY") -> str:
        """A models file (``OPENCONE_MODELS_FILE``, the format of opencone.gateway.registry) with
        one entry per fake flavour, its key read from ``key_env``: fake-qwen3vl, fake-northstar,
        fake-uitars, fake-opencua, fake-json (openai-chat with that dialect), fake-cua-preview, fake-cua-ga (openai),
        fake-claude (anthropic), fake-lightcone (lightcone, Northstar)."""
        entries = [
            ("fake-qwen3vl", "openai-chat", self.base_url, "Qwen/Qwen3-VL-8B-Instruct", "qwen3vl"),
            ("fake-northstar", "openai-chat", self.base_url, "Tzafon/Northstar-CUA-Fast", "northstar"),
            ("fake-uitars", "openai-chat", self.base_url, "ByteDance-Seed/UI-TARS-1.5-7B", "uitars"),
            ("fake-opencua", "openai-chat", self.base_url, "xlangai/OpenCUA-7B", "opencua"),
            ("fake-json", "openai-chat", self.dialect_base_url("json"), "Qwen/Qwen2.5-VL-7B-Instruct", "json"),
            ("fake-cua-preview", "openai", self.base_url, "computer-use-preview", None),
            ("fake-cua-ga", "openai", self.base_url, "gpt-5.4", None),
            ("fake-claude", "anthropic", self.anthropic_base_url, "claude-sonnet-4-5", None),
            ("fake-lightcone", "lightcone", self.lightcone_base_url, "tzafon.northstar-cua-fast", None),
        ]
        out = []
        for model_id, provider, base_url, upstream, dialect in entries:
            out += ["[[models]]", f'id = "{model_id}"', f'provider = "{provider}"', f'base_url = "{base_url}"',
                    f'api_key_env = "{key_env}"', f'upstream_model = "{upstream}"']
            if dialect:
                out.append(f'dialect = "{dialect}"')
            out.append("")
        return "\n".join(out)

    # hooks
    def requests(self, since: int = 0, *, bodies: bool = True, api: str | tuple[str, ...] | None = None
                 ) -> list[dict[str, Any]]:
        """The request log, oldest first (entries with ``seq`` > ``since``); ``api``: only those
        of ``"responses"``, ``"chat"``, ``"messages"``, ``"models"``, ``"responses.retrieve"``…"""
        entries = self._http.get("/_log", params={"since": since, "bodies": int(bodies)}).json()
        if api is not None:
            wanted = (api,) if isinstance(api, str) else api
            entries = [e for e in entries if e["api"] in wanted]
        return entries  # type: ignore[no-any-return]

    def model_requests(self, since: int = 0, *, bodies: bool = True) -> list[dict[str, Any]]:
        """Only the requests that asked a model to answer (responses, chat, messages)."""
        return self.requests(since, bodies=bodies, api=MODEL_APIS)

    def last_seq(self) -> int:
        return int(self._http.get("/_health").json()["requests"])

    def clear(self) -> None:
        self._http.delete("/_log").raise_for_status()

    def script(self, *faults: dict[str, Any], clear_faults: bool = False, **settings: Any) -> dict[str, Any]:
        """Queue faults (``{"status": 429, "count": 2}``, ``{"garbage": "output"}``, ``{"delay": 3}``,
        ``{"truncate": True}``, ``{"safety_check": True}``; each may add ``count``, ``path``, ``model``,
        ``retry_after``, ``message``) and change settings (``latency``, ``stream_interval``, ``mode``,
        ``fast_steps``, ``log_bodies``, ``display_mismatch``, ``chunk``, ``api_key``)."""
        reply = self._http.post("/_script", json={"faults": list(faults), "clear_faults": clear_faults, **settings})
        if reply.status_code != 200:
            raise ValueError(reply.json()["error"])
        if "api_key" in settings:
            self.api_key = settings["api_key"]
        return reply.json()  # type: ignore[no-any-return]

    def fail(self, status: int, count: int = 1, **kw: Any) -> dict[str, Any]:
        return self.script({"status": status, "count": count, **kw})

    def reset(self) -> None:
        """Back to the settings it started with: no faults, an empty log, an empty response store."""
        self._http.post("/_reset").raise_for_status()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        self._http.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        with contextlib.suppress(OSError):
            self.stderr_path.unlink()

    def __enter__(self) -> FakeModels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_fake(api_key: str | None = None, *, latency: float = 0.0, mode: str = "policy", fast_steps: int = 3,
               log_bodies: bool = True, log_file: Path | None = None, timeout: float = 10.0) -> FakeModels:
    """Start ``python -m fake_models`` on 127.0.0.1 (a free port) and wait until it listens."""
    api_key = api_key or f"fake-{secrets.token_hex(8)}"
    cmd = [sys.executable, "-m", "fake_models", "--port", "0", "--api-key", api_key, "--latency", str(latency),
           "--mode", mode, "--fast-steps", str(fast_steps)]
    if not log_bodies:
        cmd.append("--no-log-bodies")
    if log_file is not None:
        cmd += ["--log-file", str(log_file)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])}
    fd, stderr_name = tempfile.mkstemp(prefix="fake-models-", suffix=".log")
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=fd, env=env, preexec_fn=_die_with_parent)
    os.close(fd)
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n") and time.monotonic() < deadline and process.poll() is None:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            chunk = os.read(process.stdout.fileno(), 256)
            if not chunk:
                break
            line += chunk
    process.stdout.close()
    if not line.endswith(b"\n"):
        process.kill()
        process.wait(5)
        raise RuntimeError(f"the fake model server did not start: {Path(stderr_name).read_text()[-2000:]}")
    port = int(json.loads(line)["port"])
    return FakeModels(process, port, api_key, Path(stderr_name))
