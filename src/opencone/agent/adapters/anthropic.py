"""Anthropic computer use: ``computer_20250124`` and ``computer_20251124`` (with ``zoom``).

Screenshots are shown at the model's preferred size (the computer-use demo's rule: XGA,
WXGA or FWXGA by aspect ratio when the screen is larger; otherwise at most 1568 px on the
long edge and about 1.15 megapixels), and the coordinates it answers are scaled back to
screenshot pixels. The tool version follows the model: Claude Opus 4.5 and every model from
4.6 on get ``computer_20251124``, the others ``computer_20250124``.

Each ``tool_use`` is answered in the next user message by a ``tool_result`` (``is_error``
when the action failed); the screenshot goes with the last one of the turn (a zoom's crop
with its own), and injected messages follow as text blocks after the results.
"""

from __future__ import annotations

import math
import re
from typing import Any

from anthropic import AsyncAnthropic

from opencone.agent.adapters import openai_actions as oa
from opencone.agent.adapters.base import (
    OMITTED,
    Call,
    Conversation,
    Decision,
    ModelCallError,
    ModelOutputError,
    ModelTurn,
    Observation,
    Outcome,
    Screenshot,
    Text,
    TextDelta,
    Usage,
    clamp_point,
    cropped,
    fit_within,
    outcome_text,
    previous_turn,
    scaled,
)
from opencone.agent.adapters.keys import UnknownKeyError, chord, to_xdotool
from opencone.agent.adapters.upstream import dumped, json_body, mapped, sdk_arguments
from opencone.core import actions as a

TARGETS = ((1024, 768), (1280, 800), (1366, 768))  # XGA, WXGA, FWXGA
MAX_LONG_EDGE = 1568
MAX_PIXELS = 1_150_000
SCROLL_NOTCH = 100  # pixels per scroll_amount unit (spec §c.3)
MAX_REPEAT = 20
_VERSION = re.compile(r"claude-(?:(opus|sonnet|haiku)-(\d+)(?:[-.](\d))?|(\d+)(?:[-.](\d))?-(opus|sonnet|haiku))")


def model_size(width: int, height: int) -> tuple[int, int]:
    """The size the model is shown a ``width`` × ``height`` screen at."""
    ratio = width / height
    for tw, th in TARGETS:
        if abs(tw / th - ratio) < 0.02:
            return (tw, th) if width > tw else (width, height)
    scale = min(1.0, MAX_LONG_EDGE / max(width, height), math.sqrt(MAX_PIXELS / (width * height)))
    return max(1, round(width * scale)), max(1, round(height * scale))


def tool_version(model: str) -> tuple[str, str]:
    """(tool type, beta flag) for an upstream model name."""
    m = _VERSION.search(model.lower())
    if m:
        family = m.group(1) or m.group(6)
        major = int(m.group(2) or m.group(4))
        minor = int(m.group(3) or m.group(5) or 0)
        if (major, minor) >= (4, 6) or (family == "opus" and (major, minor) >= (4, 5)):
            return "computer_20251124", "computer-use-2025-11-24"
    return "computer_20250124", "computer-use-2025-01-24"


class AnthropicAdapter:
    dialect = "anthropic"
    what = "the Anthropic upstream"

    def __init__(self, upstream_model: str, client: AsyncAnthropic, display: tuple[int, int] | None = None) -> None:
        self.model = upstream_model
        self.client = client
        self.limit = display  # the models file's display limit, if any
        self.tool_type, self.beta = tool_version(upstream_model)

    def space(self, display: tuple[int, int]) -> tuple[int, int]:
        w, h = model_size(*display)
        return fit_within(w, h, *self.limit) if self.limit else (w, h)

    # -- request ------------------------------------------------------------------------------
    def request(self, conv: Conversation) -> dict[str, Any]:
        mw, mh = self.space(conv.display)
        tool: dict[str, Any] = {"type": self.tool_type, "name": "computer", "display_width_px": mw,
                                "display_height_px": mh}
        if self.tool_type == "computer_20251124":
            tool["enable_zoom"] = True
        tools = [tool] + [{"name": f.name, "description": f.description, "input_schema": f.parameters}
                          for f in conv.functions]
        body: dict[str, Any] = {"model": self.model, "max_tokens": conv.max_output_tokens,
                                "system": conv.instructions, "messages": self.messages(conv), "tools": tools,
                                "betas": [self.beta]}
        if conv.temperature is not None:
            body["temperature"] = conv.temperature
        return body

    def messages(self, conv: Conversation) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        recent = conv.recent_images()
        space = self.space(conv.display)
        items = conv.items
        for n, item in enumerate(items):
            if isinstance(item, Text):
                _add(out, item.role, [{"type": "text", "text": item.text}])
            elif isinstance(item, ModelTurn):
                _add(out, "assistant", [b for _, _, b in self.tool_uses(item.decision, conv.display)]
                     if item.decision.dialect != self.dialect else self._native(item.decision))
            elif isinstance(item, Observation):
                turn = previous_turn(items, n)
                shown = n in recent
                if turn is None:
                    _add(out, "user", [self._image(item.screenshot, space) if shown
                                       else {"type": "text", "text": OMITTED}])
                else:
                    _add(out, "user", self.results(turn.decision, item, conv, shown, items[:n]))
        return out

    def _native(self, decision: Decision) -> list[dict[str, Any]]:
        content = decision.native.get("content") if isinstance(decision.native, dict) else decision.native
        blocks = [dict(b) for b in content or [] if isinstance(b, dict)
                  and b.get("type") in ("text", "tool_use", "thinking", "redacted_thinking")]
        return blocks or [{"type": "text", "text": decision.text or "(no answer)"}]

    def tool_uses(self, decision: Decision, display: tuple[int, int]) -> list[tuple[str, Call, dict[str, Any]]]:
        """(tool_use id, call, block) for every tool use of a turn, native or written anew."""
        if decision.dialect == self.dialect:
            by_id = {c.id: c for c in decision.calls}
            return [(b["id"], by_id.get(b["id"], Call(b["id"], ())), b) for b in self._native(decision)
                    if b.get("type") == "tool_use" and isinstance(b.get("id"), str)]
        out: list[tuple[str, Call, dict[str, Any]]] = []
        if decision.text:
            out.append(("", Call("", ()), {"type": "text", "text": decision.text}))
        to_model = self._to_model(display)
        for call in decision.calls:
            if call.function:
                out.append((call.id, call, {"type": "tool_use", "id": call.id, "name": call.function,
                                            "input": call.arguments or {}}))
                continue
            inputs = [x for x in (to_anthropic(act, to_model) for act in call.actions) if x is not None] or \
                [{"action": "screenshot"}]
            for k, inp in enumerate(inputs):
                tid = call.id if k == 0 else f"{call.id}_{k}"
                out.append((tid, call, {"type": "tool_use", "id": tid, "name": "computer", "input": inp}))
        return out

    def results(self, decision: Decision, obs: Observation, conv: Conversation, shown: bool,
                before: tuple[Any, ...]) -> list[dict[str, Any]]:
        uses = [u for u in self.tool_uses(decision, conv.display) if u[0]]
        by_id = {o.call_id: o for o in obs.outcomes}
        space = self.space(conv.display)
        blocks: list[dict[str, Any]] = []
        for k, (tid, call, block) in enumerate(uses):
            outcome = by_id.get(call.id)
            inp = block.get("input") if isinstance(block.get("input"), dict) else {}
            failed = bool(call.error) or (outcome is not None and not outcome.ok)
            content: list[dict[str, Any]] = []
            if call.function:
                text = outcome.output if outcome is not None and outcome.output is not None else \
                    outcome_text(outcome)
                content.append({"type": "text", "text": text})
            elif failed:
                content.append({"type": "text", "text": call.error or outcome_text(outcome)})
            elif inp.get("action") == "cursor_position":
                pos = _pointer(before, decision, conv.display)
                x, y = self._to_model(conv.display)(pos) if pos else (0, 0)
                content.append({"type": "text", "text": f"X={x},Y={y}" if pos else "the pointer has not moved yet"})
            if not call.function and inp.get("action") == "zoom" and shown and not failed:
                content.append(self._zoomed(obs.screenshot, inp.get("region"), conv.display, space))
            elif not call.function and k == len(uses) - 1:
                content.append(self._image(obs.screenshot, space) if shown else {"type": "text", "text": OMITTED})
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tid,
                                      "content": content or [{"type": "text", "text": "done"}]}
            if failed:
                result["is_error"] = True
            blocks.append(result)
        if not blocks:  # a turn without tool use: the screen is shown as a plain image
            blocks.append(self._image(obs.screenshot, space) if shown else {"type": "text", "text": OMITTED})
        return blocks

    def _image(self, shot: Screenshot, space: tuple[int, int]) -> dict[str, Any]:
        img = scaled(shot, *space)
        return {"type": "image", "source": {"type": "base64", "media_type": img.media_type, "data": img.b64()}}

    def _zoomed(self, shot: Screenshot, region: Any, display: tuple[int, int], space: tuple[int, int]) -> dict:
        try:
            x0, y0, x1, y1 = (float(v) for v in region)
        except (TypeError, ValueError):
            return self._image(shot, space)
        sx, sy = display[0] / space[0], display[1] / space[1]
        part = cropped(shot, (x0 * sx, y0 * sy, x1 * sx, y1 * sy))
        w, h = fit_within(part.width, part.height, *space)
        return self._image(part, (w, h))

    # -- coordinates ----------------------------------------------------------------------------
    def _to_px(self, display: tuple[int, int]) -> oa.ToPixels:
        mw, mh = self.space(display)

        def to_px(x: float, y: float) -> a.Point:
            return clamp_point(x * display[0] / mw, y * display[1] / mh, display)

        return to_px

    def _to_model(self, display: tuple[int, int]) -> oa.FromPixels:
        mw, mh = self.space(display)

        def to_model(p: a.Point) -> tuple[int, int]:
            return round(p.x * mw / display[0]), round(p.y * mh / display[1])

        return to_model

    # -- reply ----------------------------------------------------------------------------------
    def parse(self, reply: dict[str, Any], conv: Conversation) -> Decision:
        if reply.get("type") == "error":
            err = reply.get("error") or {}
            message = err.get("message") if isinstance(err, dict) else err
            raise ModelCallError(f"{self.what} answered an error: {message}", retryable=True)
        content = reply.get("content")
        raw_usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        usage = Usage(int(raw_usage.get("input_tokens") or 0), int(raw_usage.get("output_tokens") or 0))
        if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
            raise ModelOutputError(f"{self.what} answered without a list of content blocks", reply, usage)
        to_px = self._to_px(conv.display)
        functions = {f.name for f in conv.functions}
        texts: list[str] = []
        calls: list[Call] = []
        pointer = _pointer(conv.items, None, conv.display)
        for block in content:
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "tool_use":
                tid = str(block.get("id") or "")
                name = str(block.get("name") or "")
                inp = block.get("input")
                if not tid:
                    raise ModelOutputError(f"{self.what} sent a tool_use without an id", reply, usage)
                if name in functions:
                    calls.append(Call(tid, (), block, name, name, inp if isinstance(inp, dict) else {}))
                    continue
                if name != "computer":
                    calls.append(Call(tid, (), block, name, error=f"there is no tool {name!r}; use computer"))
                    continue
                try:
                    acts = from_anthropic(inp, to_px, pointer)
                except oa.ActionError as exc:
                    calls.append(Call(tid, (), block, str((inp or {}).get("action")), error=str(exc)))
                    continue
                for act in acts:
                    pointer = _point_of(act) or pointer
                calls.append(Call(tid, tuple(acts), block, str(inp.get("action"))))
        text = "\n".join(t for t in texts if t) or None
        if not calls and text is None:
            raise ModelOutputError(f"{self.what} answered with neither text nor a tool use", reply, usage)
        done = not calls  # end_turn (or max_tokens) without tool use: the model is finished
        return Decision(tuple(calls), text, done, text if done else None, native=reply, dialect=self.dialect,
                        usage=usage)

    # -- the call -------------------------------------------------------------------------------
    async def decide(self, conv: Conversation, on_text: TextDelta | None = None) -> Decision:
        args = sdk_arguments(self.request(conv), ("model", "max_tokens", "betas"), {"messages": []})
        if on_text is None:
            with mapped(self.what):
                raw = await self.client.beta.messages.with_raw_response.create(**args)
            return self.parse(json_body(raw, self.what), conv)
        with mapped(self.what):
            async with self.client.beta.messages.stream(**args) as stream:
                async for text in stream.text_stream:
                    on_text(text)
                final = await stream.get_final_message()
        return self.parse(dumped(final), conv)


# -- the action vocabulary ----------------------------------------------------------------------


def _coord(inp: dict[str, Any], name: str, to_px: oa.ToPixels) -> a.Point:
    value = inp.get(name)
    if not (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        raise oa.ActionError(f"{inp.get('action')}: {name} must be [x, y], got {value!r}")
    return to_px(float(value[0]), float(value[1]))


def _held(inp: dict[str, Any], body: list[a.Action]) -> list[a.Action]:
    """Clicks and scrolls with ``text`` hold those modifier keys (``"shift"``, ``"ctrl+alt"``)."""
    mods = inp.get("text")
    if not isinstance(mods, str) or not mods.strip():
        return body
    names = chord(mods)
    return [*(a.KeyDown(key=k) for k in names), *body, *(a.KeyUp(key=k) for k in reversed(names))]


def from_anthropic(inp: Any, to_px: oa.ToPixels, pointer: a.Point | None = None) -> list[a.Action]:
    """Canonical actions for one ``computer`` tool input; ``pointer`` is where the mouse is (for a
    click without a coordinate)."""
    if not isinstance(inp, dict) or not isinstance(inp.get("action"), str):
        raise oa.ActionError(f"the computer tool's input needs an action, got {str(inp)[:200]!r}")
    act = inp["action"]

    def at() -> a.Point:
        if inp.get("coordinate") is None:
            if pointer is None:
                raise oa.ActionError(f"{act}: coordinate is required (the pointer has not been placed yet)")
            return pointer
        return _coord(inp, "coordinate", to_px)

    try:
        match act:
            case "left_click" | "right_click" | "middle_click" | "double_click" | "triple_click":
                button = {"right_click": "right", "middle_click": "middle"}.get(act, "left")
                count = {"double_click": 2, "triple_click": 3}.get(act, 1)
                return _held(inp, [a.Click(at=at(), button=button, count=count)])  # type: ignore[arg-type]
            case "mouse_move":
                return [a.MoveMouse(at=_coord(inp, "coordinate", to_px))]
            case "left_mouse_down":
                return [a.MouseDown(at=_coord(inp, "coordinate", to_px) if inp.get("coordinate") else None)]
            case "left_mouse_up":
                return [a.MouseUp(at=_coord(inp, "coordinate", to_px) if inp.get("coordinate") else None)]
            case "left_click_drag":
                start = _coord(inp, "start_coordinate", to_px) if inp.get("start_coordinate") else at()
                return [a.Drag(path=[start, _coord(inp, "coordinate", to_px)])]
            case "type":
                if not isinstance(inp.get("text"), str):
                    raise oa.ActionError("type: text must be a string")
                return [a.TypeText(text=inp["text"])]
            case "key":
                if not isinstance(inp.get("text"), str) or not inp["text"]:
                    raise oa.ActionError("key: text must name the keys, e.g. 'ctrl+s'")
                repeat = inp.get("repeat", 1)
                repeat = repeat if isinstance(repeat, int) and not isinstance(repeat, bool) else 1
                keys = chord(inp["text"])
                return [a.PressKeys(keys=keys) for _ in range(max(1, min(MAX_REPEAT, repeat)))]
            case "hold_key":
                if not isinstance(inp.get("text"), str) or not inp["text"]:
                    raise oa.ActionError("hold_key: text must name the keys")
                keys = chord(inp["text"])
                ms = _seconds(inp.get("duration"), 1.0)
                return [*(a.KeyDown(key=k) for k in keys), a.Wait(ms=ms), *(a.KeyUp(key=k) for k in reversed(keys))]
            case "scroll":
                direction = inp.get("scroll_direction")
                amount = inp.get("scroll_amount", 3)
                if direction not in ("up", "down", "left", "right"):
                    raise oa.ActionError("scroll: scroll_direction must be up, down, left or right")
                if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
                    raise oa.ActionError("scroll: scroll_amount must be a number of notches")
                d = float(amount) * SCROLL_NOTCH
                dx, dy = {"up": (0, -d), "down": (0, d), "left": (-d, 0), "right": (d, 0)}[direction]
                point = at() if inp.get("coordinate") is not None or pointer is not None else None
                return _held(inp, [a.Scroll(at=point, dx=dx, dy=dy)])
            case "wait":
                return [a.Wait(ms=_seconds(inp.get("duration"), 1.0))]
            case "screenshot" | "cursor_position" | "zoom":
                return []
    except UnknownKeyError as exc:
        raise oa.ActionError(f"{act}: {exc}") from None
    except ValueError as exc:  # pydantic's range checks
        raise oa.ActionError(f"{act}: {str(exc).splitlines()[-1]}") from None
    raise oa.ActionError(f"unknown action {act!r} of the computer tool")


def _seconds(value: Any, default: float) -> int:
    secs = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
    return int(max(0.0, min(a.MAX_WAIT_MS / 1000, secs)) * 1000)


def to_anthropic(action: a.Action, to_model: oa.FromPixels) -> dict[str, Any] | None:
    """One canonical action as a ``computer`` tool input (in the model's space)."""
    match action:
        case a.Click(at=p, button=button, count=count):
            name = {2: "double_click", 3: "triple_click"}.get(count) if button == "left" else None
            name = name or {"left": "left_click", "right": "right_click", "middle": "middle_click"}.get(button)
            return {"action": name, "coordinate": list(to_model(p))} if name else None
        case a.MoveMouse(at=p):
            return {"action": "mouse_move", "coordinate": list(to_model(p))}
        case a.MouseDown(at=p) | a.MouseUp(at=p):
            out: dict[str, Any] = {"action": "left_mouse_down" if action.kind == "mouse_down" else "left_mouse_up"}
            if p is not None:
                out["coordinate"] = list(to_model(p))
            return out
        case a.Drag(path=path):
            return {"action": "left_click_drag", "start_coordinate": list(to_model(path[0])),
                    "coordinate": list(to_model(path[-1]))}
        case a.TypeText(text=text):
            return {"action": "type", "text": text}
        case a.PressKeys(keys=keys):
            return {"action": "key", "text": to_xdotool(list(keys))}
        case a.Scroll(at=p, dx=dx, dy=dy):
            direction = ("down" if dy > 0 else "up") if abs(dy) >= abs(dx) else ("right" if dx > 0 else "left")
            out = {"action": "scroll", "scroll_direction": direction,
                   "scroll_amount": max(1, round(max(abs(dx), abs(dy)) / SCROLL_NOTCH))}
            if p is not None:
                out["coordinate"] = list(to_model(p))
            return out
        case a.Wait(ms=ms):
            return {"action": "wait", "duration": ms / 1000}
    return None


def _point_of(action: a.Action) -> a.Point | None:
    match action:
        case a.Click(at=p) | a.MoveMouse(at=p):
            return p
        case a.Drag(path=path):
            return path[-1]
        case a.MouseDown(at=p) | a.MouseUp(at=p) | a.TypeText(at=p) | a.Scroll(at=p):
            return p
    return None


def _pointer(items: Any, last: Decision | None, display: tuple[int, int]) -> a.Point | None:
    """Where the pointer is after the turns in ``items`` (and ``last``): the last point an
    action put it at."""
    decisions = [i.decision for i in items if isinstance(i, ModelTurn)]
    if last is not None:
        decisions.append(last)
    for decision in reversed(decisions):
        for act in reversed(decision.actions):
            p = _point_of(act)
            if p is not None:
                return p
    return None


def _add(out: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Append blocks, merging into the last message when it has the same role (the API wants turns
    to alternate)."""
    if out and out[-1]["role"] == role:
        out[-1]["content"].extend(blocks)
    else:
        out.append({"role": role, "content": list(blocks)})


__all__ = ["AnthropicAdapter", "Outcome", "from_anthropic", "model_size", "to_anthropic", "tool_version"]
