"""A replica's sweeper: a node that stopped reporting is declared lost, with or without Ray's controller.

The controller turns Ray's verdict on a node into ``node_lost`` (fleet/ray/controller.py). When the head
loses its GCS the controller dies with it, and so does every node's agent: nobody would end their
computers' records, which would read ``ready`` forever. So every replica also watches the nodes table,
every ``poll`` seconds (jittered, so replicas do not read in step):

- a node (ready or draining) is lost when its report, ``(incarnation, heartbeat_at)``, has not changed
  for longer than ``OPENCONE_FLEET_NODE_LOST_SECONDS`` *as this replica saw it*: time is this replica's
  monotonic clock between its own reads. A node's ``heartbeat_at`` (its own clock) is only compared for
  equality, never against another machine's clock, so clock skew plays no part;
- only while this replica has reached the database continuously for longer than the threshold plus a
  heartbeat period: while PostgreSQL was away the nodes could not beat either, so a read that fails
  (or hangs) forgets everything seen, and a node's silence is counted again from the first read after;
- a record still live on a node that turned dead (its create answered just before the verdict, written just
  after) is ended too, in the minute after (``_end_strays``);
- the verdict is ``registry.declare_lost``: the row dead and its computers ``node_lost`` (NOTIFY'd: the
  replicas drop their routes, a broken ``/events`` relay ends with that ``terminated``) in one
  transaction, and only if the row still holds the report seen. Replicas deciding at once declare the
  node once; a node that beat meanwhile, or registered again, is not touched.

A node declared lost whose agent is in fact alive (paused, partitioned) has its next heartbeat refused,
ends its computers and registers again as a new incarnation (fleet/node_link.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opencone.fleet import registry

log = logging.getLogger(__name__)

HEARTBEAT_PERIOD = 2.0  # a node agent reports this often (fleet/node.py's default)
POLL_SECONDS = 2.5  # the sweep reads the nodes this often at most (a quarter of a shorter threshold)
READ_TIMEOUT = 5.0  # a read that takes longer counts as the database away (a half-open connection)
STRAY_WINDOW = 60.0  # a node seen turning dead has its records swept this long (a create answered just before)
Report = tuple[int, datetime | None]


@dataclass
class Seen:
    report: Report
    since: float  # this replica's monotonic clock when it first read this report


class NodeSweeper:
    """One replica's watch over the nodes' reports. ``sessions``: the replica's sessionmaker."""

    def __init__(self, sessions: Callable[[], Any], lost_after: float, *, poll: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sessions, self.lost_after, self._clock = sessions, lost_after, clock
        self.poll = poll if poll is not None else min(POLL_SECONDS, lost_after / 4)
        self._seen: dict[str, Seen] = {}
        self._reachable_since: float | None = None  # since when every read answered
        self._dead: dict[str, float] | None = None  # dead nodes: when this replica first read them dead

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll * random.uniform(0.8, 1.2))
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away mid-verdict, or a bug: count silence anew
                self._forget()
                log.warning("fleet node sweep failed (%s: %s)", type(exc).__name__, exc)

    async def sweep(self) -> dict[str, list[str]]:
        """One round: read the reports, declare the nodes silent for too long. ``{node id: computers ended}``."""
        try:
            nodes = await asyncio.wait_for(self._read(), READ_TIMEOUT)
        except (registry.DatabaseUnavailable, TimeoutError):
            self._forget()
            return {}
        now = self._clock()
        dead = [n.id for n in nodes if n.state == registry.DEAD]
        nodes = [n for n in nodes if n.state != registry.DEAD]
        await self._end_strays(dead, now)
        self._observe(nodes, now)
        ended: dict[str, list[str]] = {}
        for node in self.due(nodes, now):
            ids = await asyncio.wait_for(self._declare(node), READ_TIMEOUT)
            self._seen.pop(node.id, None)
            if ids is not None:
                ended[node.id] = ids
                log.warning("node %s has not reported for %.0f s: declared lost, %d computers ended as node_lost",
                            node.id, self.lost_after, len(ids))
        return ended

    def due(self, nodes: list[registry.NodeInfo], now: float) -> list[registry.NodeInfo]:
        """The nodes silent for longer than the threshold, if the database answered long enough to tell."""
        if self._reachable_since is None or now - self._reachable_since <= self.lost_after + HEARTBEAT_PERIOD:
            return []
        return [n for n in nodes if now - self._seen[n.id].since > self.lost_after]

    def _observe(self, nodes: list[registry.NodeInfo], now: float) -> None:
        if self._reachable_since is None:
            self._reachable_since = now
        seen: dict[str, Seen] = {}
        for node in nodes:
            report: Report = (node.incarnation, node.heartbeat_at)
            old = self._seen.get(node.id)
            seen[node.id] = old if old is not None and old.report == report else Seen(report, now)
        self._seen = seen  # nodes gone from the read (dead, deleted) are forgotten

    async def _end_strays(self, dead: list[str], now: float) -> None:
        """A computer recorded live on a node that turned dead since this replica watches (its create was
        answered just before the verdict, its record written just after) is ended as well: for
        STRAY_WINDOW after the node was first read dead, each round. Nodes already dead at this replica's
        first read are left alone (their records were ended with them; no sweep of old history)."""
        if self._dead is None:
            self._dead = {node_id: now - STRAY_WINDOW for node_id in dead}
            return
        self._dead = {node_id: self._dead.get(node_id, now) for node_id in dead}
        for node_id, since in self._dead.items():
            if now - since > STRAY_WINDOW:
                continue
            async with self.sessions() as s:
                ids = await asyncio.wait_for(registry.end_computers(s, node_id, "node_lost"), READ_TIMEOUT)
            if ids:
                log.warning("node %s is dead: %d computers recorded on it since ended as node_lost (%s)",
                            node_id, len(ids), ", ".join(ids[:10]))

    def _forget(self) -> None:
        self._seen.clear()
        self._reachable_since = None

    async def _read(self) -> list[registry.NodeInfo]:
        async with self.sessions() as s:
            return await registry.list_nodes(s, states=[registry.READY, registry.DRAINING, registry.DEAD])

    async def _declare(self, node: registry.NodeInfo) -> list[str] | None:
        async with self.sessions() as s:
            return await registry.declare_lost(s, node, "node_lost")
