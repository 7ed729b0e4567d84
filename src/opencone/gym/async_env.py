"""``AsyncComputerEnv``: ``ComputerEnv`` with ``await``, for many rollouts in one event loop
(``asyncio.gather`` over envs), the form most LLM-RL stacks run. Same settings, observations,
dialects and task hook; a task's hooks may be coroutines and get an ``AsyncComputer``."""

from __future__ import annotations

import inspect
import time
from typing import Any

import httpx
import numpy as np

from opencone.gym import core
from opencone.gym.adapters import Translated
from opencone.gym.env import ServerError, _detail


async def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise ServerError(response.status_code, _detail(response))
    return response.json()  # type: ignore[no-any-return]


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class AsyncComputer:
    """The episode's computer for async task hooks."""

    def __init__(self, http: httpx.AsyncClient, computer_id: str) -> None:
        self._http, self.id = http, computer_id

    async def step(self, action: dict[str, Any] | None = None, observe: tuple[str, ...] = ()) -> dict[str, Any]:
        body: dict[str, Any] = {"observe": list(observe)}
        if action is not None:
            body["action"] = action
        return await _ok(await self._http.post(f"/computers/{self.id}/step", json=body))

    async def exec(self, command: str, timeout_seconds: float = 60) -> dict[str, Any]:
        return await _ok(await self._http.post(f"/computers/{self.id}/exec/sync",
                                               json={"command": command, "timeout_seconds": timeout_seconds}))

    async def html(self) -> str:
        return str((await _ok(await self._http.post(f"/computers/{self.id}/html", json={})))["result"]["html_content"])


class AsyncComputerEnv:
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, base_url: str, api_key: str | None = None, *, http: httpx.AsyncClient | None = None,
                 **settings: Any) -> None:
        self.cfg = core.EnvConfig(base_url, api_key, **settings)
        self._http = http or httpx.AsyncClient(base_url=self.cfg.base_url, headers=self.cfg.headers,
                                               timeout=self.cfg.timeout)
        self._own_http = http is None
        self.observation_space = core.observation_space(self.cfg)
        self.action_space = core.action_space(self.cfg)
        self.dialects = core.Dialects(self.cfg)
        self.computer: AsyncComputer | None = None
        self.task = self.cfg.task
        self.goal = ""
        self.steps = 0
        self.last_step_ms = 0.0
        self.last_timings: dict[str, float] = {}
        self.np_random = np.random.default_rng()
        self._last_obs: dict[str, Any] | None = None

    async def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if seed is not None:
            self.np_random = np.random.default_rng(seed)
            self.action_space.seed(seed)
        opts = dict(options or {})
        self.task = opts.pop("task", None) or self.cfg.task
        environment_id = opts.pop("environment_id", None) or self.task.environment_id or self.cfg.environment_id
        start_url = opts.pop("start_url", None) or self.task.start_url or self.cfg.start_url
        if opts:
            raise ValueError(f"reset options: unknown {sorted(opts)}; known: environment_id, start_url, task")
        await self._release()
        t0 = time.perf_counter()
        view = await _ok(await self._http.post("/computers", json=core.create_body(self.cfg, environment_id)))
        t1 = time.perf_counter()
        self.computer = AsyncComputer(self._http, view["id"])
        self.dialects.reset()
        self.steps = 0
        self.goal = str(await _maybe(self.task.setup(self.computer)) or "")
        action = {"action": "navigate", "url": start_url} if start_url else None
        data = await self._post_step(action, self.cfg.observe)
        t2 = time.perf_counter()
        obs = core.observation(self.cfg, data, self.goal, data.get("last_action_error"), self.dialects)
        self._last_obs = obs
        self.last_timings = {"create_ms": (t1 - t0) * 1000, "reset_ms": (t2 - t0) * 1000}
        return obs, {"computer_id": view["id"], "environment_id": environment_id, **self.last_timings}

    async def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self.computer is None:
            raise RuntimeError("call reset() before step()")
        t0 = time.perf_counter()
        self.steps += 1
        error: str | None = None
        try:
            translated = self.dialects.translate(action)
        except ValueError as exc:
            translated, error = Translated(), str(exc)
        data, error = await self._run(translated, error)
        obs = core.observation(self.cfg, data, self.goal, error, self.dialects)
        self._last_obs = obs
        reward, done = core.reward_pair(await _maybe(self.task.reward(obs, self.computer)))
        terminated = done or translated.done
        truncated = not terminated and self.steps >= self.cfg.max_steps
        self.last_step_ms = (time.perf_counter() - t0) * 1000
        info = {"action_ok": error is None, "steps": self.steps, "agent_done": translated.done,
                "agent_success": translated.success, "message": translated.message}
        return obs, reward, terminated, truncated, info

    async def _run(self, translated: Translated, error: str | None) -> tuple[dict[str, Any], str | None]:
        acts = list(translated.actions) if error is None else []
        for act in acts[:-1]:
            data = await self._post_step(act, ())
            if data.get("last_action_error"):
                return await self._post_step(None, self.cfg.observe), data["last_action_error"]
        data = await self._post_step(acts[-1] if acts else None, self.cfg.observe)
        return data, error or data.get("last_action_error")

    async def _post_step(self, action: dict[str, Any] | None, observe: Any) -> dict[str, Any]:
        assert self.computer is not None
        r = await self._http.post(f"/computers/{self.computer.id}/step",
                                  json=core.step_body(action, observe, self.cfg))
        if r.status_code == 422 and action is not None:
            data = await self._post_step(None, observe)
            data["last_action_error"] = _detail(r)
            return data
        return await _ok(r)

    def render(self) -> np.ndarray | None:
        if self._last_obs is not None and "screenshot" in self._last_obs:
            return self._last_obs["screenshot"].copy()  # type: ignore[no-any-return]
        return None

    async def _release(self) -> None:
        if self.computer is not None:
            await self._http.delete(f"/computers/{self.computer.id}")
            self.computer = None

    async def close(self) -> None:
        try:
            await self._release()
        finally:
            if self._own_http:
                await self._http.aclose()

    async def __aenter__(self) -> AsyncComputerEnv:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
