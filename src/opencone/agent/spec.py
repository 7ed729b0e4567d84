"""What a task was asked to do, once the edge has checked it (``api/wire/agent.py``), and the
harness's own words to the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["browser", "desktop"]
MissingComputer = Literal["fail", "restore", "create_new"]

# statuses (spec §a.3); the last four are terminal, each with its own terminal event
QUEUED, RUNNING, PAUSED = "queued", "running", "paused"
COMPLETED, FAILED, CANCELLED, MAX_STEPS = "completed", "failed", "cancelled", "max_steps"
TERMINAL = (COMPLETED, FAILED, CANCELLED, MAX_STEPS)


@dataclass(slots=True)
class TaskSpec:
    instruction: str
    model: str | None = None
    kind: Kind | None = None  # None: browser with a start_url, else desktop (a reused computer's own)
    start_url: str | None = None
    max_steps: int | None = None
    max_duration_seconds: int | None = None
    temperature: float | None = None
    system_prompt: str | None = None
    context: list[dict[str, str]] = field(default_factory=list)  # [{role: user|assistant, content}]
    viewport_width: int | None = None
    viewport_height: int | None = None
    screenshot_mode: Literal["url", "base64"] = "url"
    stream_mode: Literal["verbose", "concise"] = "verbose"
    stream_deltas: bool = False
    computer_id: str | None = None
    on_missing_computer: MissingComputer = "restore"
    environment_id: str | None = None
    persistent: bool = False
    terminate_on_completion: bool | None = None  # None: true for a computer the task made, false for one it was given
    idempotency_key: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # harness_version, thread_id, agent_icon…: kept, not used

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


HARNESS = """You are a computer-use agent. You see the screen of a {kind} computer as screenshots of \
{width}x{height} pixels and act on it with the computer tool (mouse, keyboard, scrolling) to do the task the \
user gives you. Work step by step: look at the newest screenshot, act, and look again; after your actions you \
get a new screenshot of the result. Do not ask for confirmation: act. When the task is done, end it the way \
your tools say (stop using the tool, or call terminate / answer / finished) with the result in a few words \
(if the task asked a question, its answer)."""


def instructions(kind: str, width: int, height: int, system_prompt: str | None) -> str:
    """The system text: the harness's, with the caller's ``system_prompt`` appended (never instead)."""
    text = HARNESS.format(kind="web browser" if kind == "browser" else "Linux desktop", width=width, height=height)
    if system_prompt and system_prompt.strip():
        text += "\n\n" + system_prompt.strip()
    return text
