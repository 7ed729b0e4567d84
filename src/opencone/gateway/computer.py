"""Computer tools of an emulated response, through the agent loop's own model adapters.

A ``/v1/responses`` request with a computer tool (Lightcone's ``computer_use``, OpenAI's
``computer_use_preview`` or GA ``computer``) for a chat-only upstream (Anthropic, a vLLM
chat VLM in its dialect) is one model turn of a computer-use loop that the *client* runs.
The adapters of agent/adapters/ already speak every such upstream (Anthropic computer use
with its screenshot scaling, Qwen3-VL/Northstar grids, UI-TARS), statelessly; so here the
client's items become the adapter's ``Conversation``, one ``decide`` call is the model's
turn, and its ``Decision`` (canonical actions in screenshot pixels) becomes output items:

* items → conversation: user texts are ``Text``; an image the user sends, or the screenshot
  of ``computer_call_output``, is an ``Observation`` (with how each call of the turn before
  went); consecutive model items (assistant messages, ``computer_call``, ``function_call``)
  are one ``ModelTurn``. A turn this gateway made is replayed from the ``Decision`` it kept
  with its response (the provider's own payload, byte for byte); a turn it did not make
  (items a client wrote or brought from elsewhere) is read back from its actions.
* decision → items: the text (or final answer) as a ``message``; each call's actions as
  ``computer_call`` items in the strict shapes both SDKs validate (int coordinates, a
  ``button`` on every click, ``pending_safety_checks: []``): one action per item for
  ``computer_use`` / ``computer_use_preview``, a batched ``actions`` list per call for GA
  ``computer``; function calls as ``function_call`` items. A triple click is a double click
  and a click (no strict action says three); an action the vocabulary has no word for
  (opening a URL) is said in the message instead.
* coordinates: raw 0–999 for ``tzafon.northstar*`` models and whenever the tool gives no
  display size (Lightcone's semantics since SDK 2.35: its clients denormalise); otherwise
  pixels of the display the tool declares (the screenshot's, scaled if it differs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from opencone.agent.adapters import adapter_for
from opencone.agent.adapters import openai_actions as oa
from opencone.agent.adapters.base import (
    Adapter,
    Call,
    Conversation,
    Decision,
    Function,
    Item,
    ModelCallError,
    ModelOutputError,
    ModelTurn,
    Observation,
    Outcome,
    Screenshot,
    Text,
    Usage,
    clamp_point,
)
from opencone.agent.spec import instructions as harness
from opencone.core import actions as a
from opencone.gateway.clients import UpstreamClients
from opencone.gateway.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamTimeout
from opencone.gateway.registry import ModelEntry
from opencone.gateway.response_items import COMPUTER_TOOLS, item_id

DEFAULT_DISPLAY = (1024, 768)  # the server's default screen, when no screenshot came yet
_ACTIONS: TypeAdapter[a.Action] = TypeAdapter(a.Action)  # type: ignore[arg-type]
_SUFFIX = "__cu"  # a call's second and later computer_call items: <call id>__cu<k>


@dataclass(frozen=True)
class Tool:
    """The request's computer tool: its kind, the display it declares (if any), its environment."""

    kind: str
    display: tuple[int, int] | None
    environment: str

    @classmethod
    def of(cls, tools: list[dict[str, Any]]) -> Tool:
        tool = next(t for t in tools if t.get("type") in COMPUTER_TOOLS)
        w, h = tool.get("display_width"), tool.get("display_height")
        ok = all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 10_000 for v in (w, h))
        env = "browser" if tool.get("environment") == "browser" else "desktop"
        return cls(str(tool["type"]), (w, h) if ok else None, env)  # type: ignore[arg-type]


class Space:
    """The coordinate space of the computer_call items, over a screenshot of ``shot`` pixels."""

    def __init__(self, model: str, tool: Tool, shot: tuple[int, int]) -> None:
        self.shot = shot
        self.grid = model.startswith("tzafon.northstar") or tool.display is None
        self.display = tool.display or shot

    def from_px(self, p: a.Point) -> tuple[int, int]:
        if self.grid:
            return oa.grid(self.shot)[1](p)
        (sw, sh), (dw, dh) = self.shot, self.display
        return round(p.x * dw / sw), round(p.y * dh / sh)

    def to_px(self, x: float, y: float) -> a.Point:
        if self.grid:
            return oa.grid(self.shot)[0](x, y)
        (sw, sh), (dw, dh) = self.shot, self.display
        return clamp_point(x * sw / dw, y * sh / dh, self.shot)


# -- keeping a decision with its response ------------------------------------------------------
def encode(decision: Decision) -> dict[str, Any]:
    return {"calls": [{"id": c.id, "actions": [act.model_dump(mode="json") for act in c.actions], "native": c.native,
                       "name": c.name, "function": c.function, "arguments": c.arguments, "error": c.error}
                      for c in decision.calls],
            "text": decision.text, "done": decision.done, "result": decision.result, "success": decision.success,
            "ask_user": decision.ask_user, "native": decision.native, "dialect": decision.dialect,
            "usage": [decision.usage.input_tokens, decision.usage.output_tokens]}


def decode(data: dict[str, Any]) -> Decision:
    calls = tuple(Call(c["id"], tuple(_ACTIONS.validate_python(x) for x in c["actions"]), c.get("native"),
                       c.get("name", "computer"), c.get("function"), c.get("arguments"), c.get("error"))
                  for c in data["calls"])
    return Decision(calls, data.get("text"), bool(data.get("done")), data.get("result"),
                    bool(data.get("success", True)), data.get("ask_user"), native=data.get("native"),
                    dialect=data.get("dialect"), usage=Usage(*data.get("usage", [0, 0])))


# -- items → conversation ------------------------------------------------------------------------
_MODEL_ITEMS = ("computer_call", "function_call", "reasoning")


def _is_model(item: dict[str, Any]) -> bool:
    return item.get("type") in _MODEL_ITEMS or (item.get("type", "message") == "message"
                                                 and item.get("role") == "assistant")


def _base(call_id: str) -> str:
    head, sep, tail = call_id.rpartition(_SUFFIX)
    return head if sep and tail.isdigit() else call_id


def _shot(url: Any, param: str) -> Screenshot:
    if not isinstance(url, str) or not url.startswith("data:"):
        raise InvalidRequest(f"{param}: the screenshot must be a data: URL or one of this server's screenshot "
                             "links (a model cannot see another URL here)", param=param)
    try:
        return Screenshot.from_data_url(url)
    except Exception:
        raise InvalidRequest(f"{param}: the image cannot be read (JPEG, PNG, WebP or GIF as base64)",
                             param=param) from None


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [p["text"] for p in content or [] if isinstance(p, dict) and isinstance(p.get("text"), str)]


def conversation(model: str, tool: Tool, items: list[dict[str, Any]], kept: dict[str, Decision], body: dict[str, Any],
                 max_images: int) -> tuple[Conversation, Space]:
    """The adapter's conversation for ``items`` (the chain's, then this request's), and the
    coordinate space of the answer. ``kept``: the decisions this gateway made, by item and call id."""
    out: list[Item] = []
    system: list[str] = []
    turn: list[dict[str, Any]] = []
    outputs: list[tuple[int, dict[str, Any]]] = []
    last_shot: Screenshot | None = None
    last_turn: Decision | None = None

    def close_turn() -> None:
        nonlocal turn, last_turn
        if turn:
            last_turn = _decision(turn, kept, model, tool, last_shot)
            out.append(ModelTurn(last_turn))
            turn = []

    def close_outputs() -> None:
        nonlocal outputs, last_shot
        if not outputs:
            return
        shot = last_shot
        outcomes: list[Outcome] = []
        for i, item in outputs:
            call_id = _base(str(item.get("call_id", "")))
            if item.get("type") == "computer_call_output":
                shot = _shot((item.get("output") or {}).get("image_url"), f"input[{i}].output.image_url")
                if not any(o.call_id == call_id for o in outcomes):
                    outcomes.append(Outcome(call_id, True))
            else:
                text = item.get("output")
                outcomes.append(Outcome(call_id, True, output=text if isinstance(text, str) else json.dumps(text)))
        if shot is None:
            raise InvalidRequest(f"input[{outputs[0][0]}]: a tool output came before any screenshot; send one "
                                 "(an input_image, or a computer_call_output)", param=f"input[{outputs[0][0]}]")
        errors = {c.id: c.error for c in (last_turn.calls if last_turn else ()) if c.error}
        outcomes = [Outcome(o.call_id, False, errors[o.call_id]) if o.call_id in errors else o for o in outcomes]
        out.append(Observation(shot, tuple(outcomes)))
        last_shot, outputs = shot, []

    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind in ("computer_call_output", "function_call_output"):
            close_turn()
            outputs.append((i, item))
            continue
        if _is_model(item):
            close_outputs()
            turn.append(item)
            continue
        close_turn()
        close_outputs()
        if kind != "message":
            raise InvalidRequest(f"input[{i}]: an item of type {kind!r} cannot go to {model} with a computer tool "
                                 "(messages, computer_call, computer_call_output, function_call, "
                                 "function_call_output and reasoning can)", param=f"input[{i}].type")
        role = item.get("role")
        if role in ("system", "developer"):
            system.extend(_texts(item.get("content")))
            continue
        content = item.get("content")
        for text in _texts(content):
            out.append(Text(text, "user", "instruction"))
        for p, part in enumerate(content if isinstance(content, list) else []):
            if isinstance(part, dict) and part.get("type") == "input_image":
                last_shot = _shot(part.get("image_url"), f"input[{i}].content[{p}].image_url")
                out.append(Observation(last_shot))
    close_turn()
    close_outputs()
    shot = (last_shot.width, last_shot.height) if last_shot else (tool.display or DEFAULT_DISPLAY)
    extra = "\n\n".join(s for s in [body.get("instructions"), *system] if isinstance(s, str) and s.strip())
    functions = tuple(Function(t["name"], t.get("description") or "",
                               t.get("parameters") or {"type": "object", "properties": {}})
                      for t in body.get("tools") or []
                      if t.get("type") == "function" and isinstance(t.get("name"), str))
    max_tokens = body.get("max_output_tokens")
    conv = Conversation(harness(tool.environment, shot[0], shot[1], extra or None), tuple(out), shot,
                        tool.environment,  # type: ignore[arg-type]
                        body.get("temperature"), max_images, max_tokens if isinstance(max_tokens, int) else 4096,
                        functions)
    return conv, Space(model, tool, shot)


def _decision(items: list[dict[str, Any]], kept: dict[str, Decision], model: str, tool: Tool,
              shot: Screenshot | None) -> Decision:
    """A past turn: the decision this gateway made for it, else read back from its items."""
    for item in items:
        for key in (item.get("id"), item.get("call_id")):
            if isinstance(key, str) and key in kept:
                return kept[key]
    space = Space(model, tool, (shot.width, shot.height) if shot else (tool.display or DEFAULT_DISPLAY))
    calls: list[Call] = []
    texts: list[str] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            texts.extend(_texts(item.get("content")))
        elif kind == "function_call":
            try:
                arguments = json.loads(item.get("arguments") or "{}")
            except ValueError:
                arguments = {}
            calls.append(Call(str(item.get("call_id")), (), item, str(item.get("name")), str(item.get("name")),
                              arguments if isinstance(arguments, dict) else {}))
        elif kind == "computer_call":
            call_id = _base(str(item.get("call_id")))
            acts = item.get("actions") if isinstance(item.get("actions"), list) else [item.get("action")]
            try:
                actions = tuple(x for act in acts for x in oa.from_openai(act, space.to_px))
            except oa.ActionError as exc:
                raise InvalidRequest(f"a computer_call of the input cannot be read: {exc}", param="input") from None
            if calls and calls[-1].id == call_id:  # one call's later items (<id>__cu<k>)
                calls[-1] = Call(call_id, calls[-1].actions + actions, None, calls[-1].name)
            else:
                calls.append(Call(call_id, actions, None, (acts[0] or {}).get("type", "computer")))
    text = "\n".join(texts) or None
    return Decision(tuple(calls), text, not calls, text if not calls else None)


# -- decision → items ------------------------------------------------------------------------------
def _openai_actions(actions: tuple[a.Action, ...], space: Space, notes: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for act in actions:
        if isinstance(act, a.Click) and act.count == 3 and act.at is not None:
            x, y = space.from_px(act.at)
            out += [{"type": "double_click", "x": x, "y": y}, {"type": "click", "button": "left", "x": x, "y": y}]
            continue
        said = oa.to_openai(act, space.from_px)
        if said is None:
            notes.append(f"(the model also asked to {act.kind.replace('_', ' ')}"
                         f"{' ' + act.url if isinstance(act, a.Navigate) else ''}, which the computer tool "
                         "cannot say)")
            continue
        out.append(said)
    return out


def render(decision: Decision, tool: Tool, space: Space) -> list[dict[str, Any]]:
    """Output items for a decision (see the module's docstring)."""
    notes: list[str] = []
    calls: list[dict[str, Any]] = []
    for call in decision.calls:
        if call.function:
            calls.append({"type": "function_call", "id": item_id("function_call"), "call_id": call.id,
                          "name": call.function, "arguments": json.dumps(call.arguments or {}),
                          "status": "completed"})
            continue
        if decision.done or call.name in ("terminate", "answer", "finished", "call_user"):
            continue
        actions = [] if call.error else _openai_actions(call.actions, space, notes)
        if not actions:
            actions = [{"type": "screenshot"}]  # (a call not read, or nothing to do: show the screen)
        if tool.kind == "computer":
            calls.append(_computer_call(call.id, {"actions": actions}))
        else:
            calls += [_computer_call(call.id if k == 0 else f"{call.id}{_SUFFIX}{k}", {"action": act})
                      for k, act in enumerate(actions)]
    text = decision.ask_user or (decision.result if decision.done and decision.result else decision.text)
    text = "\n".join(t for t in [text, *notes] if t)
    message = [{"type": "message", "id": item_id("message"), "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}] if text else []
    return message + calls


def _computer_call(call_id: str, what: dict[str, Any]) -> dict[str, Any]:
    return {"type": "computer_call", "id": item_id("computer_call"), "call_id": call_id, "status": "completed",
            "pending_safety_checks": [], **what}


# -- the model turn -------------------------------------------------------------------------------------
class ComputerModels:
    """One adapter per model entry (they hold nothing per conversation)."""

    def __init__(self, upstreams: UpstreamClients) -> None:
        self.upstreams = upstreams
        self._adapters: dict[str, Adapter] = {}

    def adapter(self, entry: ModelEntry) -> Adapter:
        found = self._adapters.get(entry.id)
        if found is None:
            client = self.upstreams.anthropic(entry) if entry.provider == "anthropic" else self.upstreams.openai(entry)
            try:
                found = adapter_for(entry, client)
            except ValueError as exc:
                raise InvalidRequest(f"{entry.id} cannot take a computer tool: {exc}", param="tools") from None
            self._adapters[entry.id] = found
        return found

    async def decide(self, entry: ModelEntry, conv: Conversation) -> Decision:
        """One model turn; upstream failures as the gateway says them. An answer with no action
        in it is the model's final text (a message), as it would be from a Responses API."""
        try:
            return await self.adapter(entry).decide(conv)
        except ModelOutputError as exc:
            text = _text_of(exc.native)
            if text:
                return Decision(text=text, done=True, result=text, usage=exc.usage)
            raise UpstreamError(f"{entry.id}'s answer cannot be used: {exc}") from None
        except ModelCallError as exc:
            raise _call_error(exc, entry.id) from None


def _text_of(native: Any) -> str | None:
    if isinstance(native, dict):
        content = native.get("content")
        if isinstance(content, str):
            return content.strip() or None
        if isinstance(content, list):
            return "\n".join(b.get("text", "") for b in content if isinstance(b, dict)
                             and b.get("type") == "text").strip() or None
    return None


def _call_error(exc: ModelCallError, where: str) -> GatewayError:
    status = exc.status
    if status in (400, 404, 409, 413, 422, 429):
        headers = {"retry-after": str(int(exc.retry_after))} if status == 429 and exc.retry_after else {}
        err = GatewayError(str(exc), status=status, headers=headers)
        if status == 429:
            err.type = "rate_limit_error"
        return err
    if status is None and "in time" in str(exc):
        return UpstreamTimeout(f"{where}: {exc}")
    return UpstreamError(f"{where}: {exc}")


__all__ = ["ComputerModels", "Space", "Tool", "conversation", "decode", "encode", "render"]
