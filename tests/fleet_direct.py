"""A fleet without Ray, for the tests of what replicas serve: node servers started directly.

A node agent is a Ray actor that supervises one ``python -m opencone.fleet.node`` process
(fleet/ray/agent.py); that process registers itself in PostgreSQL and heartbeats on its own. What an
API replica serves (routing, tenancy, tasks, environments, the gateway) needs only those processes, so
these tests start them the way the agent does, minus Ray: they run outside a network namespace, since
nothing here probes cloud-metadata addresses (Ray's own start does; tests/fleet_ray_cases.py covers
Ray's supervision, node death and placement at scale).

Not collected (no ``test_`` prefix): a test module builds a fleet with ``start_direct_fleet``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tzafon import Lightcone

from opencone.testing import Server, start_server

TESTS = Path(__file__).parent


@dataclass
class NodeProcess:
    node_id: str
    dir: Path
    proc: subprocess.Popen[bytes]
    url: str  # the node's internal base: http://127.0.0.1:<port>

    def log(self) -> str:
        path = self.dir / "agent-server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class DirectFleet:
    pg: Any  # tests/postgres.py's PostgresServer
    url: str  # the fleet database
    token: str
    key: str  # a key of the default organisation, valid on every replica
    nodes: list[NodeProcess]
    replicas: list[Server]
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)  # what a replica (or `opencone keys`) needs

    @property
    def replica(self) -> Server:
        return self.replicas[0]

    def sql(self, query: str) -> list[list[str]]:
        db = self.url.split("@/")[1].split("?")[0]
        return [line.split("|") for line in self.pg.psql(query, db).splitlines() if line]

    def node_of(self, computer_id: str) -> str:
        return self.sql(f"SELECT node_id FROM computers WHERE id = '{computer_id}'")[0][0]

    def new_org_key(self, name: str) -> str:
        """A key of a new organisation, made with the CLI against the fleet database."""
        out = subprocess.run([sys.executable, "-m", "opencone", "keys", "create", "--new-org", name,
                              "--data-dir", str(self.tmp / "cli")], env={**os.environ, **self.env},
                             capture_output=True, text=True, timeout=60, check=True)
        return out.stdout.strip()

    def client(self, key: str | None = None, replica: int = 0) -> Lightcone:
        return Lightcone(api_key=key or self.key, base_url=self.replicas[replica].base_url, max_retries=0)

    def http(self, key: str | None = None, replica: int = 0) -> httpx.Client:
        return self.replicas[replica].http(key or self.key)

    def stop(self) -> None:
        for server in self.replicas:
            server.stop()
        for node in self.nodes:
            node.stop()


def start_node(tmp: Path, node_id: str, database_url: str, token: str, *, browser_slots: int = 3,
               desktop_slots: int = 1, env: dict[str, str] | None = None, timeout: float = 90) -> NodeProcess:
    """One node server as the Ray agent starts it (its parent: this test process)."""
    node_dir = tmp / node_id
    node_dir.mkdir(parents=True, exist_ok=True)
    ready = node_dir / "agent-server.ready"
    ready.unlink(missing_ok=True)
    full = {**os.environ, "OPENCONE_POOL_SIZE": "1", "OPENCONE_EGRESS_ALLOW": "127.0.0.1",
            "PYTHONFAULTHANDLER": "1", "OPENCONE_NODE_HEARTBEAT_SECONDS": "1", **(env or {}),
            "OPENCONE_FLEET": "local", "OPENCONE_NODE_ID": node_id, "OPENCONE_NODE_DIR": str(node_dir),
            "OPENCONE_NODE_READY_FILE": str(ready), "OPENCONE_NODE_PARENT_PID": str(os.getpid()),
            "OPENCONE_NODE_ADDRESS": "127.0.0.1", "OPENCONE_NODE_BROWSER_SLOTS": str(browser_slots),
            "OPENCONE_NODE_DESKTOP_SLOTS": str(desktop_slots), "OPENCONE_NODE_REGISTRY_URL": database_url,
            "OPENCONE_FLEET_INTERNAL_TOKEN": token}
    full.pop("OPENCONE_DATABASE_URL", None)
    with (node_dir / "agent-server.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "opencone.fleet.node"], env=full, cwd=node_dir,
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            text = (node_dir / "agent-server.log").read_text(errors="replace")
            raise RuntimeError(f"node {node_id} did not start:\n{text[-4000:]}")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    return NodeProcess(node_id, node_dir, proc, info["url"])


def start_direct_fleet(tmp: Path, postgres: Any, *, nodes: int = 2, replicas: int = 1, browser_slots: int = 3,
                       desktop_slots: int = 1, node_env: dict[str, str] | None = None,
                       replica_env: dict[str, str] | None = None) -> DirectFleet:
    """PostgreSQL's fleet database, ``nodes`` node servers and ``replicas`` API replicas, ready."""
    url = postgres.create_database("fleet")
    token, key = secrets.token_hex(16), f"test-{secrets.token_hex(8)}"
    env = {"OPENCONE_FLEET": "ray", "OPENCONE_DATABASE_URL": url, "OPENCONE_FLEET_INTERNAL_TOKEN": token,
           **(replica_env or {})}
    fleet = DirectFleet(postgres, url, token, key, [], [], tmp, env)
    try:
        # the first replica migrates the database the nodes register in
        fleet.replicas.append(start_server(tmp / "replica-0", api_key=key, env=env))
        for i in range(nodes):
            fleet.nodes.append(start_node(tmp / "nodes", f"node-{i}", url, token, browser_slots=browser_slots,
                                          desktop_slots=desktop_slots, env=node_env))
        for i in range(1, replicas):
            fleet.replicas.append(start_server(tmp / f"replica-{i}", api_key=key, env=env))
        deadline = time.monotonic() + 30
        while True:
            with fleet.http() as h:
                ready = [n for n in h.get("/nodes").json() if n["state"] == "ready"]
            if len(ready) == nodes:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the nodes did not register: {ready}")
            time.sleep(0.2)
    except BaseException:
        fleet.stop()
        raise
    return fleet
