"""Responses items, and how an emulated response says them to a chat upstream.

``input`` comes as a string or a list of items (easy messages ``{role, content}``
among them); ``normalized`` makes it a list of full items, each with an ``id``, as
it is stored and listed by ``/input_items``. ``chat_body`` turns the whole context
(the previous responses' items, then this input) into a Chat Completions body:
``instructions`` as the system message (this request's only: they are not carried
over), messages with their text and images, ``function_call`` items as assistant
``tool_calls`` and their outputs as ``tool`` messages; ``reasoning`` items are left
out (a chat model has none to read back). Anything a chat upstream cannot be told
is a 400 naming the item and what is possible.
"""

from __future__ import annotations

import json
from typing import Any

from opencone.core.ids import new_id
from opencone.gateway.errors import InvalidRequest

COMPUTER_TOOLS = ("computer_use", "computer_use_preview", "computer")
_ROLES = ("user", "assistant", "system", "developer")
_ID_PREFIX = {"message": "msg", "function_call_output": "fco", "computer_call_output": "cuo", "function_call": "fc",
              "computer_call": "cu"}
# fields of a create body that are vLLM's (spec a.5) and mean the same to a vLLM chat server
VLLM_CHAT_EXTRAS = ("top_k", "min_p", "repetition_penalty", "skip_special_tokens", "include_stop_str_in_output",
                    "mm_processor_kwargs", "cache_salt", "priority", "chat_template_kwargs", "request_id")


def item_id(kind: str) -> str:
    return new_id(_ID_PREFIX.get(kind, "item"), 16)


def normalized(value: Any) -> list[dict[str, Any]]:
    """``input`` as full items with ids (a copy; the caller's values are not changed)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"id": item_id("message"), "type": "message", "role": "user", "status": "completed",
                 "content": [{"type": "input_text", "text": value}]}]
    items = []
    for i, raw in enumerate(value):
        if not isinstance(raw, dict):
            raise InvalidRequest(f"input[{i}] must be an object (an item)", param=f"input[{i}]")
        item = dict(raw)
        kind = item.setdefault("type", "message")
        if not isinstance(kind, str):
            raise InvalidRequest(f"input[{i}].type must be a string", param=f"input[{i}].type")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise InvalidRequest(f"input[{i}].role must be one of {', '.join(_ROLES)}", param=f"input[{i}].role")
            content = item.get("content")
            if isinstance(content, str):
                part = "output_text" if role == "assistant" else "input_text"
                item["content"] = [{"type": part, "text": content, **({"annotations": []} if role == "assistant"
                                                                      else {})}]
            elif not isinstance(content, list):
                raise InvalidRequest(f"input[{i}].content must be a string or a list of parts",
                                     param=f"input[{i}].content")
            item.setdefault("status", "completed")
        item.setdefault("id", item_id(kind))
        items.append(item)
    return items


def has_computer_tool(tools: list[dict[str, Any]] | None) -> bool:
    return any(isinstance(t, dict) and t.get("type") in COMPUTER_TOOLS for t in tools or [])


# -- to a chat upstream ------------------------------------------------------------------------
def chat_messages(instructions: str | None, items: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        where = f"input[{i}]"
        if kind == "message":
            role = item.get("role")
            parts = item.get("content") or []
            if role == "assistant":
                messages.append({"role": "assistant", "content": _assistant_text(parts, where)})
            elif role in ("system", "developer"):
                messages.append({"role": "system", "content": _plain_text(parts, where)})
            else:
                messages.append({"role": "user", "content": _user_parts(parts, where)})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}
            if not isinstance(call["id"], str) or not isinstance(call["function"]["name"], str):
                raise InvalidRequest(f"{where}: a function_call needs call_id and name", param=where)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(item.get("call_id"), str):
                raise InvalidRequest(f"{where}: a function_call_output needs call_id", param=f"{where}.call_id")
            if isinstance(output, list):
                output = _plain_text(output, f"{where}.output")
            elif not isinstance(output, str):
                output = json.dumps(output)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        elif kind == "reasoning":
            continue
        else:
            raise InvalidRequest(f"{where}: an item of type {kind!r} cannot go to {model} (its Responses API is "
                                 "emulated over chat: messages, function_call, function_call_output, reasoning "
                                 "and, with a computer tool, computer_call and computer_call_output can)",
                                 param=f"{where}.type")
    return messages


def _user_parts(parts: list[Any], where: str) -> list[dict[str, Any]]:
    out = []
    for p, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        at = f"{where}.content[{p}]"
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            out.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise InvalidRequest(f"{at}: an input_image needs image_url (file_id is not supported here)",
                                     param=f"{at}.image_url")
            out.append({"type": "image_url", "image_url": {"url": url, "detail": part.get("detail") or "auto"}})
        else:
            raise InvalidRequest(f"{at}: a part of type {kind!r} is not supported here (input_text and "
                                 "input_image are)", param=at)
    return out


def _plain_text(parts: Any, where: str) -> str:
    if isinstance(parts, str):
        return parts
    texts = []
    for p, part in enumerate(parts):
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise InvalidRequest(f"{where}.content[{p}] must be a text part", param=f"{where}.content[{p}]")
    return "\n".join(texts)


def _assistant_text(parts: Any, where: str) -> str:
    if isinstance(parts, str):
        return parts
    texts = []
    for p, part in enumerate(parts):
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part, dict) and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise InvalidRequest(f"{where}.content[{p}] must be an output_text part", param=f"{where}.content[{p}]")
    return "".join(texts)


def chat_tools(tools: list[dict[str, Any]] | None, model: str) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for t, tool in enumerate(tools):
        if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise InvalidRequest(f"tools[{t}]: a tool of type {tool.get('type')!r} cannot go to {model} (its "
                                 "Responses API is emulated over chat: function tools and computer tools can)",
                                 param=f"tools[{t}]")
        fn: dict[str, Any] = {"name": tool["name"],
                              "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}
        if tool.get("description") is not None:
            fn["description"] = tool["description"]
        if tool.get("strict") is not None:
            fn["strict"] = tool["strict"]
        out.append({"type": "function", "function": fn})
    return out


def chat_tool_choice(choice: Any) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest("tool_choice must be auto, none, required or {type: function, name} here",
                         param="tool_choice")


def response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest("text.format.type must be text, json_object or json_schema", param="text.format.type")


def chat_body(body: dict[str, Any], items: list[dict[str, Any]], model: str, provider: str,
              stream: bool) -> dict[str, Any]:
    """The Chat Completions body of an emulated response (no computer tool)."""
    chat: dict[str, Any] = {"messages": chat_messages(body.get("instructions"), items, model)}
    tools = chat_tools(body.get("tools"), model)
    if tools:
        chat["tools"] = tools
        choice = chat_tool_choice(body.get("tool_choice"))
        if choice is not None:
            chat["tool_choice"] = choice
        if body.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    for ours, theirs in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(ours) is not None:
            chat[theirs] = body[ours]
    fmt = response_format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    if stream:
        chat["stream_options"] = {"include_usage": True}
    if provider == "openai-chat":
        chat.update({k: body[k] for k in VLLM_CHAT_EXTRAS if body.get(k) is not None})
    elif provider == "anthropic" and body.get("top_k") is not None:
        chat["top_k"] = body["top_k"]
    return chat
