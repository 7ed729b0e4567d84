"""Chat Completions, said to Anthropic's Messages API and back.

A chat body becomes ``messages.create`` arguments (system and developer messages
join into ``system``; images, data URLs or http ones, become image blocks;
assistant ``tool_calls`` become ``tool_use`` blocks and ``tool`` messages
``tool_result`` blocks; turns of one role are merged, as Messages requires them
to alternate), and a ``Message``, or its stream of events, becomes a
``chat.completion`` or its chunks. What Messages cannot do (``n`` > 1, a
``response_format``, audio) is a 400 that says so.
"""

from __future__ import annotations

import json
import time
from typing import Any

from opencone.gateway.errors import InvalidRequest

DEFAULT_MAX_TOKENS = 4096  # Messages requires max_tokens; chat does not
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
           "pause_turn": "stop", "refusal": "content_filter", "model_context_window_exceeded": "length"}
# chat fields with no Messages counterpart that change nothing when left out
_IGNORED = {"stream_options", "logprobs", "top_logprobs", "parallel_tool_calls", "store", "seed", "service_tier",
            "frequency_penalty", "presence_penalty", "logit_bias", "prompt_cache_key", "safety_identifier",
            "reasoning_effort", "verbosity", "modalities", "user", "metadata", "model", "messages", "stream"}
# sampling fields the SDK no longer types, sent as they are (older models take them)
_SAMPLING = ("temperature", "top_p", "top_k")


def messages_params(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """``messages.create`` keyword arguments for a chat body (its images already inlined)."""
    n = body.get("n")
    if n not in (None, 1):
        raise InvalidRequest("n must be 1 for Anthropic models (Messages gives one answer)", param="n")
    if body.get("response_format") not in (None, {"type": "text"}):
        raise InvalidRequest("response_format is not supported for Anthropic models; describe the format in "
                             "the prompt or use a tool", param="response_format")
    for name in ("audio", "functions", "function_call", "prediction", "web_search_options"):
        if body.get(name) is not None:
            raise InvalidRequest(f"{name} is not supported for Anthropic models", param=name)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    system, turns = _turns(messages)
    if not turns:
        raise InvalidRequest("messages holds no user or assistant message; Anthropic models need one",
                             param="messages")
    params: dict[str, Any] = {"model": upstream_model, "messages": turns,
                              "max_tokens": _max_tokens(body)}
    if system:
        params["system"] = system
    stop = body.get("stop")
    if stop is not None:
        params["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = body.get("tools")
    if tools:
        params["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None and tools:
        params["tool_choice"] = choice
    user = body.get("user")
    if isinstance(user, str) and user:
        params["metadata"] = {"user_id": user}
    extra = {k: body[k] for k in _SAMPLING if body.get(k) is not None}
    if extra:
        params["extra_body"] = extra
    return params


def _max_tokens(body: dict[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidRequest(f"{name} must be a positive whole number", param=name)
            return value
    return DEFAULT_MAX_TOKENS


def _turns(messages: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for m, message in enumerate(messages):
        where = f"messages[{m}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.append(_text_of(content, where))
            continue
        if role == "user":
            blocks = _blocks(content, where)
        elif role == "assistant":
            blocks = [] if content is None else _blocks(content, where, assistant=True)
            for c, call in enumerate(message.get("tool_calls") or []):
                blocks.append(_tool_use(call, f"{where}.tool_calls[{c}]"))
        elif role == "tool":
            role = "user"
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise InvalidRequest(f"{where}.tool_call_id is required for a tool message", param=where)
            blocks = [{"type": "tool_result", "tool_use_id": call_id,
                       "content": _blocks(content, where) if isinstance(content, list) else _text_of(content, where)}]
        else:
            raise InvalidRequest(f"{where}.role must be system, developer, user, assistant or tool, not {role!r}",
                                 param=f"{where}.role")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:  # Messages wants user and assistant to alternate
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(s for s in system if s), turns


def _text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for p, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(f"{where}.content[{p}] must be a text part here", param=f"{where}.content[{p}]")
            texts.append(part["text"])
        return "\n".join(texts)
    raise InvalidRequest(f"{where}.content must be a string or a list of parts", param=f"{where}.content")


def _blocks(content: Any, where: str, assistant: bool = False) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    blocks = []
    for p, part in enumerate(content):
        at = f"{where}.content[{p}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and assistant:
            blocks.append({"type": "text", "text": str(part.get("refusal", ""))})
        elif kind == "image_url" and not assistant:
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise InvalidRequest(f"{at}.image_url.url must be a string", param=f"{at}.image_url")
            blocks.append(image_block(url, f"{at}.image_url"))
        else:
            raise InvalidRequest(f"{at}: a part of type {kind!r} cannot go to an Anthropic model "
                                 f"(text{'' if assistant else ' and image_url'} can)", param=at)
    return blocks


def image_block(url: str, param: str) -> dict[str, Any]:
    """An Anthropic image block for an image URL: a data URL's bytes, or the URL to fetch."""
    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        media_type = head[5:].split(";")[0].lower()
        if not sep or ";base64" not in head:
            raise InvalidRequest(f"{param}: a data URL must be base64 (data:image/png;base64,…)", param=param)
        if media_type == "image/jpg":
            media_type = "image/jpeg"
        if media_type not in _IMAGE_TYPES:
            raise InvalidRequest(f"{param}: Anthropic models take {', '.join(_IMAGE_TYPES)} images, not "
                                 f"{media_type or 'this'}", param=param)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": payload}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest(f"{param} must be a data: or http(s) URL", param=param)


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(call.get("id"), str):
        raise InvalidRequest(f"{where} must be {{id, type: function, function: {{name, arguments}}}}", param=where)
    arguments = fn.get("arguments") or "{}"
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        raise InvalidRequest(f"{where}.function.arguments is not JSON", param=f"{where}.function.arguments") from None
    if not isinstance(parsed, dict):
        raise InvalidRequest(f"{where}.function.arguments must be a JSON object for an Anthropic model",
                             param=f"{where}.function.arguments")
    return {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": parsed}


def _tool(tool: Any, i: int) -> dict[str, Any]:
    fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"tools[{i}] must be a function tool {{type: function, function: {{name, …}}}} "
                             "for an Anthropic model", param=f"tools[{i}]")
    out: dict[str, Any] = {"name": fn["name"],
                           "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
    if isinstance(fn.get("description"), str):
        out["description"] = fn["description"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None or choice == "auto":
        out = {"type": "auto"} if parallel is False else None
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise InvalidRequest("tool_choice must be auto, required, none or {type: function, function: {name}}",
                             param="tool_choice")
    if out is not None and parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def usage(u: dict[str, Any] | None) -> dict[str, Any] | None:
    if not u:
        return None
    prompt = int(u.get("input_tokens") or 0) + int(u.get("cache_read_input_tokens") or 0) + int(
        u.get("cache_creation_input_tokens") or 0)
    completion = int(u.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(u.get("cache_read_input_tokens") or 0),
                                      "cache_write_tokens": int(u.get("cache_creation_input_tokens") or 0)}}


def completion(message: dict[str, Any], model: str) -> dict[str, Any]:
    """A ``chat.completion`` from a Messages ``Message`` (as a dict)."""
    texts, calls = [], []
    for block in message.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": json.dumps(block.get("input") or {})}})
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                           "refusal": None}
    if calls:
        msg["tool_calls"] = calls
    return {"id": f"chatcmpl-{message.get('id', '')}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": msg, "logprobs": None,
                                         "finish_reason": _FINISH.get(message.get("stop_reason") or "", "stop")}],
            "usage": usage(message.get("usage"))}


class ChunkTranslator:
    """Messages stream events (as dicts) → ``chat.completion.chunk`` dicts, in the order OpenAI sends
    them: the role first, content and tool-call deltas, the finish reason, then (``include_usage``)
    one chunk of usage with no choices."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = "chatcmpl-"
        self.created = int(time.time())
        self._tool_index: dict[int, int] = {}  # content block index -> tool call index
        self._usage: dict[str, Any] = {}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                 "model": self.model,
                                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.id = f"chatcmpl-{message.get('id', '')}"
            self._usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = len(self._tool_index)
                self._tool_index[int(event.get("index", 0))] = index
                return [self._chunk({"tool_calls": [{"index": index, "id": block.get("id"), "type": "function",
                                                     "function": {"name": block.get("name"), "arguments": ""}}]})]
            return []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta":
                index = self._tool_index.get(int(event.get("index", 0)))
                if index is not None:
                    return [self._chunk({"tool_calls": [{"index": index,
                                                         "function": {"arguments": delta.get("partial_json", "")}}]})]
            return []
        if kind == "message_delta":
            self._usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            reason = (event.get("delta") or {}).get("stop_reason")
            return [self._chunk({}, _FINISH.get(reason or "", "stop"))]
        if kind == "message_stop" and self.include_usage:
            return [{"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                     "choices": [], "usage": usage(self._usage)}]
        return []


def supported_fields() -> frozenset[str]:
    """Chat fields that reach an Anthropic model (or change nothing), for the dropped-fields note."""
    return frozenset(_IGNORED | set(_SAMPLING) | {"n", "response_format", "stop", "tools", "tool_choice",
                                                  "max_tokens", "max_completion_tokens"})
