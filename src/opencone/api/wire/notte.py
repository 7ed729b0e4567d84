"""The Notte session API on the wire: both eras' requests, their session answers, and the
action space built from an element snapshot (core/perception.py).

Written from the contract in the project's spec (notte-session-api.md), not from Notte's
code (SSPL): the seed era is what ``notte==1.2.1`` speaks (``/session/start``,
``/env/observe``…, ``session_timeout_minutes``), the current one what ``notte-sdk``
speaks (``/sessions/…``, ``idle_timeout_minutes`` and ``max_duration_minutes``).

A Notte session is an opencone browser computer; its id is the computer's. What a
session says (status, times, close reason) is read from the computer's record: its
timeouts are the computer's lifetimes, so it ends as every computer does.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from opencone.core import actions as a
from opencone.core.clock import iso
from opencone.core.computers import ComputerView

SEED_TIMEOUT_MAX = 30  # minutes: the seed era's global timeout (0 < x <= 30)
SEED_TIMEOUT_DEFAULT = 5
IDLE_DEFAULT = 3  # the current era's defaults, in minutes
DURATION_DEFAULT = 15
DURATION_MAX = 1440
MAX_ACTIONS = 1000


# -- seed era: requests (every field of SessionRequest on every call) ----------------------
class SeedSessionIn(BaseModel):
    """``SessionRequest``: the fields every seed-era call carries."""

    model_config = ConfigDict(extra="ignore")
    session_id: str | None = Field(default=None, max_length=64,
                                   description="The session; a new one is created when not given.")
    keep_alive: bool = Field(default=False, description="Keep the session open after the operation.")
    session_timeout_minutes: int = Field(default=SEED_TIMEOUT_DEFAULT, ge=1, le=SEED_TIMEOUT_MAX,
                                         description="Idle timeout: the session times out this long after "
                                                     "its last access. 0 < x <= 30.")
    screenshot: bool | None = Field(default=None, description="Include a base64 screenshot in the answer.")


class SeedObserveIn(SeedSessionIn):
    url: str | None = Field(default=None, max_length=8192, description="Go there first; else the current page.")
    min_nb_actions: int | None = Field(default=None, ge=0, le=MAX_ACTIONS)
    max_nb_actions: int = Field(default=100, ge=1, le=MAX_ACTIONS)


class SeedStepIn(SeedSessionIn):
    action_id: str = Field(min_length=1, max_length=32, description="L1, B2, I1… from the last observe; S1–S8.")
    value: str | None = Field(default=None, max_length=a.MAX_TEXT)
    enter: bool | None = None
    min_nb_actions: int | None = Field(default=None, ge=0, le=MAX_ACTIONS)
    max_nb_actions: int = Field(default=100, ge=1, le=MAX_ACTIONS)


class SeedScrapeIn(SeedObserveIn):
    scrape_images: bool = False
    only_main_content: bool = True


# -- seed era: answers (for the document; the routes build dicts of these shapes) ----------
class SeedSessionOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    session_id: str
    timeout_minutes: int
    created_at: str
    last_accessed_at: str
    closed_at: str | None
    duration: str = Field(description="ISO 8601, e.g. `PT75.5S`.")
    status: Literal["active", "closed", "error", "timed_out"]
    error: str | None


class SeedObserveOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    session: SeedSessionOut
    metadata: dict[str, Any]
    screenshot: str | None
    data: dict[str, Any] | None
    space: dict[str, Any] | None


# -- current era ------------------------------------------------------------------------------
class SessionStartIn(BaseModel):
    """``POST /sessions/start``; browser options opencone has no use for are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    idle_timeout_minutes: int | None = Field(
        default=None, ge=1, le=SEED_TIMEOUT_MAX,
        validation_alias=AliasChoices("idle_timeout_minutes", "timeout_minutes"),
        description="Idle timeout in minutes (alias `timeout_minutes`); default 3.")
    max_duration_minutes: int | None = Field(default=None, ge=1, le=DURATION_MAX,
                                             description="Longest life in minutes; default 15.")
    viewport_width: int | None = Field(default=None, ge=200, le=3840)
    viewport_height: int | None = Field(default=None, ge=200, le=2160)

    @model_validator(mode="after")
    def _duration_covers_idle(self) -> SessionStartIn:
        idle = self.idle_timeout_minutes or IDLE_DEFAULT
        duration = self.max_duration_minutes or DURATION_DEFAULT
        if duration < idle:
            raise ValueError(f"max_duration_minutes ({duration}) must be at least idle_timeout_minutes ({idle})")
        return self


class ObserveIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str | None = Field(default=None, max_length=8192)
    min_nb_actions: int | None = Field(default=None, ge=0, le=MAX_ACTIONS)
    max_nb_actions: int = Field(default=100, ge=1, le=MAX_ACTIONS)
    instructions: str | None = Field(default=None, max_length=10_000, description="Ignored: every action is listed.")
    perception_type: str | None = Field(default=None, max_length=32)


class ScrapeIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    scrape_links: bool = True
    scrape_images: bool = False
    only_main_content: bool = True
    selector: str | None = Field(default=None, max_length=4000, description="Only this element's content.")
    instructions: str | None = Field(default=None, max_length=10_000)
    response_format: dict[str, Any] | None = None
    use_link_placeholders: bool = False


class ExecuteIn(BaseModel):
    """An action object: ``{"type": "click", "id": "B1"}``, ``{"type": "goto", "url": …}``…"""

    model_config = ConfigDict(extra="allow")
    type: str = Field(min_length=1, max_length=64)
    id: str | None = Field(default=None, max_length=64)
    selector: str | dict[str, Any] | None = None
    url: str | None = Field(default=None, max_length=8192)
    value: str | bool | None = None
    key: str | None = Field(default=None, max_length=64)
    amount: int | None = Field(default=None, ge=-100_000, le=100_000)
    time_ms: int | None = Field(default=None, ge=0, le=a.MAX_WAIT_MS)
    tab_index: int | None = Field(default=None, ge=0, le=1000)
    press_enter: bool | None = None
    clear_before_fill: bool = True


class SessionOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    session_id: str
    idle_timeout_minutes: int
    timeout_minutes: int
    max_duration_minutes: int
    created_at: str
    last_accessed_at: str
    closed_at: str | None
    duration: str
    status: Literal["active", "closed", "error", "timed_out"]
    close_reason: Literal["manual", "idle_timeout", "max_duration", "error", "unknown"] | None
    error: str | None
    cdp_url: str | None
    viewer_url: str | None


class SessionListOut(BaseModel):
    items: list[SessionOut]
    page: int
    page_size: int
    has_next: bool
    has_previous: bool


class ExecutionOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    action: dict[str, Any]
    success: bool
    message: str
    data: dict[str, Any] | None
    started_at: str
    ended_at: str


class ObservationOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    metadata: dict[str, Any]
    screenshot: dict[str, Any]
    space: dict[str, Any]
    started_at: str
    ended_at: str


class ScrapeOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    markdown: str
    images: list[dict[str, Any]] | None
    structured: dict[str, Any] | None


# -- a session as either era says it ---------------------------------------------------------
@dataclass(slots=True)
class Entry:
    """One action of a session's action space: a Notte id for an element of the last snapshot."""

    id: str
    ref: str
    role: str
    name: str | None
    kind: Literal["link", "button", "check", "input", "select", "other"]
    value: str | None = None
    checked: bool | None = None
    disabled: bool = False
    options: list[str] = field(default_factory=list)
    box: list[int] | None = None


@dataclass(slots=True)
class SessionState:
    """What the adapters remember of a session beside its computer."""

    id: str
    org: str
    keep_alive: bool = True
    snapshot_id: str | None = None
    actions: dict[str, Entry] = field(default_factory=dict)
    close_reason: str | None = None  # given by the client's stop
    closed_at: datetime | None = None


_KIND_OF_ROLE: dict[str, tuple[str, Literal["link", "button", "check", "input", "select", "other"]]] = {
    "link": ("L", "link"), "button": ("B", "button"), "tab": ("B", "button"), "menuitem": ("B", "button"),
    "menuitemcheckbox": ("B", "check"), "menuitemradio": ("B", "button"), "switch": ("B", "check"),
    "checkbox": ("B", "check"), "radio": ("B", "button"), "treeitem": ("B", "button"),
    "textbox": ("I", "input"), "searchbox": ("I", "input"), "spinbutton": ("I", "input"), "slider": ("I", "input"),
    "combobox": ("I", "select"), "listbox": ("I", "select"), "option": ("O", "other"), "img": ("F", "other"),
}


def space_entries(elements: list[dict[str, Any]], limit: int) -> list[Entry]:
    """The action space of a JSON snapshot: its interactive elements in document order, each
    with a role-prefixed counter id (``L1`` links, ``B1`` buttons, ``I1`` inputs…)."""
    options: dict[str, list[str]] = {}
    selected: dict[str, str] = {}
    for el in elements:
        parent = el.get("parent")
        if el.get("role") == "option" and parent:
            options.setdefault(parent, []).append(el.get("name") or "")
            if el.get("selected"):
                selected[parent] = el.get("name") or ""
    counters: dict[str, int] = {}
    out: list[Entry] = []
    for el in elements:
        ref, role = el.get("ref"), el.get("role", "")
        if not ref:
            continue
        prefix, kind = _KIND_OF_ROLE.get(role, ("", "other"))
        if not prefix:
            if el.get("cursor") != "pointer":
                continue
            prefix = "M"
        counters[prefix] = counters.get(prefix, 0) + 1
        value = el.get("value")
        if kind == "select":
            value = selected.get(ref, value)
        out.append(Entry(f"{prefix}{counters[prefix]}", ref, role, el.get("name"), kind,
                         value=value, checked=el.get("checked") if isinstance(el.get("checked"), bool) else None,
                         disabled=bool(el.get("disabled")), options=options.get(ref, []), box=el.get("box")))
        if len(out) >= limit:
            break
    return out


def _label(entry: Entry) -> str:
    return f'{entry.role} "{entry.name}"' if entry.name else entry.role


def describe(entry: Entry) -> str:
    match entry.kind:
        case "input":
            return f"Fill the {_label(entry)} with a value"
        case "select":
            return f"Select an option of the {_label(entry)}"
        case "check":
            return f"{'Uncheck' if entry.checked else 'Check'} the {_label(entry)}"
        case "link":
            return f"Follow the {_label(entry)}"
    return f"Click the {_label(entry)}"


_CATEGORY = {"L": "Links", "B": "Buttons", "I": "Inputs"}
SEED_SPECIAL = [
    ("S1", "Go to a specific URL", [{"name": "url", "type": "string", "default": None, "values": []}]),
    ("S2", "Scrape data from the current page", []),
    ("S3", "Take a screenshot of the current page", []),
    ("S4", "Go to the previous page", []),
    ("S5", "Go to the next page", []),
    ("S6", "Refresh the current page", []),
    ("S7", "Wait for a specific amount of time (in seconds)",
     [{"name": "time", "type": "int", "default": None, "values": []}]),
    ("S8", "Terminate the current session", []),
]


def seed_action(entry: Entry) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    if entry.id.startswith("I"):  # an input takes exactly one parameter, its value
        params = [{"name": "value", "type": "enum" if entry.options else "string", "default": entry.value,
                   "values": entry.options}]
    return {"id": entry.id, "description": describe(entry), "category": _CATEGORY.get(entry.id[0], "Other"),
            "params": params, "status": "excluded" if entry.disabled else "valid"}


def seed_space(entries: list[Entry], title: str, url: str) -> dict[str, Any]:
    actions = [seed_action(e) for e in entries]
    specials = [{"id": sid, "description": text, "category": "Special Browser Actions", "params": params,
                 "status": "valid"} for sid, text, params in SEED_SPECIAL]
    lines = [f"* {x['id']}: {x['description']}" for x in actions + specials if x["status"] == "valid"]
    return {"markdown": "\n".join(lines), "description": _page(title, url, len(actions)), "category": None,
            "actions": actions, "special_actions": specials}


def _page(title: str, url: str, n: int) -> str:
    return f"{title or 'Untitled page'} ({url}): {n} actions on the page"


def current_action(entry: Entry) -> dict[str, Any]:
    base: dict[str, Any] = {"id": entry.id, "category": "Interaction Actions", "description": describe(entry),
                            "text_label": entry.name, "accessible_name": entry.name}
    match entry.kind:
        case "input":
            return {"type": "fill", "value": entry.value or "", **base}
        case "select":
            return {"type": "select_dropdown_option", "value": entry.value or "", **base}
        case "check":
            return {"type": "check", "value": not entry.checked, **base}
    return {"type": "click", **base}


def current_space(entries: list[Entry], title: str, url: str) -> dict[str, Any]:
    return {"description": _page(title, url, len(entries)), "category": None,
            "interaction_actions": [current_action(e) for e in entries if not e.disabled]}


# -- times and statuses -----------------------------------------------------------------------
def _duration(delta: timedelta) -> str:
    seconds = max(delta.total_seconds(), 0.0)
    return f"PT{seconds:.3f}".rstrip("0").rstrip(".") + "S"


@dataclass(slots=True)
class Lifecycle:
    status: Literal["active", "closed", "error", "timed_out"]
    close_reason: Literal["manual", "idle_timeout", "max_duration", "error", "unknown"] | None
    closed_at: datetime | None
    error: str | None


def lifecycle(view: ComputerView, state: SessionState | None) -> Lifecycle:
    """A computer's life as a Notte session's status (every status but active is final)."""
    if view.status != "terminated":
        return Lifecycle("active", None, None, None)
    reason = view.termination_reason
    if reason == "inactivity_timeout":  # it timed out when its idle time was up, whenever the reaper came
        return Lifecycle("timed_out", "idle_timeout", view.idle_expires_at or view.terminated_at, None)
    if reason == "max_lifetime_reached":
        return Lifecycle("timed_out", "max_duration", view.expires_at, None)
    if reason in ("browser_crashed", "desktop_crashed", "start_failed", "node_lost", "node_agent_restarted"):
        # (the last two in fleet mode: the node that ran the session was lost, or its agent restarted)
        return Lifecycle("error", "error", view.terminated_at, f"the session's browser ended: {reason}")
    closed_by = state.close_reason if state is not None and state.close_reason else None
    return Lifecycle("closed", closed_by or ("manual" if reason == "deleted" else "unknown"),
                     view.terminated_at, None)


def seed_session(view: ComputerView, state: SessionState | None, now: datetime) -> dict[str, Any]:
    life = lifecycle(view, state)
    return {
        "session_id": view.id, "timeout_minutes": view.inactivity_timeout_seconds // 60,
        "created_at": iso(view.created_at), "last_accessed_at": iso(view.last_activity_at),
        "closed_at": iso(life.closed_at), "duration": _duration((life.closed_at or now) - view.created_at),
        "status": life.status, "error": life.error,
    }


def current_session(view: ComputerView, state: SessionState | None, now: datetime, base: str,
                    key: str | None) -> dict[str, Any]:
    body = seed_session(view, state, now)
    life = lifecycle(view, state)
    idle = view.inactivity_timeout_seconds // 60
    live = life.status == "active"
    ws = "ws" + base[len("http"):] if base.startswith("http") else base
    body.update({
        "idle_timeout_minutes": idle, "max_duration_minutes": view.max_lifetime_seconds // 60,
        "close_reason": life.close_reason, "steps": [], "proxies": False, "browser_type": "chromium",
        "viewport_width": view.display.width, "viewport_height": view.display.height,
        # the computer's own CDP endpoint (Playwright's connect_over_cdp) and live view
        "cdp_url": f"{ws}/computers/{view.id}/cdp" + (f"?token={key}" if key else "") if live else None,
        "viewer_url": f"{base}/live#{view.id}" if live else None,
    })
    return body


def screenshot_b64(image: bytes | None) -> str | None:
    return base64.b64encode(image).decode() if image else None
