"""The node agent as a Ray actor: a thin supervisor of the node's server process.

One detached, named actor per node (``opencone:node:<ray node id>``), pinned to its node with hard
node affinity, ``num_cpus=0`` and ``max_restarts=-1``: Ray restarts it on the same node while the
node lives. The actor runs no computer itself. It starts ``python -m opencone.fleet.node`` (today's
app in node mode: fleet/node.py) as a supervised subprocess, which keeps Ray's worker quirks
(signals, threads, cwd) away from browsers and sandboxes, and:

- first ends what an earlier incarnation left: its server process (pidfile in the node's dir); that
  server's own start-up then kills leftover computer processes in the run dir, as a restarted
  single server does, and the fleet link ends the old incarnation's records;
- exits the worker when the server dies, so that Ray restarts the whole agent (a new incarnation);
- the server watches this worker and stops itself when it is gone (node lost, agent killed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

READY_TIMEOUT_SECONDS = 120.0
OLD_SERVER_GRACE_SECONDS = 10.0
RAYLET_POLL_SECONDS = 0.5


def _end_old_server(pidfile: Path) -> None:
    """SIGTERM the server an earlier incarnation started (if it still runs), SIGKILL after a grace."""
    try:
        pid = int(pidfile.read_text().strip())
        proc = psutil.Process(pid)
        if "opencone.fleet.node" not in " ".join(proc.cmdline()):
            return  # the pid was reused by something else
    except (OSError, ValueError, psutil.Error):
        return
    with contextlib.suppress(psutil.Error):
        proc.terminate()
        try:
            proc.wait(OLD_SERVER_GRACE_SECONDS)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _die_with_raylet(raylet: int) -> None:
    """A thread: exit when this worker's raylet is gone (reparented). Ray's worker does not always exit
    then: with the head's GCS killed, one lived on (its raylet gone) and so did the node's server, which
    watches this worker, and its browsers (tests/fleet_gcs_cases.py)."""
    while os.getppid() == raylet:
        time.sleep(RAYLET_POLL_SECONDS)
    os._exit(1)


class NodeAgent:
    """Ray actor class (decorated where it is created: fleet/ray/controller.py)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.node_id: str = config["node_id"]
        self.dir = Path(config["data_dir"]) / self.node_id
        self.dir.mkdir(parents=True, exist_ok=True)
        pidfile, ready = self.dir / "agent-server.pid", self.dir / "agent-server.ready"
        _end_old_server(pidfile)
        ready.unlink(missing_ok=True)
        env = {**os.environ, **config.get("env", {}),
               "OPENCONE_FLEET": "local",  # the node's own app is a local server; the fleet is this wrapper
               "OPENCONE_NODE_ID": self.node_id, "OPENCONE_NODE_RAY_ID": config.get("ray_node_id") or "",
               "OPENCONE_NODE_DIR": str(self.dir), "OPENCONE_NODE_READY_FILE": str(ready),
               "OPENCONE_NODE_PARENT_PID": str(os.getpid()),
               # the node's own settings (the environment of its `ray start`) first, else its Ray address
               "OPENCONE_NODE_ADDRESS": os.environ.get("OPENCONE_NODE_ADDRESS") or config.get("address") or "127.0.0.1",
               "OPENCONE_NODE_PORT": os.environ.get("OPENCONE_NODE_PORT") or str(config.get("port") or 0),
               "OPENCONE_NODE_BROWSER_SLOTS": str(int(config.get("browser_slots", 0))),
               "OPENCONE_NODE_DESKTOP_SLOTS": str(int(config.get("desktop_slots", 0))),
               "OPENCONE_NODE_REGISTRY_URL": config.get("database_url") or "",
               "OPENCONE_FLEET_INTERNAL_TOKEN": config["token"]}
        env.pop("OPENCONE_DATABASE_URL", None)
        log = (self.dir / "agent-server.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "opencone.fleet.node"], env=env, cwd=self.dir,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        pidfile.write_text(str(self.proc.pid))
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"the node server of {self.node_id} did not start; see {self.dir}/agent-server.log")
            time.sleep(0.05)
        self.ready: dict[str, Any] = json.loads(ready.read_text())  # (renamed into place whole)
        threading.Thread(target=self._supervise, daemon=True, name="supervise-node-server").start()
        threading.Thread(target=_die_with_raylet, args=(os.getppid(),), daemon=True, name="die-with-raylet").start()

    def _supervise(self) -> None:
        """The server died: die too, so Ray restarts the agent (and the next incarnation cleans up)."""
        self.proc.wait()
        if not getattr(self, "_stopping", False):
            os._exit(1)

    def info(self) -> dict[str, Any]:
        """Where this agent's server answers, its pids, its incarnation."""
        return {"node_id": self.node_id, "url": self.ready["url"], "server_pid": self.proc.pid,
                "agent_pid": os.getpid(), "incarnation": self.ready.get("incarnation", 0)}

    def wait_forever(self) -> None:
        """A call that never returns: its failure tells a watcher the agent died."""
        threading.Event().wait()

    def stop(self) -> bool:
        """Stop the server cleanly (its computers end as ``server_shutdown``); before the actor is killed."""
        self._stopping = True
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return True
