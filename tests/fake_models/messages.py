"""Anthropic's Messages API (``/v1/messages``) with the computer tools (``computer_20250124``,
``computer_20251124``, any ``computer_<date>``), as the ``anthropic`` SDK parses it.

Coordinates are in the display the tool declares (``display_width_px`` x
``display_height_px``); a screenshot of another size is refused with a text answer (setting
``display_mismatch: "scale"`` maps it instead). One ``tool_use`` per answer, after a short text
block: ``{"action": "left_click", "coordinate": [x, y]}``, ``{"action": "type", "text": …}``,
``{"action": "screenshot"}`` on a first turn without an image; done = text only with
``stop_reason: "end_turn"``. Images are read from ``image`` blocks (base64 sources) of the last
user message, those inside its ``tool_result`` blocks included; a URL source is not fetched.

It refuses (400) what the real API refuses: no ``max_tokens``, no ``anthropic-version`` header,
a ``tool_use`` without a ``tool_result`` at the start of the next user message, a
``tool_result`` for an id the previous assistant message did not use.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from . import policy
from .core import Call, State, answer_json, begin, new_id, pieces, reject, sse, stream_response
from .policy import Click, Done, ImageRef, Plan, Say, Screenshot, Space, Type, View, Wait
from .responses import echo


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def _image(block: dict[str, Any]) -> ImageRef:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        return ImageRef(b64=source.get("data", ""), media_type=source.get("media_type"))
    return ImageRef(data_url=str(source.get("url") or f"{source.get('type')}:source"))


def view_of(messages: list[dict[str, Any]]) -> View:
    view = View()
    view.model_turns = sum(1 for m in messages if m.get("role") == "assistant")
    for i, message in enumerate(messages):
        if message.get("role") != "user":
            continue
        latest = i == len(messages) - 1
        for block in _blocks(message.get("content")):
            kind = block.get("type")
            texts, images = [], []
            if kind == "text":
                texts = [block.get("text", "")]
            elif kind == "image":
                images = [_image(block)]
            elif kind == "tool_result":
                images = [_image(b) for b in _blocks(block.get("content")) if b.get("type") == "image"]
            view.add(texts, images, latest=latest)
    return view


def check_messages(messages: list[dict[str, Any]]) -> str | None:
    if not messages or messages[0].get("role") != "user":
        return "messages: the first message must use the \"user\" role"
    for n, message in enumerate(messages):
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{n}.role: Input should be 'user' or 'assistant'"
        blocks = _blocks(message.get("content"))
        used = [b.get("id") for b in blocks if b.get("type") == "tool_use"] if message["role"] == "assistant" else []
        following = messages[n + 1] if n + 1 < len(messages) else None
        if message["role"] == "user":
            results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
            previous = messages[n - 1] if n else None
            asked = [b.get("id") for b in _blocks(previous.get("content"))
                     if b.get("type") == "tool_use"] if previous and previous.get("role") == "assistant" else []
            stray = [r for r in results if r not in asked]
            if stray:
                return (f"messages.{n}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{', '.join(map(str, stray))}. Each `tool_result` block must have a corresponding "
                        "`tool_use` block in the previous message.")
            kinds = [b.get("type") for b in blocks]
            if results and kinds[:len(results)] != ["tool_result"] * len(results):
                return (f"messages.{n}.content: `tool_result` blocks must come first in the content of the user "
                        "message that follows a `tool_use`.")
        if used:
            got = {b.get("tool_use_id") for b in _blocks((following or {}).get("content"))
                   if b.get("type") == "tool_result"} if following and following.get("role") == "user" else set()
            missing = [u for u in used if u not in got]
            if missing and following is not None:
                return (f"messages.{n + 1}: `tool_use` ids were found without `tool_result` blocks immediately "
                        f"after: {', '.join(map(str, missing))}. Each `tool_use` block must have a corresponding "
                        "`tool_result` block in the next message.")
    return None


def computer_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and str(tool.get("type", "")).startswith("computer_"):
            return tool
    return None


def decide(call: Call, tool: dict[str, Any] | None, view: View) -> tuple[list[dict[str, Any]], str, Plan]:
    """(content blocks, stop_reason, plan)."""
    if tool is None:
        text = echo(view)
        return [{"type": "text", "text": text}], "end_turn", Plan([Say(text)])
    settings = call.settings
    dw, dh = int(tool.get("display_width_px") or 0), int(tool.get("display_height_px") or 0)
    if settings.mode == "fast":
        plan = policy.fast(view, settings.fast_steps)
    else:
        plan = policy.decide(view, can_ask_screenshot=True)
        why = policy.display_mismatch(plan.image, dw, dh) if settings.display_mismatch == "refuse" else None
        if why:
            plan.steps = [Say(why)]
    w, h = plan.size
    space = Space("display", w, h, dw or w, dh or h)
    name = tool.get("name") or "computer"
    if call.fault is not None and call.fault.kind == "garbage":
        return [{"type": "tool_use", "id": new_id("toolu_"), "name": name,
                 "input": {"action": "dance", "coordinate": "somewhere"}}], "tool_use", plan
    first = plan.first
    if isinstance(first, Done | Say):
        return [{"type": "text", "text": first.answer if isinstance(first, Done) else first.text}], "end_turn", plan
    if isinstance(first, Click):
        action: dict[str, Any] = {"action": "left_click", "coordinate": list(space.point(first.x, first.y))}
    elif isinstance(first, Type):
        action = {"action": "type", "text": first.text}
    elif isinstance(first, Wait):
        action = {"action": "wait", "duration": 1}
    else:
        assert isinstance(first, Screenshot)
        action = {"action": "screenshot"}
    return [{"type": "text", "text": policy.intent(first)},
            {"type": "tool_use", "id": new_id("toolu_"), "name": name, "input": action}], "tool_use", plan


async def create(request: Request) -> Response:
    state: State = request.app.state.fake
    call = await begin(request, state, "anthropic", "messages", generate=True)
    if isinstance(call, Response):
        return call
    body = call.body
    if "anthropic-version" not in request.headers:
        return reject(call, "anthropic", 400, "anthropic-version: header is required")
    if not isinstance(body.get("max_tokens"), int):
        return reject(call, "anthropic", 400, "max_tokens: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return reject(call, "anthropic", 400, "messages: Input should be a valid list")
    why = check_messages(messages)
    if why:
        return reject(call, "anthropic", 400, why)
    tool = computer_tool(body)
    view = view_of(messages)
    content, stop, plan = decide(call, tool, view)
    model = str(body.get("model") or "claude-sonnet-4-5")
    out_tokens = max(1, len(json.dumps(content)) // 4)
    usage = {"input_tokens": call.input_tokens(), "output_tokens": out_tokens, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0}
    message = {"id": new_id("msg_"), "type": "message", "role": "assistant", "model": model, "content": content,
               "stop_reason": stop, "stop_sequence": None, "usage": usage}
    call.note(tool=tool.get("type") if tool else None, view=view.summary(call.settings.mode != "fast"),
              decision=plan.describe(), reply=content)
    if not call.stream:
        return answer_json(call, message, headers={"request-id": new_id("req_")})
    return stream_response(call, events(message, call.settings.chunk), headers={"request-id": new_id("req_")})


def events(message: dict[str, Any], size: int) -> list[bytes]:
    start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
    out = [sse("message_start", {"type": "message_start", "message": start}), sse("ping", {"type": "ping"})]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            out.append(sse("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": {"type": "text", "text": ""}}))
            out += [sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": {"type": "text_delta", "text": piece}})
                    for piece in pieces(block["text"], size)]
        else:
            out.append(sse("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": {**block, "input": {}}}))
            out += [sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": {"type": "input_json_delta", "partial_json": piece}})
                    for piece in pieces(json.dumps(block["input"]), size)]
        out.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    out.append(sse("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                     "usage": {"output_tokens": message["usage"]["output_tokens"]}}))
    out.append(sse("message_stop", {"type": "message_stop"}))
    return out
