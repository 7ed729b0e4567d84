"""Other benchmarks' action dialects, translated into the shared action schema (for opencone.gym and
the OpenEnv endpoint, routes/openenv.py).

- BrowserGym's high-level action strings (``click("e12")``, ``fill("e5", "blue")``, ``goto(url)``…,
  one call a line): parsed with ``ast`` (never evaluated). A BrowserGym ``bid`` is our ``ref``:
  the observation's snapshot is what the agent reads its ids from, so the ids it writes are refs.
- OSWorld's ``computer_13`` dicts (``{"action_type": "CLICK", "x": 10, "y": 20}``, or with a
  ``parameters`` dict; and the bare strings ``"WAIT"``, ``"DONE"``, ``"FAIL"``). Several of its
  actions act at the pointer's current place, which the adapter keeps (it starts mid-screen).

Each translation is a ``Translated``: actions for ``POST /computers/{id}/step``, and whether the
agent ended the episode (BrowserGym's ``report_infeasible``, OSWorld's ``DONE``/``FAIL``).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Action = dict[str, Any]
SCROLL_CLICK_PIXELS = 100  # one pyautogui scroll "click" (a wheel notch) in page pixels


@dataclass
class Translated:
    actions: list[Action] = field(default_factory=list)
    done: bool = False  # the agent ended the episode
    success: bool | None = None  # what it said of it (OSWorld DONE: True, FAIL: False)
    message: str | None = None  # BrowserGym send_msg_to_user / report_infeasible


class AdapterError(ValueError):
    """An action the dialect does not have, or cannot be done here; said to the agent as its error."""


# -- BrowserGym ----------------------------------------------------------------------------------
def _calls(code: str) -> list[tuple[str, list[Any], dict[str, Any]]]:
    try:
        tree = ast.parse(code.strip(), mode="exec")
    except SyntaxError as exc:
        raise AdapterError(f"not a BrowserGym action: {exc.msg} in {code[:200]!r}") from None
    calls = []
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
                and isinstance(stmt.value.func, ast.Name)):
            raise AdapterError(f"a BrowserGym action is one function call a line, such as click('e12'); "
                               f"got {ast.unparse(stmt)[:200]!r}")
        call = stmt.value
        try:
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg is not None}
        except ValueError:
            raise AdapterError(f"the arguments of {ast.unparse(call)[:200]!r} must be literals") from None
        calls.append((call.func.id, args, kwargs))
    return calls


def _bind(name: str, params: Sequence[str], defaults: dict[str, Any], args: list[Any],
          kwargs: dict[str, Any]) -> dict[str, Any]:
    if len(args) > len(params):
        raise AdapterError(f"{name}() takes {len(params)} arguments ({', '.join(params)}); got {len(args)}")
    bound = dict(defaults)
    bound.update(zip(params, args, strict=False))
    for k, v in kwargs.items():
        if k not in params:
            raise AdapterError(f"{name}() has no argument {k!r}; it takes {', '.join(params)}")
        bound[k] = v
    missing = [p for p in params if p not in bound]
    if missing:
        raise AdapterError(f"{name}() needs {', '.join(missing)}")
    return bound


def _keys(combo: str) -> str:
    return combo  # Playwright's "Control+a" is our chord syntax already


def _modified(mods: list[str], act: Action) -> list[Action]:
    return ([{"action": "key_down", "key": m} for m in mods] + [act]
            + [{"action": "key_up", "key": m} for m in reversed(mods)])


class BrowserGymAdapter:
    """BrowserGym's ``HighLevelActionSet`` (bid, coord, nav, tab, chat subsets) → shared actions."""

    # name -> (parameters, defaults)
    SIGNATURES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
        "noop": (("wait_ms",), {"wait_ms": 1000}),
        "send_msg_to_user": (("text",), {}),
        "report_infeasible": (("reason",), {}),
        "fill": (("bid", "value", "enable_autocomplete_menu"), {"enable_autocomplete_menu": False}),
        "check": (("bid",), {}), "uncheck": (("bid",), {}),
        "select_option": (("bid", "options"), {}),
        "click": (("bid", "button", "modifiers"), {"button": "left", "modifiers": []}),
        "dblclick": (("bid", "button", "modifiers"), {"button": "left", "modifiers": []}),
        "press": (("bid", "key_comb"), {}), "focus": (("bid",), {}), "clear": (("bid",), {}),
        "hover": (("bid",), {}),
        "drag_and_drop": (("from_bid", "to_bid"), {}),
        "scroll": (("delta_x", "delta_y"), {}),
        "mouse_move": (("x", "y"), {}),
        "mouse_down": (("x", "y", "button"), {"button": "left"}),
        "mouse_up": (("x", "y", "button"), {"button": "left"}),
        "mouse_click": (("x", "y", "button"), {"button": "left"}),
        "mouse_dblclick": (("x", "y", "button"), {"button": "left"}),
        "mouse_drag_and_drop": (("from_x", "from_y", "to_x", "to_y"), {}),
        "keyboard_press": (("key",), {}), "keyboard_down": (("key",), {}), "keyboard_up": (("key",), {}),
        "keyboard_type": (("text",), {}), "keyboard_insert_text": (("text",), {}),
        "goto": (("url",), {}), "go_back": ((), {}), "go_forward": ((), {}),
        "new_tab": ((), {}), "tab_close": ((), {}), "tab_focus": (("index",), {}),
    }

    def __init__(self, tabs: Callable[[], tuple[list[str], str | None]] = lambda: ([], None)) -> None:
        self._tabs = tabs  # (tab ids in order, the active one) of the env's last observation

    # BrowserGym has these, this adapter cannot do them: said as such, not as an unknown name
    UNSUPPORTED = {"upload_file": "upload_file() is not available through the gym adapter; put the file with "
                                  "PUT /computers/{id}/files/... and use POST /computers/{id}/upload-file"}

    def translate(self, code: str) -> Translated:
        out = Translated()
        for name, args, kwargs in _calls(code):
            if name in self.UNSUPPORTED:
                raise AdapterError(self.UNSUPPORTED[name])
            if name not in self.SIGNATURES:
                raise AdapterError(f"BrowserGym has no action {name}(); these are: {', '.join(self.SIGNATURES)}")
            params, defaults = self.SIGNATURES[name]
            b = _bind(name, params, defaults, args, kwargs)
            out.actions.extend(self._one(name, b, out))
            if out.done:
                break
        return out

    def _one(self, name: str, b: dict[str, Any], out: Translated) -> list[Action]:
        match name:
            case "noop":
                return [{"action": "wait", "ms": int(b["wait_ms"])}]
            case "send_msg_to_user":
                out.message = str(b["text"])
                return []
            case "report_infeasible":
                out.message, out.done, out.success = str(b["reason"]), True, False
                return []
            case "fill":
                return [{"action": "fill", "ref": str(b["bid"]), "text": str(b["value"])}]
            case "check" | "uncheck" | "focus":  # a click toggles, and focuses: what a user does
                return [{"action": "click", "ref": str(b["bid"])}]
            case "clear":
                return [{"action": "fill", "ref": str(b["bid"]), "text": ""}]
            case "select_option":
                options = b["options"] if isinstance(b["options"], list) else [b["options"]]
                return [{"action": "select_option", "ref": str(b["bid"]), "values": [str(o) for o in options]}]
            case "click" | "dblclick":
                act = {"action": "click", "ref": str(b["bid"]), "button": b["button"],
                       "count": 2 if name == "dblclick" else 1}
                return _modified(list(b["modifiers"]), act)
            case "press":
                return [{"action": "click", "ref": str(b["bid"])}, {"action": "key", "keys": _keys(b["key_comb"])}]
            case "hover":  # the pointer onto the element's centre
                return [{"action": "move", "ref": str(b["bid"])}]
            case "drag_and_drop":
                return [{"action": "drag", "ref": str(b["from_bid"]), "to_ref": str(b["to_bid"])}]
            case "scroll":
                return [{"action": "scroll", "dx": float(b["delta_x"]), "dy": float(b["delta_y"])}]
            case "mouse_move":
                return [{"action": "move", "x": b["x"], "y": b["y"]}]
            case "mouse_down" | "mouse_up":
                return [{"action": name, "x": b["x"], "y": b["y"], "button": b["button"]}]
            case "mouse_click" | "mouse_dblclick":
                return [{"action": "click", "x": b["x"], "y": b["y"], "button": b["button"],
                         "count": 2 if name == "mouse_dblclick" else 1}]
            case "mouse_drag_and_drop":
                return [{"action": "drag", "x": b["from_x"], "y": b["from_y"], "to_x": b["to_x"], "to_y": b["to_y"]}]
            case "keyboard_press":
                return [{"action": "key", "keys": _keys(b["key"])}]
            case "keyboard_down" | "keyboard_up":
                return [{"action": "key_down" if name == "keyboard_down" else "key_up", "key": b["key"]}]
            case "keyboard_type" | "keyboard_insert_text":
                return [{"action": "type", "text": str(b["text"])}]
            case "goto":
                return [{"action": "navigate", "url": str(b["url"])}]
            case "go_back" | "go_forward":
                return [{"action": "navigate", "direction": "back" if name == "go_back" else "forward"}]
            case "new_tab":
                return [{"action": "tabs", "op": "new"}]
        ids, active = self._tabs()
        if name == "tab_close":
            if active is None:
                raise AdapterError("tab_close(): no tab is known yet (no observation)")
            return [{"action": "tabs", "op": "close", "tab_id": active}]
        index = int(b["index"])  # tab_focus
        if not 0 <= index < len(ids):
            raise AdapterError(f"tab_focus({index}): there are {len(ids)} tabs (0..{len(ids) - 1})")
        return [{"action": "tabs", "op": "switch", "tab_id": ids[index]}]


# -- OSWorld computer_13 -------------------------------------------------------------------------
OSWORLD_ACTIONS = ("MOVE_TO", "CLICK", "MOUSE_DOWN", "MOUSE_UP", "RIGHT_CLICK", "DOUBLE_CLICK", "DRAG_TO",
                   "SCROLL", "TYPING", "PRESS", "KEY_DOWN", "KEY_UP", "HOTKEY", "WAIT", "FAIL", "DONE")


class OSWorldAdapter:
    """OSWorld's ``computer_13`` action space → shared actions, keeping the pointer's place."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.reset()

    def reset(self) -> None:
        self.x, self.y = self.width // 2, self.height // 2

    def translate(self, action: dict[str, Any] | str) -> Translated:
        if isinstance(action, str):
            action = {"action_type": action}
        kind = str(action.get("action_type", "")).upper()
        if kind not in OSWORLD_ACTIONS:
            raise AdapterError(f"OSWorld computer_13 has no action_type {kind!r}; these are: "
                               f"{', '.join(OSWORLD_ACTIONS)}")
        p = dict(action.get("parameters") or {k: v for k, v in action.items() if k != "action_type"})
        match kind:
            case "WAIT":
                return Translated([{"action": "wait", "ms": int(float(p.get("seconds", 1)) * 1000)}])
            case "DONE" | "FAIL":
                return Translated(done=True, success=kind == "DONE")
            case "TYPING":
                return Translated([{"action": "type", "text": str(self._need(kind, p, "text"))}])
            case "PRESS":
                return Translated([{"action": "key", "keys": [str(self._need(kind, p, "key"))]}])
            case "KEY_DOWN" | "KEY_UP":
                return Translated([{"action": kind.lower(), "key": str(self._need(kind, p, "key"))}])
            case "HOTKEY":
                keys = self._need(kind, p, "keys")
                return Translated([{"action": "key", "keys": [str(k) for k in keys]}])
            case "SCROLL":  # pyautogui: positive is up (or left: hscroll's negative is left)
                dx, dy = float(p.get("dx", 0)), float(p.get("dy", 0))
                return Translated([{"action": "scroll", "x": self.x, "y": self.y,
                                    "dx": dx * SCROLL_CLICK_PIXELS, "dy": -dy * SCROLL_CLICK_PIXELS}])
        if kind == "DRAG_TO":
            to = self._point(kind, p, required=True)
            start = (self.x, self.y)
            self.x, self.y = to
            return Translated([{"action": "drag", "x": start[0], "y": start[1], "to_x": to[0], "to_y": to[1]}])
        at = self._point(kind, p, required=kind == "MOVE_TO")
        self.x, self.y = at
        button = str(p.get("button", "left"))
        match kind:
            case "MOVE_TO":
                return Translated([{"action": "move", "x": at[0], "y": at[1]}])
            case "MOUSE_DOWN" | "MOUSE_UP":
                return Translated([{"action": kind.lower(), "x": at[0], "y": at[1], "button": button}])
            case "RIGHT_CLICK":
                return Translated([{"action": "click", "x": at[0], "y": at[1], "button": "right"}])
            case "DOUBLE_CLICK":
                return Translated([{"action": "click", "x": at[0], "y": at[1], "count": 2}])
        clicks = int(p.get("num_clicks", 1))  # CLICK
        if clicks not in (1, 2, 3):
            raise AdapterError(f"CLICK num_clicks must be 1, 2 or 3; got {clicks}")
        return Translated([{"action": "click", "x": at[0], "y": at[1], "button": button, "count": clicks}])

    @staticmethod
    def _need(kind: str, p: dict[str, Any], name: str) -> Any:
        if name not in p:
            raise AdapterError(f"{kind} needs the parameter {name!r}")
        return p[name]

    def _point(self, kind: str, p: dict[str, Any], required: bool) -> tuple[float, float]:
        if "x" in p and "y" in p:
            x, y = float(p["x"]), float(p["y"])
            if not (0 <= x < self.width and 0 <= y < self.height):
                raise AdapterError(f"{kind} at ({x:g}, {y:g}) is outside the {self.width}x{self.height} screen")
            return x, y
        if required or "x" in p or "y" in p:
            raise AdapterError(f"{kind} needs both x and y")
        return self.x, self.y
