"""Our own ``json`` dialect: any chat VLM, its answer held to a JSON schema by the server.

The request carries ``response_format = {"type": "json_schema", "json_schema": {"name",
"strict": true, "schema"}}``, which vLLM, SGLang and Ollama turn into guided decoding, so
the answer is one object ``{"thought": str, "actions": [...]}``. Each action has every field
(strict mode wants them all required), the ones it does not use null:

==============  =======================================================================
``action``      click, double_click, triple_click, right_click, move, type, key, scroll,
                drag, wait, done, fail
``x``, ``y``    the point (click, move, drag's start, scroll's place, type's field)
``end_x/y``     drag's end
``text``        type's text; done's answer; fail's reason
``keys``        key's chord, pressed together (``["ctrl", "a"]``, ``["enter"]``)
``dx``, ``dy``  scroll, in wheel notches (≈ 100 px); dy > 0 down, dx > 0 right
``seconds``     wait
==============  =======================================================================

Coordinates are in the space the models file chooses (``coordinates``): ``grid1000``
(0–1000 over the screenshot, the default, what most VLMs ground in) or ``pixels`` (the
screenshot's own). An answer that is no JSON, or not of that shape, is a ``ModelOutputError``
the next request tells the model about; an action that cannot run (no point, an unknown
key) is a call with an ``error``.
"""

from __future__ import annotations

import json
from typing import Any

from opencone.agent.adapters import openai_actions as oa
from opencone.agent.adapters.base import Call, Decision, ModelOutputError, Usage
from opencone.agent.adapters.chat_opencua import invalid
from opencone.agent.adapters.keys import UnknownKeyError, chord
from opencone.agent.adapters.spaces import SCROLL_NOTCH, Space
from opencone.core import actions as a

ACTIONS = ("click", "double_click", "triple_click", "right_click", "move", "type", "key", "scroll", "drag", "wait",
           "done", "fail")
COORDINATES = ("grid1000", "pixels")
DEFAULT_COORDINATES = "grid1000"
SCHEMA_NAME = "computer_actions"
DEFAULT_WAIT_S = 1.0
_FIELDS = ("action", "x", "y", "end_x", "end_y", "text", "keys", "dx", "dy", "seconds")


def _nullable(kind: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], "description": description, **extra}


def schema() -> dict[str, Any]:
    """The answer's JSON schema (strict: every property required, nothing else allowed)."""
    action = {"type": "object", "additionalProperties": False, "required": list(_FIELDS), "properties": {
        "action": {"type": "string", "enum": list(ACTIONS)},
        "x": _nullable("number", "x of the point"),
        "y": _nullable("number", "y of the point"),
        "end_x": _nullable("number", "drag: x of the end point"),
        "end_y": _nullable("number", "drag: y of the end point"),
        "text": _nullable("string", "type: the text; done: the result; fail: why"),
        "keys": _nullable("array", "key: the keys pressed together, e.g. [\"ctrl\", \"a\"]",
                          items={"type": "string"}),
        "dx": _nullable("number", "scroll: wheel notches to the right (negative: left)"),
        "dy": _nullable("number", "scroll: wheel notches down (negative: up)"),
        "seconds": _nullable("number", "wait: how long"),
    }}
    return {"type": "object", "additionalProperties": False, "required": ["thought", "actions"], "properties": {
        "thought": {"type": "string", "description": "what the screen shows and what to do next"},
        "actions": {"type": "array", "items": action, "description": "done in order; then a new screenshot"},
    }}


def response_format() -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": schema()}}


def space_for(coordinates: str, display: tuple[int, int]) -> Space:
    return Space("pixels", display) if coordinates == "pixels" else Space("grid", display, 1000)


def guide(space: Space) -> str:
    """The system prompt's part that explains the answer (the schema says the shape, this the sense)."""
    w, h = space.display
    where = (f"x, y are pixels of the screenshot ({w}x{h}; 0,0 is the top left)" if space.kind == "pixels" else
             "x, y are on a 0-1000 grid over the screenshot (0,0 the top left, 1000,1000 the bottom right), "
             "whatever its size in pixels")
    return ("Answer with one JSON object and nothing else: {\"thought\": \"…\", \"actions\": [ … ]}. Each action "
            "has every field (" + ", ".join(_FIELDS) + "); set the fields it does not use to null. Actions: "
            "click / double_click / triple_click / right_click / move (x, y); type (text; x, y to click a field "
            "first, or null); key (keys pressed together, e.g. [\"ctrl\", \"a\"] or [\"enter\"]); scroll (dy "
            "notches down, negative up; dx right; x, y where, or null); drag (x, y to end_x, end_y); wait "
            "(seconds); done (text: the result, or the answer to the task's question); fail (text: why it cannot "
            f"be done). The actions run in order, then you get a new screenshot. {where}.")


# -- reading an answer ------------------------------------------------------------------------------------------
def decide(content: str, native: dict[str, Any], space: Space, pointer: a.Point | None, usage: Usage, dialect: str,
           what: str) -> Decision:
    try:
        answer = json.loads(content)
    except ValueError as exc:
        raise ModelOutputError(f"{what} answered with text that is not JSON ({exc}): {content[:200]!r}; answer "
                               "with one object {\"thought\": …, \"actions\": [...]}", native, usage) from None
    if not isinstance(answer, dict) or not isinstance(answer.get("actions"), list):
        raise ModelOutputError(f"{what} answered JSON without an actions list: {content[:200]!r}; answer with one "
                               "object {\"thought\": …, \"actions\": [...]}", native, usage)
    thought = answer.get("thought")
    text = (thought.strip() or None) if isinstance(thought, str) else None
    calls: list[Call] = []
    done, success, result = False, True, None
    for k, item in enumerate(answer["actions"]):
        call_id = f"act_{k}"
        name = str(item.get("action")) if isinstance(item, dict) else "?"
        if not isinstance(item, dict):
            calls.append(Call(call_id, (), item, "?", error="each action must be an object with an action field"))
            continue
        if name in ("done", "fail"):
            done, success = True, name == "done"
            result = item["text"] if isinstance(item.get("text"), str) else text
            calls.append(Call(call_id, (), item, name))
            continue
        try:
            acts = actions_of(item, space, pointer)
        except oa.ActionError as exc:
            calls.append(Call(call_id, (), item, name, error=str(exc)))
            continue
        for act in acts:
            if isinstance(act, a.Click | a.MoveMouse) and act.at is not None:
                pointer = act.at
            elif isinstance(act, a.Drag):
                pointer = act.path[-1]
        calls.append(Call(call_id, tuple(acts), item, name))
    if not calls:
        raise ModelOutputError(f"{what} answered with no action; act, or end with done (or fail)", native, usage)
    return Decision(tuple(calls), text, done, result if done else None, success, native=native, dialect=dialect,
                    usage=usage)


def _num(item: dict[str, Any], key: str, name: str) -> float | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise oa.ActionError(f"{name}: {key} must be a number or null, not {value!r}")
    return float(value)


def _at(item: dict[str, Any], space: Space, name: str, required: bool, keys: tuple[str, str] = ("x", "y")
        ) -> a.Point | None:
    x, y = _num(item, keys[0], name), _num(item, keys[1], name)
    if x is None or y is None:
        if required:
            raise oa.ActionError(f"{name}: {keys[0]} and {keys[1]} are required")
        return None
    return space.to_px(x, y)


def actions_of(item: dict[str, Any], space: Space, pointer: a.Point | None) -> list[a.Action]:
    name = item.get("action")
    try:
        match name:
            case "click" | "double_click" | "triple_click" | "right_click":
                at = _at(item, space, name, required=pointer is None) or pointer
                count = {"double_click": 2, "triple_click": 3}.get(name, 1)
                return [a.Click(at=at, button="right" if name == "right_click" else "left", count=count)]
            case "move":
                at = _at(item, space, name, required=True)
                assert at is not None
                return [a.MoveMouse(at=at)]
            case "type":
                if not isinstance(item.get("text"), str):
                    raise oa.ActionError("type: text must be a string")
                return [a.TypeText(text=item["text"], at=_at(item, space, name, required=False))]
            case "key":
                keys = item.get("keys")
                if not isinstance(keys, list) or not keys:
                    raise oa.ActionError("key: keys must list the keys pressed together, e.g. [\"ctrl\", \"a\"]")
                return [a.PressKeys(keys=chord(keys))]
            case "scroll":
                dx, dy = _num(item, "dx", name) or 0.0, _num(item, "dy", name) or 0.0
                if not dx and not dy:
                    raise oa.ActionError("scroll: dx or dy must say how far (wheel notches; dy > 0 is down)")
                return [a.Scroll(at=_at(item, space, name, required=False), dx=dx * SCROLL_NOTCH,
                                 dy=dy * SCROLL_NOTCH)]
            case "drag":
                start = _at(item, space, name, required=True)
                end = _at(item, space, name, required=True, keys=("end_x", "end_y"))
                assert start is not None and end is not None
                return [a.Drag(path=[start, end])]
            case "wait":
                seconds = _num(item, "seconds", name)
                seconds = DEFAULT_WAIT_S if seconds is None else seconds
                return [a.Wait(ms=int(max(0.0, min(a.MAX_WAIT_MS / 1000, seconds)) * 1000))]
    except UnknownKeyError as exc:
        raise oa.ActionError(f"{name}: {exc}") from None
    except ValueError as exc:
        raise oa.ActionError(f"{name}: {invalid(exc)}") from None
    raise oa.ActionError(f"unknown action {name!r}; allowed: {', '.join(ACTIONS)}")


# -- writing a turn anew ----------------------------------------------------------------------------------------
def _blank(action: str, **fields: Any) -> dict[str, Any]:
    return {**dict.fromkeys(_FIELDS), "action": action, **fields}


def item_for(action: a.Action, space: Space) -> dict[str, Any] | None:
    def xy(p: a.Point, prefix: str = "") -> dict[str, int]:
        x, y = space.from_px(p)
        return {f"{prefix}x": x, f"{prefix}y": y}

    match action:
        case a.Click(at=p, button=button, count=count) if p is not None and button in ("left", "right"):
            name = "right_click" if button == "right" else {2: "double_click", 3: "triple_click"}.get(count, "click")
            return _blank(name, **xy(p))
        case a.MoveMouse(at=p):
            return _blank("move", **xy(p))
        case a.TypeText(text=text, at=p):
            return _blank("type", text=text, **(xy(p) if p is not None else {}))
        case a.PressKeys(keys=keys):
            return _blank("key", keys=[k.lower() if len(k) > 1 else k for k in keys])
        case a.Scroll(at=p, dx=dx, dy=dy):
            return _blank("scroll", dx=round(dx / SCROLL_NOTCH, 2), dy=round(dy / SCROLL_NOTCH, 2),
                          **(xy(p) if p is not None else {}))
        case a.Drag(path=path) if len(path) >= 2:
            return _blank("drag", **xy(path[0]), **xy(path[-1], "end_"))
        case a.Wait(ms=ms):
            return _blank("wait", seconds=ms / 1000)
    return None


def written(decision: Decision, space: Space) -> str:
    """A turn another dialect made, as this dialect's answer."""
    items = [x for x in (item_for(act, space) for act in decision.actions) if x is not None]
    if decision.done:
        items.append(_blank("done" if decision.success else "fail", text=decision.result or ""))
    return json.dumps({"thought": decision.text or "", "actions": items})


__all__ = ["ACTIONS", "COORDINATES", "DEFAULT_COORDINATES", "actions_of", "decide", "guide", "item_for",
           "response_format", "schema", "space_for", "written"]
