"""The fleet seen whole from any replica: ``GET /metrics``, ``GET /status`` and ``GET /``.

- ``/metrics`` (Prometheus text, the official ``prometheus-client``): the replica's own figures (requests
  it forwarded by route kind, creates and their time, creates the fleet refused, nodes that did not
  answer, stream relays open), counted by a pure-ASGI middleware around the replica app so the routing
  code stays as it is; then every ready node's own ``/metrics`` (asked through its internal route with
  the internal token: the node's operator), parsed with ``prometheus_client.parser`` and emitted again
  with a ``node="<node id>"`` label on every sample, each family's HELP/TYPE once. A node that does not
  answer is left out and counted in ``opencone_fleet_node_scrape_errors_total``.
- ``/status`` (``opencone status --url <replica>``): the nodes (state, slots, load, free memory, pools),
  the fleet's live computers by kind, status, organisation and node (the fleet records).
- ``GET /``: the local server's page (live view, docs), which serves a replica as it is.

Both take a key of the default organisation, as on a single server (``OPENCONE_METRICS_PUBLIC`` opens
``/metrics``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opencone import __version__
from opencone.api.errors import problems
from opencone.api.routes import root
from opencone.api.routes.metrics import _TEXT, _operator
from opencone.core.metrics import CONTENT_TYPE, CREATE_BUCKETS
from opencone.core.store.models import ComputerRecord
from opencone.fleet import registry

if TYPE_CHECKING:
    from opencone.fleet.replica import Fleet

SCRAPE_TIMEOUT = 5.0  # a node slower than this is left out of the scrape (and counted), not waited for
NODE_LABEL = "node"
# the route kinds a replica forwards (a fixed set: a label's values must stay few)
KINDS = ("create", "list", "computer", "action", "events", "screencast", "cdp", "file", "other")
STREAMS = {"events", "screencast", "cdp"}
OWN = {"/", "/metrics", "/status", "/health", "/live", "/live/replay", "/docs", "/openapi.json", "/nodes",
       "/docs/oauth2-redirect", "/redoc"}


def route_kind(method: str, path: str) -> str | None:
    """The kind of a request the replica forwards (None: one it answers itself)."""
    if path in OWN or path.startswith("/mcp"):
        return None
    parts = path.strip("/").split("/")
    if parts[0] == "computers":
        if len(parts) == 1:
            return "create" if method == "POST" else "list"
        if len(parts) == 2:
            return "computer"
        rest = parts[2]
        return {"events": "events", "screencast": "screencast", "cdp": "cdp", "ws": "cdp"}.get(rest, "action")
    if parts[0] == "files":
        return "file"
    return "other"


class ReplicaMetrics:
    """The replica's own figures, in a registry of its own (never the library's global one)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=False)
        self.requests = Counter("opencone_replica_requests", "Requests this replica forwarded to the fleet, by "
                                "route kind and answer class (2xx, 4xx, 5xx).", ["route", "code"], registry=r)
        self.creates = Counter("opencone_replica_creates", "Creates answered by this replica, by outcome "
                               "(created, refused: no node could take it, error).", ["outcome"], registry=r)
        self.create_seconds = Histogram("opencone_replica_create_seconds", "Time of a create through this "
                                        "replica (placement, the node's create, the fleet record), by outcome.",
                                        ["outcome"], buckets=CREATE_BUCKETS, registry=r)
        self.refusals = Counter("opencone_replica_placement_refusals", "Creates refused because no node of "
                                "the fleet could take the computer (429).", registry=r)
        self.unreachable = Counter("opencone_replica_node_unreachable", "Requests answered 503 because the "
                                   "computer's node did not answer, by route kind.", ["route"], registry=r)
        self.relays = Gauge("opencone_replica_relays_open", "Streams relayed now (events, screencast, CDP "
                            "and input WebSockets), by kind.", ["kind"], registry=r)
        self.scrape_errors = Counter("opencone_fleet_node_scrape_errors", "Nodes that did not answer this "
                                     "replica's scrape of their /metrics (left out of that answer), by node.",
                                     [NODE_LABEL], registry=r)
        self.started_at = time.time()
        for kind in ("events", "screencast", "cdp"):
            self.relays.labels(kind)  # a zero from the start, not a family that appears with the first stream


class ViewReads(Collector):
    """``opencone_replica_node_table_reads_total``: reads of the nodes table a create's placement made
    (fleet/nodes_view.py; kept fresh by NOTIFY, the view is read again only when it finds no node or the
    channel was lost), read from the fleet at each scrape."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterable[Metric]:
        fleet = getattr(self.app.state, "fleet", None)
        yield CounterMetricFamily("opencone_replica_node_table_reads", "Reads of the nodes table for a "
                                  "create's placement (the replica's view of the nodes is otherwise kept by "
                                  "NOTIFY).", value=fleet.nodes_view.reads if fleet is not None else 0)


class Counting:
    """Pure-ASGI middleware counting what the replica forwards (one wrapped ``send`` per request)."""

    def __init__(self, app: ASGIApp, metrics: ReplicaMetrics) -> None:
        self.app, self.m = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        kind = route_kind(method, scope["path"])
        if kind is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self._socket(scope, receive, send, kind)
            return
        t0 = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "peek": False, "relay": False}

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = status = int(message["status"])
                state["peek"] = status == 503
                if kind == "create":
                    self._created(status, time.perf_counter() - t0)
                if kind in STREAMS and status == 200:
                    state["relay"] = True
                    self.m.relays.labels(kind).inc()
            elif message["type"] == "http.response.body" and state["peek"]:
                state["peek"] = False
                if b'"node_id"' in message.get("body", b""):  # replica.NodeUnreachable names the node
                    self.m.unreachable.labels(kind).inc()
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            if state["relay"]:
                self.m.relays.labels(kind).dec()
            self.m.requests.labels(kind, f"{state['status'] // 100}xx").inc()

    def _created(self, status: int, seconds: float) -> None:
        outcome = "created" if status == 200 else "refused" if status == 429 else "error"
        self.m.creates.labels(outcome).inc()
        self.m.create_seconds.labels(outcome).observe(seconds)
        if status == 429:
            self.m.refusals.inc()

    async def _socket(self, scope: Scope, receive: Receive, send: Send, kind: str) -> None:
        opened = False

        async def counted(message: Message) -> None:
            nonlocal opened
            if message["type"] == "websocket.accept" and not opened:
                opened = True
                self.m.relays.labels(kind).inc()
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            if opened:
                self.m.relays.labels(kind).dec()
            self.m.requests.labels(kind, "1xx" if opened else "4xx").inc()


# -- the fleet's metrics -----------------------------------------------------------------------
class _Families(Collector):
    """Parsed families, emitted once each (what generate_latest renders)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def merge(texts: dict[str, str], failed: Callable[[str], None] = lambda node_id: None) -> bytes:
    """Nodes' exposition texts (node id -> text) as one, every sample labelled with its node. A sample
    that had a ``node`` label of its own keeps it as ``exported_node`` (Prometheus' own rule); a text
    that does not parse is left out whole (``failed(node id)``). CPU work (~10 ms a node): off the loop."""
    merged: dict[str, Metric] = {}
    for node_id, text in texts.items():
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:  # a node's garbage must not spoil the fleet's answer
            failed(node_id)
            continue
        for family in families:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            elif into.type != family.type:
                continue  # two releases disagreeing on a family's type: the first one seen is kept
            for s in family.samples:
                labels = dict(s.labels)
                if NODE_LABEL in labels:
                    labels["exported_node"] = labels.pop(NODE_LABEL)
                labels[NODE_LABEL] = node_id
                into.add_sample(s.name, labels, s.value, s.timestamp, s.exemplar)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(merged.values()))
    return generate_latest(registry)


async def scrape_nodes(fleet: Fleet, metrics: ReplicaMetrics) -> dict[str, str]:
    """Every ready node's own /metrics (node id -> text); a node that fails is counted and left out."""
    nodes = await _ready(fleet)

    async def one(node: registry.NodeInfo) -> str | None:
        try:
            resp = await fleet.http.get(node.url + "/metrics", headers={"authorization": f"Bearer {fleet.token}"},
                                        timeout=SCRAPE_TIMEOUT)
            resp.raise_for_status()
            return resp.text
        except httpx.HTTPError:
            metrics.scrape_errors.labels(node.id).inc()
            return None

    texts = await asyncio.gather(*(one(n) for n in nodes))
    return {n.id: t for n, t in zip(nodes, texts, strict=True) if t is not None}


async def _ready(fleet: Fleet) -> list[registry.NodeInfo]:
    async with fleet.sessions() as s:
        return [n for n in await registry.list_nodes(s, states=[registry.READY]) if n.url]


# -- the fleet at a glance ------------------------------------------------------------------------
def _slots(node: registry.NodeInfo) -> dict[str, dict[str, int]]:
    return {kind: {"capacity": node.capacity(kind), "live": int(getattr(node, f"live_{kind}")),
                   "reserved": int(getattr(node, f"reserved_{kind}")), "used": node.used(kind),
                   "free": node.free(kind)} for kind in ("browser", "desktop")}


async def _node_status(fleet: Fleet, node: registry.NodeInfo) -> dict[str, Any] | None:
    """The node's own GET /status (its pools, streams, host), or None when it does not answer."""
    try:
        resp = await fleet.http.get(node.url + "/status", headers={"authorization": f"Bearer {fleet.token}"},
                                    timeout=SCRAPE_TIMEOUT)
        resp.raise_for_status()
        out = resp.json()
    except (httpx.HTTPError, ValueError):
        return None
    return out if isinstance(out, dict) else None


async def fleet_status(fleet: Fleet, started_at: float) -> dict[str, Any]:
    async with fleet.sessions() as s, registry.guarded(s):
        nodes = await registry.list_nodes(s)
        rows = (await s.execute(
            select(ComputerRecord.kind, ComputerRecord.status, ComputerRecord.org_id, ComputerRecord.node_id,
                   func.count()).where(ComputerRecord.status != "terminated")
            .group_by(ComputerRecord.kind, ComputerRecord.status, ComputerRecord.org_id,
                      ComputerRecord.node_id))).all()
        await s.commit()
    asked = [n for n in nodes if n.state == registry.READY and n.url]
    answers = dict(zip((n.id for n in asked), await asyncio.gather(*(_node_status(fleet, n) for n in asked)),
                       strict=True))
    by: dict[str, dict[str, int]] = {"by_kind": {}, "by_status": {}, "by_org": {}, "by_node": {}}
    for kind, status, org, node_id, n in rows:
        for key, value in (("by_kind", kind), ("by_status", status), ("by_org", org), ("by_node", node_id or "none")):
            by[key][value] = by[key].get(value, 0) + int(n)
    listed = []
    for node in nodes:
        own = answers.get(node.id)
        listed.append({
            "id": node.id, "state": node.state, "ray_node_id": node.ray_node_id, "incarnation": node.incarnation,
            "heartbeat_at": node.heartbeat_at.isoformat() if node.heartbeat_at else None,
            "load": node.load, "free_memory_bytes": node.free_mem_mb * 2**20, "slots": _slots(node),
            "reachable": own is not None if node.id in answers else None,
            "pools": own.get("pools") if own else None,
            "streams": own.get("streams") if own else None,
        })
    ready = [n for n in nodes if n.state == registry.READY]
    return {
        "version": __version__, "role": "fleet-replica",
        "uptime_seconds": round(time.time() - started_at, 1),
        "nodes": listed,
        "slots": {kind: {"capacity": sum(n.capacity(kind) for n in ready), "used": sum(n.used(kind) for n in ready),
                         "free": sum(n.free(kind) for n in ready)} for kind in ("browser", "desktop")},
        "computers": {"live": sum(by["by_kind"].values()), **by},
    }


# -- the routes ----------------------------------------------------------------------------------
def install(app: FastAPI) -> None:
    """``/metrics``, ``/status`` and ``GET /`` on a replica app, and the middleware that counts."""
    metrics = ReplicaMetrics()
    app.state.replica_metrics = metrics
    metrics.registry.register(ViewReads(app))
    app.add_middleware(Counting, metrics=metrics)
    app.include_router(root.router)

    @app.get("/metrics", response_class=Response, tags=["operations"], responses={200: _TEXT, **problems(401, 403)})
    async def fleet_metrics(request: Request) -> Response:
        """This replica's figures and every ready node's, each node's samples labelled ``node``."""
        if not request.app.state.runtime.settings.metrics_public:
            await _operator(request)
        texts = await scrape_nodes(request.app.state.fleet, metrics)
        fleet_text = await asyncio.to_thread(merge, texts, lambda node_id: metrics.scrape_errors.labels(node_id).inc())
        # the replica's own after the scrape: this scrape's errors are in its answer
        return Response(generate_latest(metrics.registry) + fleet_text, media_type=CONTENT_TYPE)

    @app.get("/status", tags=["operations"], responses=problems(401, 403))
    async def status(request: Request) -> dict[str, Any]:
        """The fleet at a glance: nodes (state, slots, load, free memory, pools), live computers."""
        await _operator(request)
        return await fleet_status(request.app.state.fleet, metrics.started_at)
