"""``ComputerVectorEnv``: a Gymnasium ``VectorEnv`` of N computers stepped concurrently from one
process: N ``AsyncComputerEnv`` on one event loop (a thread of its own), one ``gather`` per
step: no subprocess per env (Gymnasium's ``AsyncVectorEnv``), the computers are the server's.
Autoreset is ``NEXT_STEP``: the step after an episode ended resets that env instead.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import httpx
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from opencone.gym import core
from opencone.gym.async_env import AsyncComputerEnv

T = TypeVar("T")


class ComputerVectorEnv(VectorEnv[dict[str, Any], Any, Any]):
    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, base_url: str, api_key: str | None = None, **settings: Any) -> None:
        if num_envs < 1:
            raise ValueError("num_envs must be at least 1")
        self.num_envs = num_envs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="opencone-vector-env", daemon=True)
        self._thread.start()
        cfg = core.EnvConfig(base_url, api_key, **settings)

        async def make() -> tuple[httpx.AsyncClient, list[AsyncComputerEnv]]:
            limits = httpx.Limits(max_connections=num_envs * 2, max_keepalive_connections=num_envs * 2)
            http = httpx.AsyncClient(base_url=cfg.base_url, headers=cfg.headers, timeout=cfg.timeout, limits=limits)
            return http, [AsyncComputerEnv(base_url, api_key, http=http, **settings) for _ in range(num_envs)]

        self._http, self.envs = self._call(make())
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._autoreset = np.zeros(num_envs, dtype=np.bool_)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stack(self, observations: Sequence[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in observations[0]:
            values = [o[key] for o in observations]
            out[key] = np.stack(values) if isinstance(values[0], np.ndarray) else tuple(values)
        return out

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        seeds: list[int | None]
        if seed is None or isinstance(seed, int):
            seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"{len(seeds)} seeds for {self.num_envs} envs")

        async def all_reset() -> list[tuple[dict[str, Any], dict[str, Any]]]:
            return await asyncio.gather(*(e.reset(seed=s, options=options) for e, s in zip(self.envs, seeds,
                                                                                          strict=True)))

        results = self._call(all_reset())
        self._autoreset[:] = False
        infos: dict[str, Any] = {}
        for i, (_obs, info) in enumerate(results):
            infos = self._add_info(infos, info, i)
        return self._stack([obs for obs, _info in results]), infos

    def step(self, actions: Sequence[Any]) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray,
                                                     dict[str, Any]]:
        actions = list(actions)
        if len(actions) != self.num_envs:
            raise ValueError(f"{len(actions)} actions for {self.num_envs} envs")

        async def one(i: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
            env = self.envs[i]
            if self._autoreset[i]:
                obs, info = await env.reset()
                return obs, 0.0, False, False, info
            return await env.step(actions[i])

        async def all_step() -> list[tuple[dict[str, Any], float, bool, bool, dict[str, Any]]]:
            return await asyncio.gather(*(one(i) for i in range(self.num_envs)))

        results = self._call(all_step())
        rewards = np.array([r[1] for r in results], dtype=np.float64)
        terminated = np.array([r[2] for r in results], dtype=np.bool_)
        truncated = np.array([r[3] for r in results], dtype=np.bool_)
        infos: dict[str, Any] = {}
        for i, r in enumerate(results):
            infos = self._add_info(infos, r[4], i)
        self._autoreset = terminated | truncated
        return self._stack([r[0] for r in results]), rewards, terminated, truncated, infos

    @property
    def step_ms(self) -> list[float]:
        return [e.last_step_ms for e in self.envs]

    def close_extras(self, **kwargs: Any) -> None:
        async def all_close() -> None:
            await asyncio.gather(*(e.close() for e in self.envs), return_exceptions=True)
            await self._http.aclose()

        try:
            self._call(all_close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
