"""OpenAI's Responses API (``/v1/responses``), with its computer tools, as the ``openai`` SDK
(and the ``tzafon`` SDK, for the Lightcone/Northstar flavour) parse it.

Flavours, chosen by the request's tools and model:

* ``computer_use_preview`` tool: one ``action`` per ``computer_call``, in pixels of the display
  the tool declares (``display_width``/``display_height``); a ``reasoning`` item comes first.
* GA ``computer`` tool: batched ``actions`` per ``computer_call``, in pixels of the screenshot.
* Northstar (a ``tzafon.northstar*`` model, or the Lightcone ``computer_use`` tool): one
  ``action``, coordinates raw 0–999; done = a ``message`` with the answer plus a call to the
  ``done`` function when the request declares one, else a ``computer_call`` whose action is
  ``{"type": "terminate", "status": "success", "result": <answer>}``.
* no computer tool: plain text, an echo of the newest user text.

The fake keeps its own store, so ``previous_response_id`` chains work, and it checks what
the real API checks: every tool output answers a call of the conversation, every call has its
output, a resent ``computer_call`` comes with its ``reasoning`` item, pending safety checks are
acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from . import policy
from .core import Call, State, answer_json, begin, new_id, pieces, reject, sse, stream_response
from .policy import Click, Done, ImageRef, Plan, Say, Space, Type, View, Wait

COMPUTER_TOOLS = ("computer_use_preview", "computer", "computer_use")
MODEL_ITEMS = {"computer_call", "function_call", "reasoning", "custom_tool_call", "web_search_call",
               "file_search_call", "image_generation_call", "code_interpreter_call", "local_shell_call",
               "shell_call", "mcp_call", "mcp_list_tools"}
CALLS = {"computer_call": "computer_call_output", "function_call": "function_call_output",
         "custom_tool_call": "custom_tool_call_output"}
OUTPUTS = {v: k for k, v in CALLS.items()}


def _store(state: State) -> dict[str, Any]:
    return state.store.setdefault("responses", {"responses": {}, "reasoning": {}, "checks": {}})


# -- reading a request ------------------------------------------------------------------------------------
def normalise(inp: Any) -> list[dict[str, Any]]:
    if isinstance(inp, str):
        return [{"type": "message", "role": "user", "content": inp}]
    if not isinstance(inp, list):
        raise ValueError("input must be a string or a list of items")
    items = []
    for item in inp:
        if not isinstance(item, dict):
            raise ValueError(f"input items must be objects, not {type(item).__name__}")
        if "type" not in item and "role" in item:
            item = {"type": "message", **item}
        items.append(item)
    return items


def is_model_item(item: dict[str, Any]) -> bool:
    kind = item.get("type")
    return kind in MODEL_ITEMS or (kind == "message" and item.get("role") == "assistant")


def texts_of(item: dict[str, Any]) -> list[str]:
    if item.get("type") != "message" or item.get("role") != "user":
        return []
    content = item.get("content")
    if isinstance(content, str):
        return [content]
    return [p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "input_text"]


def _ref(part: dict[str, Any]) -> ImageRef:
    url = part.get("image_url")
    if isinstance(url, str):
        return ImageRef(data_url=url)
    return ImageRef(data_url=f"file_id:{part.get('file_id')}")


def images_of(item: dict[str, Any]) -> list[ImageRef]:
    kind = item.get("type")
    if kind == "message" and item.get("role") == "user" and isinstance(item.get("content"), list):
        return [_ref(p) for p in item["content"] if isinstance(p, dict) and p.get("type") == "input_image"]
    if kind in ("computer_call_output", "function_call_output"):
        out = item.get("output")
        if isinstance(out, dict) and out.get("type") in ("computer_screenshot", "input_image"):
            return [_ref(out)]
        if isinstance(out, list):
            return [_ref(p) for p in out if isinstance(p, dict) and p.get("type") == "input_image"]
    return []


def view_of(items: list[dict[str, Any]]) -> View:
    view = View()
    last_model = max((i for i, it in enumerate(items) if is_model_item(it)), default=-1)
    previous_was_model = False
    for i, item in enumerate(items):
        model = is_model_item(item)
        if model and not previous_was_model:
            view.model_turns += 1
        previous_was_model = model
        texts, images = texts_of(item), images_of(item)
        view.add(texts, images, latest=i > last_model)
    return view


def check_conversation(state: State, items: list[dict[str, Any]], new: list[dict[str, Any]]) -> str | None:
    """What the real API refuses (400) about a conversation, or None."""
    store = _store(state)
    calls: dict[str, str] = {}
    answered: set[str] = set()
    for item in items:
        kind = item.get("type")
        if kind in CALLS:
            calls[str(item.get("call_id"))] = kind
        elif kind in OUTPUTS:
            call_id = str(item.get("call_id"))
            if call_id not in calls:
                return f"No tool call found for {kind} with call_id {call_id}."
            answered.add(call_id)
            pending = store["checks"].get(call_id)
            if pending:
                acked = {c.get("id") for c in item.get("acknowledged_safety_checks") or [] if isinstance(c, dict)}
                missing = [c for c in pending if c not in acked]
                if missing:
                    return (f"The computer_call {call_id} has pending safety checks that were not acknowledged: "
                            f"{', '.join(missing)} (send them back in acknowledged_safety_checks).")
    unanswered = [c for c in calls if c not in answered]
    if unanswered:
        return f"No tool output found for {calls[unanswered[0]].replace('_', ' ')} {unanswered[0]}."
    ids = {item.get("id") for item in items}
    for item in new:
        rs = store["reasoning"].get(item.get("id")) if item.get("type") == "computer_call" else None
        if rs is not None and rs not in ids:
            return (f"Item '{item.get('id')}' of type 'computer_call' was provided without its required "
                    f"'reasoning' item: '{rs}'.")
    return None


def flavour(body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    computer = next((t for t in tools if t.get("type") in COMPUTER_TOOLS), None)
    if computer is None or body.get("tool_choice") == "none":
        return "text", None
    if str(body.get("model", "")).startswith("tzafon.northstar") or computer["type"] == "computer_use":
        return "northstar", computer
    return ("ga" if computer["type"] == "computer" else "preview"), computer


def has_function(body: dict[str, Any], name: str) -> bool:
    return any(isinstance(t, dict) and t.get("type") == "function" and t.get("name") == name
               for t in body.get("tools") or [])


# -- answering ---------------------------------------------------------------------------------------------
def message_item(text: str) -> dict[str, Any]:
    return {"type": "message", "id": new_id("msg_"), "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def openai_action(step: policy.Step, space: Space) -> dict[str, Any]:
    if isinstance(step, Click):
        x, y = space.point(step.x, step.y)
        return {"type": "click", "button": "left", "x": x, "y": y}
    if isinstance(step, Type):
        return {"type": "type", "text": step.text}
    if isinstance(step, Wait):
        return {"type": "wait"}
    return {"type": "screenshot"}


def computer_call(call: Call, key: str, value: Any) -> dict[str, Any]:
    item = {"type": "computer_call", "id": new_id("cu_"), "call_id": new_id("call_"), "status": "completed",
            "pending_safety_checks": [], key: value}
    if call.fault is not None and call.fault.kind == "safety_check":
        check = {"id": new_id("cu_sc_"), "code": "malicious_instructions",
                 "message": "A safety check scripted by the fake: acknowledge it to go on."}
        item["pending_safety_checks"] = [check]
        _store(call.state)["checks"][item["call_id"]] = [check["id"]]
    return item


def plan_for(call: Call, kind: str, tool: dict[str, Any] | None, view: View) -> Plan:
    if call.settings.mode == "fast":
        return policy.fast(view, call.settings.fast_steps)
    plan = policy.decide(view, can_ask_screenshot=True)
    if kind == "preview" and tool is not None and call.settings.display_mismatch == "refuse":
        why = policy.display_mismatch(plan.image, int(tool.get("display_width") or 0),
                                      int(tool.get("display_height") or 0))
        if why:
            plan.steps = [Say(why)]
    return plan


def outputs(call: Call, kind: str, tool: dict[str, Any] | None, view: View) -> tuple[list[dict[str, Any]], Plan]:
    if kind == "text":
        return [message_item(echo(view))], Plan([Say(echo(view))])
    plan = plan_for(call, kind, tool, view)
    garbage = call.fault is not None and call.fault.kind == "garbage"
    w, h = plan.size
    if kind == "preview":
        dw = int(tool.get("display_width") or w) if tool else w
        dh = int(tool.get("display_height") or h) if tool else h
        space = Space("display", w, h, dw, dh)
    else:
        space = Space("grid999" if kind == "northstar" else "pixels", w, h)
    if garbage:
        return [computer_call(call, "actions" if kind == "ga" else "action",
                              [{"type": "dance", "x": "left-ish"}] if kind == "ga" else
                              {"type": "dance", "x": "left-ish"})], plan
    first = plan.first
    items: list[dict[str, Any]] = []
    if isinstance(first, Done | Say):
        text = first.answer if isinstance(first, Done) else first.text
        items.append(message_item(text))
        if kind == "northstar" and isinstance(first, Done):
            if has_function(call.body, "done"):
                items.append({"type": "function_call", "id": new_id("fc_"), "call_id": new_id("call_"),
                              "name": "done", "arguments": json.dumps({"message": text}), "status": "completed"})
            else:
                items.append(computer_call(call, "action", {"type": "terminate", "status": "success",
                                                            "result": text}))
        return items, plan
    if kind != "northstar":
        reasoning = {"type": "reasoning", "id": new_id("rs_"),
                     "summary": [{"type": "summary_text", "text": policy.intent(first)}]}
        items.append(reasoning)
    if kind == "ga":
        cu = computer_call(call, "actions", [openai_action(s, space) for s in plan.actions])
    else:
        cu = computer_call(call, "action", openai_action(first, space))
    if kind != "northstar":
        _store(call.state)["reasoning"][cu["id"]] = items[0]["id"]
    items.append(cu)
    return items, plan


def echo(view: View) -> str:
    said = view.latest_texts[-1] if view.latest_texts else (view.user_texts[-1] if view.user_texts else "")
    images = [i.describe(decode=False) for i in view.latest_images]
    shown = "; ".join(f"{d['w']}x{d['h']} {d['format']}" if "w" in d else f"unreadable ({d['error']})"
                      for d in images)
    return f"echo: {said}" + (f" [images: {shown}]" if shown else "")


def response_object(call: Call, rid: str, output: list[dict[str, Any]], status: str, prev: str | None
                    ) -> dict[str, Any]:
    body = call.body
    out_tokens = max(1, len(json.dumps(output)) // 4)
    now = int(time.time())
    return {
        "id": rid, "object": "response", "created_at": now, "status": status,
        "background": bool(body.get("background")), "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model") or "computer-use-preview", "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": prev,
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": body.get("store", True) is not False, "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}}, "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [], "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"), "user": body.get("user"),
        "metadata": body.get("metadata") or {}, "completed_at": now if status == "completed" else None,
        "usage": {"input_tokens": call.input_tokens(),
                  "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                  "output_tokens": out_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": call.input_tokens() + out_tokens},
    }


def stream_events(response: dict[str, Any], chunk: int, background: bool = False) -> list[dict[str, Any]]:
    """The events of one response, in the order ``client.responses.stream()`` enforces."""
    events: list[dict[str, Any]] = []

    def emit(kind: str, **data: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **data})

    start = {**response, "status": "queued" if background else "in_progress", "output": [], "usage": None,
             "completed_at": None}
    emit("response.created", response=start)
    if background:
        emit("response.queued", response=start)
    emit("response.in_progress", response={**start, "status": "in_progress"})
    for index, item in enumerate(response["output"]):
        ids = {"item_id": item.get("id"), "output_index": index}
        kind = item["type"]
        if kind == "message":
            emit("response.output_item.added", output_index=index,
                 item={**item, "status": "in_progress", "content": []})
            for c, part in enumerate(item["content"]):
                emit("response.content_part.added", **ids, content_index=c, part={**part, "text": ""})
                for delta in pieces(part["text"], chunk):
                    emit("response.output_text.delta", **ids, content_index=c, delta=delta, logprobs=[])
                emit("response.output_text.done", **ids, content_index=c, text=part["text"], logprobs=[])
                emit("response.content_part.done", **ids, content_index=c, part=part)
        elif kind == "function_call":
            emit("response.output_item.added", output_index=index,
                 item={**item, "status": "in_progress", "arguments": ""})
            for delta in pieces(item["arguments"], chunk):
                emit("response.function_call_arguments.delta", **ids, delta=delta)
            emit("response.function_call_arguments.done", **ids, arguments=item["arguments"], name=item["name"])
        elif kind == "reasoning":
            emit("response.output_item.added", output_index=index, item={**item, "summary": []})
            for s, part in enumerate(item["summary"]):
                emit("response.reasoning_summary_part.added", **ids, summary_index=s, part={**part, "text": ""})
                for delta in pieces(part["text"], chunk):
                    emit("response.reasoning_summary_text.delta", **ids, summary_index=s, delta=delta)
                emit("response.reasoning_summary_text.done", **ids, summary_index=s, text=part["text"])
                emit("response.reasoning_summary_part.done", **ids, summary_index=s, part=part)
        else:
            emit("response.output_item.added", output_index=index, item={**item, "status": "in_progress"})
        emit("response.output_item.done", output_index=index, item=item)
    emit("response.completed", response=response)
    return events


def frames(events: list[dict[str, Any]]) -> list[bytes]:
    return [sse(e["type"], e) for e in events]


# -- the endpoints ------------------------------------------------------------------------------------------
async def create(request: Request) -> Response:
    state: State = request.app.state.fake
    call = await begin(request, state, "openai", "responses", generate=True)
    if isinstance(call, Response):
        return call
    body = call.body
    store = _store(state)
    try:
        new = normalise(body.get("input", []))
    except ValueError as exc:
        return reject(call, "openai", 400, str(exc), param="input")
    prev_id = body.get("previous_response_id")
    prior: list[dict[str, Any]] = []
    if prev_id:
        record = store["responses"].get(prev_id)
        if record is None:
            return reject(call, "openai", 400, f"Previous response with id '{prev_id}' not found.",
                          param="previous_response_id", code="previous_response_not_found")
        prior = record["conversation"]
    items = prior + new
    why = check_conversation(state, items, new)
    if why:
        return reject(call, "openai", 400, why, param="input")
    kind, tool = flavour(body)
    view = view_of(items)
    output, plan = outputs(call, kind, tool, view)
    rid = new_id("resp_")
    background = bool(body.get("background"))
    stored = body.get("store", True) is not False
    if background and not stored:
        return reject(call, "openai", 400, "Background mode requires store=true.", param="background")
    call.note(flavour=kind, view=view.summary(call.settings.mode != "fast"), decision=plan.describe(), reply=output,
              response_id=rid)
    final = response_object(call, rid, output, "completed", prev_id)
    events = stream_events(final, call.settings.chunk, background)
    record = {"response": final, "conversation": items + output, "input_items": _with_ids(new),
              "events": events, "background": background, "done": asyncio.Event(), "task": None,
              "visible": not background}
    if stored:
        store["responses"][rid] = record
    if background:
        wait = call.settings.latency + (float(call.fault.value) if call.fault and call.fault.kind == "delay" else 0)
        record["response"] = {**final, "status": "queued", "output": [], "completed_at": None, "usage": None}
        record["task"] = asyncio.create_task(_finish_later(record, final, wait))
        if not call.stream:
            return answer_json(call, record["response"])
        return _replay(call, record, -1)
    record["done"].set()
    if call.stream:
        return stream_response(call, frames(events))
    return answer_json(call, final)


async def _finish_later(record: dict[str, Any], final: dict[str, Any], wait: float) -> None:
    record["response"] = {**record["response"], "status": "in_progress"}
    await asyncio.sleep(wait)
    record["response"] = final
    record["done"].set()


def _with_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        if "id" not in item:
            prefix = "msg_" if item.get("type") == "message" else "cuo_" if item.get("type") == \
                "computer_call_output" else "item_"
            item = {"id": new_id(prefix), **item}
        if item.get("type") == "message":
            item = {"status": "completed", **item}
        out.append(item)
    return out


def _replay(call: Call, record: dict[str, Any], after: int) -> StreamingResponse:
    """The stored events past ``after`` (``GET …?stream=true&starting_after=N``, or a background
    stream): those ready at once, the rest once the response is done."""
    events: list[dict[str, Any]] = record["events"]
    interval = call.settings.stream_interval
    call.entry.update(status=200)

    async def body():  # type: ignore[no-untyped-def]
        try:
            for event in events:
                if event["sequence_number"] <= after:
                    continue
                if event["type"] == "response.in_progress" and not record["done"].is_set():
                    await record["done"].wait()
                if record["response"]["status"] == "cancelled":
                    return
                if interval:
                    await asyncio.sleep(interval)
                yield sse(event["type"], event)
        finally:
            call.state.finish(call.entry)

    return StreamingResponse(body(), media_type="text/event-stream")


async def _lookup(request: Request, api: str) -> tuple[Call | Response, dict[str, Any] | None]:
    state: State = request.app.state.fake
    call = await begin(request, state, "openai", api)
    if isinstance(call, Response):
        return call, None
    rid = request.path_params["response_id"]
    record = _store(state)["responses"].get(rid)
    call.note(response_id=rid)
    if record is None:
        return reject(call, "openai", 404, f"Response with id '{rid}' not found."), None
    return call, record


async def retrieve(request: Request) -> Response:
    call, record = await _lookup(request, "responses.retrieve")
    if isinstance(call, Response) or record is None:
        return call  # type: ignore[return-value]
    if request.query_params.get("stream") in ("true", "1"):
        after = int(request.query_params.get("starting_after", -1))
        return _replay(call, record, after)
    return answer_json(call, record["response"])


async def delete(request: Request) -> Response:
    call, record = await _lookup(request, "responses.delete")
    if isinstance(call, Response) or record is None:
        return call  # type: ignore[return-value]
    rid = record["response"]["id"]
    if record["task"] is not None:
        record["task"].cancel()
    del _store(call.state)["responses"][rid]
    return answer_json(call, {"id": rid, "object": "response.deleted", "deleted": True})


async def cancel(request: Request) -> Response:
    call, record = await _lookup(request, "responses.cancel")
    if isinstance(call, Response) or record is None:
        return call  # type: ignore[return-value]
    if not record["background"]:
        return reject(call, "openai", 400, "Only background responses can be cancelled.")
    if not record["done"].is_set():
        record["task"].cancel()
        record["response"] = {**record["response"], "status": "cancelled", "output": [], "completed_at": None}
        record["done"].set()
    return answer_json(call, record["response"])


async def input_items(request: Request) -> Response:
    call, record = await _lookup(request, "responses.input_items")
    if isinstance(call, Response) or record is None:
        return call  # type: ignore[return-value]
    data = list(record["input_items"])
    if request.query_params.get("order", "desc") == "desc":
        data.reverse()
    return answer_json(call, {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None, "has_more": False})

