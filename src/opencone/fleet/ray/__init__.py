"""Ray as the fleet's launcher and membership oracle (and nothing more: no actor per computer, no Ray
Serve, no frames through the object store; spec/scale-out.md).

``start(address=...)`` connects to a Ray cluster (or uses the connection the caller's script already
has, e.g. an RL driver), creates the detached controller on the head (fleet/ray/controller.py) and
waits until the agents of the nodes with slots answer. ``opencone ray up`` is that, as a command that
exits afterwards: the controller and agents live on in the cluster. ``stop()`` ends them.
"""

from __future__ import annotations

import os
from typing import Any

import ray

from opencone.fleet.ray.controller import CONTROLLER_NAME, NAMESPACE, Controller, agent_name

__all__ = ["agent_name", "controller", "start", "stop"]


def _connect(address: str | None) -> None:
    if not ray.is_initialized():
        # no usage report from this driver (the head's own start still probes; README "Running a fleet")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address=address or "auto", namespace=NAMESPACE, log_to_driver=False,
                 logging_level="WARNING")


def start(address: str | None = None, *, database_url: str | None = None, token: str | None = None,
          data_dir: str | None = None, agent_env: dict[str, str] | None = None, poll_seconds: float = 0.5,
          timeout: float = 180.0) -> dict[str, Any]:
    """Start (or find) the fleet's controller in the Ray cluster at ``address``; its status once every
    node with slots has an agent that answers. Settings not given come from the environment
    (``OPENCONE_DATABASE_URL``, ``OPENCONE_FLEET_INTERNAL_TOKEN``, ``OPENCONE_DATA_DIR``)."""
    database_url = database_url or os.environ.get("OPENCONE_DATABASE_URL")
    token = token or os.environ.get("OPENCONE_FLEET_INTERNAL_TOKEN")
    if not database_url or not database_url.startswith("postgresql+asyncpg://"):
        raise ValueError("the fleet needs PostgreSQL: database_url=postgresql+asyncpg://... "
                         "(or OPENCONE_DATABASE_URL)")
    if not token or len(token) < 16:
        raise ValueError("the fleet needs an internal token of 16 characters or more shared by replicas and "
                         "agents (token=... or OPENCONE_FLEET_INTERNAL_TOKEN)")
    _connect(address)
    config = {"database_url": database_url, "token": token, "poll_seconds": poll_seconds,
              "agent": {"data_dir": data_dir or os.environ.get("OPENCONE_NODE_DATA_DIR") or "/var/lib/opencone/nodes",
                        "env": dict(agent_env or {})}}
    handle = ray.remote(Controller).options(  # type: ignore[attr-defined]
        name=CONTROLLER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0,
        max_restarts=-1, max_concurrency=8, resources={"node:__internal_head__": 0.001},
    ).remote(config)
    return ray.get(handle.ready.remote(timeout), timeout=timeout + 10)  # type: ignore[no-any-return]


def controller() -> Any:
    """The running controller's handle (in a connected driver), or None."""
    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


def stop(address: str | None = None) -> bool:
    """Stop the controller and every agent (their computers end as ``server_shutdown``)."""
    _connect(address)
    handle = controller()
    if handle is None:
        return False
    ray.get(handle.shutdown.remote(), timeout=120)
    ray.kill(handle, no_restart=True)
    return True
