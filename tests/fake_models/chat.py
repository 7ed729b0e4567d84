"""OpenAI Chat Completions (``/v1/chat/completions``) as vLLM-served computer-use models answer
it, in the dialects of spec §c.2, and plain text chat.

The dialect comes from the route (``/dialect/<name>/v1/chat/completions``), else the
``x-fake-dialect`` header, else the model id (case-insensitive): ``ui-tars``/``uitars`` →
``uitars``; ``northstar`` → ``northstar``; ``qwen3-vl``/``qwen3vl`` → ``qwen3vl``; anything
else is ``text`` (an echo of the newest user text, with the images it carried described).

* ``qwen3vl`` / ``northstar``: the ``computer_use`` function, arguments
  ``{"action": "left_click", "coordinate": [x, y]}`` / ``{"action": "type", "text": …}``;
  done = two calls, ``{"action": "answer", "text": <answer>}`` then
  ``{"action": "terminate", "status": "success"}``. Coordinates 0–1000 (qwen3vl) or 0–999
  (northstar) of the screenshot. As ``tool_calls`` when the request declares a function named
  ``computer_use`` (vLLM with a tool parser), else as ``<tool_call>{"name": "computer_use",
  "arguments": {…}}</tool_call>`` blocks in the text.
* ``uitars`` (UI-TARS 1.5): text ``Thought: …\\nAction: click(start_box='(x,y)')`` /
  ``type(content='…')`` / ``finished(content='<answer>')``, coordinates in pixels of the
  smart-resized screenshot (factor 28); ``'``, ``\\`` and newlines in content are escaped.
* ``opencua`` (model ids with ``opencua``), ``json`` and ``json-pixels`` (routes only): see
  dialects.py.

With no screenshot, or one showing nothing it knows, every dialect answers text only (no
tool call; UI-TARS: a ``Thought:`` without an ``Action:``), except that ``opencua`` and
``json`` give up on a screenshot showing nothing they know (terminate failure, ``fail``).

Like OpenAI (vLLM is laxer), it refuses (400) an assistant message with ``tool_calls`` not
followed by a ``tool`` message for each call id, and a ``tool`` message that answers no call.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from . import dialects, policy
from .core import Call, State, answer_json, begin, new_id, pieces, reject, sse, stream_response
from .policy import Click, Done, ImageRef, Plan, Say, Space, Type, View, Wait
from .responses import echo

DIALECTS = ("qwen3vl", "northstar", "uitars", "opencua", "json", "json-pixels", "text")
SPACES = {"qwen3vl": "grid1000", "northstar": "grid999", "uitars": "smart", "opencua": "smart", "json": "grid1000",
          "json-pixels": "pixels"}


def dialect_of(request: Request, model: str) -> str:
    forced = request.path_params.get("dialect") or request.headers.get("x-fake-dialect")
    if forced:
        return forced
    name = model.lower()
    if "ui-tars" in name or "uitars" in name:
        return "uitars"
    if "northstar" in name:
        return "northstar"
    if "opencua" in name:
        return "opencua"
    if "qwen3-vl" in name or "qwen3vl" in name:
        return "qwen3vl"
    return "text"


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [p for p in content or [] if isinstance(p, dict)]


def view_of(messages: list[dict[str, Any]]) -> View:
    view = View()
    last_model = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    view.model_turns = sum(1 for m in messages if m.get("role") == "assistant")
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ("user", "tool"):
            continue
        parts = _parts(message.get("content"))
        texts = [p.get("text", "") for p in parts if p.get("type") == "text"] if role == "user" else []
        images = [ImageRef(data_url=(p.get("image_url") or {}).get("url", "")) for p in parts
                  if p.get("type") == "image_url"]
        view.add(texts, images, latest=i > last_model)
    return view


def check_messages(messages: list[dict[str, Any]]) -> str | None:
    waiting: list[str] = []
    for n, message in enumerate(messages):
        role = message.get("role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in waiting:
                return (f"Invalid parameter: messages[{n}]: messages with role 'tool' must be a response to a "
                        f"preceding message with 'tool_calls' (no call {call_id!r}).")
            waiting.remove(call_id)
            continue
        if waiting:
            return ("An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                    f"'tool_call_id'. The following tool_call_ids did not have response messages: "
                    f"{', '.join(waiting)}")
        if role == "assistant":
            waiting = [str(c.get("id")) for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    if waiting:
        return ("An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(waiting)}")
    return None


# -- the dialects ------------------------------------------------------------------------------------------
def qwen_calls(plan: Plan, space: Space) -> list[dict[str, Any]]:
    first = plan.first
    if isinstance(first, Click):
        return [{"action": "left_click", "coordinate": list(space.point(first.x, first.y))}]
    if isinstance(first, Type):
        return [{"action": "type", "text": first.text}]
    if isinstance(first, Wait):
        return [{"action": "wait", "time": 1}]
    if isinstance(first, Done):
        return [{"action": "answer", "text": first.answer}, {"action": "terminate", "status": "success"}]
    return []


def uitars_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


def uitars_text(plan: Plan, space: Space) -> str:
    first = plan.first
    thought = policy.intent(first)
    if isinstance(first, Click):
        x, y = space.point(first.x, first.y)
        return f"Thought: {thought}\nAction: click(start_box='({x},{y})')"
    if isinstance(first, Type):
        return f"Thought: {thought}\nAction: type(content='{uitars_escape(first.text)}')"
    if isinstance(first, Wait):
        return f"Thought: {thought}\nAction: wait()"
    if isinstance(first, Done):
        return f"Thought: The form was submitted.\nAction: finished(content='{uitars_escape(first.answer)}')"
    return f"Thought: {thought}"


def decide(call: Call, dialect: str, view: View) -> tuple[str | None, list[dict[str, Any]], Plan]:
    """(content, tool calls as {name, arguments: dict|str}, plan)."""
    if dialect == "text":
        text = echo(view)
        return text, [], Plan([Say(text)])
    plan = policy.fast(view, call.settings.fast_steps) if call.settings.mode == "fast" else policy.decide(view)
    space = Space(SPACES[dialect], *plan.size)
    garbage = call.fault is not None and call.fault.kind == "garbage"
    tool_form = any(isinstance(t, dict) and (t.get("function") or {}).get("name") == "computer_use"
                    for t in call.body.get("tools") or [])
    if dialect == "uitars":
        text = "Thought: ?!\nAction: clack(start_box='(nowhere)')" if garbage else uitars_text(plan, space)
        return text, [], plan
    if dialect == "opencua":
        return dialects.opencua_text(plan, space, view.model_turns + 1, garbage), [], plan
    if dialect.startswith("json"):
        return None, [], plan  # create() writes the answer: it may have to refuse it
    if garbage:
        if tool_form:
            return None, [{"name": "computer_use", "arguments": '{"action": "left_cl'}], plan
        return "<tool_call>\n{\"name\": \"computer_use\", \"arguments\": {\"action\": \n</tool_call>", [], plan
    calls = qwen_calls(plan, space)
    if not calls:
        first = plan.first
        return (first.text if isinstance(first, Say) else policy.intent(first)), [], plan
    if tool_form:
        return None, [{"name": "computer_use", "arguments": args} for args in calls], plan
    blocks = [f"<tool_call>\n{json.dumps({'name': 'computer_use', 'arguments': args})}\n</tool_call>"
              for args in calls]
    return "\n".join(blocks), [], plan


# -- the endpoint ----------------------------------------------------------------------------------------------
async def create(request: Request) -> Response:
    state: State = request.app.state.fake
    call = await begin(request, state, "openai", "chat", generate=True)
    if isinstance(call, Response):
        return call
    body = call.body
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return reject(call, "openai", 400, "'messages' must be a non-empty array of message objects.",
                      param="messages")
    why = check_messages(messages)
    if why:
        return reject(call, "openai", 400, why, param="messages")
    model = str(body.get("model") or "")
    dialect = dialect_of(request, model)
    if dialect not in DIALECTS:
        return reject(call, "openai", 400, f"unknown fake dialect {dialect!r}; known: {', '.join(DIALECTS)}")
    if dialect.startswith("json"):
        why = dialects.schema_problem(body)
        if why:
            return reject(call, "openai", 400, why, param="response_format")
    view = view_of(messages)
    content, calls, plan = decide(call, dialect, view)
    if dialect.startswith("json"):
        content, unfit = dialects.json_answer(plan, Space(SPACES[dialect], *plan.size), body,
                                              call.fault is not None and call.fault.kind == "garbage")
        if unfit:
            return reject(call, "openai", 400, f"the answer cannot fit the response_format schema: {unfit}",
                          param="response_format")
    tool_calls = [{"id": new_id("call_"), "type": "function",
                   "function": {"name": c["name"], "arguments": c["arguments"] if isinstance(c["arguments"], str)
                                else json.dumps(c["arguments"])}} for c in calls]
    finish = "tool_calls" if tool_calls else "stop"
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    call.note(dialect=dialect, view=view.summary(call.settings.mode != "fast"), decision=plan.describe(), reply=message)
    out_tokens = max(1, len(json.dumps(message)) // 4)
    usage = {"prompt_tokens": call.input_tokens(), "completion_tokens": out_tokens,
             "total_tokens": call.input_tokens() + out_tokens}
    cid, created = new_id("chatcmpl-"), int(time.time())
    head = {"id": cid, "created": created, "model": model, "system_fingerprint": "fake"}
    if not call.stream:
        return answer_json(call, {**head, "object": "chat.completion", "usage": usage, "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]})
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return stream_response(call, chunks(head, content, tool_calls, finish, usage if include_usage else None,
                                        call.settings.chunk))


def chunks(head: dict[str, Any], content: str | None, tool_calls: list[dict[str, Any]], finish: str,
           usage: dict[str, Any] | None, size: int) -> list[bytes]:
    extra = {"usage": None} if usage is not None else {}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return sse(None, {**head, "object": "chat.completion.chunk", **extra, "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]})

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if content:
        out += [chunk({"content": piece}) for piece in pieces(content, size)]
    for index, tc in enumerate(tool_calls):
        out.append(chunk({"tool_calls": [{"index": index, "id": tc["id"], "type": "function",
                                          "function": {"name": tc["function"]["name"], "arguments": ""}}]}))
        out += [chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                for piece in pieces(tc["function"]["arguments"], size)]
    out.append(chunk({}, finish))
    if usage is not None:
        out.append(sse(None, {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}))
    out.append(b"data: [DONE]\n\n")
    return out
