"""What the sync, async and vector environments share: settings, spaces, the task hook, the
observation built from a step's answer, and the choice of action dialect. No I/O here."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simplejpeg
from gymnasium import spaces

from opencone.gym.adapters import AdapterError, BrowserGymAdapter, OSWorldAdapter, Translated
from opencone.gym.spaces import ActionSpace, Unicode, validate

OBSERVABLE = ("screenshot", "snapshot", "url", "tabs")
_OSWORLD_WORDS = {"WAIT", "DONE", "FAIL"}


class Task:
    """A benchmark's task: what the episode starts from, its goal, and its reward.

    Override what you need. ``setup`` runs once the fresh computer exists, before the first
    observation (seed the page, write files with ``computer.exec``…) and returns the goal shown
    in ``obs["goal"]``; ``reward`` sees every observation and returns ``(reward, done)``. In
    ``AsyncComputerEnv`` both may be coroutines, and ``computer`` has async methods.
    """

    goal: str = ""
    start_url: str | None = None
    environment_id: str | None = None

    def setup(self, computer: Any) -> Any:
        return self.goal

    def reward(self, obs: dict[str, Any], computer: Any) -> Any:
        return 0.0, False


@dataclass
class EnvConfig:
    base_url: str
    api_key: str | None = None
    kind: str = "browser"
    environment_id: str | None = None
    start_url: str | None = None
    viewport: tuple[int, int] = (1280, 800)
    observe: Sequence[str] = OBSERVABLE
    max_steps: int = 50
    task: Task | None = None
    interactive_only: bool = False
    snapshot_max_chars: int = 50_000
    timeout: float = 120.0
    max_lifetime_seconds: int = 3600  # a computer never outlives its episode by long, even if the client dies
    inactivity_timeout_seconds: int = 300
    create_options: dict[str, Any] = field(default_factory=dict)  # more of POST /computers (stealth, …)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self.api_key = self.api_key or os.environ.get("OPENCONE_API_KEY") or os.environ.get("TZAFON_API_KEY")
        if not self.api_key:
            raise ValueError("an API key is needed: api_key=..., or OPENCONE_API_KEY / TZAFON_API_KEY")
        unknown = [o for o in self.observe if o not in OBSERVABLE]
        if unknown:
            raise ValueError(f"observe: unknown {unknown}; choose from {', '.join(OBSERVABLE)}")
        if self.max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        self.task = self.task or Task()

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}


def observation_space(cfg: EnvConfig) -> spaces.Dict:
    w, h = cfg.viewport
    d: dict[str, spaces.Space[Any]] = {}
    if "screenshot" in cfg.observe:
        d["screenshot"] = spaces.Box(0, 255, (h, w, 3), np.uint8)
    if "snapshot" in cfg.observe:
        d["snapshot"] = Unicode(max(cfg.snapshot_max_chars * 2, 1000))
    if "url" in cfg.observe:
        d["url"] = Unicode(100_000)
        d["title"] = Unicode(100_000)
    if "tabs" in cfg.observe:
        d["tabs"] = Unicode(1_000_000)  # JSON: [{"url", "title", "active"}] (tab ids are in info)
    d["last_action_error"] = Unicode(100_000)
    d["goal"] = Unicode(1_000_000)
    return spaces.Dict(d)


def action_space(cfg: EnvConfig) -> ActionSpace:
    return ActionSpace(*cfg.viewport)


def create_body(cfg: EnvConfig, environment_id: str | None) -> dict[str, Any]:
    w, h = cfg.viewport
    body = {"kind": cfg.kind, "display": {"width": w, "height": h}, "max_lifetime_seconds": cfg.max_lifetime_seconds,
            "inactivity_timeout_seconds": cfg.inactivity_timeout_seconds, **cfg.create_options}
    if environment_id:
        body["environment_id"] = environment_id
    return body


def step_body(action: dict[str, Any] | None, observe: Sequence[str], cfg: EnvConfig) -> dict[str, Any]:
    body: dict[str, Any] = {"observe": list(observe), "interactive_only": cfg.interactive_only,
                            "snapshot_max_chars": cfg.snapshot_max_chars}
    if action is not None:
        body["action"] = action
    return body


class Dialects:
    """Which dialect an action is in, and its shared-schema actions."""

    def __init__(self, cfg: EnvConfig) -> None:
        self.tab_ids: list[str] = []
        self.active_tab: str | None = None
        self.browsergym = BrowserGymAdapter(lambda: (self.tab_ids, self.active_tab))
        self.osworld = OSWorldAdapter(*cfg.viewport)

    def reset(self) -> None:
        self.osworld.reset()
        self.tab_ids, self.active_tab = [], None

    def translate(self, action: Any) -> Translated:
        """Raises ``AdapterError``/``ValueError`` for an action no dialect takes."""
        if isinstance(action, str):
            if action.strip().upper() in _OSWORLD_WORDS:
                return self.osworld.translate(action.strip().upper())
            return self.browsergym.translate(action)
        if isinstance(action, dict) and "action_type" in action:
            return self.osworld.translate(action)
        if isinstance(action, dict):
            validate(action)
            return Translated([dict(action)])
        raise AdapterError(f"an action is a dict of the shared schema ({{'action': 'click', 'ref': 'e5'}}), a "
                           f"BrowserGym string (\"click('e5')\") or an OSWorld dict; got {type(action).__name__}")


def observation(cfg: EnvConfig, data: dict[str, Any], goal: str, error: str | None,
                dialects: Dialects) -> dict[str, Any]:
    """The Gymnasium observation of a step's answer; remembers the tabs for the adapters."""
    obs: dict[str, Any] = {}
    if "screenshot" in cfg.observe:
        obs["screenshot"] = decode(data.get("screenshot"), cfg.viewport)
    if "snapshot" in cfg.observe:
        obs["snapshot"] = data.get("snapshot") or ""
    if "url" in cfg.observe:
        obs["url"], obs["title"] = data.get("url") or "", data.get("title") or ""
    tabs = data.get("tabs") or []
    if tabs:
        dialects.tab_ids = [t["tab_id"] for t in tabs]
    dialects.active_tab = data.get("active_tab_id") or dialects.active_tab
    if "tabs" in cfg.observe:
        obs["tabs"] = json.dumps([{"url": t["url"], "title": t["title"], "active": t["tab_id"] == dialects.active_tab}
                                  for t in tabs], ensure_ascii=False)
    obs["last_action_error"] = error or ""
    obs["goal"] = goal
    return obs


def decode(b64: str | None, viewport: tuple[int, int]) -> np.ndarray:
    w, h = viewport
    if not b64:
        return np.zeros((h, w, 3), np.uint8)
    import base64

    img = simplejpeg.decode_jpeg(base64.b64decode(b64), colorspace="RGB")
    if img.shape[:2] != (h, w):
        raise RuntimeError(f"the screenshot is {img.shape[1]}x{img.shape[0]}, not the env's viewport {w}x{h}; "
                           "give the env the computer's display size as viewport")
    return img


def reward_pair(value: Any) -> tuple[float, bool]:
    if isinstance(value, tuple):
        reward, done = value
        return float(reward), bool(done)
    return float(value), False
