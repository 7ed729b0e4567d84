"""``/v1/responses``: passed on to upstreams that have a Responses API, emulated for the others.

**Native** (providers ``openai`` and ``lightcone``): the body goes on through the
``openai`` SDK with the upstream's model name and our own screenshot links
inlined, and the upstream's answer comes back byte for byte (JSON, or SSE chunk
by chunk). For provider ``openai`` the fields OpenAI does not know (vLLM's, spec
a.5) are dropped, and Lightcone's ``computer_use`` tool is sent as OpenAI's
``computer_use_preview``. The upstream keeps the response; we keep only whose it
is (a ``native`` row), so that retrieve, cancel, delete and ``input_items`` go to
the right upstream and never to another organisation's response.

**Emulated** (providers ``anthropic`` and ``openai-chat``): the response is made
here, over the upstream's chat API (chat.py), and kept in our database with its
input, output and event log: ``previous_response_id`` chains (the chain's items
are resent; ``instructions`` are not carried over), ``store: false`` (never kept,
so never retrievable), ``background: true`` (an asyncio task; ``cancel`` cancels
it), streams in the order the ``openai`` SDK enforces (response_run.py), and
``GET …?stream=true&starting_after=N`` replays from N+1, live or after the end.
With a computer tool, the turn goes through the agent loop's adapters instead
(computer.py): ``computer_call`` items come out, and the decision is kept with the
response so that the chain replays the provider's own payload.
A chain may start emulated and go on with a native model (its items are sent as
input); the other way round is a 400, since the upstream holds that chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pydantic_core
from openai.types.responses.response_create_params import ResponseCreateParamsBase
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opencone.agent.adapters.base import Decision
from opencone.core.ids import new_id
from opencone.core.store.models import ResponseRecord
from opencone.gateway import sse
from opencone.gateway.chat import ChatGateway, raw_call, upstream_body
from opencone.gateway.clients import UpstreamClients
from opencone.gateway.computer import ComputerModels, Tool, conversation, decode, encode, render
from opencone.gateway.errors import GatewayError, InvalidRequest, model_error
from opencone.gateway.images import OwnFiles, inline_response_input
from opencone.gateway.registry import ModelEntry, ModelRegistry, NoModelConfigured, UnknownModel
from opencone.gateway.response_items import chat_body, has_computer_tool, normalized
from opencone.gateway.response_run import ResponseRun
from opencone.gateway.response_store import ResponseStore, not_found

log = logging.getLogger(__name__)

NATIVE = ("openai", "lightcone")
OPENAI_RESPONSES_FIELDS = frozenset(typing.get_type_hints(ResponseCreateParamsBase)) | {"stream"}
SHUTDOWN_GRACE_SECONDS = 5.0


class CreateBody(BaseModel):
    """What ``POST /v1/responses`` checks before any upstream is asked; anything else a caller
    sends goes on as it is (OpenAI's fields, vLLM's extras)."""

    model_config = ConfigDict(extra="allow", strict=True, title="ResponseCreate")
    input: str | list[dict[str, Any]] | None = Field(
        default=None, description="A user message, or a list of items (messages, computer_call_output…).")
    model: str | None = Field(default=None, description="A model id of `GET /v1/models`; the default if omitted.")
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stream: bool | None = None
    background: bool | None = None
    store: bool | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    text: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None


def parse_body(raw: Any) -> CreateBody:
    if not isinstance(raw, dict):
        raise InvalidRequest("the body must be a JSON object, e.g. {\"model\": …, \"input\": \"…\"}")
    try:
        return CreateBody.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = str(err["loc"][0]) if err["loc"] else "body"
        raise InvalidRequest(f"{where}: {err['msg']}", param=where) from None


@dataclass
class Answer:
    """What the edge sends: a JSON body (bytes as the upstream sent them, or a dict), or SSE."""

    body: bytes | dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    dropped: list[str] = field(default_factory=list)


class ResponsesGateway:
    def __init__(self, registry: ModelRegistry, upstreams: UpstreamClients, chat: ChatGateway,
                 store: ResponseStore) -> None:
        self.registry = registry
        self.upstreams = upstreams
        self.chat = chat
        self.store = store
        self.computers = ComputerModels(upstreams)
        self.runs: dict[str, ResponseRun] = {}  # stored emulated responses being made
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    def _entry(self, model: str | None) -> ModelEntry:
        try:
            return self.registry.resolve(model)
        except (NoModelConfigured, UnknownModel) as exc:
            raise model_error(exc) from None

    # -- create ------------------------------------------------------------------------------
    async def create(self, org: str, raw: Any, own: OwnFiles) -> Answer:
        req = parse_body(raw)
        entry = self._entry(req.model)
        if req.background and req.store is False:
            raise InvalidRequest("background responses must be stored: leave store out or set it true",
                                 param="store")
        if entry.provider in NATIVE:
            return await self._native_create(org, entry, req, raw, own)
        return await self._emulated_create(org, entry, req, raw, own)

    async def _emulated_create(self, org: str, entry: ModelEntry, req: CreateBody, raw: dict[str, Any],
                               own: OwnFiles) -> Answer:
        context: list[dict[str, Any]] = []
        chain: list[ResponseRecord] = []
        if req.previous_response_id:
            chain, context = await self.store.context(org, req.previous_response_id)
        items = await inline_response_input(normalized(req.input), own)
        if not context and not items:
            raise InvalidRequest("input is required (a string or a list of items)", param="input")
        store = req.store is not False
        background = bool(req.background)
        stream = bool(req.stream)
        upstream_stream = stream or background  # a background response can be followed as it is made
        run = ResponseRun(_initial(new_id("resp", 24), entry.id, req, raw, background, store), org, items)
        if has_computer_tool(req.tools):  # a turn of the client's computer-use loop, through the agent's adapters
            call = self._computer_turn(entry, req, raw, chain, context + items, run)
        else:
            call = self._chat_turn(entry, chat_body(raw, context + items, entry.id, entry.provider, upstream_stream),
                                   upstream_stream, run)
        record = ResponseRecord(id=run.id, org_id=org, model=entry.id, mode="emulated", status="in_progress",
                                background=background, previous_response_id=req.previous_response_id,
                                created_at=datetime.now(UTC), request=_request_of(raw), input_items=items,
                                response=run.response, events=[]) if store else None
        if record is not None and background:
            record.response = dict(run.response)
            await self.store.add(record)  # written now: a restart finds it and says it failed
        run.start()
        raise_sync = not stream and not background  # a plain create's failure is its HTTP answer
        run.task = self._spawn(self._run(run, call, record, keep_failed=not raise_sync))
        run.task.add_done_callback(lambda _t: run.release())  # (a task cancelled before it began)
        if store:
            self.runs[run.id] = run
        if stream:
            return Answer(stream=self._sse(run.follow(-1), run, cancel_on_close=not background))
        if background:
            return Answer(body=dict(run.response))
        await run.task
        if run.error is not None:
            raise run.error
        return Answer(body=run.response)

    def _chat_turn(self, entry: ModelEntry, chat: dict[str, Any], stream: bool,
                   run: ResponseRun) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            if stream:
                async with contextlib.aclosing(self.chat.chunks(entry, chat)) as chunks:
                    async for chunk in chunks:
                        run.feed(chunk)
            else:
                run.feed_completion(await self.chat.completion(entry, chat))

        return call

    def _computer_turn(self, entry: ModelEntry, req: CreateBody, raw: dict[str, Any], chain: list[ResponseRecord],
                       items: list[dict[str, Any]], run: ResponseRun) -> Callable[[], Awaitable[None]]:
        tool = Tool.of(req.tools or [])
        kept: dict[str, Decision] = {}
        for record in chain:
            turn = record.request.get("_turn")
            if isinstance(turn, dict):
                decision = decode(turn["decision"])
                kept.update({key: decision for key in turn["ids"]})
        conv, space = conversation(entry.id, tool, items, kept, raw, entry.max_images)  # (a 400 before it starts)

        async def call() -> None:
            decision = await self.computers.decide(entry, conv)
            run.decision = encode(decision)
            for item in render(decision, tool, space):
                if item["type"] == "message":
                    run.text_delta(item["content"][0]["text"])
                else:
                    run.add_item(item)
            run.usage(decision.usage.input_tokens, decision.usage.output_tokens)

        return call

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, run: ResponseRun, call: Callable[[], Awaitable[None]], record: ResponseRecord | None,
                   keep_failed: bool) -> None:
        try:
            try:
                await call()
                run.finish()
            except GatewayError as exc:
                run.error = exc
                run.fail(exc.message)
            except asyncio.CancelledError:
                if self._stopping:
                    run.fail("the server stopped before this response was done")
                else:
                    run.cancel()
            except Exception as exc:  # a bug: said, and the response failed, never a hung stream
                log.exception("emulated response %s", run.id)
                run.error = GatewayError(f"internal error: {exc.__class__.__name__}", status=500,
                                         code="server_error")
                run.fail(f"internal error: {exc.__class__.__name__}")
            if record is not None and (run.error is None or keep_failed):
                await self._save(run, record)
        finally:
            run.release()  # the terminal event, after the store has it (a next request may chain on it)
            self.runs.pop(run.id, None)

    async def _save(self, run: ResponseRun, record: ResponseRecord) -> None:
        response = run.response
        record.status, record.response, record.events = response["status"], response, run.log
        if run.decision is not None:  # replayed as it was when the chain goes on (gateway/computer.py)
            ids = [i[k] for i in response["output"] for k in ("id", "call_id") if isinstance(i.get(k), str)]
            record.request = {**record.request, "_turn": {"ids": ids, "decision": run.decision}}
        record.completed_at = datetime.now(UTC)
        self.store.put(record, new=not record.background)  # every read finds it now; written a moment later

    async def _sse(self, events: AsyncIterator[dict[str, Any]], run: ResponseRun | None = None,
                   cancel_on_close: bool = False) -> AsyncIterator[bytes]:
        """Events as SSE; a stream that made its response (not a background one) cancels it when the
        client goes away before the end."""
        try:
            async for event in events:
                yield sse.event(event)
        finally:
            if run is not None and cancel_on_close and not run.done and run.task is not None:
                run.task.cancel()

    # -- retrieve, cancel, delete, input items ------------------------------------------------
    async def _find(self, org: str, response_id: str) -> tuple[ResponseRun | None, ResponseRecord | None]:
        """The live run (an emulated response being made) and the stored record; 404 if neither
        is this organisation's."""
        run = self.runs.get(response_id)
        if run is not None and run.org == org:
            return run, None
        record = await self.store.get(org, response_id)
        if record is None:
            raise not_found(response_id)
        return None, record

    async def retrieve(self, org: str, response_id: str, stream: bool, starting_after: int | None,
                       include: list[str]) -> Answer:
        run, record = await self._find(org, response_id)
        if record is not None and record.mode == "native":
            return await self._native_retrieve(record, stream, starting_after, include)
        after = -1 if starting_after is None else starting_after
        if run is not None:
            return Answer(stream=self._sse(run.follow(after))) if stream else Answer(body=dict(run.response))
        assert record is not None
        if stream:
            return Answer(stream=self._sse(_replay(record.events, after)))
        return Answer(body=record.response)

    async def cancel(self, org: str, response_id: str) -> Answer:
        run, record = await self._find(org, response_id)
        if record is not None and record.mode == "native":
            return await self._raw(self._upstream_of(record), "post", f"/responses/{response_id}/cancel")
        background = run.response.get("background") if run is not None else record.background  # type: ignore[union-attr]
        if not background:
            raise InvalidRequest("only background responses can be cancelled", param="response_id")
        if run is not None:
            await self._stop_run(run)
            return Answer(body=dict(run.response))
        assert record is not None
        return Answer(body=record.response)  # done already: as it ended (cancelling twice is no error)

    async def _stop_run(self, run: ResponseRun) -> None:
        if run.task is not None and not run.task.done():
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(run.task)

    async def delete(self, org: str, response_id: str) -> dict[str, Any]:
        run, record = await self._find(org, response_id)
        if record is not None and record.mode == "native":
            await self._raw(self._upstream_of(record), "delete", f"/responses/{response_id}")
        if run is not None:
            await self._stop_run(run)
        await self.store.delete(org, response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def input_items(self, org: str, response_id: str, limit: int, order: str, after: str | None,
                          include: list[str]) -> Answer:
        run, record = await self._find(org, response_id)
        if record is not None and record.mode == "native":
            params: dict[str, Any] = {"limit": limit, "order": order}
            if after is not None:
                params["after"] = after
            if include:
                params["include"] = include  # (the SDK sends include[]=…)
            return await self._raw(self._upstream_of(record), "get", f"/responses/{response_id}/input_items",
                                   params=params)
        items = list(run.input_items if run is not None else record.input_items)  # type: ignore[union-attr]
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [i.get("id") for i in items]
            if after not in ids:
                raise InvalidRequest(f"after: no input item {after!r} in response {response_id}", param="after")
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        return Answer(body={"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})

    # -- native ------------------------------------------------------------------------------
    def _upstream_of(self, record: ResponseRecord) -> ModelEntry:
        try:
            return self.registry.resolve(record.model)
        except LookupError:
            raise GatewayError(f"response {record.id} is held by the upstream of model {record.model}, which is "
                               "no longer configured", status=410, code="model_not_configured") from None

    async def _raw(self, entry: ModelEntry, method: str, path: str, **kw: Any) -> Answer:
        answer = await raw_call(self.upstreams.openai(entry), method, path, entry.id, **kw)
        return Answer(body=answer) if isinstance(answer, bytes) else Answer(stream=answer)

    async def _native_create(self, org: str, entry: ModelEntry, req: CreateBody, raw: dict[str, Any],
                             own: OwnFiles) -> Answer:
        body = dict(raw)
        previous = req.previous_response_id
        if previous:
            prior = await self.store.get(org, previous)
            if prior is None:
                raise not_found(previous, "previous_response_id")
            if prior.mode == "emulated":  # made here: its chain goes along as input
                _, context = await self.store.context(org, previous)  # (its computer turns as items)
                del body["previous_response_id"]
                body["input"] = [_without_id(i) for i in context] + normalized(req.input)
        if isinstance(body.get("input"), list):
            body["input"] = await inline_response_input(body["input"], own)
        body, dropped = upstream_body(entry, body, OPENAI_RESPONSES_FIELDS)
        if entry.provider == "openai" and isinstance(body.get("tools"), list):
            body["tools"] = [_openai_tool(t) for t in body["tools"]]
        stream = bool(body.get("stream"))
        store = req.store is not False

        def note(value: Any) -> None:
            """The response the upstream made, noted as this organisation's."""
            if store and isinstance(value, dict) and isinstance(value.get("id"), str):
                self.store.put(ResponseRecord(
                    id=value["id"], org_id=org, model=entry.id, mode="native",
                    status=str(value.get("status") or "completed"), background=bool(req.background),
                    previous_response_id=req.previous_response_id, created_at=datetime.now(UTC), request={},
                    input_items=[], response={}, events=[]))

        answer = await self._raw(entry, "post", "/responses", body=body, stream=stream)
        if answer.stream is None:
            assert isinstance(answer.body, bytes)
            with contextlib.suppress(ValueError):
                note(pydantic_core.from_json(answer.body))
            return Answer(body=answer.body, dropped=dropped)
        upstream = answer.stream

        async def noted() -> AsyncIterator[bytes]:
            """The upstream's bytes; the response its first event names noted as ours."""
            first = sse.FirstEvent()
            async with contextlib.aclosing(upstream):  # type: ignore[type-var]
                async for chunk in upstream:
                    yield chunk
                    if not first.done:
                        first.feed(chunk)
                        if first.done and isinstance(first.value, dict):
                            note(first.value.get("response"))

        return Answer(stream=noted(), dropped=dropped)

    async def _native_retrieve(self, record: ResponseRecord, stream: bool, starting_after: int | None,
                               include: list[str]) -> Answer:
        params: dict[str, Any] = {}
        if include:
            params["include"] = include  # (the SDK sends include[]=…)
        if stream:
            params["stream"] = "true"
            if starting_after is not None:
                params["starting_after"] = starting_after
        return await self._raw(self._upstream_of(record), "get", f"/responses/{record.id}", params=params,
                               stream=stream)

    # -- life ----------------------------------------------------------------------------------
    async def start(self) -> None:
        failed = await self.store.fail_unfinished("the server stopped before this response was done")
        if failed:
            log.warning("%d responses left running by an earlier server are now failed", failed)

    async def stop(self) -> None:
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_SECONDS)
        await self.store.close()  # what is still held is written


async def _replay(events: list[dict[str, Any]], after: int) -> AsyncIterator[dict[str, Any]]:
    for event in events[max(after + 1, 0):]:
        yield event


def _without_id(item: dict[str, Any]) -> dict[str, Any]:
    """An item of ours sent to an upstream that never saw it: its id would name nothing there."""
    return {k: v for k, v in item.items() if k != "id"}


def _openai_tool(tool: Any) -> Any:
    """Lightcone's spelling of the computer tool, as OpenAI's API takes it."""
    if isinstance(tool, dict) and tool.get("type") == "computer_use":
        env = tool.get("environment")
        return {**tool, "type": "computer_use_preview", "environment": "linux" if env == "desktop" else env}
    return tool


def _request_of(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k != "input"}


def _initial(response_id: str, model: str, req: CreateBody, raw: dict[str, Any], background: bool,
             store: bool) -> dict[str, Any]:
    """The Response object before any output, with every field OpenAI's has (spec b.2)."""
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()), "status": "in_progress",
        "background": background, "completed_at": None, "error": None, "incomplete_details": None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": raw.get("max_tool_calls"), "metadata": req.metadata or {}, "model": model,
        "output": [], "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id, "reasoning": {"effort": None, "summary": None},
        "store": store, "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": req.text or {"format": {"type": "text"}}, "tool_choice": req.tool_choice or "auto",
        "tools": req.tools or [], "top_p": 1.0 if req.top_p is None else req.top_p,
        "truncation": req.truncation or "disabled", "usage": None, "user": req.user,
    }
