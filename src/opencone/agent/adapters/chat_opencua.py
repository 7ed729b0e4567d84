"""OpenCUA's dialect (OpenCUA-7B/32B served by vLLM): pyautogui code in a Python block.

What the models write and how their own agent talks to them, as read (not guessed) in
xlang-ai/OpenCUA (README: OpenCUA-7B/32B run in OSWorld with ``--coordinate_type qwen25``,
3 images, the "L2" format) and in OSWorld's ``mm_agents/opencua_agent.py`` and
``mm_agents/opencua/prompts.py`` (both read through the search tool, December 2026):

* The answer has optional sections ``# Step N:``, ``## Thought:``, ``## Action:`` (a short
  instruction in words) and ``## Code:``; the *last* fenced block (```` ```python ````, or
  ```` ```code ```` for the ``computer.*`` functions) holds the code, one call per line:
  ``pyautogui.click/doubleClick/rightClick/tripleClick/moveTo/dragTo/scroll/hscroll/
  write/typewrite/press/hotkey`` and the functions the system prompt declares beside them,
  ``computer.triple_click(x, y)``, ``computer.wait()`` and
  ``computer.terminate(status='success'|'failure')`` (we also read its ``answer=``).
* Coordinates ("qwen25", the 7B/32B models): pixels of the screenshot as the Qwen2.5-VL
  processor resized it, ``smart_resize(factor=28, min_pixels=3136, max_pixels=12845056)``,
  mapped back as ``x / resized_w * screen_w``; values within [0, 1] are taken as fractions
  of the screen (what the agent's projection does too).
* ``pyautogui.scroll(n)`` counts wheel clicks, positive up (the agent multiplies by 50 on
  Windows only: on Linux a click is one notch); ``hscroll(n)``: positive right.
* The agent's request: the system prompt, then per past step the screenshot (the newest
  ones) and an assistant message ``# Step N:`` with its Thought and Action (no code); the
  newest user message holds the current screenshot, then the task instruction with a line
  asking for the next move.

Parsing uses ``ast`` (never ``eval``): one canonical call per code line, several per turn; a
line that is no known call, or whose arguments are no literals, becomes a call with an
``error`` that the next request tells the model about.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from pydantic import ValidationError

from opencone.agent.adapters import openai_actions as oa
from opencone.agent.adapters.base import Call, Decision, ModelOutputError, Usage
from opencone.agent.adapters.keys import UnknownKeyError, chord
from opencone.agent.adapters.spaces import SCROLL_NOTCH, Space
from opencone.core import actions as a

# OpenCUA's smart_resize bounds (its agent's "qwen25" projection); only min_pixels differs from
# Qwen's default, and only for screens under 280x280
MIN_PIXELS = 3136
WAIT_MS = 2000  # computer.wait() takes no time; 2 s is our choice (a page load, a redraw)
MAX_PRESSES = 100

_BLOCK = re.compile(r"```[ \t]*(?:python|py|code)?[ \t]*\n?(.*?)```", re.S | re.I)
_HEADING = re.compile(r"^[ \t]*#{1,3}[ \t]*(step\b[^\n]*|observation|thought|action|code)[ \t]*:?[ \t]*", re.M | re.I)
_LINE = re.compile(r"^[ \t]*((?:pyautogui|computer)\.\w+\(.*\))[ \t]*$", re.M)

# pyautogui's positional parameters (its own signatures); keywords outside these are refused
_PARAMS: dict[str, tuple[str, ...]] = {
    "click": ("x", "y", "clicks", "interval", "button", "duration", "tween"),
    "leftClick": ("x", "y", "interval", "duration", "tween"),
    "rightClick": ("x", "y", "interval", "duration", "tween"),
    "middleClick": ("x", "y", "interval", "duration", "tween"),
    "doubleClick": ("x", "y", "interval", "button", "duration", "tween"),
    "tripleClick": ("x", "y", "interval", "button", "duration", "tween"),
    "moveTo": ("x", "y", "duration", "tween"),
    "dragTo": ("x", "y", "duration", "tween", "button", "mouseDownUp"),
    "mouseDown": ("x", "y", "button", "duration", "tween"),
    "mouseUp": ("x", "y", "button", "duration", "tween"),
    "scroll": ("clicks", "x", "y"),
    "vscroll": ("clicks", "x", "y"),
    "hscroll": ("clicks", "x", "y"),
    "write": ("message", "interval"),
    "typewrite": ("message", "interval"),
    "press": ("keys", "presses", "interval"),
    "keyDown": ("key",),
    "keyUp": ("key",),
    "triple_click": ("x", "y"),
    "wait": ("seconds",),
    "terminate": ("status", "answer"),
    "sleep": ("seconds",),
}
PYAUTOGUI = ("click", "leftClick", "rightClick", "middleClick", "doubleClick", "tripleClick", "moveTo", "dragTo",
             "mouseDown", "mouseUp", "scroll", "vscroll", "hscroll", "write", "typewrite", "press", "hotkey",
             "keyDown", "keyUp")
COMPUTER = ("triple_click", "wait", "terminate")
ALLOWED = ", ".join([*(f"pyautogui.{n}" for n in PYAUTOGUI), *(f"computer.{n}" for n in COMPUTER)])


# -- the prompt ---------------------------------------------------------------------------------------------------
def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> str:
    return json.dumps({"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}})


def system_prompt(instructions: str) -> str:
    """OpenCUA's system prompt, in our words: the agent's role, the L2 answer format, and the
    functions it may call beside pyautogui (as JSON signatures, the way OpenCUA lists them);
    then the harness's own instructions."""
    point = {"x": {"type": "number", "description": "x of the point"},
             "y": {"type": "number", "description": "y of the point"}}
    functions = "\n".join("- " + f for f in (
        _function("computer.triple_click", "Click three times at a point of the screen", point, ["x", "y"]),
        _function("computer.wait", "Wait a moment for the screen to change", {}, []),
        _function("computer.terminate", "End the task and report whether it succeeded", {
            "status": {"type": "string", "enum": ["success", "failure"], "description": "how the task ended"},
            "answer": {"type": "string", "description": "the result, or the answer to the task's question"}},
            ["status"]),
    ))
    return (
        "You are a GUI agent. You get a task and a screenshot of the screen, and you complete the task with "
        "pyautogui actions, one step at a time.\n\n"
        "Answer each step in this form:\n\n"
        "# Step <n>:\n## Thought:\nWhat the screen shows, how far the task has got, whether the last action "
        "worked, and which action comes next and why.\n\n"
        "## Action:\nThe next action in one clear sentence, naming its target (not its coordinates).\n\n"
        "## Code:\n```python\n<the action as pyautogui code, one call per line>\n```\n\n"
        "Coordinates are pixels of the screenshot as you see it. Besides pyautogui you may call these "
        "functions:\n" + functions + "\n"
        "When the task is done, call computer.terminate(status='success', answer='<the result>'); if it "
        "cannot be done, computer.terminate(status='failure', answer='<why>').\n\n" + instructions)


def task_text(texts: list[str]) -> str:
    """The newest user message's text: the task (and what the user added since), then the request
    for the next step."""
    return ("# Task Instruction:\n" + "\n\n".join(texts) + "\n\nLook at the screenshot, the task and the steps "
            "so far (if any), and give the next step.")


def sections(content: str) -> dict[str, str]:
    """``## Thought:`` / ``## Action:`` / ``## Observation:`` / ``## Code:`` texts (lower-case names)."""
    found: dict[str, str] = {}
    marks = list(_HEADING.finditer(content))
    for n, mark in enumerate(marks):
        name = mark.group(1).lower()
        if name.startswith("step"):
            continue
        end = marks[n + 1].start() if n + 1 < len(marks) else len(content)
        found[name] = content[mark.end():end].strip()
    return found


def history(content: str | None, step: int, text: str | None, code: str) -> str:
    """A past step as OpenCUA's agent replays it: its Thought and Action, without the code (or the
    code, when the model wrote no Action)."""
    parts = sections(content or "")
    thought = parts.get("thought") or text or ""
    action = _BLOCK.sub("", parts.get("action", "")).strip() or code
    out = f"# Step {step}:\n"
    if thought:
        out += f"## Thought:\n{thought}\n\n"
    return out + f"## Action:\n{action}\n"


# -- reading an answer ------------------------------------------------------------------------------------------
def code_of(content: str) -> str | None:
    """The code of an answer: its last fenced block, else its lines that are pyautogui/computer calls."""
    blocks = _BLOCK.findall(content)
    if blocks:
        return str(blocks[-1]).strip()
    lines = _LINE.findall(content)
    return "\n".join(lines) if lines else None


def decide(content: str, native: dict[str, Any], space: Space, pointer: a.Point | None, usage: Usage,
           dialect: str, what: str) -> Decision:
    parts = sections(content)
    text = parts.get("thought") or parts.get("action") or _HEADING.sub("", _BLOCK.sub("", content)).strip() or None
    code = code_of(content)
    if code is None:
        raise ModelOutputError(f"{what} answered without code: {content[:300]!r}; answer with '## Action:' and a "
                               "```python block of pyautogui calls, and end with computer.terminate(status=…)",
                               native, usage)
    calls: list[Call] = []
    done, success, result = False, True, None
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:  # (null bytes, absurd nesting)
        where = (exc.msg + (f", line {exc.lineno}" if exc.lineno else "")) if isinstance(exc, SyntaxError) \
            else type(exc).__name__
        return Decision((Call("act_0", (), code, "code", error=f"the code is not Python ({where}); write one "
                                                                 "pyautogui call per line"),),
                        text, native=native, dialect=dialect, usage=usage)
    for k, stmt in enumerate(tree.body):
        call_id, source = f"act_{k}", ast.get_source_segment(code, stmt) or ""
        if isinstance(stmt, ast.Import | ast.ImportFrom) or (
                isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
            continue  # `import pyautogui`, a docstring: nothing to do
        try:
            name, args, kwargs = _call(stmt, source)
        except oa.ActionError as exc:
            calls.append(Call(call_id, (), source, "code", error=str(exc)))
            continue
        short = name.rpartition(".")[2]
        if name == "computer.terminate":
            try:
                bound = _bind(short, args, kwargs)
            except oa.ActionError as exc:
                calls.append(Call(call_id, (), source, short, error=str(exc)))
                continue
            status = str(bound.get("status", "success")).lower()
            done, success = True, status not in ("failure", "fail", "failed")
            answer = bound.get("answer")
            result = str(answer) if answer is not None else (parts.get("action") or text)
            calls.append(Call(call_id, (), source, "terminate"))
            continue
        try:
            acts = actions_of(name, args, kwargs, space, pointer)
        except oa.ActionError as exc:
            calls.append(Call(call_id, (), source, short, error=str(exc)))
            continue
        for act in acts:
            pointer = _point_of(act) or pointer
        calls.append(Call(call_id, tuple(acts), source, short))
    if not calls and not done:
        raise ModelOutputError(f"{what} wrote code with no call in it: {code[:300]!r}; write pyautogui calls, and "
                               "end with computer.terminate(status=…)", native, usage)
    return Decision(tuple(calls), text, done, result if done else None, success, native=native, dialect=dialect,
                    usage=usage)


def _call(stmt: ast.stmt, source: str) -> tuple[str, list[Any], dict[str, Any]]:
    """A statement as (``pyautogui.click``, positional values, keyword values); literals only."""
    if not isinstance(stmt, ast.Expr) or not isinstance(stmt.value, ast.Call):
        raise oa.ActionError(f"only calls of pyautogui and computer functions can run (one per line), not "
                             f"{source[:80]!r}")
    call = stmt.value
    func = call.func
    if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)):
        raise oa.ActionError(f"unknown call {source.partition('(')[0][:60]!r}; allowed: {ALLOWED}")
    name = f"{func.value.id}.{func.attr}"
    known = (func.value.id == "pyautogui" and func.attr in PYAUTOGUI) or \
        (func.value.id == "computer" and func.attr in COMPUTER) or name == "time.sleep"
    if not known:
        raise oa.ActionError(f"unknown call {name}(); allowed: {ALLOWED}")
    try:
        args = [ast.literal_eval(v) for v in call.args]
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg is not None}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise oa.ActionError(f"{name}: arguments must be literal values (numbers, strings, lists)") from None
    if any(kw.arg is None for kw in call.keywords) or any(isinstance(v, ast.Starred) for v in call.args):
        raise oa.ActionError(f"{name}: arguments must be written out, not unpacked")
    return name, args, kwargs


def _bind(name: str, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Arguments by parameter name, as pyautogui would take them (a TypeError there is an error here)."""
    params = _PARAMS[name]
    if len(args) > len(params):
        raise oa.ActionError(f"{name}() takes at most {len(params)} positional arguments ({', '.join(params)})")
    bound = dict(zip(params, args, strict=False))
    for key, value in kwargs.items():
        if key not in params:
            raise oa.ActionError(f"{name}() got an unexpected keyword argument {key!r}; it takes {', '.join(params)}")
        if key in bound:
            raise oa.ActionError(f"{name}() got multiple values for {key!r}")
        bound[key] = value
    return bound


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise oa.ActionError(f"{what} must be a number, not {value!r}")
    return float(value)


def _point(bound: dict[str, Any], space: Space, name: str, pointer: a.Point | None, required: bool = True
           ) -> a.Point | None:
    x, y = bound.get("x"), bound.get("y")
    if isinstance(x, list | tuple) and y is None and len(x) == 2:  # pyautogui.click((x, y))
        x, y = x
    if x is None and y is None:
        if required and pointer is None:
            raise oa.ActionError(f"{name}: x and y are required (the pointer has not been placed yet)")
        return pointer
    if x is None or y is None:
        raise oa.ActionError(f"{name}: give both x and y")
    fx, fy = _number(x, f"{name}: x"), _number(y, f"{name}: y")
    if 0 <= fx <= 1 and 0 <= fy <= 1 and (isinstance(x, float) or isinstance(y, float)):
        return space.to_px(fx * space.size[0], fy * space.size[1])  # fractions, as OpenCUA's projection reads them
    return space.to_px(fx, fy)


def _button(bound: dict[str, Any], name: str, default: str = "left") -> str:
    button = str(bound.get("button", default)).lower()
    button = {"primary": "left", "secondary": "right"}.get(button, button)
    if button not in ("left", "right", "middle"):
        raise oa.ActionError(f"{name}: button must be 'left', 'right' or 'middle', not {bound.get('button')!r}")
    return button


def _keys(value: Any, name: str) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not names or not all(isinstance(k, str) and k for k in names):
        raise oa.ActionError(f"{name}: keys must be a key name or a list of them, e.g. 'enter' or ['ctrl', 'c']")
    return [_PYAUTOGUI_KEYS.get(k.lower(), k) if len(k) > 1 else k for k in names]


def _typed(text: str) -> list[a.Action]:
    """``write`` types a newline as Enter (pyautogui presses it)."""
    out: list[a.Action] = []
    for n, line in enumerate(text.split("\n")):
        if n:
            out.append(a.PressKeys(keys=["Enter"]))
        if line:
            out.append(a.TypeText(text=line))
    return out


def actions_of(name: str, args: list[Any], kwargs: dict[str, Any], space: Space,
               pointer: a.Point | None) -> list[a.Action]:
    """One pyautogui/computer call as canonical actions in screen pixels; ``ActionError`` if it
    cannot run."""
    short = name.rpartition(".")[2]
    try:
        if short == "hotkey":
            keys = list(args)
            if "keys" in kwargs:
                keys = kwargs["keys"] if isinstance(kwargs["keys"], list) else [kwargs["keys"]]
            extra = set(kwargs) - {"keys", "interval"}
            if extra:
                raise oa.ActionError(f"hotkey() got an unexpected keyword argument {sorted(extra)[0]!r}")
            if len(keys) == 1 and isinstance(keys[0], list | tuple):
                keys = list(keys[0])
            return [a.PressKeys(keys=chord(_keys(keys, "hotkey")))]
        bound = _bind(short, args, kwargs)
        match short:
            case "click" | "leftClick" | "rightClick" | "middleClick" | "doubleClick" | "tripleClick" | "triple_click":
                count = {"doubleClick": 2, "tripleClick": 3, "triple_click": 3}.get(short, 1)
                if short == "click":
                    clicks = bound.get("clicks", 1)
                    if isinstance(clicks, bool) or not isinstance(clicks, int) or not 1 <= clicks <= 3:
                        raise oa.ActionError("click: clicks must be 1, 2 or 3")
                    count = clicks
                default = {"rightClick": "right", "middleClick": "middle"}.get(short, "left")
                button = default if short in ("rightClick", "middleClick", "leftClick") else _button(bound, short)
                return [a.Click(at=_point(bound, space, short, pointer), button=button, count=count)]  # type: ignore[arg-type]
            case "moveTo":
                at = _point(bound, space, short, None)
                assert at is not None
                return [a.MoveMouse(at=at)]
            case "dragTo":
                end = _point(bound, space, short, None)
                if pointer is None:
                    raise oa.ActionError("dragTo: the pointer has not been placed yet (pyautogui.moveTo first)")
                assert end is not None
                return [a.Drag(path=[pointer, end], button=_button(bound, short))]  # type: ignore[arg-type]
            case "mouseDown" | "mouseUp":
                at = _point(bound, space, short, pointer, required=False)
                kind = a.MouseDown if short == "mouseDown" else a.MouseUp
                return [kind(at=at, button=_button(bound, short))]  # type: ignore[arg-type]
            case "scroll" | "vscroll" | "hscroll":
                if "clicks" not in bound:
                    raise oa.ActionError(f"{short}: how far? e.g. pyautogui.{short}(-5)")
                clicks = _number(bound["clicks"], f"{short}: clicks")
                at = _point(bound, space, short, None, required=False)
                if short == "hscroll":  # positive: right
                    return [a.Scroll(at=at, dx=clicks * SCROLL_NOTCH)]
                return [a.Scroll(at=at, dy=-clicks * SCROLL_NOTCH)]  # positive: up
            case "write" | "typewrite":
                message = bound.get("message")
                if short == "typewrite" and isinstance(message, list):  # typewrite(['a', 'enter'])
                    return [a.PressKeys(keys=chord([k])) for k in _keys(message, short)]
                if not isinstance(message, str):
                    raise oa.ActionError(f"{short}: message must be a string, e.g. {short}(message='hello')")
                return _typed(message)
            case "press":
                presses = bound.get("presses", 1)
                if isinstance(presses, bool) or not isinstance(presses, int) or not 1 <= presses <= MAX_PRESSES:
                    raise oa.ActionError(f"press: presses must be a whole number from 1 to {MAX_PRESSES}")
                keys = _keys(bound.get("keys"), "press")  # a list: one after the other, not together
                return [a.PressKeys(keys=chord([k])) for _ in range(presses) for k in keys]
            case "keyDown" | "keyUp":
                key = chord(_keys(bound.get("key"), short))
                return [a.KeyDown(key=k) for k in key] if short == "keyDown" else [a.KeyUp(key=k) for k in key]
            case "wait" | "sleep":
                seconds = bound.get("seconds")
                ms = WAIT_MS if seconds is None else int(_number(seconds, f"{short}: seconds") * 1000)
                return [a.Wait(ms=max(0, min(a.MAX_WAIT_MS, ms)))]
    except UnknownKeyError as exc:
        raise oa.ActionError(f"{short}: {exc}") from None
    except ValueError as exc:  # a canonical action's own check (a scroll too far…)
        raise oa.ActionError(f"{short}: {invalid(exc)}") from None
    raise oa.ActionError(f"unknown call {name}(); allowed: {ALLOWED}")


# pyautogui key names core/keys.py does not know
_PYAUTOGUI_KEYS = {f"{m}{side}": m for m in ("ctrl", "shift", "alt", "win", "option", "command")
                   for side in ("left", "right")}
_PYAUTOGUI_KEYS |= {"winleft": "win", "pgdn": "pagedown", "pgup": "pageup", "prntscrn": "printscreen",
                    "prtscr": "printscreen", "printscrn": "printscreen"}


def invalid(exc: ValueError) -> str:
    """What a canonical action's validation said, in a line a model reads."""
    if isinstance(exc, ValidationError):
        return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
    return str(exc).splitlines()[-1]


# -- writing a turn anew ----------------------------------------------------------------------------------------
_KEY_NAMES = {"Control": "ctrl", "Meta": "win", "Alt": "alt", "Shift": "shift", "Enter": "enter", "Escape": "esc",
              "Backspace": "backspace", "ArrowUp": "up", "ArrowDown": "down", "ArrowLeft": "left",
              "ArrowRight": "right", "PageUp": "pageup", "PageDown": "pagedown", "Space": "space",
              "CapsLock": "capslock", "PrintScreen": "printscreen", "ContextMenu": "apps"}


def key_name(key: str) -> str:
    return _KEY_NAMES.get(key, key.lower() if len(key) > 1 else key)


def code_for(action: a.Action, space: Space) -> list[str]:
    """A canonical action as pyautogui lines (none for what it cannot say)."""
    def xy(p: a.Point) -> str:
        x, y = space.from_px(p)
        return f"x={x}, y={y}"

    match action:
        case a.Click(at=p, button=button, count=count) if p is not None:
            if count == 3:
                return [f"computer.triple_click({xy(p)})"]
            name = {"right": "rightClick", "middle": "middleClick"}.get(button) or \
                ("doubleClick" if count == 2 else "click")
            return [f"pyautogui.{name}({xy(p)})"]
        case a.MoveMouse(at=p):
            return [f"pyautogui.moveTo({xy(p)})"]
        case a.Drag(path=path) if len(path) >= 2:
            return [f"pyautogui.moveTo({xy(path[0])})", *(f"pyautogui.dragTo({xy(p)})" for p in path[1:])]
        case a.TypeText(text=text, at=p):
            return ([f"pyautogui.click({xy(p)})"] if p is not None else []) + [f"pyautogui.write(message={text!r})"]
        case a.PressKeys(keys=keys):
            if len(keys) == 1:
                return [f"pyautogui.press({key_name(keys[0])!r})"]
            return [f"pyautogui.hotkey({', '.join(repr(key_name(k)) for k in keys)})"]
        case a.KeyDown(key=key):
            return [f"pyautogui.keyDown({key_name(key)!r})"]
        case a.KeyUp(key=key):
            return [f"pyautogui.keyUp({key_name(key)!r})"]
        case a.Scroll(at=p, dx=dx, dy=dy):
            where = f", {xy(p)}" if p is not None else ""
            if abs(dy) >= abs(dx):
                return [f"pyautogui.scroll({-round(dy / SCROLL_NOTCH)}{where})"]
            return [f"pyautogui.hscroll({round(dx / SCROLL_NOTCH)}{where})"]
        case a.Wait():
            return ["computer.wait()"]
    return []


def written(decision: Decision, space: Space, step: int) -> tuple[str, str]:
    """(the whole answer, its code) for a turn another dialect made, as OpenCUA would have written it."""
    lines = [line for act in decision.actions for line in code_for(act, space)]
    if decision.done:
        status = "success" if decision.success else "failure"
        lines.append(f"computer.terminate(status={status!r}, answer={decision.result or ''!r})")
    code = "\n".join(lines)
    content = f"# Step {step}:\n## Thought:\n{decision.text or ''}\n\n## Code:\n```python\n{code}\n```"
    return content, code


def _point_of(action: a.Action) -> a.Point | None:
    match action:
        case a.Click(at=p) | a.MoveMouse(at=p):
            return p
        case a.Drag(path=path):
            return path[-1]
    return None


__all__ = ["actions_of", "code_for", "code_of", "decide", "history", "invalid", "sections", "system_prompt",
           "task_text", "written"]
