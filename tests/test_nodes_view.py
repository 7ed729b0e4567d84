"""A replica's view of the ready nodes (fleet/nodes_view.py), with an injected clock: kept by NOTIFY while
the channel listens, a plain TTL cache when it does not, never kept across a read a notification overlapped."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

from opencone.fleet import registry
from opencone.fleet.nodes_view import NodesView

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
A = registry.NodeInfo(id="node-a", url="http://127.0.0.1:1/internal/v1", capacity_browser=4, heartbeat_at=NOW,
                      created_at=NOW)
B = replace(A, id="node-b", url="http://127.0.0.1:2/internal/v1")


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def row(node: registry.NodeInfo, **changes: object) -> str:
    """What the trigger of migration 0008 sends: the row as row_to_json writes it (naive UTC times)."""
    out = {**{k: v for k, v in node.public().items()}, "url": node.url, "reserved_at": None, **changes}
    for key in ("heartbeat_at", "created_at"):
        if isinstance(out[key], str):
            out[key] = out[key].replace("+00:00", "")
    return json.dumps(out)


def ids(view: NodesView) -> list[str] | None:
    nodes = view.current()
    return None if nodes is None else sorted(n.id for n in nodes)


def test_without_the_channel_a_read_serves_only_its_ttl() -> None:
    clock = Clock()
    view = NodesView(1.0, clock)
    assert view.current() is None
    view.read([A, B], view.begin_read())
    assert ids(view) == ["node-a", "node-b"]
    clock.t += 1.5
    assert view.current() is None
    assert view.reads == 1


def test_while_listening_the_view_follows_the_notifications_however_old() -> None:
    clock = Clock()
    view = NodesView(1.0, clock)
    view.listening(True)
    view.read([A, B], view.begin_read())
    clock.t += 3600
    assert ids(view) == ["node-a", "node-b"]
    beat = NOW.replace(second=30)
    view.heard(row(A, live_browser=3, load=0.5, heartbeat_at=beat.replace(tzinfo=None).isoformat()))
    a = next(n for n in view.current() or [] if n.id == "node-a")
    assert (a.live_browser, a.load, a.heartbeat_at) == (3, 0.5, beat)
    view.heard(row(B, state="draining"))
    assert ids(view) == ["node-a"]
    view.heard(row(B))  # ready again
    assert ids(view) == ["node-a", "node-b"]
    view.heard(json.dumps({"id": "node-a", "deleted": True}))
    assert ids(view) == ["node-b"]
    c = replace(A, id="node-c")
    view.heard(row(c))  # a node that registered since the read
    assert ids(view) == ["node-b", "node-c"]
    assert view.reads == 1


def test_a_read_a_notification_overlapped_is_not_kept() -> None:
    clock = Clock()
    view = NodesView(1.0, clock)
    view.listening(True)
    began = view.begin_read()
    view.heard(row(B, state="draining"))  # arrives while the read is in flight: the read may predate it
    view.read([A, B], began)
    assert ids(view) == ["node-a", "node-b"]  # served as a plain cache...
    clock.t += 1.5
    assert view.current() is None  # ...only for its TTL


def test_losing_the_channel_makes_the_view_a_plain_cache_again() -> None:
    clock = Clock()
    view = NodesView(1.0, clock)
    view.listening(True)
    view.read([A], view.begin_read())
    view.listening(False)
    clock.t += 1.5
    assert view.current() is None
    view.listening(True)  # back: what was missed meanwhile is unknown until the next read
    assert view.current() is None


def test_a_payload_not_understood_costs_a_read_not_a_wrong_view() -> None:
    clock = Clock()
    view = NodesView(1.0, clock)
    view.listening(True)
    view.read([A], view.begin_read())
    view.heard("not json")
    clock.t += 1.5
    assert view.current() is None
    view.read([A], view.begin_read())
    view.heard(json.dumps({"id": "node-a"}))  # a row without its fields
    clock.t += 1.5
    assert view.current() is None
