"""The fleet controller: a detached Ray actor on the head that keeps one node agent per eligible node
and turns Ray's verdict on a node's death into ``node_lost`` for that node's computers.

It polls ``ray.nodes()`` (membership, each node's resources and its Alive flag) every ``poll_seconds``:

- an alive node advertising ``opencone_browser_slots`` and/or ``opencone_desktop_slots`` gets an agent
  (fleet/ray/agent.py) if it has none: named ``opencone:node:<ray node id>``, hard node affinity,
  ``num_cpus=0``, detached, ``max_restarts=-1``, its capacity the node's slot resources;
- a node Ray reports dead (or no longer lists) that has a live row in the nodes table is marked dead
  there and its computers end as ``node_lost`` in the same transaction (registry.mark_dead); replicas
  then end those computers' streams. Nothing of another node is touched. Ray's verdict only: an
  unreachable agent is not a dead node;
- the cross-check of E2B's sweeper: a node whose heartbeat is older than five minutes is declared dead
  even while Ray says it lives (registry.sweep_stale), and logged loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from datetime import timedelta
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from opencone.fleet.ray.agent import NodeAgent

log = logging.getLogger(__name__)

NAMESPACE = "opencone"
CONTROLLER_NAME = "opencone:controller"
BROWSER_SLOTS, DESKTOP_SLOTS = "opencone_browser_slots", "opencone_desktop_slots"
STALE_HEARTBEAT = timedelta(minutes=5)


def agent_name(ray_node_id: str) -> str:
    return f"opencone:node:{ray_node_id}"


def node_id_for(ray_node_id: str) -> str:
    """The fleet's id of a Ray node (the nodes table's key)."""
    return f"node-{ray_node_id}"


def slots_of(node: dict[str, Any]) -> tuple[int, int]:
    res = node.get("Resources") or {}
    return int(res.get(BROWSER_SLOTS, 0)), int(res.get(DESKTOP_SLOTS, 0))


class Controller:
    """Ray actor class (created by fleet/ray/__init__.py ``start``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO)
        self.config = config
        self.poll = float(config.get("poll_seconds", 0.5))
        self.agents: dict[str, Any] = {}  # ray node id -> actor handle
        self._probes: dict[str, Any] = {}  # ray node id -> a pending info() call
        self.lost: dict[str, list[str]] = {}  # fleet node id -> computers ended as node_lost
        self.errors: list[str] = []
        self._rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fleet-controller")
        self._thread.start()

    # -- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.run(_watch(self))

    def _forget_dead_agents(self) -> None:
        """An agent Ray will not restart (its start-up raised) is forgotten, so that the next round makes
        a new one. Probes never block the loop: each is read at a later round, once it has answered."""
        for ray_id, handle in list(self.agents.items()):
            probe = self._probes.get(ray_id)
            if probe is not None:
                done, _ = ray.wait([probe], timeout=0)
                if not done:
                    continue
                try:
                    ray.get(probe)
                except ray.exceptions.ActorDiedError:
                    log.warning("the node agent of %s is dead for good; starting a new one", ray_id)
                    self.agents.pop(ray_id, None)
                    self._probes.pop(ray_id, None)
                    continue
                except Exception:
                    pass
            self._probes[ray_id] = handle.info.remote()

    def _reconcile(self, nodes: list[dict[str, Any]]) -> None:
        """One agent per alive node with slots (a detached actor: ``get_if_exists`` finds one a previous
        controller made)."""
        for node in nodes:
            ray_id = node["NodeID"]
            browsers, desktops = slots_of(node)
            if not node.get("Alive") or not (browsers or desktops) or ray_id in self.agents:
                continue
            config = {**self.config.get("agent", {}), "node_id": node_id_for(ray_id), "ray_node_id": ray_id,
                      "browser_slots": browsers, "desktop_slots": desktops,
                      "database_url": self.config["database_url"], "token": self.config["token"]}
            config.setdefault("address", node.get("NodeManagerAddress"))
            self.agents[ray_id] = ray.remote(NodeAgent).options(  # type: ignore[attr-defined]
                name=agent_name(ray_id), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=8,
                scheduling_strategy=NodeAffinitySchedulingStrategy(ray_id, soft=False),
            ).remote(config)
            log.info("started the node agent of %s (%d browser, %d desktop slots)", ray_id, browsers, desktops)

    # -- the actor's methods ----------------------------------------------------------
    def ready(self, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until every agent started so far answers; the status then."""
        deadline = time.monotonic() + timeout
        while self._rounds == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        for handle in list(self.agents.values()):
            ray.get(handle.info.remote(), timeout=max(1.0, deadline - time.monotonic()))
        return self.status()

    def status(self) -> dict[str, Any]:
        return {"agents": sorted(self.agents), "lost": self.lost, "rounds": self._rounds, "errors": self.errors}

    def agent(self, ray_node_id: str) -> Any:
        return self.agents.get(ray_node_id)

    def shutdown(self) -> bool:
        """Stop watching, stop every agent's server cleanly, then the agents."""
        self._stop.set()
        handles = list(self.agents.values())
        with contextlib.suppress(Exception):
            ray.get([h.stop.remote() for h in handles], timeout=60)
        for handle in handles:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
        self.agents.clear()
        return True


# the loop's coroutines live outside the class: an actor class with an ``async def`` becomes an async
# actor, whose synchronous methods (ready, status) would block its event loop
async def _watch(self: Controller) -> None:
    from opencone.core.store.db import make_engine, migrate, sessionmaker

    engine = make_engine(self.config["database_url"])
    with contextlib.suppress(Exception):
        await migrate(engine)  # the replicas migrate too; whoever comes first creates the tables
    sessions = sessionmaker(engine)
    last_sweep = 0.0
    while not self._stop.is_set():
        try:
            nodes = await asyncio.to_thread(ray.nodes)
            await asyncio.to_thread(self._reconcile, nodes)
            await _mark_lost(self, sessions, nodes)
            if time.monotonic() - last_sweep > 30:
                last_sweep = time.monotonic()
                await _sweep(self, sessions)
        except Exception as exc:  # the database or the GCS briefly away: keep watching
            self.errors = [*self.errors[-9:], f"{type(exc).__name__}: {exc}"]
            log.warning("fleet controller round failed: %s", exc)
        self._rounds += 1
        if self._rounds % 10 == 0:
            await asyncio.to_thread(self._forget_dead_agents)
        await asyncio.sleep(self.poll)
    await engine.dispose()


async def _mark_lost(self: Controller, sessions: Any, nodes: list[dict[str, Any]]) -> None:
    from opencone.fleet import registry

    alive = {n["NodeID"] for n in nodes if n.get("Alive")}
    async with sessions() as s:
        rows = await registry.list_nodes(s, states=[registry.READY, registry.DRAINING])
        for row in rows:
            if row.ray_node_id is None or row.ray_node_id in alive:
                continue
            ended = await registry.mark_dead(s, row.id, "node_lost")
            self.lost[row.id] = ended
            self.agents.pop(row.ray_node_id, None)
            log.warning("node %s is dead (Ray): %d computers ended as node_lost", row.id, len(ended))


async def _sweep(self: Controller, sessions: Any) -> None:
    from opencone.fleet import registry

    async with sessions() as s:
        for node_id, ended in (await registry.sweep_stale(s, older_than=STALE_HEARTBEAT)).items():
            log.error("node %s has not reported for %s although Ray lists it: declared dead, %d "
                      "computers ended", node_id, STALE_HEARTBEAT, len(ended))
            self.lost[node_id] = ended
