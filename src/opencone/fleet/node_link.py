"""A node agent's link to the fleet's PostgreSQL: registration, heartbeats, and computers' ends.

The node's own app keeps its computers exactly as a single server does; this writes what the
replicas need to know about them into the shared database (fleet/registry.py):

- at start, the computers an earlier incarnation of this node left recorded as live end as
  ``node_agent_restarted`` (their processes were killed by the app's own start-up), and the node
  registers with the next incarnation number;
- every ``interval`` seconds a heartbeat: live computers by kind, free memory, load;
- a computer's end (deleted, expired, crashed) is written to its fleet record, write-behind: the
  teardown only queues it and brings the next beat forward (``END_BEAT_DELAY``, ends of a burst
  together), so the freed slot shows in the node's row at once rather than up to ``interval``
  later (a create right after a delete on a full fleet would be a 429 meanwhile), and a database
  outage never slows a computer's end; queued ends are retried with the next beat. The ends
  written are NOTIFY'd (their ids) in the same transaction. A check at each beat ends records
  whose computer is no longer here.

When the node is going away (its parent, the Ray worker, is gone) nothing more is written: what the
fleet records then is the controller's verdict (``node_lost``) or the next incarnation's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from datetime import UTC, datetime
from typing import Any

import psutil
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert

from opencone.core.store.db import make_engine, sessionmaker
from opencone.core.store.models import ComputerRecord
from opencone.fleet import registry

log = logging.getLogger(__name__)

TERMINATED = "terminated"
ADOPT_GRACE_SECONDS = 10.0
END_BEAT_DELAY = 0.05  # after an end, the beat waits this long for the other ends of a burst


class NodeLink:
    def __init__(self, url: str, node_id: str, ray_node_id: str | None, internal_url: str,
                 capacity: dict[str, int], runtime: Any, org: str, going: threading.Event,
                 interval: float = 2.0) -> None:
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine)
        self.node_id, self.ray_node_id, self.internal_url = node_id, ray_node_id, internal_url
        self.capacity, self.rt, self.org, self.going, self.interval = capacity, runtime, org, going, interval
        self.incarnation = 0
        self._ended: dict[str, tuple[str, datetime]] = {}  # computer -> (reason, when): not yet written
        self._task: asyncio.Task[None] | None = None
        self._registered = False
        self._woken = asyncio.Event()  # an end happened: beat now, not at the interval's end

    async def start(self) -> int:
        """Register (retrying until the database answers: a node is of no use unregistered); the
        incarnation this process is."""
        self.rt.computers.before_close.append(self._on_end)
        while True:
            try:
                await self._register()
                break
            except registry.DatabaseUnavailable:
                log.warning("the fleet database is unavailable; registering again in %.0f s", self.interval)
                await asyncio.sleep(self.interval)
        self._task = asyncio.create_task(self._beat_forever(), name="fleet-heartbeat")
        return self.incarnation

    async def _register(self) -> None:
        async with self.sessions() as s:
            old = await registry.get_node(s, self.node_id)
            ended = await registry.end_computers(s, self.node_id, "node_agent_restarted")
            self.incarnation = (old.incarnation if old else 0) + 1
            await registry.upsert_node(s, registry.NodeInfo(
                id=self.node_id, url=self.internal_url, ray_node_id=self.ray_node_id,
                incarnation=self.incarnation, state=registry.READY,
                capacity_browser=self.capacity.get("browser", 0), capacity_desktop=self.capacity.get("desktop", 0),
                free_mem_mb=_free_mem_mb(), load=_load()))
        if ended:
            log.warning("ended %d computers of an earlier incarnation of this node: %s", len(ended),
                        ", ".join(ended[:10]))
        log.info("node %s registered as incarnation %d at %s", self.node_id, self.incarnation, self.internal_url)
        self._registered = True

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if not self.going.is_set():  # a clean stop (not a lost parent): write the ends we know
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush(), 5)
        await self.engine.dispose()

    async def _on_end(self, computer_id: str, reason: str) -> None:
        if not self.going.is_set():
            self._ended[computer_id] = (reason, datetime.now(UTC))
            self._woken.set()

    async def _beat_forever(self) -> None:
        while not self.going.is_set():
            try:
                await self.beat()
            except registry.DatabaseUnavailable:
                log.warning("the fleet database is unavailable; the node keeps running its computers")
            except Exception:
                log.exception("fleet heartbeat failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self.interval)
                await asyncio.sleep(END_BEAT_DELAY)
            self._woken.clear()

    async def beat(self) -> None:
        await self._flush()
        # the records first, then the live set: a record written after our read is of a computer that
        # was live when it was written, so one missing from the later live set has really ended
        async with self.sessions() as s:
            recorded = dict((await s.execute(select(ComputerRecord.id, ComputerRecord.org_id).where(
                ComputerRecord.node_id == self.node_id, ComputerRecord.status != TERMINATED))).tuples().all())
            await s.commit()
        views = self.rt.computers.live_views()  # every organisation's
        live = {"browser": 0, "desktop": 0}
        for v in views:
            live[v.kind] = live.get(v.kind, 0) + 1
        await self._adopt([v for v in views if v.id not in recorded])
        for cid in set(recorded) - {v.id for v in views}:
            with contextlib.suppress(Exception):
                view = await self.rt.computers.get(recorded[cid], cid)
                if view.status == TERMINATED:
                    self._ended.setdefault(cid, (view.termination_reason or "unknown",
                                                 view.terminated_at or datetime.now(UTC)))
        await self._flush()
        async with self.sessions() as s:
            ok = await registry.heartbeat(s, self.node_id, live_browser=live["browser"], live_desktop=live["desktop"],
                                          free_mem_mb=_free_mem_mb(), load=_load(), incarnation=self.incarnation)
        if not ok and not self.going.is_set():
            # declared dead (a partition the controller took for a death), or replaced: register anew;
            # our computers' records were ended by that verdict, so the computers end here too
            log.warning("node %s was declared dead or replaced; ending its computers and registering again",
                        self.node_id)
            for v in views:
                with contextlib.suppress(Exception):
                    await self.rt.computers.delete(v.org_id, v.id)
            self._ended.clear()
            await self._register()

    async def _adopt(self, unrecorded: list[Any]) -> None:
        """Computers the node made itself (an agent task's, an OpenEnv reset's) get their fleet record, so
        any replica finds them. A replica records what it created a moment after the node answered: only
        computers older than the grace are adopted here, so the two never write the same record."""
        now = datetime.now(UTC)
        grace = float(os.environ.get("OPENCONE_NODE_ADOPT_GRACE_SECONDS") or ADOPT_GRACE_SECONDS)
        due = [v for v in unrecorded if (now - v.created_at).total_seconds() > grace]
        if not due:
            return
        async with self.sessions() as s, registry.guarded(s):
            for v in due:
                await s.execute(insert(ComputerRecord).values(
                    id=v.id, org_id=v.org_id, kind=v.kind, status=v.status, created_at=v.created_at,
                    last_activity_at=v.last_activity_at, max_lifetime_seconds=v.max_lifetime_seconds,
                    inactivity_timeout_seconds=v.inactivity_timeout_seconds,
                    idle_timeout_enabled=v.idle_timeout_enabled, display_width=v.display.width,
                    display_height=v.display.height, display_scale=v.display.scale, persistent=v.persistent,
                    environment_id=v.environment_id, context_id=v.context_id, options={},
                    node_id=self.node_id).on_conflict_do_nothing(index_elements=["id"]))
            await s.commit()
        log.info("recorded %d computers this node made itself: %s", len(due), ", ".join(v.id for v in due[:10]))

    async def _flush(self) -> None:
        if not self._ended:
            return
        batch = dict(self._ended)
        ended: list[str] = []
        async with self.sessions() as s, registry.guarded(s):
            for cid, (reason, at) in batch.items():
                done = await s.execute(update(ComputerRecord).where(
                    ComputerRecord.id == cid, ComputerRecord.node_id == self.node_id,
                    ComputerRecord.status != TERMINATED).values(
                    status=TERMINATED, termination_reason=reason, terminated_at=at).returning(ComputerRecord.id))
                ended.extend(done.scalars())
            await registry.notify_ended(s, ended)  # the replicas drop their routes when this commits
            await s.commit()
        for cid in batch:
            self._ended.pop(cid, None)


def _free_mem_mb() -> int:
    return int(psutil.virtual_memory().available // (1024 * 1024))


def _load() -> float:
    return os.getloadavg()[0] / max(1, os.cpu_count() or 1)
