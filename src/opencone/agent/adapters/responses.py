"""Responses-API computer tools: OpenAI's (``computer_use_preview``, GA ``computer`` with batched
``actions``) and Lightcone's (``computer_use``, raw 0–999 coordinates, Northstar's actions).

The transcript is resent whole each call (no ``previous_response_id``: the adapter is stateless
and the upstream need not store anything). A past turn replays its output items exactly
(reasoning items with their ``computer_call``), and each call gets one ``computer_call_output``
with the screenshot taken after the turn's actions, acknowledging the checks it carried. Turns
whose screenshot fell out of the ``max_images`` window are folded into one assistant line each
(what was done), because a ``computer_call_output`` must carry an image.
"""

from __future__ import annotations

import json
from typing import Any

from openai import AsyncOpenAI

from opencone.agent.adapters import openai_actions as oa
from opencone.agent.adapters.base import (
    OMITTED,
    Call,
    Conversation,
    Decision,
    ModelCallError,
    ModelOutputError,
    ModelTurn,
    Observation,
    Outcome,
    Screenshot,
    Text,
    TextDelta,
    Usage,
    previous_turn,
)
from opencone.agent.adapters.upstream import dumped, json_body, mapped, sdk_arguments
from opencone.core import actions as a

_KEPT = ("reasoning", "message", "computer_call", "function_call")
DONE_ACTIONS = ("terminate", "answer", "done")  # Northstar's ways of ending a task


def describe(action: a.Action) -> str:
    """A canonical action in a few words, for the lines that stand in for folded turns."""
    match action:
        case a.Click(at=p, button=b, count=n):
            what = {1: "click", 2: "double-click", 3: "triple-click"}[n]
            return f"{b} {what} at ({p.x:.0f}, {p.y:.0f})" if b != "left" else f"{what} at ({p.x:.0f}, {p.y:.0f})"
        case a.TypeText(text=t):
            return f"typed {t[:80]!r}"
        case a.PressKeys(keys=k):
            return "pressed " + "+".join(k)
        case a.Scroll(dx=dx, dy=dy):
            return f"scrolled ({dx:.0f}, {dy:.0f})"
        case a.Drag(path=path):
            return f"dragged from ({path[0].x:.0f}, {path[0].y:.0f}) to ({path[-1].x:.0f}, {path[-1].y:.0f})"
        case a.MoveMouse(at=p):
            return f"moved the pointer to ({p.x:.0f}, {p.y:.0f})"
        case a.Navigate(url=u):
            return f"opened {u[:100]}"
    return action.kind.replace("_", " ")


def summary(decision: Decision, outcomes: dict[str, Outcome]) -> str:
    """One line for a folded turn: what the model did and how it went."""
    parts = []
    for call in decision.calls:
        what = ", ".join(describe(x) for x in call.actions) or call.function or call.name
        o = outcomes.get(call.id)
        parts.append(what + (f" (failed: {o.error})" if o is not None and not o.ok else ""))
    said = f" {decision.text.strip()}" if decision.text else ""
    return f"(earlier step{said}; actions: {'; '.join(parts) or 'none'})"


class ResponsesAdapter:
    """OpenAI's Responses API with its computer tool, coordinates in screenshot pixels."""

    dialect = "openai-responses"
    what = "the OpenAI upstream"

    def __init__(self, upstream_model: str, client: AsyncOpenAI) -> None:
        self.model = upstream_model
        self.client = client
        self.preview = upstream_model.startswith("computer-use-preview")

    # -- mapping of coordinates and the tool ------------------------------------------------
    def mapping(self, display: tuple[int, int]) -> tuple[oa.ToPixels, oa.FromPixels]:
        return oa.pixels(display)

    def tool(self, conv: Conversation) -> dict[str, Any]:
        if not self.preview:
            return {"type": "computer"}
        w, h = conv.display
        env = "browser" if conv.environment == "browser" else "linux"
        return {"type": "computer_use_preview", "display_width": w, "display_height": h, "environment": env}

    def extra(self, conv: Conversation) -> dict[str, Any]:
        return {"truncation": "auto"}

    # -- request ------------------------------------------------------------------------------
    def request(self, conv: Conversation) -> dict[str, Any]:
        tools: list[dict[str, Any]] = [self.tool(conv)]
        tools += [{"type": "function", "name": f.name, "description": f.description, "parameters": f.parameters}
                  for f in conv.functions]
        body: dict[str, Any] = {"model": self.model, "instructions": conv.instructions,
                                "input": strip_private(self.items(conv)), "tools": tools,
                                "max_output_tokens": conv.max_output_tokens, **self.extra(conv)}
        if conv.temperature is not None:
            body["temperature"] = conv.temperature
        return body

    def items(self, conv: Conversation) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        recent = conv.recent_images()
        items = conv.items
        _, from_px = self.mapping(conv.display)
        for n, item in enumerate(items):
            if isinstance(item, Text):
                if item.role == "assistant":
                    out.append({"role": "assistant", "content": item.text})
                else:
                    _user(out, {"type": "input_text", "text": item.text})
            elif isinstance(item, ModelTurn):
                nxt = _next_observation(items, n)
                if nxt is not None and nxt not in recent:
                    obs = items[nxt]
                    assert isinstance(obs, Observation)
                    out.append({"role": "assistant", "content": summary(
                        item.decision, {o.call_id: o for o in obs.outcomes})})
                else:
                    out.extend(self.turn_items(item.decision, from_px))
            elif isinstance(item, Observation):
                turn = previous_turn(items, n)
                if turn is None or n not in recent:  # a first screen, or the screen after a folded turn
                    _user(out, _image(item.screenshot) if n in recent else {"type": "input_text", "text": OMITTED})
                else:
                    out.extend(self.outputs(turn.decision, item))
        return out

    def turn_items(self, decision: Decision, from_px: oa.FromPixels) -> list[dict[str, Any]]:
        """A past turn: its own output items when it came from this dialect, else written anew."""
        if decision.dialect == self.dialect and isinstance(decision.native, list):
            return [dict(i) for i in decision.native if isinstance(i, dict) and i.get("type") in _KEPT]
        out: list[dict[str, Any]] = []
        if decision.text:
            out.append({"role": "assistant", "content": decision.text})
        for call in decision.calls:
            if call.function:
                out.append({"type": "function_call", "call_id": call.id, "name": call.function,
                            "arguments": json.dumps(call.arguments or {})})
                continue
            acts = [x for x in (oa.to_openai(act, from_px) for act in call.actions) if x is not None]
            item: dict[str, Any] = {"type": "computer_call", "id": _item_id(call.id), "call_id": call.id,
                                    "status": "completed", "pending_safety_checks": []}
            if self.preview or len(acts) == 1:
                item["action"] = acts[0] if acts else {"type": "screenshot"}
            else:
                item["actions"] = acts or [{"type": "screenshot"}]
            out.append(item)
        return out

    def outputs(self, decision: Decision, obs: Observation) -> list[dict[str, Any]]:
        """One output per call of the turn; failures also in words, which a screenshot cannot say."""
        by_id = {o.call_id: o for o in obs.outcomes}
        out: list[dict[str, Any]] = []
        problems = []
        for call in decision.calls:
            outcome = by_id.get(call.id)
            if call.function:
                text = outcome.output if outcome is not None and outcome.output is not None else \
                    _outcome(outcome, call)
                out.append({"type": "function_call_output", "call_id": call.id, "output": text})
                continue
            item: dict[str, Any] = {"type": "computer_call_output", "call_id": call.id,
                                    "output": {"type": "computer_screenshot", "image_url": obs.screenshot.data_url()}}
            checks = call.native.get("pending_safety_checks") if isinstance(call.native, dict) else None
            if checks:
                item["acknowledged_safety_checks"] = checks
            out.append(item)
            if call.error or (outcome is not None and not outcome.ok):
                problems.append(_outcome(outcome, call))
        if problems:
            _user(out, {"type": "input_text", "text": "The last actions did not all work: " + "; ".join(problems)})
        return out

    # -- reply ----------------------------------------------------------------------------------
    def parse(self, reply: dict[str, Any], conv: Conversation) -> Decision:
        output = reply.get("output")
        usage = _usage(reply.get("usage"))
        if reply.get("status") == "failed" or reply.get("error"):
            err = reply.get("error") or {}
            message = err.get("message") if isinstance(err, dict) else str(err)
            raise ModelCallError(f"{self.what} failed the response: {message or 'no reason given'}", retryable=True)
        if not isinstance(output, list):
            raise ModelOutputError(f"{self.what} answered without an output list", reply, usage)
        to_px, _ = self.mapping(conv.display)
        calls: list[Call] = []
        texts: list[str] = []
        checks: list[dict[str, Any]] = []
        done_result: str | None = None
        finished = False
        success = True
        for item in output:
            if not isinstance(item, dict):
                raise ModelOutputError(f"{self.what} answered an output item that is not an object", reply, usage)
            kind = item.get("type")
            if kind == "message":
                texts += _message_texts(item)
            elif kind == "reasoning":
                texts += [s.get("text", "") for s in item.get("summary") or [] if isinstance(s, dict)
                          and s.get("text")]
            elif kind == "function_call":
                call, ended = self._function(item)
                if ended is not None:
                    finished, done_result = True, ended
                else:
                    calls.append(call)
            elif kind == "computer_call":
                call, ended, ok = self._computer_call(item, to_px)
                checks += [c for c in item.get("pending_safety_checks") or [] if isinstance(c, dict)]
                if ended is not None:
                    finished, done_result, success = True, ended, ok
                    if not call.actions:
                        continue
                calls.append(call)
        text = "\n".join(t for t in texts if t) or None
        if not calls and not finished and text is None and not output:
            raise ModelOutputError(f"{self.what} answered with an empty output", reply, usage)
        if finished or not calls:
            # no computer_call is the Responses API's way of saying the task is over
            return Decision(tuple(calls) if finished else (), text, True, done_result or text, success,
                            safety_checks=tuple(checks), native=output, dialect=self.dialect, usage=usage)
        return Decision(tuple(calls), text, False, None, True, safety_checks=tuple(checks), native=output,
                        dialect=self.dialect, usage=usage)

    def _function(self, item: dict[str, Any]) -> tuple[Call, str | None]:
        name = str(item.get("name") or "")
        raw = item.get("arguments") or "{}"
        try:
            args = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except (ValueError, TypeError):
            args = None
        call_id = str(item.get("call_id") or item.get("id") or "call")
        if name in DONE_ACTIONS and self.dialect == "lightcone":
            given = args if isinstance(args, dict) else {}
            answer = given.get("result") or given.get("message") or given.get("text") or given.get("answer")
            return Call(call_id, (), item, name, name, given), str(answer or "")
        if not isinstance(args, dict):
            return Call(call_id, (), item, name, name, None, f"the arguments of {name} are not a JSON object"), None
        return Call(call_id, (), item, name, name, args), None

    def _computer_call(self, item: dict[str, Any], to_px: oa.ToPixels) -> tuple[Call, str | None, bool]:
        call_id = str(item.get("call_id") or item.get("id") or "")
        raw = item.get("actions") if isinstance(item.get("actions"), list) else None
        if raw is None:
            raw = [item.get("action")] if item.get("action") is not None else []
        if not call_id:
            return Call("call_missing", (), item, "computer", error="the computer_call has no call_id"), None, True
        if not raw:
            return Call(call_id, (), item, "computer", error="the computer_call has no action"), None, True
        acts: list[a.Action] = []
        ended: str | None = None
        ok = True
        names = []
        for act in raw:
            kind = act.get("type") if isinstance(act, dict) else None
            names.append(str(kind))
            if self.dialect == "lightcone" and kind in DONE_ACTIONS:
                ended = str(act.get("result") or act.get("text") or act.get("answer") or "")
                ok = str(act.get("status") or "success").lower() not in ("failure", "failed", "fail")
                continue
            try:
                acts += oa.from_openai(act, to_px)
            except oa.ActionError as exc:
                return Call(call_id, (), item, ",".join(names), error=str(exc)), None, True
        return Call(call_id, tuple(acts), item, ",".join(names)), ended, ok

    # -- the call -------------------------------------------------------------------------------
    async def decide(self, conv: Conversation, on_text: TextDelta | None = None) -> Decision:
        args = sdk_arguments(self.request(conv), ("model",))
        if on_text is None:
            with mapped(self.what):
                raw = await self.client.responses.with_raw_response.create(**args)
            return self.parse(json_body(raw, self.what), conv)
        final: dict[str, Any] | None = None
        with mapped(self.what):
            stream = await self.client.responses.create(**args, stream=True)
            async for event in stream:
                kind = getattr(event, "type", None)
                if kind == "response.output_text.delta":
                    on_text(event.delta)
                elif kind in ("response.completed", "response.incomplete", "response.failed"):
                    final = dumped(event.response)
                elif kind == "error":
                    raise ModelCallError(f"{self.what} sent an error event: {getattr(event, 'message', '')}",
                                         retryable=True)
        if final is None:
            raise ModelOutputError(f"{self.what}'s stream ended without a response")
        return self.parse(final, conv)


class LightconeAdapter(ResponsesAdapter):
    """Lightcone's Responses API (a real Lightcone, or a vLLM-served Northstar behind one):
    the ``computer_use`` tool, coordinates on Northstar's 0–999 grid (``v / 1000 * dim``), and
    Northstar's own actions, ``terminate``/``answer``/``done`` among them."""

    dialect = "lightcone"
    what = "the Lightcone upstream"

    def __init__(self, upstream_model: str, client: AsyncOpenAI) -> None:
        super().__init__(upstream_model, client)
        self.preview = True  # one action per computer_call, as Northstar answers

    def mapping(self, display: tuple[int, int]) -> tuple[oa.ToPixels, oa.FromPixels]:
        return oa.grid(display)

    def tool(self, conv: Conversation) -> dict[str, Any]:
        w, h = conv.display
        return {"type": "computer_use", "display_width": w, "display_height": h, "environment": conv.environment}

    def extra(self, conv: Conversation) -> dict[str, Any]:
        return {}


# -- small helpers ------------------------------------------------------------------------------


def _user(out: list[dict[str, Any]], part: dict[str, Any]) -> None:
    """Add ``part`` to the last item when it is a user message we are building, else start one."""
    last = out[-1] if out else None
    if last is not None and last.get("role") == "user" and isinstance(last.get("content"), list) \
            and last.get("_ours"):
        last["content"].append(part)
        return
    out.append({"role": "user", "content": [part], "_ours": True})


def _image(shot: Screenshot) -> dict[str, Any]:
    return {"type": "input_image", "image_url": shot.data_url(), "detail": "auto"}


def _next_observation(items: tuple[Any, ...], n: int) -> int | None:
    for m in range(n + 1, len(items)):
        if isinstance(items[m], Observation):
            return m
        if isinstance(items[m], ModelTurn):
            return None
    return None


def _item_id(call_id: str) -> str:
    return call_id if call_id.startswith("cu_") else f"cu_{call_id}"


def _outcome(outcome: Outcome | None, call: Call) -> str:
    from opencone.agent.adapters.base import outcome_text

    if call.error:
        return f"{call.name}: {call.error}"
    return f"{call.name}: {outcome_text(outcome)}"


def _message_texts(item: dict[str, Any]) -> list[str]:
    content = item.get("content")
    if isinstance(content, str):
        return [content]
    texts = []
    for part in content or []:
        if isinstance(part, dict):
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part.get("refusal"), str):
                texts.append(part["refusal"])
    return texts


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    return Usage(int(raw.get("input_tokens") or raw.get("prompt_tokens") or 0),
                 int(raw.get("output_tokens") or raw.get("completion_tokens") or 0))


def strip_private(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request items without our bookkeeping keys."""
    for item in items:
        item.pop("_ours", None)
    return items
