"""OpenAI computer-use actions ⇄ canonical actions (spec §b.3, §c.3).

Used by the Responses adapter (pixels), the Lightcone adapter (a 0–999 grid, and
Northstar's extra actions: ``triple_click``, ``right_click``, ``key``,
``hscroll``, ``navigate``, ``drag{x,y,end_x,end_y}``) and by the gateway, which
renders a ``Decision`` as ``computer_call`` output items (``to_openai``).
A coordinate mapping is passed in, so one table serves every coordinate space.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from opencone.agent.adapters.keys import UnknownKeyError, chord
from opencone.core import actions as a

ToPixels = Callable[[float, float], a.Point]  # a model's (x, y) → a point in screenshot pixels
FromPixels = Callable[[a.Point], tuple[int, int]]

DEFAULT_WAIT_MS = 1000  # OpenAI's wait{} has no duration; the samples sleep 1–2 s
SCROLL_NOTCH = 100  # pixels per notch (Northstar's scroll amounts count notches)
_BUTTONS = {"left": "left", "right": "right", "wheel": "middle", "middle": "middle", "back": "back",
            "forward": "forward"}


class ActionError(ValueError):
    """A model's action that names no canonical action (unknown type, missing or bad field)."""


def _num(act: dict[str, Any], name: str) -> float:
    value = act.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ActionError(f"{act.get('type')}: {name} must be a number, got {value!r}")
    return float(value)


def _point(act: dict[str, Any], to_px: ToPixels, xk: str = "x", yk: str = "y") -> a.Point:
    return to_px(_num(act, xk), _num(act, yk))


def _held(act: dict[str, Any], body: list[a.Action]) -> list[a.Action]:
    """Actions with modifier keys held (``keys`` on click/scroll/move/drag: GA and Lightcone)."""
    keys = act.get("keys")
    if act.get("type") in ("keypress", "key", "hotkey", "key_down", "key_up") or not keys:
        return body
    names = chord(keys)
    return [*(a.KeyDown(key=k) for k in names), *body, *(a.KeyUp(key=k) for k in reversed(names))]


def from_openai(act: Any, to_px: ToPixels) -> list[a.Action]:
    """Canonical actions for one OpenAI (or Lightcone/Northstar) computer action. ``screenshot``
    (and ``cursor_position``) need no action: the loop sends a screenshot after every turn."""
    if not isinstance(act, dict) or not isinstance(act.get("type"), str):
        raise ActionError(f"an action must be an object with a type, got {str(act)[:200]!r}")
    try:
        return _held(act, _translate(act, to_px))
    except UnknownKeyError as exc:
        raise ActionError(str(exc)) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ActionError(f"{act['type']}: {str(err['msg']).removeprefix('Value error, ')}") from None


def _translate(act: dict[str, Any], to_px: ToPixels) -> list[a.Action]:
    t = act["type"]
    match t:
        case "click":
            raw = str(act.get("button") or "left").lower()
            if raw not in _BUTTONS:
                raise ActionError(f"click: button {raw!r} is not one of {', '.join(_BUTTONS)}")
            return [a.Click(at=_point(act, to_px), button=_BUTTONS[raw])]  # type: ignore[arg-type]
        case "double_click" | "left_double":
            return [a.Click(at=_point(act, to_px), count=2)]
        case "triple_click":
            return [a.Click(at=_point(act, to_px), count=3)]
        case "right_click":
            return [a.Click(at=_point(act, to_px), button="right")]
        case "middle_click":
            return [a.Click(at=_point(act, to_px), button="middle")]
        case "move" | "mouse_move":
            return [a.MoveMouse(at=_point(act, to_px))]
        case "mouse_down" | "mouse_up":
            at = _point(act, to_px) if "x" in act and "y" in act else None
            cls = a.MouseDown if t == "mouse_down" else a.MouseUp
            return [cls(at=at)]
        case "drag":
            path = act.get("path")
            if isinstance(path, list) and path:
                points = [_point(p, to_px) if isinstance(p, dict) else _bad(t, "path") for p in path]
            elif "end_x" in act:
                points = [_point(act, to_px), _point(act, to_px, "end_x", "end_y")]
            else:
                raise ActionError("drag: path (a list of {x, y}) is required")
            if len(points) < 2:
                raise ActionError("drag: path needs at least two points")
            return [a.Drag(path=points)]
        case "type":
            text = act.get("text")
            if not isinstance(text, str):
                raise ActionError("type: text must be a string")
            return [a.TypeText(text=text)]
        case "point_and_type":
            text = act.get("text")
            if not isinstance(text, str):
                raise ActionError("point_and_type: text must be a string")
            return [a.TypeText(text=text, at=_point(act, to_px))]
        case "keypress" | "key" | "hotkey":
            keys = act.get("keys") if act.get("keys") is not None else act.get("key", act.get("text"))
            if not keys or not isinstance(keys, list | str):
                raise ActionError(f"{t}: keys (a list of key names) is required")
            return [a.PressKeys(keys=chord(keys))]
        case "key_down" | "key_up":
            keys = act.get("keys") if act.get("keys") is not None else act.get("key")
            if not keys or not isinstance(keys, list | str):
                raise ActionError(f"{t}: keys is required")
            names = chord(keys)
            if t == "key_down":
                return [a.KeyDown(key=k) for k in names]
            return [a.KeyUp(key=k) for k in reversed(names)]
        case "scroll" | "hscroll":
            at = _point(act, to_px) if "x" in act and "y" in act else None
            dx = float(act.get("scroll_x") or 0)
            dy = float(act.get("scroll_y") or 0)
            if t == "hscroll" and not dx and dy:
                dx, dy = dy, 0.0
            return [a.Scroll(at=at, dx=dx, dy=dy)]
        case "wait":
            ms = act.get("ms")
            if ms is None and isinstance(act.get("seconds", act.get("duration")), int | float):
                ms = float(act.get("seconds", act.get("duration"))) * 1000
            ms = DEFAULT_WAIT_MS if not isinstance(ms, int | float) else int(ms)
            return [a.Wait(ms=max(0, min(a.MAX_WAIT_MS, ms)))]
        case "navigate" | "go_to_url":
            url = act.get("url")
            if not isinstance(url, str):
                raise ActionError(f"{t}: url must be a string")
            return [a.Navigate(url=url)]
        case "screenshot" | "cursor_position":
            return []
    raise ActionError(f"{t!r} is not a computer action")


def _bad(t: str, name: str) -> a.Point:
    raise ActionError(f"{t}: {name} must hold objects with x and y")


def to_openai(action: a.Action, from_px: FromPixels) -> dict[str, Any] | None:
    """One canonical action as an OpenAI computer action (ints, as the SDK's models require);
    None for one the vocabulary has no word for (navigate, tabs, commands)."""
    match action:
        case a.Click(at=p, button=button, count=count):
            x, y = from_px(p)
            if count == 2 and button == "left":
                return {"type": "double_click", "x": x, "y": y}
            if count == 3:
                return {"type": "triple_click", "x": x, "y": y}
            return {"type": "click", "button": "wheel" if button == "middle" else button, "x": x, "y": y}
        case a.MoveMouse(at=p):
            x, y = from_px(p)
            return {"type": "move", "x": x, "y": y}
        case a.MouseDown(at=p) | a.MouseUp(at=p):
            out: dict[str, Any] = {"type": action.kind}
            if p is not None:
                out["x"], out["y"] = from_px(p)
            return out
        case a.Drag(path=path):
            return {"type": "drag", "path": [dict(zip(("x", "y"), from_px(p), strict=True)) for p in path]}
        case a.TypeText(text=text, at=p):
            if p is not None:
                x, y = from_px(p)
                return {"type": "point_and_type", "x": x, "y": y, "text": text}
            return {"type": "type", "text": text}
        case a.PressKeys(keys=keys):
            return {"type": "keypress", "keys": list(keys)}
        case a.KeyDown(key=key) | a.KeyUp(key=key):
            return {"type": action.kind, "keys": [key]}
        case a.Scroll(at=p, dx=dx, dy=dy):
            x, y = from_px(p) if p is not None else (0, 0)
            return {"type": "scroll", "x": x, "y": y, "scroll_x": round(dx), "scroll_y": round(dy)}
        case a.Wait():
            return {"type": "wait"}
        case a.Screenshot():
            return {"type": "screenshot"}
    return None


def pixels(display: tuple[int, int]) -> tuple[ToPixels, FromPixels]:
    """The identity mapping (OpenAI: coordinates are screenshot pixels), clamped to the screen."""
    from opencone.agent.adapters.base import clamp_point

    def to_px(x: float, y: float) -> a.Point:
        return clamp_point(x, y, display)

    def from_px(p: a.Point) -> tuple[int, int]:
        return round(p.x), round(p.y)

    return to_px, from_px


def grid(display: tuple[int, int], size: int = 1000, top: int = 999) -> tuple[ToPixels, FromPixels]:
    """A normalised grid (Northstar: 0–999, ``v / 1000 * dim``), clamped to the screen."""
    from opencone.agent.adapters.base import clamp_point, from_grid, to_grid

    w, h = display

    def to_px(x: float, y: float) -> a.Point:
        return clamp_point(from_grid(x, w, size), from_grid(y, h, size), display)

    def from_px(p: a.Point) -> tuple[int, int]:
        return to_grid(p.x, w, size, top), to_grid(p.y, h, size, top)

    return to_px, from_px
