"""The one interface between a computer-use loop and a model provider.

An adapter translates both ways between a *provider-neutral conversation* and
one provider's native wire format (OpenAI Responses items, Anthropic messages,
chat-completion messages in a VLM dialect), and turns the model's answer into
a ``Decision``: canonical actions (``opencone.core.actions``) in **screenshot
pixels**, text, whether the model is done, and the native payload.

Adapters are **stateless**: everything a request needs is in the
``Conversation`` it is given, so one adapter per model serves every task at
once, and the gateway (``/v1/responses`` emulated over chat-only upstreams)
reuses the very same adapters: it builds a ``Conversation`` from the client's
input items, calls ``decide``, and renders the ``Decision`` as output items.

A conversation is a list of items, oldest first:

* ``Text``: a user or assistant message (the instruction, seeded context, an
  injected message, a note from the harness);
* ``Observation``: a screenshot, and the outcome of each call of the model's
  previous turn (the first observation has no outcomes);
* ``ModelTurn``: a past ``Decision``. Its ``native`` payload (when it was made
  by an adapter of the same ``dialect``) is replayed byte for byte, so provider
  ids (``call_id``, ``tool_use`` ids, reasoning items) stay exact; without one
  (a turn of another provider, or built from a client's own items) the adapter
  writes the turn from its canonical actions.

Every adapter sends only the ``max_images`` most recent screenshots; older
ones become a short text stub, so a long task does not grow without bound.

Three ways to use an adapter:

* ``await adapter.decide(conv, on_text=...)``: one model call through the
  vendor's SDK client it was built with (``on_text`` gets text deltas as they
  stream; without it the call is not streamed);
* ``adapter.request(conv)``: the native request body, pure (no I/O), e.g. to
  log it or send it yourself;
* ``adapter.parse(reply, conv)``: a native reply (a JSON dict) into a
  ``Decision``, pure; raises ``ModelOutputError`` for output it cannot read.

``decide`` does **not** retry: callers choose (the agent loop retries with
back-off and reports each retry as an ``error`` event; the gateway can hand the
adapter an SDK client with retries of its own). It raises ``ModelCallError``
for an upstream that failed (with ``status`` and ``retryable``) and
``ModelOutputError`` for an answer that is not a usable decision.
"""

from __future__ import annotations

import base64
import io
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from opencone.core import actions as a

# -- what goes in -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Screenshot:
    """An image of the screen as the computer took it; its size *is* the coordinate space of
    every action in a ``Decision`` (screenshot pixels)."""

    data: bytes
    width: int
    height: int
    media_type: str = "image/jpeg"

    @classmethod
    def from_bytes(cls, data: bytes, media_type: str | None = None) -> Screenshot:
        """Read the size (and the type, unless given) from the image itself (JPEG, PNG, WebP, GIF)."""
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            kind = media_type or Image.MIME.get(img.format or "", "image/jpeg")
        return cls(data, width, height, kind)

    @classmethod
    def from_data_url(cls, url: str) -> Screenshot:
        """A ``data:image/...;base64,...`` URL (what Responses-API clients send)."""
        head, _, payload = url.partition(",")
        if not head.startswith("data:") or ";base64" not in head:
            raise ValueError("not a base64 data URL")
        return cls.from_bytes(base64.b64decode(payload), head[5:].split(";")[0] or None)

    def b64(self) -> str:
        return base64.b64encode(self.data).decode()

    def data_url(self) -> str:
        return f"data:{self.media_type};base64,{self.b64()}"


@dataclass(frozen=True, slots=True)
class Text:
    """A message. ``kind`` says where it came from, for adapters that phrase them differently."""

    text: str
    role: Literal["user", "assistant"] = "user"
    kind: Literal["instruction", "context", "injected", "note"] = "instruction"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one call of the previous turn: run (``ok``), failed (``error``), or not run;
    ``output`` is a function call's result text."""

    call_id: str
    ok: bool
    error: str | None = None
    ran: bool = True
    output: str | None = None


@dataclass(frozen=True, slots=True)
class Function:
    """A function tool offered beside the computer (the gateway passes a client's own, e.g. the
    ``done`` function of Lightcone's examples); ``parameters`` is a JSON schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True, slots=True)
class Observation:
    """The screen after the previous turn's actions, and how each of its calls went."""

    screenshot: Screenshot
    outcomes: tuple[Outcome, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelTurn:
    """A past decision of the model, replayed in the next requests."""

    decision: Decision


Item = Text | Observation | ModelTurn


@dataclass(frozen=True, slots=True)
class Conversation:
    """Everything a model call needs. ``display`` is the screen's size in pixels (the newest
    screenshot's); every coordinate in and out is in those pixels."""

    instructions: str  # the system text: the harness's, with the caller's system prompt appended
    items: tuple[Item, ...]
    display: tuple[int, int]
    environment: Literal["browser", "desktop"] = "browser"
    temperature: float | None = None
    max_images: int = 3
    max_output_tokens: int = 4096
    functions: tuple[Function, ...] = ()

    def screenshots(self) -> list[Screenshot]:
        return [i.screenshot for i in self.items if isinstance(i, Observation)]

    def recent_images(self) -> set[int]:
        """Indexes (into ``items``) of the observations whose screenshot is still sent."""
        seen = [n for n, i in enumerate(self.items) if isinstance(i, Observation)]
        return set(seen[-self.max_images:]) if self.max_images > 0 else set()


# -- what comes out -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One tool call of the model (an OpenAI ``computer_call``, an Anthropic ``tool_use``, a
    chat ``tool_call``, one ``Action:`` line): its id, what it became, and the native item."""

    id: str
    actions: tuple[a.Action, ...]
    native: Any = None
    name: str = "computer"  # the native action's name, e.g. "left_click", for logs and events
    function: str | None = None  # a call of one of ``Conversation.functions`` (then no actions)
    arguments: dict[str, Any] | None = None
    error: str | None = None  # the call could not be read (unknown action, bad field): not run, and
    # the model is told so in the next observation


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the model decided, in canonical terms.

    ``done`` is the provider's own signal that the task is over (no tool call, ``end_turn``,
    terminate/answer/done/finished); ``success`` is false when it said it failed (Qwen's
    ``terminate{status: failure}``); ``result`` the final answer. ``ask_user`` holds a question
    for a person (UI-TARS ``call_user``). ``native`` is the provider's reply (what a ``ModelTurn``
    replays), and ``dialect`` names the adapter format it is in.
    """

    calls: tuple[Call, ...] = ()
    text: str | None = None
    done: bool = False
    result: str | None = None
    success: bool = True
    ask_user: str | None = None
    safety_checks: tuple[dict[str, Any], ...] = ()
    native: Any = None
    dialect: str | None = None
    usage: Usage = field(default_factory=Usage)

    @property
    def actions(self) -> list[a.Action]:
        return [act for call in self.calls for act in call.actions]


# -- errors -------------------------------------------------------------------------------------


class ModelError(Exception):
    """A model call that gave no decision."""

    code = "model_error"
    retryable = False


class ModelCallError(ModelError):
    """The upstream failed: unreachable, timed out, or an error status (``status``)."""

    code = "upstream_error"

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class ModelOutputError(ModelError):
    """The model answered, but with nothing a computer can do (garbage, a malformed call).
    ``native`` is what it said, for the event log."""

    code = "bad_model_output"
    retryable = True

    def __init__(self, message: str, native: Any = None, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.native = native
        self.usage = usage or Usage()


# -- the interface ------------------------------------------------------------------------------

TextDelta = Callable[[str], None]


@runtime_checkable
class Adapter(Protocol):
    """One model, one provider format. Built with a ``ModelEntry`` and the vendor SDK's async
    client; holds nothing per conversation."""

    dialect: str  # e.g. "openai-responses", "anthropic", "chat:qwen3vl", "lightcone"

    def request(self, conv: Conversation) -> dict[str, Any]:
        """The native request body for ``conv`` (keyword arguments of the SDK call)."""
        ...

    def parse(self, reply: dict[str, Any], conv: Conversation) -> Decision:
        """A native reply as a Decision in screenshot pixels; ``ModelOutputError`` if unusable."""
        ...

    async def decide(self, conv: Conversation, on_text: TextDelta | None = None) -> Decision:
        """One model call: ``request`` → the upstream → ``parse``."""
        ...


# -- helpers every adapter uses -----------------------------------------------------------------


def clamp_point(x: float, y: float, display: tuple[int, int]) -> a.Point:
    """A point on the screen: a model's coordinate just past the edge lands on the last pixel."""
    w, h = display
    return a.Point(x=min(max(float(x), 0.0), w - 1.0), y=min(max(float(y), 0.0), h - 1.0))


def from_grid(v: float, size: int, grid: int = 1000) -> float:
    """A coordinate of a normalised grid (0–1000 Qwen, 0–999 Northstar) in pixels, as the
    official examples denormalise: ``v / 1000 * size``."""
    return float(v) / grid * size


def to_grid(px: float, size: int, grid: int = 1000, top: int = 1000) -> int:
    """Pixels back to the grid (the inverse of ``from_grid``), at most ``top``."""
    return max(0, min(top, round(float(px) / size * grid)))


def fit_within(width: int, height: int, max_w: int, max_h: int) -> tuple[int, int]:
    """The largest size of the same aspect ratio within ``max_w`` × ``max_h`` (never larger)."""
    if width <= max_w and height <= max_h:
        return width, height
    ratio = min(max_w / width, max_h / height)
    return max(1, round(width * ratio)), max(1, round(height * ratio))


_scaled: OrderedDict[tuple[int, int, int], Screenshot] = OrderedDict()


def scaled(shot: Screenshot, width: int, height: int) -> Screenshot:
    """``shot`` resized to ``width`` × ``height`` (JPEG); the same shot again costs nothing (a
    small cache keyed by identity and size, since each request resends the recent ones)."""
    if (width, height) == (shot.width, shot.height):
        return shot
    key = (id(shot.data), width, height)
    hit = _scaled.get(key)
    if hit is not None:
        _scaled.move_to_end(key)
        return hit
    from PIL import Image

    with Image.open(io.BytesIO(shot.data)) as img:
        out = io.BytesIO()
        img.convert("RGB").resize((width, height), Image.Resampling.LANCZOS).save(out, "JPEG", quality=85)
    result = Screenshot(out.getvalue(), width, height, "image/jpeg")
    _scaled[key] = result
    while len(_scaled) > 64:
        _scaled.popitem(last=False)
    return result


def cropped(shot: Screenshot, box: tuple[float, float, float, float]) -> Screenshot:
    """The part ``box`` (x0, y0, x1, y1, pixels) of ``shot`` (a zoom), scaled back up to the
    screenshot's size so the model sees it large."""
    from PIL import Image

    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, x1 = sorted((max(0, min(shot.width, x0)), max(0, min(shot.width, x1))))
    y0, y1 = sorted((max(0, min(shot.height, y0)), max(0, min(shot.height, y1))))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return shot
    with Image.open(io.BytesIO(shot.data)) as img:
        part = img.convert("RGB").crop((x0, y0, x1, y1))
        ratio = min(shot.width / part.width, shot.height / part.height)
        part = part.resize((max(1, round(part.width * ratio)), max(1, round(part.height * ratio))),
                           Image.Resampling.LANCZOS)
        out = io.BytesIO()
        part.save(out, "JPEG", quality=85)
    return Screenshot(out.getvalue(), part.width, part.height, "image/jpeg")


def previous_turn(items: Sequence[Item], index: int) -> ModelTurn | None:
    """The model turn an observation at ``index`` answers (the nearest before it, if any)."""
    for item in reversed(items[:index]):
        if isinstance(item, ModelTurn):
            return item
        if isinstance(item, Observation):
            return None
    return None


def outcome_text(outcome: Outcome | None) -> str:
    """How a call went, in words a model reads."""
    if outcome is None:
        return "done"
    if not outcome.ran:
        return "not run: an earlier action of this turn failed"
    return "done" if outcome.ok else f"error: {outcome.error or 'the action failed'}"


OMITTED = "(an older screenshot, no longer shown)"
