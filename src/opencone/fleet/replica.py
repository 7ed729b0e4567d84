"""An API replica (``opencone serve`` with ``OPENCONE_FLEET=ray``): stateless, and not a Ray driver.

It authenticates (API keys in PostgreSQL), validates, places and routes; it owns no computer:

- ``POST /computers``: validated as a local server validates it, placed (fleet/placement.py: best of K,
  one atomic reservation), sent to that node's agent; a node that refuses (full, 429/503, or out of
  reach) is excluded and the next one tried. The fleet record (``computers.node_id``) is written
  here, and the reservation becomes a live slot in one statement. ``node_hint`` (a fleet node id or
  a Ray node id) puts the computer on that node or nowhere.
- every other request for computer X goes to X's node (``computers.node_id`` → ``nodes.url``, cached
  5 s and dropped at once when an end is NOTIFY'd on ``opencone_computers``, the cache outliving a
  database outage): REST over a keep-alive httpx pool, the CDP WebSocket
  relayed frame by frame, ``/events`` and ``/screencast`` relayed as bytes. An events relay that
  breaks because the node died ends with the ``terminated`` event the fleet record then holds.
- URLs the agent hands out (its internal base, the internal token) are rewritten to this replica's
  base and the client's own key; screenshot URLs become ``/files/<node id>.<token>``, which any
  replica serves by asking that node.
- ``GET /nodes`` (a key of the default organisation): the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import websockets
from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import select, update
from starlette.background import BackgroundTask
from starlette.websockets import WebSocketDisconnect

from opencone import __version__
from opencone.api import errors
from opencone.api.auth import current_org, current_org_or_token, org_for, presented_key
from opencone.api.errors import describe_validation, problem
from opencone.api.guard import BodyGuard
from opencone.api.routes import computer_files as computer_files_routes
from opencone.api.routes import exec as exec_routes
from opencone.api.routes import live
from opencone.api.routes import notte_seed as notte_seed_routes
from opencone.api.wire import openai as openai_wire
from opencone.api.wire.computers import ComputerCreate, computer_response, status_response
from opencone.config import Settings
from opencone.core.accounts import DEFAULT_ORG_ID, KEYS_CHANNEL, Accounts
from opencone.core.clock import iso
from opencone.core.computers import _view_of
from opencone.core.errors import Conflict, InvalidInput, LimitReached, NotFound, ServiceError
from opencone.core.events import encode
from opencone.core.store.db import make_engine, migrate, sessionmaker
from opencone.core.store.models import ComputerRecord, NodeRecord
from opencone.fleet import (
    placement,
    registry,
    replica_agent,
    replica_mcp,
    replica_notte,
    replica_openenv,
    replica_ops,
    replica_storage,
)
from opencone.fleet.agent_routes import node_key
from opencone.fleet.nodes_view import NodesView
from opencone.fleet.replica_sweep import NodeSweeper

log = logging.getLogger(__name__)

LISTEN_CHECK_SECONDS = 5.0  # the listening connection is checked this often (a half-open one shows no error)
PLACE_ATTEMPTS = 4
NODES_TTL = 1.0  # a read of the ready nodes serves creates' choices this long when no NOTIFY keeps it fresh
DIRECT_PING_IDLE = 30.0  # a placement connection idle this long is pinged at checkout (a half-open one)
TERMINAL_WAIT_SECONDS = 30.0  # a broken events relay waits this long for the fleet's verdict
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
               "content-length", "authorization", "proxy-authorization", "accept-encoding"}
TERMINATED = "terminated"
STREAM_ROUTES = {"events", "screencast", "cdp", "ws"}
COMPUTER_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def agent_path(computer_id: str, rest: str) -> str:
    """The agent's path for a request about ``computer_id``, percent-encoded. A path that could lead
    the agent elsewhere (``..`` segments, another computer's id) is a 404 here: the agent trusts the
    token, so the replica alone keeps one organisation's requests on its own computers."""
    segments = rest.split("/") if rest else []
    if not COMPUTER_ID.match(computer_id) or any(seg in (".", "..") for seg in segments):
        raise NotFound(f"no computer {computer_id!r}" if not COMPUTER_ID.match(computer_id)
                       else "no such endpoint; see /docs for the API")
    return quote(f"/computers/{computer_id}" + (f"/{rest}" if rest else ""), safe="/@!$&'()*+,;=:~")


class NodeUnreachable(ServiceError):
    status = 503


class Forbidden(ServiceError):
    status = 403


@dataclass
class Route:
    org_id: str
    node_id: str | None
    url: str | None  # the agent's internal base (…/internal/v1)
    row: ComputerRecord
    at: float


class ReplicaAccounts(Accounts):
    """API keys from PostgreSQL; a key seen valid stays valid through a database outage (live
    computers keep working), an unknown key then gets a 503."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._known: dict[str, str] = {}

    async def org_for_key(self, key: str) -> str | None:
        try:
            org = await super().org_for_key(key)
        except Exception as exc:
            if not registry.unavailable(exc):
                raise
            if key in self._known:
                return self._known[key]
            raise registry.DatabaseUnavailable() from exc
        if org is None:
            self._known.pop(key, None)
        elif len(self._known) < 100_000:
            self._known[key] = org
        return org


class Fleet:
    """What a replica holds: the database, the pool to the agents, the route cache."""

    def __init__(self, settings: Settings) -> None:
        if not settings.fleet_internal_token:
            raise ValueError("OPENCONE_FLEET=ray needs OPENCONE_FLEET_INTERNAL_TOKEN (the agents' secret)")
        self.settings = settings
        self.token = settings.fleet_internal_token
        # routes, keys, records: no ping round trips (BEGIN, ping, ROLLBACK) at checkout either, as below
        self.engine = make_engine(settings.resolved_database_url, ping_idle_after=DIRECT_PING_IDLE)
        self.sessions = sessionmaker(self.engine)
        # a create's statements, each one round trip: no BEGIN/COMMIT, no ORM (fleet/placement.py), and no
        # ping round trip at checkout unless the connection idled DIRECT_PING_IDLE seconds (a connection the
        # server closed is seen closed locally, for free: core/store/db.py)
        self.direct = make_engine(settings.resolved_database_url, autocommit=True, ping_idle_after=DIRECT_PING_IDLE)
        self.accounts = ReplicaAccounts(self.sessions)
        # keep-alive to every agent; no overall timeout for streams (events, screencast), a connect timeout
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(120, connect=5), limits=httpx.Limits(
            max_connections=1000, max_keepalive_connections=200, keepalive_expiry=60))
        self._routes: dict[str, Route] = {}
        self.route_ttl = settings.fleet_route_ttl_seconds
        self.nodes_view = NodesView(NODES_TTL)  # the ready nodes, kept fresh by NOTIFY (fleet/nodes_view.py)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a log line per forwarded request costs more
        self._heard = 0  # ends heard on the channel: a route read while one arrives is not cached
        self._listener: asyncio.Task[None] | None = None
        # nodes silent too long are declared lost here too: the controller may be gone (fleet/replica_sweep.py)
        lost_after = settings.fleet_node_lost_seconds
        self.sweeper = NodeSweeper(self.sessions, lost_after) if lost_after > 0 else None
        self._sweeping: asyncio.Task[None] | None = None
        self._nodes: dict[str, tuple[float, registry.NodeInfo]] = {}
        self.first_key: str | None = None
        self._node_keys: dict[str, str] = {}
        self.placing: dict[str, Any] = {  # placement's knobs, from the settings
            "k": settings.fleet_placement_k, "heartbeat_ttl": timedelta(seconds=settings.fleet_heartbeat_ttl_seconds),
            "memory_reserve_mb": {"browser": settings.fleet_browser_memory_mb,
                                  "desktop": settings.fleet_desktop_memory_mb}}

    async def start(self) -> None:
        await migrate(self.engine)
        await self.accounts.ensure_org()
        if self.settings.api_key:
            await self.accounts.ensure_key(self.settings.api_key)
        self._listener = asyncio.create_task(self._listen_forever(), name="fleet-listen")
        if self.sweeper is not None:
            self._sweeping = asyncio.create_task(self.sweeper.run_forever(), name="fleet-node-sweep")

    async def stop(self) -> None:
        for task in (self._sweeping, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.http.aclose()
        await self.engine.dispose()
        await self.direct.dispose()

    # -- where computer X lives -----------------------------------------------------------
    async def route(self, org: str, computer_id: str, *, fresh: bool = False) -> Route:
        """X's node, for ``org`` (404 for another organisation's computer or an unknown one)."""
        hit = self._routes.get(computer_id)
        if hit and not fresh and time.monotonic() - hit.at < self.route_ttl:
            return self._check(hit, org, computer_id)
        heard = self._heard
        try:
            async with self.sessions() as s, registry.guarded(s):
                found = (await s.execute(
                    select(ComputerRecord, NodeRecord.url)
                    .outerjoin(NodeRecord, NodeRecord.id == ComputerRecord.node_id)
                    .where(ComputerRecord.id == computer_id))).first()
                await s.commit()
        except registry.DatabaseUnavailable:
            if hit:  # the database is away: the agents hold the truth, the last route still leads there
                return self._check(hit, org, computer_id)
            raise
        if found is None:
            raise NotFound(f"no computer {computer_id!r}")
        row, url = found
        route = Route(row.org_id, row.node_id, url, row, time.monotonic())
        if len(self._routes) > 100_000:
            self._routes.clear()
        if heard == self._heard:  # else an end arrived meanwhile: this read may predate it
            self._routes[computer_id] = route
        return self._check(route, org, computer_id)

    @staticmethod
    def _check(route: Route, org: str, computer_id: str) -> Route:
        if route.org_id != org:
            raise NotFound(f"no computer {computer_id!r}")
        return route

    def forget(self, computer_id: str) -> None:
        self._routes.pop(computer_id, None)

    def _on_ended(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        """A NOTIFY on ``registry.COMPUTERS_CHANNEL``: ids of computers the fleet just ended (another
        replica's delete, a node's own end, a lost node). Runs on the event loop; only drops routes."""
        self._heard += 1
        for computer_id in payload.split(","):
            self._routes.pop(computer_id, None)

    def _on_node(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        """A NOTIFY on ``registry.NODES_CHANNEL``: a node's new report (or its removal)."""
        self.nodes_view.heard(payload)

    def _on_keys_changed(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        """A key was made or revoked (the CLI, another replica): every key is looked up again."""
        self.accounts.forget_cached()

    async def _listen_forever(self) -> None:
        """LISTEN on a dedicated asyncpg connection (not the pool's: a pooled connection is reset and
        shared; PgBouncer in transaction mode drops LISTEN), connected again after an outage. Every
        route is dropped at each (re)connection: ends sent while nobody listened were not heard."""
        import asyncpg  # the fleet extra's driver; only a replica imports it

        cargs, cparams = self.engine.dialect.create_connect_args(self.engine.url)
        delay = 0.5
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(*cargs, **cparams, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, gone=lost: gone.set())
                await conn.add_listener(registry.COMPUTERS_CHANNEL, self._on_ended)
                await conn.add_listener(KEYS_CHANNEL, self._on_keys_changed)
                await conn.add_listener(registry.NODES_CHANNEL, self._on_node)
                self.nodes_view.listening(True)
                self._routes.clear()
                self.accounts.forget_cached()  # changes made while nobody listened were not heard
                self.accounts.changes_heard = True
                self._heard += 1
                delay = 0.5
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), LISTEN_CHECK_SECONDS)
                    if not lost.is_set():
                        await asyncio.wait_for(conn.execute("SELECT 1"), LISTEN_CHECK_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away: routes live by their TTL until it is back
                log.warning("fleet LISTEN connection lost (%s); reconnecting in %.1f s", type(exc).__name__, delay)
            finally:
                self.accounts.changes_heard = False  # unheard, a revocation must not wait a minute
                self.nodes_view.listening(False)  # unheard, the view of the nodes lives by its TTL
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def place(self, kind: str, hint: str | None, exclude: frozenset[str]) -> registry.NodeInfo | None:
        """A node with a slot reserved for a create (fleet/placement.py), chosen over this replica's view
        of the ready nodes (fleet/nodes_view.py: kept by NOTIFY, else under NODES_TTL old; this replica's
        own reservations in it), read again when that finds none (full, or a node registered since). The
        reservation is always atomic."""
        async with self.direct.connect() as db:
            nodes = self.nodes_view.current()
            if nodes is not None:
                node = await placement.place(db, kind, hint=hint, exclude=exclude, nodes=nodes, **self.placing)
                if node is not None:
                    self.nodes_view.update(node)
                    return node
            began = self.nodes_view.begin_read()
            nodes = await registry.list_nodes(db, states=[registry.READY])
            self.nodes_view.read(nodes, began)
            node = await placement.place(db, kind, hint=hint, exclude=exclude, nodes=nodes, **self.placing)
            if node is not None:
                self.nodes_view.update(node)
            return node

    async def node_url(self, node_id: str) -> str | None:
        hit = self._nodes.get(node_id)
        if hit and time.monotonic() - hit[0] < self.route_ttl:
            return hit[1].url
        try:
            async with self.sessions() as s:
                info = await registry.get_node(s, node_id)
        except registry.DatabaseUnavailable:
            return hit[1].url if hit else None
        if info is None:
            return None
        self._nodes[node_id] = (time.monotonic(), info)
        return info.url

    async def end_record(self, computer_id: str, reason: str) -> None:
        with contextlib.suppress(Exception):
            async with self.sessions() as s:
                await s.execute(update(ComputerRecord).where(
                    ComputerRecord.id == computer_id, ComputerRecord.status != TERMINATED).values(
                    status=TERMINATED, termination_reason=reason, terminated_at=datetime.now(UTC)))
                await registry.notify_ended(s, [computer_id])  # the other replicas drop its route (at commit)
                await s.commit()
        self.forget(computer_id)

    async def wait_terminated(self, computer_id: str, timeout: float) -> ComputerRecord | None:
        """The fleet record once it says terminated (the controller's verdict on a lost node), or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                async with self.sessions() as s:
                    row = await s.get(ComputerRecord, computer_id)
                    await s.commit()
                if row is not None and row.status == TERMINATED:
                    return row
            await asyncio.sleep(0.25)
        return None

    # -- speaking to an agent for an organisation -----------------------------------------
    def key_for(self, org: str) -> str:
        """The node key of ``org`` (fleet/agent_routes.py): on a node each organisation is its own."""
        key = self._node_keys.get(org)
        if key is None:
            if len(self._node_keys) > 100_000:
                self._node_keys.clear()
            key = self._node_keys[org] = node_key(self.token, org)
        return key

    def agent_headers(self, org: str, **extra: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key_for(org)}", "x-opencone-org": org, **extra}

    # -- what the agents answer, as the client must see it --------------------------------
    def rewrite(self, data: bytes, agent_url: str, node_id: str, public: str, client_key: str | None,
                org: str | None = None) -> bytes:
        """The agent's base and keys in a body, replaced by this replica's base and the client's key."""
        agent = agent_url.encode()
        keys = [self.token.encode()] + ([self.key_for(org).encode()] if org else [])
        if agent not in data and not any(k in data for k in keys):
            return data
        ws_agent, ws_public = b"ws" + agent[4:], ("ws" + public[4:]).encode()
        data = data.replace(agent + b"/files/", f"{public}/files/{node_id}.".encode())
        data = data.replace(agent, public.encode()).replace(ws_agent, ws_public)
        for key in keys:
            data = data.replace(key, (client_key or "").encode())
        return data


def _public_base(request: Request | WebSocket, settings: Settings) -> str:
    return (settings.public_url or str(request.base_url)).rstrip("/")


def _fleet(conn: Request | WebSocket) -> Fleet:
    return conn.app.state.fleet  # type: ignore[no-any-return]


def _forward_query(conn: Request | WebSocket, token: str) -> str:
    """The client's query for the agent: its ``?token=`` key replaced by the internal token."""
    items = [(k, token if k == "token" else v) for k, v in conn.query_params.multi_items()]
    return ("?" + urlencode(items)) if items else ""


def _headers_for_agent(conn: Request | WebSocket, fleet: Fleet, org: str) -> dict[str, str]:
    out = {k: v for k, v in conn.headers.items() if k.lower() not in HOP_HEADERS
           and not k.lower().startswith("sec-websocket") and k.lower() != "x-opencone-org"}
    return {**out, **fleet.agent_headers(org)}


def _answer_headers(resp: httpx.Response, *, as_is: bool = False) -> dict[str, str]:
    """The node's answer headers for the client; ``as_is``: its body is relayed byte for byte, so its
    Content-Length still holds (a video's length lets a player size its buffer and seek)."""
    out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS and k.lower() != "content-encoding"}
    if as_is and "content-length" in resp.headers and "transfer-encoding" not in resp.headers:
        out["content-length"] = resp.headers["content-length"]
    return out


def _is_terminated_frame(data: bytes) -> bool:
    return b'"type":"terminated"' in data or b'"type": "terminated"' in data


async def _forward(request: Request, route: Route, path: str, org: str) -> Response:
    """One request for a live computer's node; its answer, rewritten, streamed when it is a stream."""
    fleet = _fleet(request)
    assert route.url is not None and route.node_id is not None
    public = _public_base(request, fleet.settings)
    client_key = presented_key(request, allow_query=True)
    body: Any = None
    if request.method not in ("GET", "HEAD", "DELETE"):
        size = int(request.headers.get("content-length") or 0)
        body = request.stream() if size > (1 << 20) or "chunked" in request.headers.get("transfer-encoding", "") \
            else await request.body()
    req = fleet.http.build_request(request.method, route.url + path + _forward_query(request, fleet.key_for(org)),
                                   headers=_headers_for_agent(request, fleet, org), content=body)
    try:
        resp = await fleet.http.send(req, stream=True)
    except httpx.TransportError as exc:
        return await _node_gone(request, route, path, org, exc)
    kind = resp.headers.get("content-type", "")
    headers = _answer_headers(resp)
    if "json" in kind:
        try:
            data = await resp.aread()
        except httpx.TransportError as exc:
            return await _node_gone(request, route, path, org, exc)
        finally:
            await resp.aclose()
        return Response(fleet.rewrite(data, route.url, route.node_id, public, client_key, org), resp.status_code,
                        headers=headers)
    if "text/event-stream" in kind and path.endswith("/events"):
        return StreamingResponse(_relay_events(fleet, resp, route, public, client_key, org), resp.status_code,
                                 headers=headers, background=BackgroundTask(resp.aclose))
    return StreamingResponse(_relay_bytes(resp), resp.status_code, headers=_answer_headers(resp, as_is=True),
                             background=BackgroundTask(resp.aclose))


async def _relay_bytes(resp: httpx.Response) -> AsyncIterator[bytes]:
    with contextlib.suppress(httpx.TransportError):
        async for chunk in resp.aiter_raw():
            yield chunk


async def _relay_events(fleet: Fleet, resp: httpx.Response, route: Route, public: str,
                        client_key: str | None, org: str) -> AsyncIterator[bytes]:
    """The agent's SSE bytes, frame by frame; if the agent's stream breaks before ``terminated``, the
    fleet record's end (once the controller gives it) is the stream's last event."""
    assert route.url is not None and route.node_id is not None
    buffer, ended = b"", False
    try:
        async for chunk in resp.aiter_raw():
            buffer += chunk
            cut = buffer.rfind(b"\n\n")
            if cut < 0:
                continue
            frames, buffer = buffer[:cut + 2], buffer[cut + 2:]
            if _is_terminated_frame(frames) and b'"server_shutdown"' in frames:
                # the node's server is stopping: why (node lost, agent restarted, a clean stop) is
                # the fleet's word, not the node's; the events before it still go out
                kept = b"".join(f + b"\n\n" for f in frames.split(b"\n\n") if f and not _is_terminated_frame(f))
                if kept:
                    yield fleet.rewrite(kept, route.url, route.node_id, public, client_key, org)
                break
            ended = ended or _is_terminated_frame(frames)
            yield fleet.rewrite(frames, route.url, route.node_id, public, client_key, org)
    except httpx.TransportError:
        pass
    if ended:
        return
    row = await fleet.wait_terminated(route.row.id, TERMINAL_WAIT_SECONDS)
    if row is not None:
        fleet.forget(row.id)
        yield encode({"type": "terminated", "computer_id": row.id, "timestamp": iso(row.terminated_at),
                      "reason": row.termination_reason}).frame


async def _node_gone(request: Request, route: Route, path: str, org: str, exc: Exception) -> Response:
    """The agent did not answer: the fleet record decides (ended: as a local server answers an ended
    computer; else the node is suspect: 503)."""
    fleet = _fleet(request)
    fresh = await fleet.route(org, route.row.id, fresh=True)
    if fresh.row.status == TERMINATED:
        return _ended_answer(request, fresh.row, path)
    cid = route.row.id
    if request.method == "GET" and path in (f"/computers/{cid}", f"/computers/{cid}/status"):
        return _ended_answer(request, fresh.row, path)  # the record as it stands until the verdict
    if path.endswith("/events"):  # the verdict comes within seconds when the node is really gone
        row = await fleet.wait_terminated(route.row.id, TERMINAL_WAIT_SECONDS)
        if row is not None:
            return _ended_answer(request, row, path)
    log.warning("node %s unreachable for %s: %s", route.node_id, route.row.id, exc)
    raise NodeUnreachable(f"the node of computer {route.row.id} does not answer; retry in a few seconds",
                          node_id=route.node_id)


def _ended_answer(request: Request, row: ComputerRecord, path: str) -> Response:
    """What a single server answers for an ended computer it no longer runs (a retrieve: the record)."""
    cid = row.id
    view = _view_of(row)
    if path == f"/computers/{cid}" and request.method == "GET":
        return JSONResponse(computer_response(view, _public_base(request, _fleet(request).settings)))
    if path == f"/computers/{cid}/status" and request.method == "GET":
        return JSONResponse(status_response(view))
    if path == f"/computers/{cid}" and request.method == "DELETE":
        return Response(status_code=204)
    if path == f"/computers/{cid}/events":
        frame = encode({"type": "terminated", "computer_id": cid, "timestamp": iso(row.terminated_at),
                        "reason": row.termination_reason}).frame
        return Response(frame, media_type="text/event-stream", headers={"cache-control": "no-cache"})
    exc = Conflict(f"computer {cid} is terminated ({row.termination_reason}); create a new one",
                   computer_status=TERMINATED, termination_reason=row.termination_reason)
    return errors.service_problem(exc)


# -- create --------------------------------------------------------------------------------
async def _create(request: Request, org: str) -> Response:
    fleet = _fleet(request)
    raw = await request.body()
    try:
        parsed = await request.json() if raw.strip() else {}
    except ValueError:
        return problem(422, "the body is not JSON; send a JSON object (see /docs for POST /computers)")
    if not isinstance(parsed, dict):
        return problem(422, "the body must be a JSON object")
    hint = parsed.pop("node_hint", None)
    if hint is not None and (not isinstance(hint, str) or not 0 < len(hint) <= 128):
        raise InvalidInput("node_hint must be a node id (GET /nodes) or a Ray node id, 1-128 characters",
                           field="node_hint")
    try:
        spec = ComputerCreate.model_validate(parsed)
    except ValidationError as exc:
        detail, items = describe_validation(list(exc.errors()))
        return problem(422, detail, extra={"errors": items})
    if spec.environment_id:  # restored on the node that holds it (fleet/replica_storage.py)
        hint = await replica_storage.environment_hint(fleet, org, spec.kind, spec.environment_id, hint)
    kind = spec.kind
    body = json.dumps(parsed).encode()
    exclude: set[str] = set()
    public = _public_base(request, fleet.settings)
    refusals: list[str] = []
    for _ in range(PLACE_ATTEMPTS):
        node = await fleet.place(kind, hint, frozenset(exclude))
        if node is None:
            break
        try:
            resp = await fleet.http.post(node.url + "/computers", content=body,
                                         headers=fleet.agent_headers(org, **{"content-type": "application/json"}))
        except httpx.TransportError as exc:
            resp, refusals = None, [*refusals, f"{node.id}: {type(exc).__name__}"]
        if resp is not None and resp.status_code == 200:
            out = resp.json()
            try:
                await _record(fleet, org, node.id, kind, out)
            except BaseException:
                # no computer without its record: end it on the node
                with contextlib.suppress(Exception):
                    await fleet.http.delete(f"{node.url}/computers/{out['id']}",
                                            headers=fleet.agent_headers(org))
                async with fleet.direct.connect() as db:
                    await placement.release(db, node.id, kind)
                raise
            return Response(fleet.rewrite(resp.content, node.url, node.id, public, presented_key(request, False), org),
                            200, media_type="application/json")
        async with fleet.direct.connect() as db:
            await placement.release(db, node.id, kind)
        if resp is not None and resp.status_code not in (429, 503):
            # the node's own verdict on the request (bad input): the client's answer
            return Response(fleet.rewrite(resp.content, node.url, node.id, public, None, org), resp.status_code,
                            headers=_answer_headers(resp))
        if resp is not None:
            refusals.append(f"{node.id}: {resp.status_code}")
        exclude.add(node.id)
        if hint is not None:
            break
    if hint is not None:
        async with fleet.sessions() as s:
            nodes = await registry.list_nodes(s, states=[registry.READY])
        if placement.resolve_hint(nodes, hint) is None:
            raise InvalidInput(f"node_hint {hint!r} names no ready node; ready: "
                               f"{', '.join(n.id for n in nodes) or 'none'}", field="node_hint")
    raise LimitReached(f"no node of the fleet can take a {kind} computer now (all full or refusing"
                       f"{': ' + '; '.join(refusals) if refusals else ''}); delete one or retry")


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


async def _record(fleet: Fleet, org: str, node_id: str, kind: str, out: dict[str, Any]) -> None:
    """The fleet record of a computer the node just made, and its slot from reserved to live: one statement."""
    d = out.get("display") or {}
    row = dict(
        id=out["id"], org_id=org, kind=kind, status=out.get("status", "ready"),
        created_at=_when(out.get("created_at")), last_activity_at=_when(out.get("last_activity_at")),
        max_lifetime_seconds=out["max_lifetime_seconds"], inactivity_timeout_seconds=out["inactivity_timeout_seconds"],
        idle_timeout_enabled=out["idle_timeout_enabled"], display_width=d.get("width", 0),
        display_height=d.get("height", 0), display_scale=d.get("scale", 1.0), persistent=bool(out.get("persistent")),
        environment_id=out.get("environment_id"), context_id=out.get("context_id"), options={}, node_id=node_id)
    async with fleet.direct.connect() as db:
        await placement.confirm(db, node_id, kind, record=row)


# -- list --------------------------------------------------------------------------------------
async def _list(request: Request, org: str) -> Response:
    fleet = _fleet(request)
    kind = request.query_params.get("type", "live")
    if kind not in ("live", "persistent"):
        raise InvalidInput("type must be 'live' or 'persistent'", field="type", allowed=["live", "persistent"])
    if kind == "persistent":
        return JSONResponse(await replica_storage.saved_environments(request, org))
    context = request.query_params.get("context_id")
    async with fleet.sessions() as s, registry.guarded(s):
        nodes = await registry.list_nodes(s, states=[registry.READY])
    public = _public_base(request, fleet.settings)
    key = presented_key(request, False)

    async def of_node(node_id: str, url: str) -> list[dict[str, Any]]:
        # each node answers for the organisation alone (its own tenancy): what a task or an
        # OpenEnv reset made there is listed before its fleet record is written
        try:
            resp = await fleet.http.get(url + "/computers", headers=fleet.agent_headers(org),
                                        params={"context_id": context} if context else None)
            resp.raise_for_status()
        except httpx.HTTPError:
            return []  # an unreachable node's computers are not listed as live
        return json.loads(fleet.rewrite(resp.content, url, node_id, public, key, org))  # type: ignore[no-any-return]

    parts = await asyncio.gather(*(of_node(n.id, n.url) for n in nodes if n.url))
    found = sorted((c for part in parts for c in part), key=lambda c: c.get("created_at") or "")
    return JSONResponse(found)


# -- the app -------------------------------------------------------------------------------------
def create_replica_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        fleet = Fleet(settings)
        app.state.fleet = fleet
        # what api/auth.py reads: the keys
        app.state.runtime = type("ReplicaRuntime", (), {"accounts": fleet.accounts, "settings": settings})()
        await fleet.start()
        log.info("opencone %s fleet replica ready on %s:%s", __version__, settings.host, settings.port)
        try:
            yield
        finally:
            await fleet.stop()

    app = FastAPI(title="opencone (fleet replica)", version=__version__, lifespan=lifespan,
                  description="Self-hosted computers for AI agents, over the Lightcone API: a fleet replica.")
    errors.install(app)
    app.include_router(live.router)
    replica_agent.install(app)  # agent tasks and the model gateway
    for area in (replica_notte, replica_openenv):  # the Notte session API of both eras, OpenEnv
        area.install(app)
    replica_ops.install(app)
    replica_mcp.install(app, settings)  # /mcp: the same tools, over this replica's routes
    replica_storage.install(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "role": "fleet-replica"}

    @app.get("/nodes")
    async def nodes(request: Request, org: str = Depends(current_org)) -> list[dict[str, Any]]:
        """The fleet's nodes (admin: a key of the default organisation)."""
        if org != DEFAULT_ORG_ID:
            raise Forbidden("GET /nodes takes a key of the default organisation (the operator's)")
        async with _fleet(request).sessions() as s:
            return [n.public() for n in await registry.list_nodes(s)]

    @app.post("/computers")
    async def create(request: Request, org: str = Depends(current_org)) -> Response:
        return await _create(request, org)

    @app.get("/computers")
    async def list_computers(request: Request, org: str = Depends(current_org)) -> Response:
        return await _list(request, org)

    @app.api_route("/computers/{computer_id}", methods=["GET", "DELETE"])
    @app.api_route("/computers/{computer_id}/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
    async def computer(request: Request, computer_id: str, rest: str = "") -> Response:
        fleet = _fleet(request)
        # ?token= only where a local server takes it (streams, CDP): everything else needs the header
        streams = request.method == "GET" and rest.split("/", 1)[0] in STREAM_ROUTES
        org = await (current_org_or_token(request) if streams else current_org(request))
        path = agent_path(computer_id, rest)
        route = await fleet.route(org, computer_id)
        if route.row.status == TERMINATED or route.url is None:
            return _ended_answer(request, route.row, path)
        answer = await _forward(request, route, path, org)
        if request.method == "DELETE" and not rest and answer.status_code == 204:
            await fleet.end_record(computer_id, "deleted")
        return answer

    @app.get("/files/{token}")
    async def files(request: Request, token: str) -> Response:
        """A capability URL (no key): ``<node id>.<token>``, served by asking that node."""
        fleet = _fleet(request)
        node_id, dot, inner = token.partition(".")
        url = await fleet.node_url(node_id) if dot and inner else None
        if url is None:
            raise NotFound("no such file (expired, or never handed out)")
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("range", "if-range", "accept")}
        headers["authorization"] = f"Bearer {fleet.token}"
        try:
            resp = await fleet.http.send(fleet.http.build_request("GET", f"{url}/files/{quote(inner, safe='')}",
                                                                  headers=headers),
                                         stream=True)
        except httpx.TransportError as exc:
            raise NodeUnreachable("the node holding this file does not answer") from exc
        return StreamingResponse(_relay_bytes(resp), resp.status_code, headers=_answer_headers(resp, as_is=True),
                                 background=BackgroundTask(resp.aclose))

    @app.websocket("/computers/{computer_id}/{rest:path}")
    async def socket(ws: WebSocket, computer_id: str, rest: str) -> None:
        await _relay_socket(ws, computer_id, rest)

    # outermost, as on a single server: a body is bounded and checked before the replica reads it into
    # memory to place or forward it (a file upload streams on to its node, which caps it)
    app.add_middleware(BodyGuard, max_body_bytes=settings.max_body_bytes,
                       renderers={exec_routes.STREAM_PATH: exec_routes.refused, openai_wire.PATHS: openai_wire.refused,
                                  notte_seed_routes.PATHS: notte_seed_routes.refused},
                       raw_uploads=computer_files_routes.UPLOAD_PATH)
    return app


async def _deny(ws: WebSocket, status: int, detail: str) -> None:
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(problem(status, detail))
    else:
        await ws.close(1008, detail[:120])


async def _relay_socket(ws: WebSocket, computer_id: str, rest: str) -> None:
    """The client's WebSocket (CDP, input) relayed frame by frame to the agent's, both ways."""
    fleet = _fleet(ws)
    try:
        org = await org_for(ws, allow_query=True)
        if org is None:
            await _deny(ws, 401, "missing or invalid API key; send 'Authorization: Bearer <key>' or ?token=<key>")
            return
        path = agent_path(computer_id, rest)
        route = await fleet.route(org, computer_id)
    except ServiceError as exc:
        await _deny(ws, exc.status, exc.message)
        return
    if route.row.status == TERMINATED or route.url is None:
        await _deny(ws, 409, f"computer {computer_id} is terminated ({route.row.termination_reason})")
        return
    url = "ws" + route.url[4:] + path + _forward_query(ws, fleet.key_for(org))
    try:
        upstream = await connect_upstream(url, fleet.agent_headers(org))
    except UPSTREAM_ERRORS as exc:
        await deny_upstream(ws, exc, f"the node of computer {computer_id} does not answer; retry in a few seconds")
        return
    await pump(ws, upstream)


UPSTREAM_ERRORS = (OSError, websockets.WebSocketException, TimeoutError)
Watch = Callable[[str | bytes], Awaitable[None]]


async def connect_upstream(url: str, headers: dict[str, str]) -> websockets.ClientConnection:
    """A WebSocket to an agent (raises one of ``UPSTREAM_ERRORS``)."""
    return await websockets.connect(url, additional_headers=headers, max_size=128 * 2**20, compression=None,
                                    ping_interval=None, open_timeout=15)


async def deny_upstream(ws: WebSocket, exc: Exception, unreachable: str) -> None:
    """The client's handshake refused as the agent refused ours (its status and words), else 503."""
    if isinstance(exc, websockets.InvalidStatus):
        status = exc.response.status_code
        body = exc.response.body.decode(errors="replace") if exc.response.body else ""
        await _deny(ws, status if 400 <= status < 600 else 502, body[:300] or f"the node answered {status}")
    else:
        await _deny(ws, 503, unreachable)


async def pump(ws: WebSocket, upstream: websockets.ClientConnection, watch: Watch | None = None) -> None:
    """The client's WebSocket accepted and relayed frame by frame to ``upstream``, both ways, until
    either side ends; ``watch`` sees each of the agent's frames before the client does."""
    try:
        await ws.accept()
    except Exception:
        await upstream.close()
        return

    async def client_to_agent() -> None:
        with contextlib.suppress(WebSocketDisconnect, websockets.ConnectionClosed):
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("text")
                await upstream.send(data if data is not None else message.get("bytes") or b"")

    async def agent_to_client() -> None:
        with contextlib.suppress(WebSocketDisconnect, websockets.ConnectionClosed, RuntimeError):
            async for data in upstream:
                if watch is not None:
                    await watch(data)
                if isinstance(data, str):
                    await ws.send_text(data)
                else:
                    await ws.send_bytes(data)

    tasks = [asyncio.create_task(client_to_agent()), asyncio.create_task(agent_to_client())]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await upstream.close()
    with contextlib.suppress(Exception):
        await ws.close(upstream.close_code or 1000)
