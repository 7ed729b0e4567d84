"""Agent tasks on the wire: ``TaskStartParams`` (spec §a.3) → ``TaskSpec``, and the answers.

Every field the ``tzafon`` SDK sends is taken and checked here (a bad value is a 422 naming
it, before anything starts); unknown fields are ignored, since the SDK merges ``extra_body``
in. The aliases agree or it is a 422: ``save_session`` is ``persistent``, ``keep_alive: true``
is ``terminate_on_completion: false``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from opencone.agent.service import TaskView
from opencone.agent.spec import TaskSpec
from opencone.core.actions import check_url
from opencone.core.clock import iso

MAX_TEXT = 100_000


class ContextTurn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_TEXT)


class TaskStart(BaseModel):
    """The body of ``POST /agent/tasks`` and ``POST /agent/tasks/stream``."""

    model_config = ConfigDict(extra="ignore")

    instruction: str = Field(min_length=1, max_length=MAX_TEXT, description="The task, in words.")
    model: str | None = Field(default=None, max_length=256, description="A configured model id (GET /v1/models).")
    kind: Literal["browser", "desktop"] | None = None
    start_url: str | None = Field(default=None, max_length=8192)
    max_steps: int | None = Field(default=None, ge=1, le=10_000)
    max_duration_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    temperature: float | None = Field(default=None, ge=0, le=2)
    system_prompt: str | None = Field(default=None, max_length=MAX_TEXT, description="Appended to the harness's.")
    context: list[ContextTurn] | None = Field(default=None, max_length=500)
    viewport_width: int | None = Field(default=None, ge=200, le=3840)
    viewport_height: int | None = Field(default=None, ge=200, le=2160)
    screenshot_mode: Literal["url", "base64"] = "url"
    stream_mode: Literal["verbose", "concise"] = "verbose"
    stream_deltas: bool = False
    computer_id: str | None = Field(default=None, min_length=1, max_length=64)
    on_missing_computer: Literal["fail", "restore", "create_new"] = "restore"
    environment_id: str | None = Field(default=None, min_length=1, max_length=64)
    persistent: bool | None = None
    save_session: bool | None = None
    terminate_on_completion: bool | None = None
    keep_alive: bool | None = None
    harness_version: Literal["v1", "v2"] | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)
    metadata: dict[str, str] | None = Field(default=None, max_length=64)
    thread_id: str | None = Field(default=None, max_length=256)
    agent_icon: str | None = Field(default=None, max_length=2048)
    agent_type: str | None = Field(default=None, max_length=256)

    @field_validator("start_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else check_url(v)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (v or {}).items():
            if len(key) > 256 or len(value) > 4096:
                raise ValueError("metadata keys are at most 256 characters and values at most 4096")
        return v

    @model_validator(mode="after")
    def _aliases_agree(self) -> TaskStart:
        if self.persistent is not None and self.save_session is not None and self.persistent != self.save_session:
            raise ValueError("persistent and save_session (its alias) disagree; send one of them")
        if self.keep_alive is not None and self.terminate_on_completion is not None \
                and self.keep_alive == self.terminate_on_completion:
            raise ValueError("keep_alive and terminate_on_completion disagree (keep_alive: true is "
                             "terminate_on_completion: false); send one of them")
        if self.computer_id and self.environment_id:
            raise ValueError("give computer_id or environment_id, not both")
        return self

    def to_spec(self) -> TaskSpec:
        terminate = self.terminate_on_completion
        if terminate is None and self.keep_alive is not None:
            terminate = not self.keep_alive
        persistent = self.persistent if self.persistent is not None else bool(self.save_session)
        extra = {k: v for k, v in {"harness_version": self.harness_version, "thread_id": self.thread_id,
                                   "agent_icon": self.agent_icon, "agent_type": self.agent_type}.items() if v}
        return TaskSpec(
            instruction=self.instruction, model=self.model, kind=self.kind, start_url=self.start_url,
            max_steps=self.max_steps, max_duration_seconds=self.max_duration_seconds, temperature=self.temperature,
            system_prompt=self.system_prompt, context=[t.model_dump() for t in self.context or []],
            viewport_width=self.viewport_width, viewport_height=self.viewport_height,
            screenshot_mode=self.screenshot_mode, stream_mode=self.stream_mode, stream_deltas=self.stream_deltas,
            computer_id=self.computer_id, on_missing_computer=self.on_missing_computer,
            environment_id=self.environment_id, persistent=persistent, terminate_on_completion=terminate,
            idempotency_key=self.idempotency_key, metadata=dict(self.metadata or {}), extra=extra)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    message: str = Field(min_length=1, max_length=MAX_TEXT)


def start_response(view: TaskView, reused: bool) -> dict[str, Any]:
    """``TaskStartResponse``: ``task_id`` and ``status``, with ``reused`` and the computer."""
    body: dict[str, Any] = {"task_id": view.id, "status": view.status, "reused": reused,
                            "computer_id": view.computer_id, "model": view.model, "kind": view.kind}
    if view.idempotency_key:
        body["idempotency_key"] = view.idempotency_key
    return body


def task_response(view: TaskView) -> dict[str, Any]:
    """``TaskRetrieveStatusResponse`` (``task_id``, ``status``, ``exit_code`` once ended) and the rest."""
    body: dict[str, Any] = {
        "task_id": view.id, "id": view.id, "status": view.status, "exit_code": view.exit_code,
        "result": view.result, "error": view.error, "reason": view.reason, "steps": view.steps,
        "model": view.model, "kind": view.kind, "computer_id": view.computer_id, "instruction": view.instruction,
        "created_at": iso(view.created_at), "started_at": iso(view.started_at), "ended_at": iso(view.ended_at),
        "usage": view.usage, "metadata": view.metadata,
    }
    if view.idempotency_key:
        body["idempotency_key"] = view.idempotency_key
    if view.last_event_id is not None:
        body["last_event_id"] = view.last_event_id
    return body
