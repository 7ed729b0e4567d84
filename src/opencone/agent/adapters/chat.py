"""OpenAI-compatible chat VLMs (vLLM, SGLang, Ollama, LM Studio) in their dialects (spec §c.2).

* ``qwen3vl`` / ``northstar``: Qwen3-VL's ``computer_use`` function, described in the system
  prompt the way Qwen's cookbook does (the model answers ``<tool_call>{…}</tool_call>`` in its
  text; ``tool_calls`` from a server with a tool parser are read too). Coordinates on a
  0–1000 grid (Qwen3-VL) or 0–999 (Northstar), ``v / 1000 * dim`` in pixels.
* ``qwen25vl``: the same function, coordinates in pixels of the ``smart_resize``d image.
* ``uitars``: UI-TARS 1.5's ``Thought: … / Action: click(start_box='(x,y)')`` text, in pixels
  of the ``smart_resize``d image (factor 28); ``finished(content=…)`` ends the task,
  ``call_user()`` asks a person.
* ``opencua``: OpenCUA's pyautogui code block (chat_opencua.py), in pixels of the
  ``smart_resize``d image; ``computer.terminate(status=…)`` ends the task.
* ``json``: our JSON schema, enforced by the server's guided decoding (chat_json.py), on a
  0–1000 grid or in pixels, as the models file says.

Chat models end a task with an explicit action (``terminate``/``answer``, ``finished``); an
answer with no call at all is not a decision (``ModelOutputError``), and the next request
tells the model so.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from openai import AsyncOpenAI

from opencone.agent.adapters import chat_json as cj
from opencone.agent.adapters import chat_opencua as co
from opencone.agent.adapters import openai_actions as oa
from opencone.agent.adapters.base import (
    OMITTED,
    Call,
    Conversation,
    Decision,
    ModelOutputError,
    ModelTurn,
    Observation,
    Outcome,
    Screenshot,
    Text,
    TextDelta,
    Usage,
    outcome_text,
    previous_turn,
)
from opencone.agent.adapters.keys import UnknownKeyError, chord
from opencone.agent.adapters.spaces import DEFAULT_SCROLL, SCROLL_NOTCH, Space, smart_resize
from opencone.agent.adapters.upstream import json_body, mapped, sdk_arguments
from opencone.core import actions as a

DIALECTS = ("qwen3vl", "northstar", "qwen25vl", "uitars", "opencua", "json")
UITARS_WAIT_MS = 5000  # "wait() #Sleep for 5s", UI-TARS's own action space says


QWEN_ACTIONS = ["key", "type", "mouse_move", "left_click", "left_click_drag", "right_click", "middle_click",
                "double_click", "triple_click", "scroll", "hscroll", "wait", "terminate", "answer"]


def qwen_tool(resolution: str) -> dict[str, Any]:
    """Qwen3-VL's ``computer_use`` function, as its cookbook declares it."""
    return {"type": "function", "function": {
        "name": "computer_use",
        "description": (
            "Use a mouse and keyboard to interact with a computer, and take screenshots.\n"
            "* This is an interface to a desktop GUI. You do not have access to a terminal or applications menu.\n"
            "* Some applications may take time to start or process actions, so you may need to wait and take "
            "successive screenshots to see the results of your actions.\n"
            f"* The screen's resolution is {resolution}.\n"
            "* Whenever you intend to move the cursor to click on an element like an icon, you should consult a "
            "screenshot to determine the coordinates of the element before moving the cursor.\n"
            "* Make sure to click any buttons, links, icons, etc with the cursor tip in the center of the element."),
        "parameters": {"type": "object", "required": ["action"], "properties": {
            "action": {"type": "string", "enum": QWEN_ACTIONS, "description": (
                "The action to perform: key (press keys in order, release in reverse), type (a string of text), "
                "mouse_move, left_click, left_click_drag (from the current position to coordinate), right_click, "
                "middle_click, double_click, triple_click, scroll / hscroll (pixels), wait (seconds), terminate "
                "(end the task and report its status), answer (answer a question).")},
            "keys": {"type": "array", "description": "Required only by `action=key`."},
            "text": {"type": "string", "description": "Required only by `action=type` and `action=answer`."},
            "coordinate": {"type": "array", "description": "(x, y): the point to move the mouse to."},
            "pixels": {"type": "number", "description": (
                "The amount of scrolling to perform. Positive values scroll up, negative values scroll down. "
                "Required only by `action=scroll` and `action=hscroll`.")},
            "time": {"type": "number", "description": "The seconds to wait. Required only by `action=wait`."},
            "status": {"type": "string", "enum": ["success", "failure"],
                       "description": "The status of the task. Required only by `action=terminate`."},
        }},
    }}


def qwen_system(tools: list[dict[str, Any]]) -> str:
    lines = "\n".join(json.dumps(t) for t in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
            f"{lines}\n</tools>\n\nFor each function call, return a json object with function name and arguments "
            "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


UITARS_PROMPT = """You are a GUI agent. You are given a task and your action history, with screenshots. \
You need to perform the next action to complete the task.

## Output Format
```
Thought: ...
Action: ...
```

## Action Space

click(start_box='<|box_start|>(x1,y1)<|box_end|>')
left_double(start_box='<|box_start|>(x1,y1)<|box_end|>')
right_single(start_box='<|box_start|>(x1,y1)<|box_end|>')
drag(start_box='<|box_start|>(x1,y1)<|box_end|>', end_box='<|box_start|>(x3,y3)<|box_end|>')
hotkey(key='')
type(content='') #If you want to submit your input, use "\\n" at the end of `content`.
scroll(start_box='<|box_start|>(x1,y1)<|box_end|>', direction='down or up or right or left')
wait() #Sleep for 5s and take a screenshot to check for any changes.
finished(content='xxx') # Use escape characters \\', \\", and \\n in content part to ensure we can parse the \
content in normal python string format.
call_user() # Submit the task and call the user when the task is unsolvable, or when you need the user's help.

## Note
- Use English in `Thought` part.
- Write a small plan and finally summarize your next action (with its target element) in one sentence in \
`Thought` part.

## User Instruction
"""

_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)
_ACTION = re.compile(r"Action\s*:\s*(.*)", re.S)
_THOUGHT = re.compile(r"(?:Thought|Reflection)\s*:\s*(.*?)(?=\n\s*Action\s*:|$)", re.S)
_NUMBERS = re.compile(r"-?\d+(?:\.\d+)?")


class ChatAdapter:
    """A chat-completions VLM; ``dialect`` is the models file's (qwen3vl, northstar, qwen25vl, uitars,
    opencua, json), ``coordinates`` the json dialect's space (grid1000 or pixels)."""

    what = "the chat model upstream"

    def __init__(self, upstream_model: str, client: AsyncOpenAI, dialect: str, coordinates: str | None = None) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown chat dialect {dialect!r}; known: {', '.join(DIALECTS)}")
        if coordinates is not None and (dialect != "json" or coordinates not in cj.COORDINATES):
            raise ValueError(f"coordinates {coordinates!r}: the json dialect takes {' or '.join(cj.COORDINATES)}; "
                             "the other dialects fix their own")
        self.model = upstream_model
        self.client = client
        self.name = dialect
        self.dialect = f"chat:{dialect}"
        self.coordinates = coordinates or cj.DEFAULT_COORDINATES

    def space(self, display: tuple[int, int]) -> Space:
        if self.name == "qwen3vl":
            return Space("grid", display, 1000)
        if self.name == "northstar":
            return Space("grid", display, 999)
        if self.name == "json":
            return cj.space_for(self.coordinates, display)
        if self.name == "opencua":
            return Space("smart", display, min_pixels=co.MIN_PIXELS)
        return Space("smart", display)

    # -- request ------------------------------------------------------------------------------
    def request(self, conv: Conversation) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": self.messages(conv),
                                "max_tokens": conv.max_output_tokens}
        if conv.temperature is not None:
            body["temperature"] = conv.temperature
        if self.name == "json":  # guided decoding holds the answer to the schema
            body["response_format"] = cj.response_format()
        return body

    def _tools(self, conv: Conversation) -> list[dict[str, Any]]:
        space = self.space(conv.display)
        resolution = {"qwen3vl": "1000x1000 (relative coordinates)", "northstar": "999x999 (relative coordinates)"
                      }.get(self.name, f"{space.size[0]}x{space.size[1]}")
        return [qwen_tool(resolution)] + [{"type": "function", "function": {
            "name": f.name, "description": f.description, "parameters": f.parameters}} for f in conv.functions]

    def _system(self, conv: Conversation, space: Space) -> str:
        if self.name == "uitars":
            return conv.instructions
        if self.name == "opencua":
            return co.system_prompt(conv.instructions)
        if self.name == "json":
            return f"{conv.instructions}\n\n{cj.guide(space)}"
        return f"{conv.instructions}\n\n{qwen_system(self._tools(conv))}"

    def messages(self, conv: Conversation) -> list[dict[str, Any]]:
        uitars, opencua = self.name == "uitars", self.name == "opencua"
        space = self.space(conv.display)
        out: list[dict[str, Any]] = [{"role": "system", "content": self._system(conv, space)}]
        recent = conv.recent_images()
        items = conv.items
        first_instruction = True
        task: list[str] = []  # OpenCUA: the task (and what the user added) goes last, after the newest screen
        step = 0
        for n, item in enumerate(items):
            if isinstance(item, Text):
                text = item.text
                if opencua and item.role == "user" and item.kind in ("instruction", "injected"):
                    task.append(text)
                    continue
                if uitars and item.role == "user" and item.kind == "instruction" and first_instruction:
                    text, first_instruction = UITARS_PROMPT + text, False
                if item.role == "assistant":
                    out.append({"role": "assistant", "content": text})
                else:
                    _user(out, {"type": "text", "text": text})
            elif isinstance(item, ModelTurn):
                step += 1
                out.append(self.assistant(item.decision, space, step))
            elif isinstance(item, Observation):
                turn = previous_turn(items, n)
                image = {"type": "image_url", "image_url": {"url": item.screenshot.data_url()}} \
                    if n in recent else {"type": "text", "text": OMITTED}
                if turn is None:
                    _user(out, image)
                    continue
                native_calls = _native_tool_calls(turn.decision, self.dialect)
                by_id = {o.call_id: o for o in item.outcomes}
                for call in turn.decision.calls:
                    if call.id in native_calls:
                        out.append({"role": "tool", "tool_call_id": call.id, "content": _result(call, by_id)})
                problems = [_result(c, by_id) for c in turn.decision.calls
                            if c.id not in native_calls and (c.error or not by_id.get(c.id, Outcome(c.id, True)).ok)]
                if problems:
                    _user(out, {"type": "text", "text": "Those actions did not all work: " + "; ".join(problems)})
                _user(out, image)
        if opencua and task:
            _user(out, {"type": "text", "text": co.task_text(task)})
        for message in out:
            message.pop("_ours", None)
        return out

    def assistant(self, decision: Decision, space: Space, step: int = 1) -> dict[str, Any]:
        """A past turn: the assistant message as the server sent it, or written anew."""
        if self.name == "opencua":  # as OpenCUA's agent replays a step: Thought and Action, no code
            own = decision.dialect == self.dialect and isinstance(decision.native, dict)
            content = decision.native.get("content") if own else None
            code = (co.code_of(content or "") if own else None) or co.written(decision, space, step)[1]
            return {"role": "assistant", "content": co.history(content, step, decision.text, code)}
        if self.name == "json" and not (decision.dialect == self.dialect and isinstance(decision.native, dict)):
            return {"role": "assistant", "content": cj.written(decision, space)}
        if decision.dialect == self.dialect and isinstance(decision.native, dict):
            msg: dict[str, Any] = {"role": "assistant", "content": decision.native.get("content")}
            if decision.native.get("tool_calls"):
                msg["tool_calls"] = decision.native["tool_calls"]
            return msg
        if self.name == "uitars":
            lines = [f"Thought: {decision.text or ''}".rstrip()]
            acts = [x for x in (to_uitars(act, space) for act in decision.actions) if x]
            if decision.done:
                acts.append(f"finished(content='{_escape(decision.result or '')}')")
            return {"role": "assistant", "content": "\n".join(lines + ([f"Action: {acts[0]}"] if acts else []))}
        blocks = [decision.text or ""]
        for act in decision.actions:
            args = to_qwen(act, space)
            if args is not None:
                blocks.append(f"<tool_call>\n{json.dumps({'name': 'computer_use', 'arguments': args})}\n</tool_call>")
        return {"role": "assistant", "content": "\n".join(b for b in blocks if b)}

    # -- reply ----------------------------------------------------------------------------------
    def parse(self, reply: dict[str, Any], conv: Conversation) -> Decision:
        choices = reply.get("choices")
        raw_usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        usage = Usage(int(raw_usage.get("prompt_tokens") or 0), int(raw_usage.get("completion_tokens") or 0))
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict) \
                or not isinstance(choices[0].get("message"), dict):
            raise ModelOutputError(f"{self.what} answered without choices[0].message", reply, usage)
        message = choices[0]["message"]
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        content = content if isinstance(content, str) else ""
        native = {"role": "assistant", "content": content or None, **(
            {"tool_calls": message["tool_calls"]} if message.get("tool_calls") else {})}
        space = self.space(conv.display)
        if self.name == "uitars":
            return self._uitars(content, native, space, conv, usage)
        if self.name == "opencua":
            return co.decide(content, native, space, _last_point(conv), usage, self.dialect, self.what)
        if self.name == "json":
            return cj.decide(content, native, space, _last_point(conv), usage, self.dialect, self.what)
        return self._qwen(content, message.get("tool_calls"), native, space, conv, usage)

    def _qwen(self, content: str, tool_calls: Any, native: dict[str, Any], space: Space, conv: Conversation,
              usage: Usage) -> Decision:
        functions = {f.name for f in conv.functions}
        raw_calls: list[tuple[str, str, Any]] = []  # (id, name, arguments: dict | None | error text)
        if isinstance(tool_calls, list) and tool_calls:
            for tc in tool_calls:
                fn = tc.get("function") if isinstance(tc, dict) else None
                if not isinstance(fn, dict):
                    raise ModelOutputError(f"{self.what} sent a tool call without a function", native, usage)
                args: Any = fn.get("arguments")
                try:
                    args = json.loads(args) if isinstance(args, str) else args
                except ValueError as exc:
                    args = f"its arguments are not JSON ({exc})"
                raw_calls.append((str(tc.get("id") or f"call_{len(raw_calls)}"), str(fn.get("name") or ""), args))
        else:
            for k, block in enumerate(_TOOL_CALL.findall(content)):
                try:
                    obj = json.loads(block.strip())
                except ValueError:
                    raise ModelOutputError(f"{self.what} wrote a <tool_call> that is not JSON: {block.strip()[:200]!r}",
                                           native, usage) from None
                if not isinstance(obj, dict):
                    raise ModelOutputError(f"{self.what} wrote a <tool_call> that is not an object", native, usage)
                raw_calls.append((f"tc_{k}", str(obj.get("name") or ""), obj.get("arguments", obj.get("parameters"))))
        text = _TOOL_CALL.sub("", content).strip() or None
        if not raw_calls:
            raise ModelOutputError(
                f"{self.what} answered without a tool call: {(text or '(nothing)')[:300]!r}; reply with a "
                "computer_use call, and end with terminate (or answer)", native, usage)
        calls: list[Call] = []
        pointer = _last_point(conv)
        done, result, success = False, None, True
        for call_id, name, args in raw_calls:
            if name in functions:
                calls.append(Call(call_id, (), args, name, name, args if isinstance(args, dict) else {}))
                continue
            if name not in ("computer_use", "computer"):
                calls.append(Call(call_id, (), args, name, error=f"there is no function {name!r}; use computer_use"))
                continue
            if not isinstance(args, dict):
                calls.append(Call(call_id, (), args, name, error=str(args) if isinstance(args, str) else
                                  "the arguments must be an object with an action"))
                continue
            action = args.get("action")
            if action == "terminate":
                done, success = True, str(args.get("status", "success")).lower() != "failure"
                calls.append(Call(call_id, (), args, "terminate"))
                continue
            if action == "answer":
                done, result = True, str(args.get("text") or "")
                calls.append(Call(call_id, (), args, "answer"))
                continue
            try:
                acts = from_qwen(args, space, pointer)
            except oa.ActionError as exc:
                calls.append(Call(call_id, (), args, str(action), error=str(exc)))
                continue
            for act in acts:
                pointer = _point_of(act) or pointer
            calls.append(Call(call_id, tuple(acts), args, str(action)))
        return Decision(tuple(calls), text, done, (result or text) if done else None, success, native=native,
                        dialect=self.dialect, usage=usage)

    def _uitars(self, content: str, native: dict[str, Any], space: Space, conv: Conversation,
                usage: Usage) -> Decision:
        thought = _THOUGHT.search(content)
        text = thought.group(1).strip() if thought else None
        found = _ACTION.search(content)
        if not found:
            raise ModelOutputError(f"{self.what} answered without an Action: {content[:300]!r}; answer with "
                                   "'Thought: …' and 'Action: …', and finish with finished(content='…')", native, usage)
        calls: list[Call] = []
        pointer = _last_point(conv)
        done, result, ask = False, None, None
        for k, line in enumerate(_split_actions(found.group(1))):
            call_id = f"act_{k}"
            try:
                name, kwargs = _call_of(line)
            except ValueError as exc:
                calls.append(Call(call_id, (), line, "?", error=f"cannot read the action {line[:100]!r}: {exc}"))
                continue
            if name == "finished":
                done, result = True, str(kwargs.get("content", ""))
                calls.append(Call(call_id, (), line, name))
                continue
            if name == "call_user":
                ask = text or "The model asks for help."
                calls.append(Call(call_id, (), line, name))
                continue
            try:
                acts = from_uitars(name, kwargs, space, pointer)
            except oa.ActionError as exc:
                calls.append(Call(call_id, (), line, name, error=str(exc)))
                continue
            for act in acts:
                pointer = _point_of(act) or pointer
            calls.append(Call(call_id, tuple(acts), line, name))
        return Decision(tuple(calls), text, done, result if done else None, ask_user=ask, native=native,
                        dialect=self.dialect, usage=usage)

    # -- the call -------------------------------------------------------------------------------
    async def decide(self, conv: Conversation, on_text: TextDelta | None = None) -> Decision:
        args = sdk_arguments(self.request(conv), ("model",), {"messages": []})
        if on_text is None:
            with mapped(self.what):
                raw = await self.client.chat.completions.with_raw_response.create(**args)
            return self.parse(json_body(raw, self.what), conv)
        content: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        usage: dict[str, Any] | None = None
        with mapped(self.what):
            stream = await self.client.chat.completions.create(**args, stream=True,
                                                               stream_options={"include_usage": True})
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage.to_dict(warnings=False)
                for choice in chunk.choices or []:
                    delta = choice.delta
                    if delta is None:
                        continue
                    if delta.content:
                        content.append(delta.content)
                        on_text(delta.content)
                    for tc in delta.tool_calls or []:
                        slot = calls.setdefault(tc.index, {"id": None, "type": "function",
                                                           "function": {"name": "", "arguments": ""}})
                        if tc.id:
                            slot["id"] = tc.id
                        if tc.function is not None:
                            slot["function"]["name"] += tc.function.name or ""
                            slot["function"]["arguments"] += tc.function.arguments or ""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
        if calls:
            message["tool_calls"] = [calls[k] for k in sorted(calls)]
        return self.parse({"choices": [{"index": 0, "message": message}], "usage": usage}, conv)


# -- the dialects' actions ------------------------------------------------------------------------


def _xy(value: Any, space: Space, what: str) -> a.Point:
    if isinstance(value, str):
        value = [float(v) for v in _NUMBERS.findall(value)]
    if isinstance(value, list | tuple) and len(value) == 4 and all(isinstance(v, int | float) for v in value):
        value = [(value[0] + value[2]) / 2, (value[1] + value[3]) / 2]  # a box: its centre
    if not (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        raise oa.ActionError(f"{what}: coordinate must be [x, y], got {value!r}")
    return space.to_px(float(value[0]), float(value[1]))


def _scroll_amount(value: Any) -> float:
    """Qwen's ``pixels`` (positive: up). Small values are wheel notches (pyautogui's unit, what the
    models were trained on), larger ones pixels."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return DEFAULT_SCROLL * SCROLL_NOTCH
    return float(value) * SCROLL_NOTCH if abs(value) <= 25 else float(value)


def from_qwen(args: dict[str, Any], space: Space, pointer: a.Point | None) -> list[a.Action]:
    act = args.get("action")
    try:
        match act:
            case "left_click" | "right_click" | "middle_click" | "double_click" | "triple_click":
                if args.get("coordinate") is None and pointer is None:
                    raise oa.ActionError(f"{act}: coordinate is required")
                at = _xy(args["coordinate"], space, act) if args.get("coordinate") is not None else pointer
                assert at is not None
                button = {"right_click": "right", "middle_click": "middle"}.get(act, "left")
                count = {"double_click": 2, "triple_click": 3}.get(act, 1)
                return [a.Click(at=at, button=button, count=count)]  # type: ignore[arg-type]
            case "mouse_move":
                return [a.MoveMouse(at=_xy(args.get("coordinate"), space, act))]
            case "left_click_drag":
                end = _xy(args.get("coordinate"), space, act)
                start = _xy(args["start_coordinate"], space, act) if args.get("start_coordinate") else pointer
                if start is None:
                    raise oa.ActionError("left_click_drag: the pointer has not been placed yet (mouse_move first)")
                return [a.Drag(path=[start, end])]
            case "type":
                if not isinstance(args.get("text"), str):
                    raise oa.ActionError("type: text must be a string")
                return [a.TypeText(text=args["text"])]
            case "key":
                keys = args.get("keys", args.get("text"))
                if not keys or not isinstance(keys, list | str):
                    raise oa.ActionError("key: keys must list the keys, e.g. ['ctrl', 'a']")
                return [a.PressKeys(keys=chord(keys))]
            case "scroll" | "hscroll":
                amount = _scroll_amount(args.get("pixels"))
                at = _xy(args["coordinate"], space, act) if args.get("coordinate") is not None else None
                if act == "scroll":
                    return [a.Scroll(at=at, dy=-amount)]
                return [a.Scroll(at=at, dx=amount)]
            case "wait":
                secs = args.get("time", 1)
                secs = float(secs) if isinstance(secs, int | float) and not isinstance(secs, bool) else 1.0
                return [a.Wait(ms=int(max(0.0, min(a.MAX_WAIT_MS / 1000, secs)) * 1000))]
    except UnknownKeyError as exc:
        raise oa.ActionError(f"{act}: {exc}") from None
    except (KeyError, ValueError) as exc:
        raise oa.ActionError(f"{act}: {str(exc).splitlines()[-1]}") from None
    raise oa.ActionError(f"unknown action {act!r}; allowed: {', '.join(QWEN_ACTIONS)}")


def to_qwen(action: a.Action, space: Space) -> dict[str, Any] | None:
    match action:
        case a.Click(at=p, button=button, count=count):
            name = {2: "double_click", 3: "triple_click"}.get(count) if button == "left" else None
            name = name or {"left": "left_click", "right": "right_click", "middle": "middle_click"}.get(button)
            return {"action": name, "coordinate": list(space.from_px(p))} if name else None
        case a.MoveMouse(at=p):
            return {"action": "mouse_move", "coordinate": list(space.from_px(p))}
        case a.Drag(path=path):
            return {"action": "left_click_drag", "start_coordinate": list(space.from_px(path[0])),
                    "coordinate": list(space.from_px(path[-1]))}
        case a.TypeText(text=text):
            return {"action": "type", "text": text}
        case a.PressKeys(keys=keys):
            return {"action": "key", "keys": list(keys)}
        case a.Scroll(at=p, dx=dx, dy=dy):
            out: dict[str, Any] = {"action": "scroll", "pixels": -round(dy)} if abs(dy) >= abs(dx) else \
                {"action": "hscroll", "pixels": round(dx)}
            if p is not None:
                out["coordinate"] = list(space.from_px(p))
            return out
        case a.Wait(ms=ms):
            return {"action": "wait", "time": ms / 1000}
    return None


def _split_actions(text: str) -> list[str]:
    """The calls of an ``Action:`` part: one per line (or blank-line separated)."""
    return [line.strip() for line in re.split(r"\n+", text.strip()) if line.strip()]


def _call_of(line: str) -> tuple[str, dict[str, Any]]:
    """``click(start_box='(1,2)')`` → ``("click", {"start_box": "(1,2)"})``, read as Python."""
    line = line.replace("<|box_start|>", "").replace("<|box_end|>", "")
    tree = ast.parse(line.strip(), mode="eval")
    if not isinstance(tree.body, ast.Call) or not isinstance(tree.body.func, ast.Name):
        raise ValueError("not a call")
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in tree.body.keywords if kw.arg}
    return tree.body.func.id, kwargs


def from_uitars(name: str, kw: dict[str, Any], space: Space, pointer: a.Point | None) -> list[a.Action]:
    def at(key: str = "start_box") -> a.Point:
        value = kw.get(key, kw.get("point" if key == "start_box" else "end_point"))
        if value is None:
            raise oa.ActionError(f"{name}: {key} is required")
        return _xy(value, space, name)

    try:
        match name:
            case "click" | "left_single":
                return [a.Click(at=at())]
            case "left_double":
                return [a.Click(at=at(), count=2)]
            case "right_single":
                return [a.Click(at=at(), button="right")]
            case "drag" | "select":
                return [a.Drag(path=[at(), at("end_box")])]
            case "hover" | "mouse_move":
                return [a.MoveMouse(at=at())]
            case "type":
                text = str(kw.get("content", ""))
                if text.endswith("\n"):
                    return [*([a.TypeText(text=text[:-1])] if text[:-1] else []), a.PressKeys(keys=["Enter"])]
                return [a.TypeText(text=text)]
            case "hotkey" | "press" | "keydown" | "keyup":
                keys = chord(str(kw.get("key", kw.get("hotkey", ""))), allow_space=True)
                if name == "keydown":
                    return [a.KeyDown(key=k) for k in keys]
                if name == "keyup":
                    return [a.KeyUp(key=k) for k in reversed(keys)]
                return [a.PressKeys(keys=keys)]
            case "scroll":
                direction = str(kw.get("direction", "down")).lower()
                if direction not in ("up", "down", "left", "right"):
                    raise oa.ActionError("scroll: direction must be up, down, left or right")
                d = DEFAULT_SCROLL * SCROLL_NOTCH
                dx, dy = {"up": (0, -d), "down": (0, d), "left": (-d, 0), "right": (d, 0)}[direction]
                point = at() if kw.get("start_box") or kw.get("point") else None
                return [a.Scroll(at=point, dx=dx, dy=dy)]
            case "wait":
                return [a.Wait(ms=UITARS_WAIT_MS)]
    except UnknownKeyError as exc:
        raise oa.ActionError(f"{name}: {exc}") from None
    except ValueError as exc:
        raise oa.ActionError(f"{name}: {str(exc).splitlines()[-1]}") from None
    raise oa.ActionError(f"unknown action {name!r}")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


def to_uitars(action: a.Action, space: Space) -> str | None:
    def box(p: a.Point) -> str:
        x, y = space.from_px(p)
        return f"'<|box_start|>({x},{y})<|box_end|>'"

    match action:
        case a.Click(at=p, button=button, count=count):
            name = "right_single" if button == "right" else "left_double" if count == 2 else "click"
            return f"{name}(start_box={box(p)})"
        case a.Drag(path=path):
            return f"drag(start_box={box(path[0])}, end_box={box(path[-1])})"
        case a.TypeText(text=text):
            return f"type(content='{_escape(text)}')"
        case a.PressKeys(keys=keys):
            return f"hotkey(key='{' '.join(k.lower() for k in keys)}')"
        case a.Scroll(at=p, dy=dy, dx=dx):
            direction = ("down" if dy > 0 else "up") if abs(dy) >= abs(dx) else ("right" if dx > 0 else "left")
            return f"scroll(start_box={box(p)}, direction='{direction}')" if p else f"scroll(direction='{direction}')"
        case a.Wait():
            return "wait()"
    return None


# -- small helpers ------------------------------------------------------------------------------


def _user(out: list[dict[str, Any]], part: dict[str, Any]) -> None:
    last = out[-1] if out else None
    if last is not None and last.get("_ours"):
        last["content"].append(part)
        return
    out.append({"role": "user", "content": [part], "_ours": True})


def _native_tool_calls(decision: Decision, dialect: str) -> set[str]:
    """The ids of a turn's native ``tool_calls`` (each needs a ``tool`` message)."""
    if decision.dialect != dialect or not isinstance(decision.native, dict):
        return set()
    return {str(tc.get("id")) for tc in decision.native.get("tool_calls") or [] if isinstance(tc, dict)}


def _result(call: Call, by_id: dict[str, Outcome]) -> str:
    if call.error:
        return f"{call.name}: {call.error}"
    outcome = by_id.get(call.id)
    if call.function and outcome is not None and outcome.output is not None:
        return outcome.output
    return f"{call.name}: {outcome_text(outcome)}"


def _point_of(action: a.Action) -> a.Point | None:
    match action:
        case a.Click(at=p) | a.MoveMouse(at=p):
            return p
        case a.Drag(path=path):
            return path[-1]
    return None


def _last_point(conv: Conversation) -> a.Point | None:
    for item in reversed(conv.items):
        if isinstance(item, ModelTurn):
            for act in reversed(item.decision.actions):
                p = _point_of(act)
                if p is not None:
                    return p
    return None


__all__ = ["ChatAdapter", "Screenshot", "from_qwen", "from_uitars", "smart_resize", "to_qwen", "to_uitars"]
