"""OpenEnv episodes: one computer each, for routes/openenv.py.

OpenEnv's own server makes a fresh environment for every HTTP ``/reset`` and ``/step`` and keeps
state only for a WebSocket session. A computer is state, so here an HTTP episode lives on
between requests: ``/reset`` answers its ``episode_id`` in the observation, and ``/step`` and
``/state`` name it. A WebSocket session owns one episode, ended when the socket closes.

An episode's computer is an ordinary one (the key's organisation, its lifetimes, ``/events``,
the live view); a reset ends the episode's previous computer. Steps take the shared action
schema (api/wire/step.py), a BrowserGym string as ``{"action_str": "click('e5')"}`` (OpenEnv's
own BrowserGym env's action) or an OSWorld ``computer_13`` dict. A reward comes from what the
reset asked for: ``success`` ``{"url_contains": …}`` or ``{"text_contains": …}`` (in the
snapshot) gives 1.0 and ``done`` once met; ``max_steps`` ends the episode too.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from opencone.api.routes.step import run_step
from opencone.api.wire.gym_dialects import AdapterError, BrowserGymAdapter, OSWorldAdapter, Translated
from opencone.api.wire.step import Observe, ToolAction
from opencone.core.computers import CreateSpec
from opencone.core.errors import InvalidInput, NotFound
from opencone.core.ids import new_id
from opencone.core.runtime import Runtime
from opencone.drivers.base import Display

EPISODE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,255}$")
_tool: TypeAdapter[Any] = TypeAdapter(ToolAction)


class Success(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url_contains: str | None = Field(default=None, max_length=4096)
    text_contains: str | None = Field(default=None, max_length=4096, description="Text the snapshot shows.")


class Viewport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(ge=200, le=3840)
    height: int = Field(ge=200, le=2160)


class ResetParams(BaseModel):
    """OpenEnv's ``ResetRequest`` (seed, episode_id) and ours: what the episode starts from."""

    model_config = ConfigDict(extra="forbid")
    seed: int | None = Field(default=None, ge=0)
    episode_id: str | None = Field(default=None, max_length=255, pattern=EPISODE_ID.pattern)
    kind: Literal["browser", "desktop"] = "browser"
    environment_id: str | None = Field(default=None, max_length=64)
    start_url: str | None = Field(default=None, max_length=8192)
    viewport: Viewport | None = None
    goal: str = Field(default="", max_length=100_000)
    success: Success | None = None
    max_steps: int = Field(default=100, ge=1, le=100_000)
    observe: list[Observe] = Field(default_factory=lambda: ["screenshot", "snapshot", "url", "tabs"], max_length=4)
    interactive_only: bool = False


@dataclass(eq=False)
class Episode:
    id: str
    org: str
    params: ResetParams
    computer_id: str | None = None
    step_count: int = 0
    done: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    browsergym: BrowserGymAdapter | None = None
    osworld: OSWorldAdapter | None = None
    tab_ids: list[str] = field(default_factory=list)
    active_tab: str | None = None

    def state(self) -> dict[str, Any]:
        """OpenEnv's ``State`` (episode_id, step_count) and ours."""
        return {"episode_id": self.id, "step_count": self.step_count, "computer_id": self.computer_id,
                "done": self.done, "goal": self.params.goal, "max_steps": self.params.max_steps}


class OpenEnvSessions:
    """The HTTP episodes of every organisation (a WebSocket's own episode is not listed here)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._http: dict[tuple[str, str], Episode] = {}

    # -- HTTP episodes ------------------------------------------------------------------------
    def get(self, org: str, episode_id: str | None) -> Episode:
        if not episode_id:
            raise InvalidInput("over HTTP a step or state names its episode: give episode_id, from the observation "
                               "/reset answered (or use the WebSocket /openenv/ws, one episode per connection)",
                               field="episode_id")
        ep = self._http.get((org, episode_id))
        if ep is None:
            raise NotFound(f"no episode {episode_id!r}; start one with POST /openenv/reset", field="episode_id")
        return ep

    async def http_reset(self, org: str, params: ResetParams) -> dict[str, Any]:
        self._prune()
        ep = self._http.get((org, params.episode_id)) if params.episode_id else None
        if ep is None:
            ep = Episode(params.episode_id or new_id("ep"), org, params)
            self._http[(org, ep.id)] = ep
        return await self.reset(ep, params)

    async def http_close(self, org: str, episode_id: str | None) -> None:
        ep = self.get(org, episode_id)
        self._http.pop((org, ep.id), None)
        await self.release(ep)

    def _prune(self) -> None:
        """Episodes whose computer has ended (its lifetime, a DELETE) are forgotten."""
        live = {c.id for c in self.rt.computers.live_computers() if not c.ending}
        for key, ep in list(self._http.items()):
            if ep.computer_id not in live and not ep.lock.locked():  # (None: a reset that failed)
                del self._http[key]

    # -- any episode --------------------------------------------------------------------------
    async def reset(self, ep: Episode, params: ResetParams) -> dict[str, Any]:
        async with ep.lock:
            await self.release(ep)
            ep.params, ep.step_count, ep.done = params, 0, False
            s = self.rt.settings
            vp = params.viewport
            w, h = (vp.width, vp.height) if vp else s.default_display(params.kind)
            spec = CreateSpec(kind=params.kind, display=Display(w, h),
                              max_lifetime_seconds=s.default_max_lifetime_seconds,
                              inactivity_timeout_seconds=s.default_inactivity_timeout_seconds,
                              idle_timeout_enabled=True, environment_id=params.environment_id)
            t0 = time.perf_counter()
            view = await self.rt.computers.create(ep.org, spec)
            ep.computer_id = view.id
            ep.browsergym = BrowserGymAdapter(lambda: (ep.tab_ids, ep.active_tab))
            ep.osworld = OSWorldAdapter(view.display.pixel_width, view.display.pixel_height)
            first = _tool.validate_python({"action": "navigate", "url": params.start_url}) if params.start_url else None
            out = await self._observe(ep, first, None)
            out["observation"]["reset_ms"] = round((time.perf_counter() - t0) * 1000, 3)
            out["reward"] = None
            return out

    async def step(self, ep: Episode, raw: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        async with ep.lock:
            if ep.computer_id is None:
                raise InvalidInput("the episode has not been reset: send a reset first", field="episode_id")
            if ep.done:
                raise InvalidInput(f"episode {ep.id} is done; reset it to start again", field="episode_id")
            ep.step_count += 1
            error: str | None = None
            try:
                translated = self._translate(ep, raw)
            except (AdapterError, ValueError) as exc:
                translated, error = Translated(), str(exc)
            actions = [] if error else translated.actions
            try:
                async with asyncio.timeout(timeout_s):
                    for act in actions[:-1]:
                        res = await run_step(self.rt, ep.org, ep.computer_id, act, ())
                        if res["last_action_error"]:
                            error = res["last_action_error"]
                            break
                    last = actions[-1] if actions and error is None else None
                    out = await self._observe(ep, last, error)
            except TimeoutError:
                out = await self._observe(ep, None, f"the step took longer than timeout_s={timeout_s:g}")
            obs = out["observation"]
            reward = 1.0 if _succeeded(ep.params.success, obs) else 0.0
            ep.done = bool(reward) or translated.done or ep.step_count >= ep.params.max_steps
            obs["agent_done"], obs["message"] = translated.done, translated.message
            out["reward"], out["done"] = reward, ep.done
            return out

    def _translate(self, ep: Episode, raw: dict[str, Any]) -> Translated:
        assert ep.browsergym is not None and ep.osworld is not None
        if set(raw) == {"action_str"} and isinstance(raw["action_str"], str):
            translated = ep.browsergym.translate(raw["action_str"])
        elif "action_type" in raw:
            translated = ep.osworld.translate(raw)
        else:
            translated = Translated([raw])
        try:
            translated.actions = [_tool.validate_python(act) for act in translated.actions]
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"invalid action: {where + ': ' if where else ''}{err['msg']}") from None
        for act in translated.actions:
            act.canonical()  # ranges and combinations, said as the agent's error rather than later
        return translated

    async def _observe(self, ep: Episode, action: Any, error: str | None) -> dict[str, Any]:
        assert ep.computer_id is not None
        res = await run_step(self.rt, ep.org, ep.computer_id, action, ep.params.observe,
                             interactive_only=ep.params.interactive_only)
        if res.get("tabs"):
            ep.tab_ids = [t["tab_id"] for t in res["tabs"]]
        ep.active_tab = res.get("active_tab_id") or ep.active_tab
        obs = {k: v for k, v in res.items() if k not in ("status", "request_id", "result")}
        obs["last_action_error"] = error or res["last_action_error"]
        obs.update(episode_id=ep.id, computer_id=ep.computer_id, step_count=ep.step_count, goal=ep.params.goal)
        if res.get("result"):
            obs["result"] = res["result"]  # an action's own answer: tabs, markdown of read_page…
        return {"observation": obs, "reward": None, "done": False}

    async def release(self, ep: Episode) -> None:
        """End the episode's computer (a reset's previous one, a closed socket's)."""
        cid, ep.computer_id = ep.computer_id, None
        if cid is not None:
            with contextlib.suppress(Exception):
                await self.rt.computers.delete(ep.org, cid)


def _succeeded(success: Success | None, obs: dict[str, Any]) -> bool:
    if success is None or (success.url_contains is None and success.text_contains is None):
        return False
    if success.url_contains is not None and success.url_contains not in (obs.get("url") or ""):
        return False
    return not (success.text_contains is not None and success.text_contains not in (obs.get("snapshot") or ""))


def new_ws_episode(org: str) -> Episode:
    return Episode(new_id("ep"), org, ResetParams())
