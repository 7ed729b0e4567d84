"""A node agent's server process: today's whole app, in node mode, behind the internal protocol.

The Ray actor (fleet/ray/agent.py) only supervises this process; everything that runs computers is
the local server's own code (``create_app``: ComputerService, drivers, pools, sandboxes, streams),
with its own SQLite in the node's directory for its local records. What node mode adds:

- it binds the node's address on a port of its own (``OPENCONE_NODE_PORT``, 0 = any), and answers
  only ``/internal/v1/…`` with the internal token (fleet/agent_routes.py);
- it registers itself in the fleet's PostgreSQL (fleet/node_link.py): the computers an earlier
  incarnation left there end as ``node_agent_restarted``, then heartbeats carry its capacity and load,
  and each computer's end is written to its fleet record;
- it hands its saved environments to other nodes and takes theirs (``/internal/v1/environments/{id}/
  archive``), when a replica moves one to the node a create is placed on;
- it ends itself when its parent (the Ray actor's worker) goes: a node that Ray loses must not keep
  browsers running (its computers' process groups die with this process, drivers/processes.py).

Its start-up is the local server's, so what an earlier incarnation left on the node (processes in
the run dir, workspaces, records) is cleaned the way a restarted server cleans it.

Started by the agent as ``python -m opencone.fleet.node`` with its settings in the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from opencone.fleet.agent_routes import PREFIX, InternalGate, NodeDescription

log = logging.getLogger("opencone.fleet.node")

PARENT_POLL_SECONDS = 0.3
HARD_EXIT_SECONDS = 15.0  # after the parent is gone, however the graceful stop goes


def _install_test_factory(spec: str) -> None:
    """Tests only (``OPENCONE_FLEET_TEST_FACTORY=module:Class``): computers of a driver factory that starts
    no browser, for placement runs of a thousand computers on one machine."""
    import importlib

    from opencone.core import runtime

    module, _, name = spec.partition(":")
    factory = getattr(importlib.import_module(module), name)
    runtime.BrowserFactory = factory.browser  # type: ignore[attr-defined,misc]
    runtime.DesktopFactory = factory.desktop  # type: ignore[attr-defined,misc]


def _watch_parent(parent: int, gone: threading.Event) -> None:
    """A thread: when the process that started us is gone (reparented), stop the server: SIGTERM to
    ourselves (uvicorn's graceful stop ends every computer), and a hard exit if that hangs."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    log.warning("the node agent (pid %d) is gone: stopping this node's server", parent)
    gone.set()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(HARD_EXIT_SECONDS)
    os._exit(1)


def main() -> None:
    import uvicorn

    from opencone.api.app import create_app
    from opencone.config import Settings

    env = os.environ
    node_id = env["OPENCONE_NODE_ID"]
    token = env["OPENCONE_FLEET_INTERNAL_TOKEN"]
    node_dir = Path(env["OPENCONE_NODE_DIR"])
    address = env.get("OPENCONE_NODE_ADDRESS") or "127.0.0.1"
    capacity = {"browser": int(env.get("OPENCONE_NODE_BROWSER_SLOTS", "0")),
                "desktop": int(env.get("OPENCONE_NODE_DESKTOP_SLOTS", "0"))}
    registry_url = env.get("OPENCONE_NODE_REGISTRY_URL") or None
    ready_file = env.get("OPENCONE_NODE_READY_FILE")
    parent = int(env.get("OPENCONE_NODE_PARENT_PID") or os.getppid())
    if env.get("OPENCONE_FLEET_TEST_FACTORY"):
        _install_test_factory(env["OPENCONE_FLEET_TEST_FACTORY"])

    # proto IPPROTO_TCP, not 0: the event loop sets TCP_NODELAY on accepted connections only for a TCP
    # socket it can tell is one; without it every keep-alive answer waited ~40 ms for a delayed ACK
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((address, int(env.get("OPENCONE_NODE_PORT") or 0)))
    port = sock.getsockname()[1]
    host = f"[{address}]" if ":" in address else address
    url = f"http://{host}:{port}"
    node_dir.mkdir(parents=True, exist_ok=True)
    # the node's own store is SQLite in its dir (local records); the fleet's records are PostgreSQL's
    settings = Settings(data_dir=node_dir, database_url=None, api_key=token, public_url=url + PREFIX,  # type: ignore[call-arg]
                        host=address, port=port, max_computers=max(1, sum(capacity.values())))
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s node {node_id[:13]} %(name)s: %(message)s")
    app = create_app(settings)
    node = NodeDescription(node_id, 0, capacity)
    state: dict[str, Any] = {}

    async def live_by_kind() -> dict[str, int]:
        rt = state.get("runtime")
        counts = {"browser": 0, "desktop": 0}
        if rt is not None:
            for view in rt.computers.live_views():  # every organisation's: the node's slots are shared
                counts[view.kind] = counts.get(view.kind, 0) + 1
        return counts

    org_lock = asyncio.Lock()  # an organisation's first requests at once: one writes its key, not each (a 500)

    async def ensure_org(org_id: str, key: str) -> None:
        """An organisation a replica speaks for, as the node's own: the same id as the fleet's."""
        rt = state["runtime"]
        async with org_lock:
            await rt.accounts.ensure_org(org_id, name=org_id)
            await rt.accounts.ensure_key(key, org_id, name="fleet")

    class Archives:
        """The node's saved environments as another node takes them (fleet/agent_routes.py)."""

        async def export(self, org: str, env_id: str) -> Any:
            return await state["runtime"].environments.export(org, env_id)

        async def import_archive(self, org: str, env_id: str, meta: dict[str, Any], chunks: Any,
                                 declared: int | None) -> Any:
            return await state["runtime"].environments.import_archive(org, env_id, meta, chunks, declared)

        async def release(self, org: str, env_id: str) -> None:
            rt = state["runtime"]
            await rt.environments.release(org, env_id, rt.computers.environment_in_use)

    parent_gone = threading.Event()
    app_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        links: list[Any] = []
        try:
            async with app_lifespan(a) as inner:
                rt = a.state.runtime
                rt.computers.kind_limits = dict(capacity)  # what the node makes itself is held to its slots too
                state["runtime"], state["org"] = rt, await rt.accounts.org_for_key(token)
                if registry_url:
                    from opencone.fleet.node_link import NodeLink

                    links.append(NodeLink(registry_url, node_id, env.get("OPENCONE_NODE_RAY_ID"), url + PREFIX,
                                          capacity, rt, state["org"], parent_gone,
                                          float(env.get("OPENCONE_NODE_HEARTBEAT_SECONDS") or 2.0)))
                    node.incarnation = await links[0].start()
                if ready_file:  # the agent waits for this: where we answer, and as which incarnation
                    tmp = Path(ready_file + ".tmp")  # written whole, then renamed: never read half-written
                    tmp.write_text(json.dumps({"url": url, "pid": os.getpid(), "incarnation": node.incarnation}))
                    tmp.replace(ready_file)
                yield inner
        finally:  # after the app's own stop, so that a clean stop writes the ends of the computers it ended
            for link in links:
                await link.stop()

    app.router.lifespan_context = lifespan
    threading.Thread(target=_watch_parent, args=(parent, parent_gone), daemon=True, name="parent-watch").start()
    config = uvicorn.Config(InternalGate(app, token, node, live_by_kind, ensure_org, Archives()),
                            log_level=settings.log_level.lower(), access_log=False, timeout_graceful_shutdown=3,
                            ws_max_size=128 * 2**20, ws_per_message_deflate=settings.ws_compression, lifespan="on")
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve(sockets=[sock]))
    sys.exit(0 if server.started else 1)


if __name__ == "__main__":
    main()
