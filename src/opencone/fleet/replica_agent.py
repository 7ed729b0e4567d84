"""Agent tasks and the model gateway on a fleet replica (issue 17): each request goes to the node
that would answer it, so the answer is a single server's.

A task runs on one node (its loop drives the task's computer there) and a stored response lives in
its node's store (fleet/owned.py says how such objects are found):

- ``POST /agent/tasks`` (and ``/stream``): a task on a live ``computer_id`` goes to that computer's
  node; a task that makes its own computer goes to the placer's choice (``owned.placing_order``), the
  next node tried when one refuses (429/503, or out of reach). The task id is claimed (kind ``task``)
  and its computer's fleet record written as soon as the node answers; for a stream, from its first
  event as it passes, the stream not held back. A start's ``idempotency_key`` is claimed (kind
  ``task_key``) for its node *before* it is sent, one atomic insert, so starts with one key sent at
  once to any replicas all reach that node, which dedups them as a single server does (``reused``);
  a node that refuses (nothing made) loses the claim to the next one tried, and a claim of a lost
  (dead) node is taken over: a retry after ``node_lost`` starts a new task on a ready node.
- every other ``/agent/tasks/{id}…`` request goes to the task's node; ``GET /agent/tasks`` merges
  every node's list, newest first, cut to ``limit``.
- the gateway: models from one ready node (the nodes are configured alike); chat and responses to
  the node of ``previous_response_id``, else of the computer whose screenshot links the request
  carries (that node inlines them; a link to another node's computer is inlined here), else any; a
  new response's id is claimed from the answer, or from its stream's first event.
- an id no node holds for the organisation goes to any node, so the 404 (and its body) is exactly a
  single server's; another organisation's ids resolve nowhere (each is its own on a node).

Streams are relayed frame by frame, each frame rewritten as JSON answers are (the node's base and
keys become this replica's base and the client's key, screenshot links ``/files/<node>.<token>``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Literal
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import select
from starlette.background import BackgroundTask

from opencone.api.auth import current_org, current_org_or_token
from opencone.api.errors import describe_validation, problem
from opencone.api.guard import check_json
from opencone.api.wire.agent import TaskStart
from opencone.api.wire.openai import OpenAIRoute
from opencone.core.errors import Conflict, InvalidInput, LimitReached, NotFound, ServiceError
from opencone.core.store.models import FleetObject
from opencone.fleet import owned, registry, replica_storage
from opencone.fleet import replica as r
from opencone.gateway.errors import InvalidRequest
from opencone.gateway.images import own_origins

log = logging.getLogger(__name__)

OBJECT_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # task and response ids as the nodes make them
START_ATTEMPTS = 4
CLAIM_TRIES = 4  # conditional writes of a key's claim lost to other replicas' before a start is a 409
MAX_FRAME = 64 << 20  # a frame longer than this (no blank line yet) is passed on as it is
TASK_KEY = "task_key"  # fleet_objects kind: where a start's idempotency key made its task
# a screenshot link this replica handed out: <our origin>/files/<node id>.<token>.<jpg|png>
LINK = re.compile(r"(https?://[^\s?#]+?)/files/([A-Za-z0-9_:-]{1,128})\.([A-Za-z0-9_-]{16,128}\.(?:jpg|png))")
NODES_TTL = 1.0
MAX_FOREIGN_LINKS = 32  # screenshots of other nodes' computers one request may have inlined here
Status = Literal["queued", "running", "paused", "completed", "failed", "cancelled", "max_steps"]
OnEvent = Callable[[dict[str, Any]], None]

_background: set[asyncio.Task[None]] = set()


class TooLarge(ServiceError):
    status = 413


class _Memo:
    """What a replica keeps between requests: the ready nodes (read again after ``NODES_TTL``) and
    where objects live (an object never moves, so a row once read stays true; its end is its node's
    404). Without it each gateway request paid a database round trip or two before its node saw it."""

    def __init__(self) -> None:
        self.nodes: list[registry.NodeInfo] = []
        self.nodes_at = float("-inf")
        self.where: dict[str, tuple[str, str]] = {}  # object id -> (org, node id)

    def remember(self, object_id: str, org: str, node_id: str) -> None:
        if len(self.where) > 100_000:
            self.where.clear()
        self.where[object_id] = (org, node_id)


_memos: weakref.WeakKeyDictionary[r.Fleet, _Memo] = weakref.WeakKeyDictionary()


def _memo(fleet: r.Fleet) -> _Memo:
    memo = _memos.get(fleet)
    if memo is None:
        memo = _memos[fleet] = _Memo()
    return memo


async def _ready(fleet: r.Fleet) -> list[registry.NodeInfo]:
    """The ready nodes, as read at most ``NODES_TTL`` ago (a node that left within it answers 503)."""
    memo = _memo(fleet)
    if time.monotonic() - memo.nodes_at > NODES_TTL:
        memo.nodes, memo.nodes_at = await owned.ready_nodes(fleet), time.monotonic()
    return memo.nodes


async def _claim(fleet: r.Fleet, kind: str, object_id: str, org: str, node_id: str) -> None:
    await owned.claim(fleet, kind, object_id, org, node_id)
    _memo(fleet).remember(object_id, org, node_id)


async def _locate(fleet: r.Fleet, org: str, kind: str, object_id: str, probe: str) -> registry.NodeInfo | None:
    """``owned.locate``, remembered."""
    hit = _memo(fleet).where.get(object_id)
    if hit is not None:
        if hit[0] != org:
            return None
        return next((n for n in await _ready(fleet) if n.id == hit[1]), None)
    node = await owned.locate(fleet, org, kind, object_id, probe)
    if node is not None:
        _memo(fleet).remember(object_id, org, node.id)
    return node


# -- what every route shares ----------------------------------------------------------------------
async def _body(request: Request) -> bytes:
    """The request body, bounded and checked as a single server's guard does (api/guard.py)."""
    limit = r._fleet(request).settings.max_body_bytes
    length = request.headers.get("content-length", "")
    too_large = f"the request body is over {limit} bytes, the most allowed (OPENCONE_MAX_BODY_BYTES)"
    if length.isdigit() and int(length) > limit:
        raise TooLarge(too_large)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(too_large)
        chunks.append(chunk)
    body = b"".join(chunks)
    refusal = check_json(body) if body else None
    if refusal is not None:
        raise InvalidInput(refusal[0], errors=refusal[1])
    return body


def _id(value: str, what: str) -> str:
    """An id that can go in a node's path as it is; anything else names nothing (404)."""
    if not OBJECT_ID.match(value):
        raise NotFound(f"no {what} {value!r}")
    return value


def _spawn(coro: Coroutine[Any, Any, object], what: str) -> None:
    """Work a stream must not wait for (a claim, a record), kept referenced until done."""
    async def run() -> None:
        try:
            await coro
        except Exception:  # the next request finds it by asking the nodes (owned.locate)
            log.warning("could not write %s", what, exc_info=True)

    task = asyncio.create_task(run())
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _send(request: Request, org: str, node: registry.NodeInfo, path: str, body: bytes | None) -> httpx.Response:
    fleet = r._fleet(request)
    req = fleet.http.build_request(request.method, node.url + path + r._forward_query(request, fleet.key_for(org)),
                                   headers=r._headers_for_agent(request, fleet, org), content=body)
    try:
        return await fleet.http.send(req, stream=True)
    except httpx.TransportError as exc:
        raise r.NodeUnreachable(f"node {node.id} does not answer; retry in a few seconds", node_id=node.id) from exc


async def _answer(request: Request, org: str, node: registry.NodeInfo, resp: httpx.Response, *,
                  on_json: Callable[[int, bytes], Awaitable[None]] | None = None,
                  on_event: OnEvent | None = None) -> Response:
    """The node's answer as the client must see it: read and rewritten, or (SSE) relayed frame by frame."""
    fleet = r._fleet(request)
    public, key = r._public_base(request, fleet.settings), r.presented_key(request, True)
    headers = r._answer_headers(resp)
    if "text/event-stream" in resp.headers.get("content-type", ""):
        frames = _frames(lambda b: fleet.rewrite(b, node.url, node.id, public, key, org), resp, on_event)
        return StreamingResponse(frames, resp.status_code, headers=headers, background=BackgroundTask(resp.aclose))
    try:
        data = await resp.aread()
    except httpx.TransportError as exc:
        raise r.NodeUnreachable(f"node {node.id} stopped answering; retry", node_id=node.id) from exc
    finally:
        await resp.aclose()
    if on_json is not None:
        await on_json(resp.status_code, data)
    return Response(fleet.rewrite(data, node.url, node.id, public, key, org), resp.status_code, headers=headers)


async def _frames(rewrite: Callable[[bytes], bytes], resp: httpx.Response,
                  on_event: OnEvent | None) -> AsyncIterator[bytes]:
    """SSE bytes cut at frame ends (a link is never split), rewritten; ``on_event`` sees the first
    event's data (then no more: it only wants what the stream starts with)."""
    buffer = b""
    with contextlib.suppress(httpx.TransportError):
        async for chunk in resp.aiter_raw():
            buffer += chunk
            cut = buffer.rfind(b"\n\n")
            if cut < 0:
                if len(buffer) > MAX_FRAME:
                    yield buffer
                    buffer = b""
                continue
            frames, buffer = buffer[:cut + 2], buffer[cut + 2:]
            if on_event is not None:
                first = _first_event(frames)
                if first is not None:
                    on_event(first)
                    on_event = None
            yield rewrite(frames)
    if buffer:
        yield rewrite(buffer)


def _first_event(frames: bytes) -> dict[str, Any] | None:
    """The data of the first frame that carries a JSON object (comments and heartbeats skipped)."""
    for frame in frames.split(b"\n\n"):
        data = b"\n".join(line[5:].lstrip() for line in frame.splitlines() if line.startswith(b"data:"))
        if data:
            with contextlib.suppress(ValueError):
                value = json.loads(data)
                if isinstance(value, dict):
                    return value
    return None


async def _held(request: Request, org: str, kind: str, object_id: str, probe: str) -> registry.NodeInfo:
    """The node holding ``object_id`` for ``org``; else any ready node (its own 404 is the answer)."""
    fleet = r._fleet(request)
    node = await _held_or_none(fleet, org, kind, object_id, probe)
    return node or owned.pick_any(await _ready(fleet))


async def _held_or_none(fleet: r.Fleet, org: str, kind: str, object_id: str, probe: str) -> registry.NodeInfo | None:
    """The ready node holding ``object_id`` for ``org``, None when no node has it, a 503 when the
    node that has it is not ready (it is not copied elsewhere: it is back when its node is)."""
    node = await _locate(fleet, org, kind, object_id, probe)
    if node is not None:
        return node
    hit = _memo(fleet).where.get(object_id)
    if hit is None:
        async with fleet.sessions() as s, registry.guarded(s):
            row = (await s.execute(select(FleetObject.org_id, FleetObject.node_id).where(
                FleetObject.id == object_id))).first()
            await s.commit()
        hit = (row.org_id, row.node_id) if row is not None else None
    if hit is not None and hit[0] == org:
        raise r.NodeUnreachable(f"{kind} {object_id} is on node {hit[1]}, which is not ready now; retry when it "
                                "is back", node_id=hit[1])
    return None


# -- agent tasks ----------------------------------------------------------------------------------
tasks = APIRouter(tags=["agent"])


def task_key_id(org: str, key: str) -> str:
    """The ``fleet_objects`` id of an organisation's idempotency key (``task_key`` row)."""
    return "tkey_" + hashlib.sha256(f"{org}\0{key}".encode()).hexdigest()[:48]


async def _pinned(request: Request, org: str, spec: TaskStart) -> registry.NodeInfo | None:
    """The one node a start must go to (its computer's, its saved environment's), or None when the
    task makes a new computer anywhere."""
    fleet = r._fleet(request)
    nodes = await owned.ready_nodes(fleet)
    if spec.computer_id:
        named = OBJECT_ID.match(spec.computer_id) is not None  # else no computer or session has that id
        try:
            route = await fleet.route(org, spec.computer_id) if named else None
        except NotFound:
            route = None
        if route is not None and route.node_id and route.row.status != r.TERMINATED:
            node = next((n for n in nodes if n.id == route.node_id), None)
            if node is None:
                raise r.NodeUnreachable(f"the node of computer {spec.computer_id} does not answer; retry in a few "
                                        "seconds", node_id=route.node_id)
            return node
        # not live: a saved session of that id is restored on its node; else a new computer is made
        # (placed) or the node's own 404 says why not
        saved = await _saved(fleet, org, spec.computer_id) if named else None
        if saved is not None:
            return saved
        return None if spec.on_missing_computer == "create_new" else owned.pick_any(nodes)
    if spec.environment_id:  # its node when that has room, else moved to the placer's choice first (as a
        # create from it: fleet/replica_storage.py); 404 when none has it, 503 when its node is not ready
        kind = spec.kind or ("browser" if spec.start_url else "desktop")
        node_id = await replica_storage.environment_hint(fleet, org, kind, spec.environment_id, None)
        node = next((n for n in await owned.ready_nodes(fleet) if n.id == node_id), None)
        if node is None:
            raise r.NodeUnreachable(f"node {node_id}, which holds environment {spec.environment_id}, is not "
                                    "ready now; retry in a few seconds", node_id=node_id)
        return node
    return None


async def _saved(fleet: r.Fleet, org: str, environment_id: str) -> registry.NodeInfo | None:
    """The node holding a saved environment (none for an id no node could have made)."""
    if not OBJECT_ID.match(environment_id):
        return None
    return await owned.locate(fleet, org, "environment", environment_id, f"/environments/{environment_id}")


def _parse_start(raw: bytes) -> TaskStart | Response:
    try:
        return TaskStart.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return problem(422, "the body is not JSON; send a JSON object with 'instruction' (see /docs)")
        detail, items = describe_validation(list(exc.errors()))
        return problem(422, detail, extra={"errors": items})


class _Order:
    """The nodes a start is sent to, in turn: its pinned node, or the placer's order (the next one after
    a refusal: 429/503, out of reach). Read when first needed."""

    def __init__(self, candidates: Callable[[], Awaitable[list[registry.NodeInfo]]], kind: str) -> None:
        self._candidates = candidates
        self._left: list[registry.NodeInfo] | None = None
        self.kind = kind

    async def left(self) -> list[registry.NodeInfo]:
        if self._left is None:
            self._left = list(await self._candidates())
        return self._left

    def full(self) -> LimitReached:
        return LimitReached(f"no node of the fleet can take a {self.kind} computer now (all full or none ready); "
                            "delete one or retry")

    async def first(self) -> registry.NodeInfo:
        left = await self.left()
        if not left:
            raise self.full()
        return left.pop(0)

    async def refused(self, node: registry.NodeInfo) -> registry.NodeInfo | None:
        """The node to try after ``node`` refused; None: none left (its refusal is the answer)."""
        left = await self.left()
        return left.pop(0) if left else None

    async def answered(self, node: registry.NodeInfo, status: int) -> None:
        """``node``'s answer (not a refusal) is the client's."""


class _KeyedOrder(_Order):
    """The order of a start with an ``idempotency_key``: the key is claimed (a ``task_key`` row) for a
    node before the start is sent there, so every start of the key, on any replica, goes where the claim
    points; a node that refuses hands the claim on (or drops it) with a write conditioned on its own id,
    so a key never stays on a node that made nothing."""

    def __init__(self, fleet: r.Fleet, org: str, key: str,
                 candidates: Callable[[], Awaitable[list[registry.NodeInfo]]], kind: str) -> None:
        super().__init__(candidates, kind)
        self.fleet, self.org, self.key_id = fleet, org, task_key_id(org, key)
        self.tried: set[str] = set()  # nodes that refused this start
        self.sends = 0
        self.mine = False  # the claim names the node because this start put it there

    async def first(self) -> registry.NodeInfo:
        node = await self._settle(None)
        if node is None:
            raise self.full()
        return node

    async def refused(self, node: registry.NodeInfo) -> registry.NodeInfo | None:
        self.tried.add(node.id)
        self.sends += 1
        if self.sends >= 2 * START_ATTEMPTS:  # claims moving back and forth between replicas: stop somewhere
            await owned.move_claim(self.fleet, self.key_id, node.id, None)
            return None
        return await self._settle(node.id)

    async def answered(self, node: registry.NodeInfo, status: int) -> None:
        # a 4xx of a node this start claimed for: it made nothing (a 409 is its own start of the key in flight)
        if self.mine and 400 <= status < 500 and status != 409:
            await owned.move_claim(self.fleet, self.key_id, node.id, None)

    async def _settle(self, refused: str | None) -> registry.NodeInfo | None:
        """The node to send the start to: the claim's when that node can hold the task, else the next
        candidate, with the claim made for it or moved to it from ``refused`` or from a lost node (None:
        no candidate left, the claim dropped)."""
        for _ in range(CLAIM_TRIES):
            held = await owned.claimed(self.fleet, self.key_id, self.org)
            if held is not None and held != refused:
                node = await _holder(self.fleet, held)
                if node is not None:
                    self.mine = False
                    return node
            want = next((n for n in await self.left() if n.id not in self.tried and n.id != held), None)
            if held is None:
                if want is None:
                    return None
                if await owned.claim(self.fleet, TASK_KEY, self.key_id, self.org, want.id):
                    self.mine = True
                    return want
            elif await owned.move_claim(self.fleet, self.key_id, held, want.id if want else None):
                self.mine = want is not None
                return want
            # another replica claimed or moved it between the read and the write: read it again
        raise Conflict("a task with this idempotency_key is being started through another replica; retry")


async def _holder(fleet: r.Fleet, node_id: str) -> registry.NodeInfo | None:
    """The node a key's claim names while it can hold the task: ready, or draining (it keeps what it
    has); None when it is dead or gone (what it held went with it: the key starts anew elsewhere)."""
    async with fleet.sessions() as s, registry.guarded(s):
        node = await registry.get_node(s, node_id)
    if node is None or not node.url or node.state not in (registry.READY, registry.DRAINING):
        return None
    return node


async def _start(request: Request, org: str, path: str) -> Response:
    fleet = r._fleet(request)
    raw = await _body(request)
    spec = _parse_start(raw)
    if isinstance(spec, Response):
        return spec
    kind = spec.kind or ("browser" if spec.start_url else "desktop")

    async def candidates() -> list[registry.NodeInfo]:
        pinned = await _pinned(request, org, spec)
        if pinned is not None:
            return [pinned]
        return owned.placing_order(fleet, await owned.ready_nodes(fleet), kind)[:START_ATTEMPTS]

    order = (_KeyedOrder(fleet, org, spec.idempotency_key, candidates, kind) if spec.idempotency_key
             else _Order(candidates, kind))
    node = await order.first()
    refusals: list[str] = []
    while True:
        try:
            resp = await _send(request, org, node, path, raw)
        except r.NodeUnreachable:
            after = await order.refused(node)
            if after is None:
                raise
            refusals.append(f"{node.id}: unreachable")
            node = after
            continue
        if resp.status_code in (429, 503):  # full: the next node
            try:
                after = await order.refused(node)
            except BaseException:  # (the claim's database) the refusal is not passed on
                await resp.aclose()
                raise
            if after is not None:
                await resp.aclose()
                refusals.append(f"{node.id}: {resp.status_code}")
                node = after
                continue
        else:
            await order.answered(node, resp.status_code)
        if refusals:
            log.info("task start placed on %s after %s", node.id, "; ".join(refusals))
        return await _answer(request, org, node, resp, on_json=_claims(request, org, node, spec),
                             on_event=_stream_claims(request, org, node, spec))


def _claims(request: Request, org: str, node: registry.NodeInfo,
            spec: TaskStart) -> Callable[[int, bytes], Awaitable[None]]:
    """What a started task leaves in the fleet, written before the client hears of it."""
    async def claim(status: int, data: bytes) -> None:
        if status != 200:
            return
        with contextlib.suppress(ValueError):
            out = json.loads(data)
            if isinstance(out, dict):
                await _remember(request, org, node, spec, out.get("task_id"), out.get("computer_id"))

    return claim


def _stream_claims(request: Request, org: str, node: registry.NodeInfo, spec: TaskStart) -> OnEvent:
    def seen(event: dict[str, Any]) -> None:
        if event.get("type") == "task_started":
            _spawn(_remember(request, org, node, spec, event.get("task_id"), event.get("computer_id")),
                   f"the fleet record of task {event.get('task_id')}")

    return seen


async def _remember(request: Request, org: str, node: registry.NodeInfo, spec: TaskStart, task_id: Any,
                    computer_id: Any) -> None:
    fleet = r._fleet(request)
    if not isinstance(task_id, str):
        return
    await _claim(fleet, "task", task_id, org, node.id)
    if spec.idempotency_key:  # claimed before the start was sent; written again if a refusal elsewhere dropped it
        await owned.claim(fleet, TASK_KEY, task_key_id(org, spec.idempotency_key), org, node.id)
    if isinstance(computer_id, str) and computer_id != spec.computer_id:
        await owned.record_made(fleet, org, node, computer_id)  # the task's own computer


@tasks.post("/agent/tasks")
async def start_task(request: Request, org: str = Depends(current_org)) -> Response:
    return await _start(request, org, "/agent/tasks")


@tasks.post("/agent/tasks/stream")
async def start_task_stream(request: Request, org: str = Depends(current_org)) -> Response:
    return await _start(request, org, "/agent/tasks/stream")


@tasks.get("/agent/tasks")
async def list_tasks(request: Request, status: Status | None = Query(None),  # validated here, sent on in the query
                     limit: int = Query(50, ge=1, le=500), org: str = Depends(current_org)) -> Response:
    """Every node's tasks of the organisation, newest first (each node sends its newest ``limit``)."""
    found = await owned.gather_lists(request, org, "/agent/tasks")
    found.sort(key=lambda t: t.get("created_at") or "", reverse=True)
    return JSONResponse(found[:limit])


async def _to_task(request: Request, org: str, task_id: str, rest: str = "") -> Response:
    tid = _id(task_id, "task")
    node = await _held(request, org, "task", tid, f"/agent/tasks/{tid}")
    body = await _body(request) if request.method == "POST" else None
    return await _answer(request, org, node, await _send(request, org, node, f"/agent/tasks/{tid}{rest}", body))


@tasks.get("/agent/tasks/{task_id}")
async def retrieve_task(task_id: str, request: Request, org: str = Depends(current_org)) -> Response:
    return await _to_task(request, org, task_id)


@tasks.get("/agent/tasks/{task_id}/stream")
async def task_stream(task_id: str, request: Request, org: str = Depends(current_org_or_token)) -> Response:
    return await _to_task(request, org, task_id, "/stream")


@tasks.post("/agent/tasks/{task_id}/{action}")
async def steer_task(task_id: str, action: str, request: Request, org: str = Depends(current_org)) -> Response:
    if action not in ("cancel", "pause", "resume", "messages"):
        raise NotFound("no such endpoint; see /docs for the API")
    return await _to_task(request, org, task_id, f"/{action}")


# -- the model gateway ----------------------------------------------------------------------------
gateway = APIRouter(tags=["gateway"], route_class=OpenAIRoute)


async def _any(request: Request) -> registry.NodeInfo:
    return owned.pick_any(await _ready(r._fleet(request)))


async def _computer_links(request: Request, raw: bytes,
                          target: registry.NodeInfo | None) -> tuple[registry.NodeInfo | None, bytes]:
    """(the node of the computer the request's screenshot links name, the body for it): links to that
    node's files become its own (it inlines them, as a single server does); links to another node's
    are inlined here, since a node inlines only its own. Every string of the body is looked at whole,
    as the node's own check does (gateway/images.py), so an escaped ``\\/`` changes nothing."""
    if b"files" not in raw:
        return target, raw  # no link of ours can be in it (the common case: no parse)
    try:
        body = json.loads(raw)
    except ValueError:
        return target, raw  # the node says what is wrong with it
    fleet = r._fleet(request)
    settings = fleet.settings
    ours = {o.lower().rstrip("/") for o in own_origins(str(request.base_url), settings.public_url, settings.port) if o}
    links: dict[str, tuple[str, str]] = {}  # link -> (node id, token), in the order they come

    def find(value: Any) -> None:
        if isinstance(value, str):
            m = LINK.fullmatch(value)
            if m is not None and m[1].lower().rstrip("/") in ours:
                links.setdefault(value, (m[2], m[3]))
        elif isinstance(value, dict):
            for v in value.values():
                find(v)
        elif isinstance(value, list):
            for v in value:
                find(v)

    find(body)
    if not links:
        return target, raw
    if target is None:
        first = next(iter(links.values()))[0]
        target = next((n for n in await _ready(fleet) if n.id == first), None)
    foreign = {link for link, (node_id, _) in links.items() if target is None or node_id != target.id}
    if len(foreign) > MAX_FOREIGN_LINKS:
        raise InvalidRequest(f"a request may carry at most {MAX_FOREIGN_LINKS} screenshot links of computers on "
                             "other nodes than its first one's; send the others as data: URLs",
                             code="invalid_image_url")
    new: dict[str, str] = {}
    for link, (node_id, token) in links.items():
        if link in foreign:
            new[link] = await _inline(fleet, await fleet.node_url(node_id), token)
        else:
            assert target is not None
            new[link] = f"{target.url}/files/{token}"

    def swap(value: Any) -> Any:
        if isinstance(value, str):
            return new.get(value, value)
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    return target, json.dumps(swap(body), ensure_ascii=False, separators=(",", ":")).encode()


async def _inline(fleet: r.Fleet, node_url: str | None, token: str) -> str:
    """Another node's screenshot as a data URL, or the 400 a single server gives a dead link."""
    resp = None
    if node_url is not None:
        with contextlib.suppress(httpx.TransportError):
            resp = await fleet.http.get(f"{node_url}/files/{quote(token, safe='')}",
                                        headers={"authorization": f"Bearer {fleet.token}"})
    if resp is None or resp.status_code != 200:
        raise InvalidRequest("an image is an opencone screenshot link that is unknown or has expired "
                             "(OPENCONE_FILE_TTL_SECONDS); take a new screenshot", code="invalid_image_url")
    kind = resp.headers.get("content-type", "image/jpeg").split(";")[0]
    return f"data:{kind};base64,{base64.b64encode(resp.content).decode('ascii')}"


async def _lister(request: Request) -> registry.NodeInfo:
    """The node that lists models: the same one each time while it is ready, so a listing's ``created``
    (its node's start) holds still from request to request, as on a single server."""
    nodes = await _ready(r._fleet(request))
    if not nodes:
        raise LimitReached("no node of the fleet is ready; retry in a few seconds")
    return min(nodes, key=lambda n: n.id)


@gateway.get("/v1/models")
@gateway.get("/models")
async def list_models(request: Request, org: str = Depends(current_org)) -> Response:
    node = await _lister(request)
    return await _answer(request, org, node, await _send(request, org, node, request.url.path, None))


@gateway.get("/v1/models/{model_id:path}")
@gateway.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request, org: str = Depends(current_org)) -> Response:
    if any(seg in (".", "..") for seg in model_id.split("/")):
        raise NotFound(f"no model {model_id!r}")
    base = "/v1/models/" if request.url.path.startswith("/v1/") else "/models/"
    node = await _lister(request)
    path = base + quote(model_id, safe="/:@!$&'()*+,;=~")
    return await _answer(request, org, node, await _send(request, org, node, path, None))


@gateway.post("/v1/chat/completions")
@gateway.post("/chat/completions")
async def chat_completions(request: Request, org: str = Depends(current_org)) -> Response:
    raw = await _body(request)
    node, raw = await _computer_links(request, raw, None)
    node = node or await _any(request)
    return await _answer(request, org, node, await _send(request, org, node, request.url.path, raw))


@gateway.post("/v1/responses")
async def create_response(request: Request, org: str = Depends(current_org)) -> Response:
    fleet = r._fleet(request)
    raw = await _body(request)
    target = None
    with contextlib.suppress(ValueError):
        parsed = json.loads(raw)
        previous = parsed.get("previous_response_id") if isinstance(parsed, dict) else None
        if isinstance(previous, str) and OBJECT_ID.match(previous):
            target = await _held_or_none(fleet, org, "response", previous, f"/v1/responses/{previous}")
    node, raw = await _computer_links(request, raw, target)
    node = node or await _any(request)

    async def claim(status: int, data: bytes) -> None:
        # remembered here at once, written for the other replicas without holding the answer (one that
        # asks before the row is there finds it by asking the nodes)
        with contextlib.suppress(ValueError):
            out = json.loads(data)
            if status == 200 and isinstance(out, dict) and isinstance(out.get("id"), str):
                _memo(fleet).remember(out["id"], org, node.id)
                _spawn(owned.claim(fleet, "response", out["id"], org, node.id), f"response {out['id']}")

    def seen(event: dict[str, Any]) -> None:
        made = event.get("response")
        if isinstance(made, dict) and isinstance(made.get("id"), str):
            _spawn(_claim(fleet, "response", made["id"], org, node.id), f"response {made['id']}")

    resp = await _send(request, org, node, "/v1/responses", raw)
    return await _answer(request, org, node, resp, on_json=claim, on_event=seen)


async def _to_response(request: Request, org: str, response_id: str, rest: str = "") -> Response:
    rid = _id(response_id, "response")
    node = await _held(request, org, "response", rid, f"/v1/responses/{rid}")
    body = await _body(request) if request.method == "POST" else None
    return await _answer(request, org, node, await _send(request, org, node, f"/v1/responses/{rid}{rest}", body))


@gateway.get("/v1/responses/{response_id}")
@gateway.delete("/v1/responses/{response_id}")
async def response(response_id: str, request: Request, org: str = Depends(current_org)) -> Response:
    return await _to_response(request, org, response_id)


@gateway.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str, request: Request, org: str = Depends(current_org)) -> Response:
    return await _to_response(request, org, response_id, "/cancel")


@gateway.get("/v1/responses/{response_id}/input_items")
async def input_items(response_id: str, request: Request, org: str = Depends(current_org)) -> Response:
    return await _to_response(request, org, response_id, "/input_items")


def install(app: FastAPI) -> None:
    """The routes of this module, on a replica's app (before its /computers catch-all)."""
    app.include_router(tasks)
    app.include_router(gateway)
