"""Lightcone computer resources: the create body and ComputerResponse."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from opencone.api.wire.stealth import StealthIn
from opencone.config import Settings
from opencone.core.clock import iso
from opencone.core.computers import ComputerView, CreateSpec
from opencone.drivers.base import Display


class DisplayIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    width: int | None = Field(default=None, ge=200, le=3840)
    height: int | None = Field(default=None, ge=200, le=2160)
    scale: float | None = Field(default=None, ge=0.25, le=4.0)


class RecordingIn(BaseModel):
    """``recording: {"keep": true}``: record, and keep the recording after the computer ends."""

    model_config = ConfigDict(extra="forbid")
    keep: StrictBool = False


class ComputerCreate(BaseModel):
    # unknown fields are tolerated: the SDK merges ``extra_body`` into every request
    model_config = ConfigDict(extra="ignore")

    kind: Literal["browser", "desktop"] = "browser"
    display: DisplayIn | None = None
    max_lifetime_seconds: int | None = Field(default=None, ge=1)
    inactivity_timeout_seconds: int | None = Field(default=None, ge=1)
    idle_timeout_enabled: bool | None = None
    persistent: bool = False
    environment_id: str | None = Field(default=None, max_length=64)
    context_id: str | None = Field(default=None, max_length=256)
    stealth: StealthIn | None = None  # strict: an unknown key is a 422 (api/wire/stealth.py)
    use_advanced_proxy: bool = False
    # an opencone extension (the SDK sends it with extra_body): record the screen from the start
    recording: StrictBool | RecordingIn = Field(
        default=False, description='Record the screen (core/recording.py): true, or {"keep": true} to keep the '
                                   "recording after the computer ends (a persistent computer's are kept anyway).")
    timeout_seconds: int | None = Field(default=None, ge=1, description="Deprecated: max_lifetime_seconds")
    auto_kill: bool | None = Field(default=None, description="Deprecated: idle_timeout_enabled")

    @model_validator(mode="after")
    def _scale_agrees(self) -> ComputerCreate:
        dsf = self.stealth.device_scale_factor if self.stealth else None
        scale = self.display.scale if self.display else None
        if dsf is not None and scale is not None and dsf != scale:
            raise ValueError(f"stealth.device_scale_factor ({dsf:g}) and display.scale ({scale:g}) disagree; "
                             "set one of them (device_scale_factor is display.scale)")
        return self

    def to_spec(self, settings: Settings) -> CreateSpec:
        d = self.display or DisplayIn()
        if d.scale is None and self.stealth is not None and self.stealth.device_scale_factor is not None:
            d = DisplayIn(width=d.width, height=d.height, scale=self.stealth.device_scale_factor)
        idle = self.idle_timeout_enabled if self.idle_timeout_enabled is not None else self.auto_kill
        options: dict[str, Any] = {}
        if self.stealth is not None:
            options["stealth"] = self.stealth.options()
        if self.use_advanced_proxy:
            options["use_advanced_proxy"] = True
        width, height = settings.default_display(self.kind)
        return CreateSpec(
            kind=self.kind,
            display=Display(d.width or width, d.height or height, d.scale or 1.0),
            max_lifetime_seconds=self.max_lifetime_seconds or self.timeout_seconds
            or settings.default_max_lifetime_seconds,
            inactivity_timeout_seconds=self.inactivity_timeout_seconds
            or settings.default_inactivity_timeout_seconds,
            idle_timeout_enabled=True if idle is None else idle,
            persistent=self.persistent,
            environment_id=self.environment_id,
            context_id=self.context_id,
            options=options,
        )


def endpoints(base: str, computer_id: str) -> dict[str, str]:
    """URLs of the computer's resources. ``ws``/``cdp``/streams take ``?token=<key>`` too."""
    root = f"{base}/computers/{computer_id}"
    ws_root = "ws" + root[len("http"):] if root.startswith("http") else root
    return {
        "api": root, "status": f"{root}/status", "execute": f"{root}/execute", "batch": f"{root}/batch",
        "tabs": f"{root}/tabs", "exec": f"{root}/exec",
        "events": f"{root}/events", "screencast": f"{root}/screencast", "recording": f"{root}/recording",
        "cdp": f"{root}/cdp", "ws": f"{ws_root}/ws",
        "live_view": f"{base}/live#{computer_id}",
    }


def _timers(v: ComputerView) -> dict[str, Any]:
    return {
        "id": v.id,
        "status": v.status,
        "created_at": iso(v.created_at),
        "expires_at": iso(v.expires_at),
        "idle_expires_at": iso(v.idle_expires_at),
        "last_activity_at": iso(v.last_activity_at),
        "max_lifetime_seconds": v.max_lifetime_seconds,
        "inactivity_timeout_seconds": v.inactivity_timeout_seconds,
        "idle_timeout_enabled": v.idle_timeout_enabled,
        "auto_kill": v.idle_timeout_enabled,
    }


def computer_response(v: ComputerView, base: str) -> dict[str, Any]:
    body = _timers(v)
    body.update({
        "kind": v.kind,
        "display": {"width": v.display.width, "height": v.display.height, "scale": v.display.scale},
        "persistent": v.persistent,
        "environment_id": v.environment_id,
        "context_id": v.context_id,
        "endpoints": endpoints(base, v.id) if v.status != "terminated" else {},
    })
    if v.proxy is not None:
        body["proxy"] = v.proxy
    if v.status == "terminated":
        body["terminated_at"] = iso(v.terminated_at)
        body["termination_reason"] = v.termination_reason
    return body


def status_response(v: ComputerView) -> dict[str, Any]:
    body = _timers(v)
    if v.proxy is not None:
        body["proxy"] = v.proxy
    if v.status == "terminated":
        body["terminated_at"] = iso(v.terminated_at)
        body["termination_reason"] = v.termination_reason
    return body
