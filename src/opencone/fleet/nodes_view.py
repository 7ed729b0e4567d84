"""A replica's view of the ready nodes, for its creates' choices (fleet/replica.py ``Fleet.place``).

Read from the ``nodes`` table, then kept fresh by the NOTIFYs a trigger sends on ``opencone_nodes``
(registry.NODES_CHANNEL: a node's row at each heartbeat, state or address change): while the replica
listens, a create chooses over this view without reading the table, however long the replica was idle.
A view read while a notification arrived (it may predate it), or while nobody listened, serves only
``ttl`` seconds, as a plain cache. The choice may be stale either way; the reservation never is (one
atomic statement, fleet/placement.py), and a choice that finds no node reads the table again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from opencone.fleet import registry


class NodesView:
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self._clock = ttl, clock
        self._nodes: dict[str, registry.NodeInfo] | None = None
        self._read_at = 0.0
        self._kept = False  # every change since the read was applied (listening the whole time)
        self._listening = False
        self._changes = 0  # notifications heard (and losses of the channel): a read they overlap is not kept
        self.reads = 0  # reads of the table (/metrics: opencone_replica_node_table_reads_total)

    # -- what the replica reads --------------------------------------------------------------
    def current(self) -> list[registry.NodeInfo] | None:
        """The ready nodes, or None when the view must be read again (``begin_read``, ``read``)."""
        if self._nodes is None:
            return None
        if not (self._kept and self._listening) and self._clock() - self._read_at >= self.ttl:
            return None
        return list(self._nodes.values())

    def begin_read(self) -> int:
        return self._changes

    def read(self, nodes: list[registry.NodeInfo], began: int) -> None:
        """The table as read since ``begin_read`` answered ``began``."""
        self.reads += 1
        self._nodes = {n.id: n for n in nodes if n.state == registry.READY}
        self._read_at = self._clock()
        self._kept = self._listening and began == self._changes

    def update(self, node: registry.NodeInfo) -> None:
        """A node's row as a statement of this replica left it (its reservation's RETURNING)."""
        if self._nodes is not None and node.state == registry.READY:
            self._nodes[node.id] = node

    # -- what the channel says -----------------------------------------------------------------
    def listening(self, on: bool) -> None:
        """The channel is (re)connected, or lost: either way what was missed meanwhile is unknown."""
        self._listening = on
        self._changes += 1
        self._kept = False

    def heard(self, payload: str) -> None:
        """A NOTIFY on registry.NODES_CHANNEL."""
        self._changes += 1
        try:
            change = registry.node_from_notify(payload)
        except (ValueError, TypeError):
            self._kept = False  # not understood: read the table at the next create
            return
        if self._nodes is None:
            return
        if isinstance(change, str):
            self._nodes.pop(change, None)
        elif change.state != registry.READY or not change.url:
            self._nodes.pop(change.id, None)
        else:
            self._nodes[change.id] = change
