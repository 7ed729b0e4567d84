"""The fleet seen whole from any replica: ``GET /metrics``, ``GET /status`` and ``GET /``.

- ``/metrics`` (Prometheus text, the official ``prometheus-client``): the replica's own figures (requests
  it forwarded by route kind, creates and their time, creates the fleet refused, nodes that did not
  answer, stream relays open), counted by a pure-ASGI middleware around the replica app so the routing
  code stays as it is; then every ready node's own ``/metrics`` (asked through its internal route with
  the internal token: the node's operator), rewritten line by line with a ``node="<node id>"`` label on
  every sample, each family's HELP/TYPE once (a text in any other shape than a node's own is parsed with
  ``prometheus_client.parser`` and emitted again instead). A node that does not answer, or whose text
  does not parse, is left out and counted in ``opencone_fleet_node_scrape_errors_total``.
- ``/status`` (``opencone status --url <replica>``): the nodes (state, slots, load, free memory, pools),
  the fleet's live computers by kind, status, organisation and node (the fleet records).
- ``GET /``: the local server's page (live view, docs), which serves a replica as it is.

Both take a key of the default organisation, as on a single server (``OPENCONE_METRICS_PUBLIC`` opens
``/metrics``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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
# A node's text as its own generate_latest writes it (format 0.0.4), read line by line: each family a
# HELP line, its TYPE line, then its samples (`name{labels} value [timestamp]`). Strict on purpose: a
# text with anything else (other comments, stray whitespace, escapes or types the library reads its own
# way, OpenMetrics) is merged by the parser instead (_merge_parsed), so both ways mean the same.
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_QUOTED = r'"[^"\\\n]*(?:\\[\\"n][^"\\\n]*)*"'  # a label value: only the escapes \\ \" \n
_LABEL = rf"(?!__)[a-zA-Z_][a-zA-Z0-9_]*={_QUOTED}"  # no reserved __ names (the parser refuses them)
_VALUE = r"(?:[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?Inf|NaN)(?: -?[0-9]+)?"
_LABELS = re.compile(rf"{_LABEL}(?:,{_LABEL})*")  # what is between a sample's braces
_VALUE_TS = re.compile(_VALUE)  # what follows them (or the name) after one space
_PAIR = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)(={_QUOTED})")  # one label, in a set _LABELS accepted
_HELP = re.compile(rf"# HELP ({_NAME})(?: (.*))?")
_DOC = re.compile(r"[^\\]*(?:\\[\\n][^\\]*)*")  # a HELP text's escapes: only \\ and \n
_TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|summary|histogram|untyped)")
_SUFFIXES = {"counter": ("",), "gauge": ("",), "untyped": ("",), "summary": ("", "_count", "_sum"),
             "histogram": ("_bucket", "_count", "_sum")}  # a family's sample names, as the parser allows them
EXPORTED = "exported_" + NODE_LABEL


@dataclass
class _Family:
    type: str
    header: str  # its HELP and TYPE lines
    samples: list[str] = field(default_factory=list)  # lines, each with its node label and newline


@dataclass
class _Checked:
    """What one merge has checked already (nodes write the same headers, label sets and values): each
    the verdict of a pure function of the string, so kept for that merge only."""
    headers: dict[tuple[str, str], tuple[str, str, tuple[str, ...]] | None] = field(default_factory=dict)
    labels: dict[str, str | None] = field(default_factory=dict)  # a label set -> itself renamed, None: bad
    values: set[str] = field(default_factory=set)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _header(help_line: str, type_line: str) -> tuple[str, str, tuple[str, ...]] | None:
    """A family's merge key, type and sample names from its HELP and TYPE lines; None when the parser
    would read them otherwise. The key is the parser's family name (a counter's without ``_total``), so
    families merge and clash exactly as parsed ones do."""
    help_, type_ = _HELP.fullmatch(help_line), _TYPE.fullmatch(type_line)
    if help_ is None or type_ is None or type_[1] != help_[1]:
        return None
    name, typ, doc = help_[1], type_[2], help_[2] or ""
    if doc != doc.strip() or ("\\" in doc and not _DOC.fullmatch(doc)):
        return None  # whitespace the parser strips, escapes it keeps
    if typ == "counter" and not name.endswith("_total"):
        return None  # the parser renames its samples
    return name[:-6] if typ == "counter" else name, typ, tuple(name + suffix for suffix in _SUFFIXES[typ])


def _label_set(labels: str) -> str | None:
    """A sample's label set (between its braces) with its ``node`` label renamed ``exported_node``
    (Prometheus' own rule); None when the parser would refuse it or read it otherwise."""
    if not _LABELS.fullmatch(labels):
        return None
    if "," not in labels and 'node="' not in labels:
        return labels  # one label, not node
    return _renamed(labels)


def _relabelled(text: str, node_id: str, checked: _Checked | None = None) -> list[tuple[str, _Family]] | None:
    """A node's families (merge key, family) with ``node="<id>"`` in every sample's labels, or None when
    the text is not in the shape read here."""
    checked = _Checked() if checked is None else checked
    node = f'{NODE_LABEL}="{_escape(node_id)}"'
    families: list[tuple[str, _Family]] = []
    seen: set[str] = set()
    help_line = ""  # a HELP line waiting for its TYPE line
    names: tuple[str, ...] = ()  # the current family's sample names (none before the first family)
    add = None
    for line in text.split("\n"):  # "\n" only, as the parser reads lines (not str.splitlines)
        if line.startswith("# "):
            if not help_line:
                help_line = line
                continue
            if (help_line, line) not in checked.headers:
                checked.headers[help_line, line] = _header(help_line, line)
            header = checked.headers[help_line, line]
            if header is None or header[0] in seen:
                return None  # a family twice: the parser would merge it its own way
            key, typ, names = header
            seen.add(key)
            family = _Family(typ, f"{help_line}\n{line}\n")
            families.append((key, family))
            add, help_line = family.samples.append, ""
            continue
        if help_line:
            return None  # a HELP line without its TYPE line
        if not line:
            continue  # the parser skips blank lines
        # name{labels} value [ts] | name value [ts]: a name has no "{" or " ", a value and ts no "}"
        brace = line.find("{")
        if brace < 0:
            name, _, rest = line.partition(" ")
            labels: str | None = None
        else:
            end = line.rfind("} ")
            name, rest = line[:brace], line[end + 2:]
            raw = line[brace + 1:end] if end > brace else "{"  # (a "{" is never a valid label set)
            if raw not in checked.labels:
                checked.labels[raw] = _label_set(raw)
            labels = checked.labels[raw]
            if labels is None:
                return None
        if name not in names or add is None:
            return None
        if rest not in checked.values:
            if not _VALUE_TS.fullmatch(rest):
                return None
            checked.values.add(rest)
        add(f"{name}{{{node}}} {rest}\n" if labels is None else f"{name}{{{node},{labels}}} {rest}\n")
    return None if help_line else families


def _renamed(labels: str) -> str | None:
    """A label set with its ``node`` label renamed ``exported_node`` (Prometheus' own rule); None when a
    name repeats (the parser refuses the text) or both are there (the parser path decides)."""
    if "\\" not in labels:  # no escaped quote: every '"' delimits a value, names sit between them
        names = ("," + labels).split('"')[::2]  # ",name=" each (and a last "")
        unique = set(names)
        if len(unique) == len(names) and ",node=" not in unique:
            return labels
    pairs = _PAIR.findall(labels)
    found = {name for name, _ in pairs}
    if len(found) != len(pairs) or (NODE_LABEL in found and EXPORTED in found):
        return None
    if NODE_LABEL not in found:
        return labels
    return ",".join((EXPORTED if name == NODE_LABEL else name) + rest for name, rest in pairs)


def _parses(text: str) -> bool:
    try:
        list(text_string_to_metric_families(text))
    except ValueError:
        return False
    return True


def merge(texts: dict[str, str], failed: Callable[[str], None] = lambda node_id: None) -> bytes:
    """Nodes' exposition texts (node id -> text) as one, every sample labelled with its node, each
    family's HELP/TYPE once (the first seen kept when nodes disagree on its type). A sample that had a
    ``node`` label of its own keeps it as ``exported_node`` (Prometheus' own rule); a text that does not
    parse is left out whole (``failed(node id)``). Texts as nodes write them are rewritten line by line
    (about 15x less CPU than parsing them: bench/bench_fleet_metrics.py); one in any other shape sends
    the whole merge through the parser (_merge_parsed). CPU work: off the loop."""
    kept: dict[str, str] = {}
    fast: list[list[tuple[str, _Family]]] = []
    checked = _Checked()
    for node_id, text in texts.items():
        families = _relabelled(text, node_id, checked)
        if families is None and not _parses(text):  # a node's garbage must not spoil the fleet's answer
            failed(node_id)
            continue
        kept[node_id] = text
        if families is not None:
            fast.append(families)
    if len(fast) < len(kept):
        return _merge_parsed(kept, failed)  # every kept text parses: failed is not called again
    merged: dict[str, _Family] = {}
    for families in fast:
        for key, family in families:
            into = merged.setdefault(key, family)
            if into is not family and into.type == family.type:  # another type: the first seen is kept
                into.samples.extend(family.samples)
    return "".join(f.header + "".join(f.samples) for f in merged.values()).encode()


class _Families(Collector):
    """Parsed families, emitted once each (what generate_latest renders)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def _merge_parsed(texts: dict[str, str], failed: Callable[[str], None]) -> bytes:
    """merge through ``prometheus_client.parser`` and ``generate_latest`` (for a text in an unusual shape)."""
    merged: dict[str, Metric] = {}
    for node_id, text in texts.items():
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:
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
                    labels[EXPORTED] = labels.pop(NODE_LABEL)
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
