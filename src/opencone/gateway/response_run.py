"""One emulated response as it is made: its Response object and its numbered event log.

The upstream's chat chunks (or a whole completion, said as one chunk) go in;
Responses stream events come out, in the order the ``openai`` SDK's
``responses.stream()`` enforces (spec b.7): ``response.created``,
``response.in_progress``, then per output item ``output_item.added``, its parts
and deltas, ``output_item.done``, and last ``response.completed`` (or
``response.incomplete`` / ``response.failed``). Each event carries its
``sequence_number`` from 0. The log is what every stream of the response reads:
the request that made it, and any ``GET ?stream=true&starting_after=N``, live or
after the end (the log is stored with the response).

A cancelled response ends its log with an ``error`` event (code
``response_cancelled``): the Responses API has no lifecycle event for it, and a
stream should not just stop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from opencone.gateway.response_items import item_id

TERMINAL = ("completed", "failed", "incomplete", "cancelled")


class ResponseRun:
    def __init__(self, response: dict[str, Any], org: str, input_items: list[dict[str, Any]]) -> None:
        self.response = response  # the snapshot; its output list grows as items are done
        self.org = org
        self.input_items = input_items
        self.events: list[dict[str, Any]] = []
        self.done = False  # the terminal event is in the log: followers end
        self.task: asyncio.Task[None] | None = None
        self.error: Any = None  # the GatewayError it failed with, for a create that waits for it
        self._terminal: dict[str, Any] | None = None  # made, not yet released
        self.decision: dict[str, Any] | None = None  # a computer turn's decision (gateway/computer.py), kept
        self._changed = asyncio.Event()
        self._text: tuple[int, dict[str, Any], list[str]] | None = None  # open message: index, item, deltas
        self._calls: dict[int, tuple[int, dict[str, Any], list[str]]] = {}  # chat index -> index, item, args
        self._next_index = 0
        self._items: dict[int, dict[str, Any]] = {}  # output index -> the item, once done
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return str(self.response["id"])

    # -- the log ---------------------------------------------------------------------------
    def _emit(self, kind: str, **fields: Any) -> None:
        self.events.append({"type": kind, "sequence_number": len(self.events), **fields})
        self._changed.set()
        self._changed = asyncio.Event()

    def _end(self, kind: str, **fields: Any) -> None:
        """The terminal event, held back until ``release`` (once the response is stored)."""
        if self._terminal is None and not self.done:
            self._terminal = {"type": kind, "sequence_number": len(self.events), **fields}

    @property
    def ended(self) -> bool:
        return self._terminal is not None or self.done

    @property
    def log(self) -> list[dict[str, Any]]:
        """Every event, the terminal one included: what is stored."""
        return self.events + ([self._terminal] if self._terminal is not None else [])

    def release(self) -> None:
        """Followers get the terminal event and end. A run that never ended (its task was cancelled
        before it began) ends here as cancelled."""
        if self.done:
            return
        if self._terminal is None:
            self.cancel()
        assert self._terminal is not None
        self.events.append(self._terminal)
        self._terminal = None
        self.done = True
        self._changed.set()

    async def follow(self, after: int = -1) -> AsyncIterator[dict[str, Any]]:
        """Every event with a sequence number above ``after``, then the ones to come, until the end."""
        i = max(after + 1, 0)
        while True:
            while i < len(self.events):
                yield self.events[i]
                i += 1
            if self.done:
                return
            await self._changed.wait()

    def _snapshot(self, with_output: bool) -> dict[str, Any]:
        return {**self.response, "output": list(self.response["output"]) if with_output else []}

    # -- what goes in ----------------------------------------------------------------------
    def start(self) -> None:
        self._emit("response.created", response=self._snapshot(False))
        self._emit("response.in_progress", response=self._snapshot(False))

    def feed(self, chunk: dict[str, Any]) -> None:
        """One ``chat.completion.chunk`` (as a dict)."""
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                self.text_delta(text)
            for call in delta.get("tool_calls") or []:
                fn = call.get("function") or {}
                self.call_delta(int(call.get("index") or 0), call.get("id"), fn.get("name"), fn.get("arguments") or "")
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        if chunk.get("usage"):
            self._usage = chunk["usage"]

    def usage(self, input_tokens: int, output_tokens: int) -> None:
        self._usage = {"prompt_tokens": input_tokens, "completion_tokens": output_tokens}

    def feed_completion(self, completion: dict[str, Any]) -> None:
        """A whole ``chat.completion``, said as the one chunk it would have been."""
        choices = completion.get("choices") or [{}]
        message = choices[0].get("message") or {}
        calls = [{**c, "index": n} for n, c in enumerate(message.get("tool_calls") or [])]
        self.feed({"choices": [{"index": 0, "delta": {"content": message.get("content"), "tool_calls": calls},
                                "finish_reason": choices[0].get("finish_reason")}],
                   "usage": completion.get("usage")})

    def text_delta(self, text: str) -> None:
        if self._text is None:
            index = self._take_index()
            item = {"id": item_id("message"), "type": "message", "status": "in_progress", "role": "assistant",
                    "content": []}
            self._text = (index, item, [])
            self._emit("response.output_item.added", output_index=index, item=dict(item, content=[]))
            self._emit("response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                       part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
        index, item, deltas = self._text
        deltas.append(text)
        self._emit("response.output_text.delta", item_id=item["id"], output_index=index, content_index=0,
                   delta=text, logprobs=[])

    def call_delta(self, chat_index: int, call_id: str | None, name: str | None, arguments: str) -> None:
        self._close_text()
        if chat_index not in self._calls:
            index = self._take_index()
            item = {"id": item_id("function_call"), "type": "function_call", "status": "in_progress",
                    "call_id": call_id or item_id("call"), "name": name or "", "arguments": ""}
            self._calls[chat_index] = (index, item, [])
            self._emit("response.output_item.added", output_index=index, item=dict(item))
        index, item, parts = self._calls[chat_index]
        if name and not item["name"]:
            item["name"] = name
        if arguments:
            parts.append(arguments)
            self._emit("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                       delta=arguments)

    def add_item(self, item: dict[str, Any]) -> None:
        """A whole item (a ``computer_call``): added, then done."""
        self._close_text()
        index = self._take_index()
        self._emit("response.output_item.added", output_index=index, item={**item, "status": "in_progress"})
        done = {**item, "status": item.get("status", "completed")}
        self._emit("response.output_item.done", output_index=index, item=done)
        self._place(index, done)

    def _take_index(self) -> int:
        index = self._next_index
        self._next_index += 1
        return index

    def _place(self, index: int, item: dict[str, Any]) -> None:
        self._items[index] = item
        self.response["output"] = [self._items[i] for i in sorted(self._items)]

    def _close_text(self) -> None:
        if self._text is None:
            return
        index, item, deltas = self._text
        self._text = None
        text = "".join(deltas)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        self._emit("response.output_text.done", item_id=item["id"], output_index=index, content_index=0, text=text,
                   logprobs=[])
        self._emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part)
        done = {**item, "status": "completed", "content": [part]}
        self._emit("response.output_item.done", output_index=index, item=done)
        self._place(index, done)

    def _close_calls(self) -> None:
        for index, item, parts in self._calls.values():
            arguments = "".join(parts)
            self._emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                       name=item["name"], arguments=arguments)
            done = {**item, "status": "completed", "arguments": arguments}
            self._emit("response.output_item.done", output_index=index, item=done)
            self._place(index, done)
        self._calls.clear()

    # -- the end -------------------------------------------------------------------------
    def finish(self) -> None:
        if self.ended:
            return
        self._close_text()
        self._close_calls()
        reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(self._finish or "")
        self.response.update(status="incomplete" if reason else "completed", completed_at=int(time.time()),
                             usage=_usage(self._usage),
                             incomplete_details={"reason": reason} if reason else None)
        self._end("response.incomplete" if reason else "response.completed", response=self._snapshot(True))

    def fail(self, message: str, code: str = "server_error") -> None:
        if self.ended:
            return
        self.response.update(status="failed", error={"code": code, "message": message}, completed_at=None)
        self._end("response.failed", response=self._snapshot(True))

    def cancel(self) -> None:
        if self.ended:
            return
        self.response.update(status="cancelled")
        self._end("error", code="response_cancelled", message=f"response {self.id} was cancelled", param=None)


def _usage(chat: dict[str, Any] | None) -> dict[str, Any] | None:
    if not chat:
        return None
    prompt = int(chat.get("prompt_tokens") or 0)
    completion = int(chat.get("completion_tokens") or 0)
    details = chat.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0)
    written = int(details.get("cache_write_tokens") or 0)
    reasoning = int((chat.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning}, "total_tokens": prompt + completion}
