"""``ComputerEnv``: a Gymnasium ``Env`` over one opencone computer at a time, through HTTP.

``reset`` releases the episode's computer and creates a fresh one (from a saved environment
when ``environment_id`` is given: with the server's environment pool, one already restored),
loads the start URL and observes, all through ``POST /computers/{id}/step``; ``step`` sends an
action (shared schema, BrowserGym string or OSWorld dict) and gets the observation back in the
same round trip. A failed action is an observation with ``last_action_error``, not an exception.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import httpx
import numpy as np

from opencone.gym import core
from opencone.gym.adapters import Translated


class Computer:
    """The episode's computer, for a task's hooks: its id, and a few direct calls."""

    def __init__(self, http: httpx.Client, computer_id: str) -> None:
        self._http, self.id = http, computer_id

    def step(self, action: dict[str, Any] | None = None, observe: tuple[str, ...] = ()) -> dict[str, Any]:
        """``POST /computers/{id}/step``: the answer as JSON (``status``, ``last_action_error``, …)."""
        body: dict[str, Any] = {"observe": list(observe)}
        if action is not None:
            body["action"] = action
        return _ok(self._http.post(f"/computers/{self.id}/step", json=body))

    def exec(self, command: str, timeout_seconds: float = 60) -> dict[str, Any]:
        """A shell command in the computer's sandbox (``exit_code``, ``stdout``, ``stderr``)."""
        return _ok(self._http.post(f"/computers/{self.id}/exec/sync",
                                   json={"command": command, "timeout_seconds": timeout_seconds}))

    def html(self) -> str:
        return str(_ok(self._http.post(f"/computers/{self.id}/html", json={}))["result"]["html_content"])


def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise ServerError(response.status_code, _detail(response))
    return response.json()  # type: ignore[no-any-return]


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("detail") or body.get("error_message") or body)
    except ValueError:
        return response.text[:500]


class ServerError(RuntimeError):
    """The server refused a request (4xx/5xx): ``status`` and its message."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class ComputerEnv(gym.Env[dict[str, Any], Any]):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, base_url: str, api_key: str | None = None, *, render_mode: str | None = None,
                 http: httpx.Client | None = None, **settings: Any) -> None:
        """``settings``: the fields of ``core.EnvConfig`` (kind, environment_id, start_url, viewport,
        observe, max_steps, task, interactive_only, snapshot_max_chars, timeout, create_options…)."""
        self.cfg = core.EnvConfig(base_url, api_key, **settings)
        if render_mode not in (None, "rgb_array"):
            raise ValueError("render_mode must be None or 'rgb_array'")
        self.render_mode = render_mode
        self._http = http or httpx.Client(base_url=self.cfg.base_url, headers=self.cfg.headers,
                                          timeout=self.cfg.timeout)
        self._own_http = http is None
        self.observation_space = core.observation_space(self.cfg)
        self.action_space = core.action_space(self.cfg)
        self.dialects = core.Dialects(self.cfg)
        self.computer: Computer | None = None
        self.task = self.cfg.task
        self.goal = ""
        self.steps = 0
        self.last_step_ms = 0.0  # client-side wall time of the last step (not in info: info must be repeatable)
        self.last_timings: dict[str, float] = {}
        self._last_obs: dict[str, Any] | None = None

    # -- episode ----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        opts = dict(options or {})
        self.task = opts.pop("task", None) or self.cfg.task
        environment_id = opts.pop("environment_id", None) or self.task.environment_id or self.cfg.environment_id
        start_url = opts.pop("start_url", None) or self.task.start_url or self.cfg.start_url
        if opts:
            raise ValueError(f"reset options: unknown {sorted(opts)}; known: environment_id, start_url, task")
        self._release()
        t0 = time.perf_counter()
        view = _ok(self._http.post("/computers", json=core.create_body(self.cfg, environment_id)))
        t1 = time.perf_counter()
        self.computer = Computer(self._http, view["id"])
        self.dialects.reset()
        self.steps = 0
        self.goal = str(self.task.setup(self.computer) or "")
        action = {"action": "navigate", "url": start_url} if start_url else None
        data = self._post_step(action, self.cfg.observe)
        t2 = time.perf_counter()
        obs = core.observation(self.cfg, data, self.goal, data.get("last_action_error"), self.dialects)
        self._last_obs = obs
        self.last_timings = {"create_ms": (t1 - t0) * 1000, "reset_ms": (t2 - t0) * 1000}
        info = {"computer_id": view["id"], "environment_id": environment_id, **self.last_timings}
        return obs, info

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self.computer is None:
            raise RuntimeError("call reset() before step()")
        t0 = time.perf_counter()
        self.steps += 1
        error: str | None = None
        try:
            translated = self.dialects.translate(action)
        except ValueError as exc:  # AdapterError too: the agent's mistake, said back to it
            translated, error = Translated(), str(exc)
        data, error = self._run(translated, error)
        obs = core.observation(self.cfg, data, self.goal, error, self.dialects)
        self._last_obs = obs
        reward, done = core.reward_pair(self.task.reward(obs, self.computer))
        terminated = done or translated.done
        truncated = not terminated and self.steps >= self.cfg.max_steps
        self.last_step_ms = (time.perf_counter() - t0) * 1000
        info = {"action_ok": error is None, "steps": self.steps, "agent_done": translated.done,
                "agent_success": translated.success, "message": translated.message}
        return obs, reward, terminated, truncated, info

    def _run(self, translated: Translated, error: str | None) -> tuple[dict[str, Any], str | None]:
        """Every action but the last without observing; the last (or none, after an error) observes."""
        acts = list(translated.actions) if error is None else []
        for act in acts[:-1]:
            data = self._post_step(act, ())
            if data.get("last_action_error"):
                return self._post_step(None, self.cfg.observe), data["last_action_error"]
        data = self._post_step(acts[-1] if acts else None, self.cfg.observe)
        return data, error or data.get("last_action_error")

    def _post_step(self, action: dict[str, Any] | None, observe: Any) -> dict[str, Any]:
        assert self.computer is not None
        r = self._http.post(f"/computers/{self.computer.id}/step", json=core.step_body(action, observe, self.cfg))
        if r.status_code == 422 and action is not None:  # the server's own range checks: the agent's mistake
            data = self._post_step(None, observe)
            data["last_action_error"] = _detail(r)
            return data
        return _ok(r)

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array" and self._last_obs is not None and "screenshot" in self._last_obs:
            return self._last_obs["screenshot"].copy()  # type: ignore[no-any-return]
        return None

    def _release(self) -> None:
        if self.computer is not None:
            self._http.delete(f"/computers/{self.computer.id}")  # answers at once; the teardown is the server's
            self.computer = None

    def close(self) -> None:
        try:
            self._release()
        finally:
            if self._own_http:
                self._http.close()
        super().close()
