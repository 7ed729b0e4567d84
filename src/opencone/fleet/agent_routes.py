"""The node agent's internal protocol: ``/internal/v1/…`` in front of the ordinary app.

A node agent serves today's whole application (the local ``create_app``) to API replicas only. The
protocol is versioned from the start, because replicas and agents of different releases meet during
a rolling upgrade:

- ``/internal/v1/<public path>`` is the public Lightcone path of the same name, answered by the
  node's own app (same handlers, locks, streams, CDP WebSocket);
- ``/internal/v1/node`` describes the node (id, incarnation, capacity, live computers by kind);
- every request carries ``Authorization: Bearer <internal token>``, or, on behalf of an organisation,
  ``X-Opencone-Org: <org id>`` with ``Bearer <node_key(token, org)>``: the node keeps each organisation
  apart with its own tenancy (its own org and key, made on first sight), so an id in a body (a task's
  computer, an environment, a previous response) resolves only within that organisation, as on a
  single server;
- ``/internal/v1/environments/{id}/archive`` (for an organisation only) moves a saved environment
  between nodes (fleet/replica_storage.py): ``GET`` streams its archive (its record in the
  ``X-Opencone-Environment`` header, JSON), ``PUT`` takes one streamed (that header, the archive as the
  body: capped, checked as hostile bytes, core/environments.py), ``DELETE`` drops this node's copy
  (409 while a persistent computer made from it runs here);
- anything else is a 404 naming the protocol this agent speaks.

Creates are also held to the node's per-kind slots here (``429`` when full): the replicas'
reservation in PostgreSQL is the primary guard, this is the node's own hard limit, so a replica that
raced or lost its database still cannot oversubscribe the node.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, Protocol

from opencone.api.guard import replay
from opencone.core.errors import InvalidInput, ServiceError

PREFIX = "/internal/v1"
VERSION = 1

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
MAX_CREATE_BODY = 1 << 20
ORG_HEADER = b"x-opencone-org"
ORG_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
ARCHIVE_PATH = re.compile(r"^/environments/([^/]{1,128})/archive$")
ENV_HEADER = b"x-opencone-environment"
MAX_ENV_HEADER = 4096


class Archives(Protocol):
    """A node's saved environments, as another node takes them (core/environments.py)."""

    async def export(self, org: str, env_id: str) -> tuple[dict[str, Any], IO[bytes], int]: ...

    async def import_archive(self, org: str, env_id: str, meta: dict[str, Any], chunks: AsyncIterator[bytes],
                             declared: int | None) -> dict[str, Any]: ...

    async def release(self, org: str, env_id: str) -> None: ...


def node_key(token: str, org_id: str) -> str:
    """The key an organisation's requests carry to a node: derived from the internal token, so only a
    holder of the token (a replica) can speak for an organisation."""
    digest = hmac.new(token.encode(), b"org:" + org_id.encode(), hashlib.sha256).hexdigest()
    return f"ocn-{digest[:48]}"


@dataclass
class NodeDescription:
    node_id: str
    incarnation: int
    capacity: dict[str, int]
    in_flight: dict[str, int] = field(default_factory=lambda: {"browser": 0, "desktop": 0})


def _token_of(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


def _org_of(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == ORG_HEADER:
            return value.decode("latin-1").strip()
    return None


async def _answer(scope: Scope, send: Send, status: int, body: dict[str, Any]) -> None:
    """A JSON answer for HTTP; for a WebSocket a refusal of the handshake (it takes no body)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4401 if status == 401 else 4404})
        return
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/problem+json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def _problem(status: int, detail: str, **extra: Any) -> dict[str, Any]:
    titles = {401: "Unauthorized", 404: "Not found", 405: "Method not allowed", 409: "Conflict",
              413: "Request body too large", 422: "Unprocessable content", 429: "Too many requests"}
    return {"type": "about:blank", "title": titles.get(status, "Error"), "status": status, "detail": detail,
            "error_message": detail, **extra}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _env_meta(scope: Scope) -> dict[str, Any]:
    """The ``X-Opencone-Environment`` header of an import: a JSON object (its fields are checked later)."""
    text = _header(scope, ENV_HEADER) or ""
    try:
        meta = json.loads(text) if 0 < len(text) <= MAX_ENV_HEADER else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise InvalidInput(f"an import needs X-Opencone-Environment: the environment's record as a JSON object "
                           f"(at most {MAX_ENV_HEADER} bytes)")
    return meta


def _declared(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    """A request's body as it arrives (a client that goes away ends it: the import is refused)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ServiceError("the client went away before the whole archive arrived")
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body"):
            return


async def _send_file(send: Send, raw: IO[bytes], size: int, meta: dict[str, Any]) -> None:
    """An open archive streamed as the answer (then closed), its record in a header."""
    try:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/x-tar"), (b"content-length", str(size).encode()),
            (ENV_HEADER, json.dumps(meta).encode())]})
        left = size
        while left > 0:  # the size when opened: a file replaced meanwhile is this inode, unchanged
            chunk = await asyncio.to_thread(raw.read, min(left, 256 * 1024))
            if not chunk:
                break
            left -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
        if left > 0:
            await send({"type": "http.response.body", "body": b""})
    finally:
        raw.close()


class InternalGate:
    """ASGI wrapper: strip ``/internal/v1``, demand the internal token, describe the node.

    ``live_by_kind`` returns the node's live computers by kind (read from its ComputerService once
    the app has started)."""

    def __init__(self, app: ASGIApp, token: str, node: NodeDescription,
                 live_by_kind: Callable[[], Awaitable[dict[str, int]]],
                 ensure_org: Callable[[str, str], Awaitable[None]] | None = None,
                 archives: Archives | None = None) -> None:
        self.app, self._token, self.node, self._live_by_kind = app, token.encode(), node, live_by_kind
        self._ensure_org, self._orgs_ready = ensure_org, set[str]()
        self._archives = archives

    async def _authorized(self, scope: Scope) -> bool:
        """The internal token itself, or an organisation's node key (its org and key made here once)."""
        presented = _token_of(scope).encode()
        org = _org_of(scope)
        if org is None:
            return bool(self._token) and hmac.compare_digest(presented, self._token)
        if not self._token or not ORG_ID.match(org) or self._ensure_org is None:
            return False
        key = node_key(self._token.decode(), org)
        if not hmac.compare_digest(presented, key.encode()):
            return False
        if org not in self._orgs_ready:
            await self._ensure_org(org, key)
            self._orgs_ready.add(org)
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if not path.startswith(PREFIX + "/"):
            await _answer(scope, send, 404, _problem(
                404, f"this is an opencone node agent: it serves its internal protocol under {PREFIX}/ only "
                     "(to API replicas, with the internal token)", protocol=VERSION))
            return
        if not await self._authorized(scope):
            await _answer(scope, send, 401, _problem(401, "the internal token is missing or wrong "
                                                          "(Authorization: Bearer <OPENCONE_FLEET_INTERNAL_TOKEN>, "
                                                          "or an organisation's node key with X-Opencone-Org)"))
            return
        inner = path[len(PREFIX):]
        if inner == "/node" and scope["type"] == "http":
            await _answer(scope, send, 200, await self.describe())
            return
        scope = dict(scope, path=inner, raw_path=inner.encode())
        if scope["type"] == "http" and scope["method"] == "POST" and inner == "/computers":
            await self._create(scope, receive, send)
            return
        if scope["type"] == "http" and (found := ARCHIVE_PATH.match(inner)):
            await self._archive(scope, receive, send, found.group(1))
            return
        await self.app(scope, receive, send)

    async def _archive(self, scope: Scope, receive: Receive, send: Send, env_id: str) -> None:
        """An environment's archive out, in or dropped (the module's docstring); errors as JSON problems."""
        org, method = _org_of(scope), scope["method"]
        if org is None or self._archives is None:
            await _answer(scope, send, 404, _problem(404, "environment archives are an organisation's "
                                                          "(X-Opencone-Org with its node key)"))
            return
        try:
            if method == "GET":
                meta, raw, size = await self._archives.export(org, env_id)
                await _send_file(send, raw, size, meta)
            elif method == "PUT":
                info = await self._archives.import_archive(org, env_id, _env_meta(scope), _body(receive),
                                                           _declared(scope))
                await _answer(scope, send, 200, {k: v.isoformat() if isinstance(v, datetime) else v
                                                 for k, v in info.items()})
            elif method == "DELETE":
                await self._archives.release(org, env_id)
                await send({"type": "http.response.start", "status": 204, "headers": []})
                await send({"type": "http.response.body", "body": b""})
            else:
                await _answer(scope, send, 405, _problem(405, "an archive takes GET, PUT or DELETE"))
        except ServiceError as exc:
            await _answer(scope, send, exc.status, _problem(exc.status, exc.message, **exc.details))

    async def describe(self) -> dict[str, Any]:
        live = await self._live_by_kind()
        return {"node_id": self.node.node_id, "incarnation": self.node.incarnation, "protocol": VERSION,
                "capacity": self.node.capacity, "live": live}

    async def _create(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A create, held to the node's slots of its kind (the body is small JSON: read whole, replayed)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_CREATE_BODY:
                await _answer(scope, send, 413, _problem(413, f"a create body is at most {MAX_CREATE_BODY} bytes"))
                return
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            parsed = json.loads(body) if body.strip() else {}
            kind = parsed.get("kind", "browser") if isinstance(parsed, dict) else "browser"
        except ValueError:
            kind = "browser"  # the app answers the bad JSON itself
        if kind in self.node.capacity:
            live = (await self._live_by_kind()).get(kind, 0)
            if live + self.node.in_flight[kind] >= self.node.capacity[kind]:
                await _answer(scope, send, 429, _problem(
                    429, f"node {self.node.node_id} is full for {kind} computers "
                         f"({self.node.capacity[kind]} slots)", limit=self.node.capacity[kind]))
                return
        self.node.in_flight[kind] = self.node.in_flight.get(kind, 0) + 1
        try:
            await self.app(scope, replay(body, receive), send)  # the body read here, given again
        finally:
            self.node.in_flight[kind] -= 1
