"""A computer's network: a namespace of its own whose one way out is its forwarding proxy.

Where the server may make network namespaces (drivers/netns.py), a computer's
browser runs in one that holds nothing but loopback, and the forwarder listens
inside it: a page can reach nothing but the forwarder, which applies the egress
policy (drivers/proxy/egress.py) to every connection it opens on the host's
network. Other computers' DevTools ports and forwarders are in namespaces of
their own, not on any network this one can name.

A server that may not make namespaces keeps today's arrangement (every port on
the host's 127.0.0.1, Chromium sending all traffic, loopback included, to its
forwarder) and has the policy refuse each of those ports by number, in every
mode, like the API's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opencone.drivers import netns
from opencone.drivers.netns import NetNamespace
from opencone.drivers.proxy.egress import EgressPolicy
from opencone.drivers.proxy.forwarder import ForwardingProxy

# where the forwarder listens inside a computer's namespace: a fixed port (nothing else is there),
# below the kernel's ephemeral range, so never the number of some host port a test or a page knows
PROXY_PORT = 3128
PROXY_ENV_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def proxy_env(url: str) -> dict[str, str]:
    """Environment variables that send a shell command's traffic to the proxy at ``url``."""
    return {name: url for name in PROXY_ENV_NAMES}


@dataclass
class NetworkPlan:
    """How every computer's network is made: the egress policy its forwarder applies, and whether
    it gets namespaces of its own (``namespaces``, where the server may make them)."""

    policy: EgressPolicy = field(default_factory=EgressPolicy)
    namespaces: bool = True

    @property
    def isolated(self) -> bool:
        return self.namespaces and netns.available()


class ComputerNetwork:
    def __init__(self, proxy: ForwardingProxy, namespace: NetNamespace | None, policy: EgressPolicy) -> None:
        self.proxy = proxy
        self.namespace = namespace
        self._policy = policy
        self._guarded: set[int] = set()
        self._commands: NetNamespace | None = None  # shell commands' namespace (``for_commands``)
        self._commands_url = ""

    @classmethod
    async def open(cls, plan: NetworkPlan, *, upstream: str | None = None,
                   connect_timeout: float = 10.0) -> ComputerNetwork:
        policy = plan.policy
        proxy = ForwardingProxy(upstream, connect_timeout=connect_timeout, policy=policy)
        namespace = NetNamespace.create() if plan.isolated else None
        try:
            await proxy.start(namespace.listen(PROXY_PORT) if namespace is not None else None)
        except BaseException:
            if namespace is not None:
                namespace.close()
            raise
        network = cls(proxy, namespace, policy)
        if namespace is None:
            network.guard(proxy.port)
        return network

    def report_refusals(self, emit: Callable[[str, dict[str, Any]], object]) -> None:
        """``emit("egress_blocked", {host, port, reason})`` for connections the policy refused, once
        a second per destination: a page retrying, or loading many blocked resources, does not
        flood the computer's event stream."""
        last: dict[str, float] = {}

        def refused(host: str, port: int, reason: str) -> None:
            now, key = time.monotonic(), f"{host}:{port}"
            if now - last.get(key, -1.0) < 1.0:
                return
            last[key] = now
            if len(last) > 256:
                for k in [k for k, t in last.items() if now - t >= 1.0]:
                    del last[k]
            emit("egress_blocked", {"host": host, "port": port, "reason": reason})
        self.proxy.on_refused = refused

    async def for_commands(self) -> tuple[NetNamespace | None, dict[str, str]]:
        """The network of this computer's shell commands when they may use one (exec with network,
        a desktop's terminal): a namespace of its own beside the browser's (they cannot reach its
        DevTools), whose way out is the same forwarder; and the proxy variables that point there.
        Made on first use. Without namespaces: none, and the forwarder on the host's loopback."""
        if self.namespace is None:
            return None, proxy_env(self.proxy.url)
        if self._commands is None:
            namespace = NetNamespace.create()
            try:
                self._commands_url = await self.proxy.also_listen(namespace.listen(PROXY_PORT))
            except BaseException:
                namespace.close()
                raise
            self._commands = namespace
        return self._commands, proxy_env(self._commands_url)

    def guard(self, port: int) -> None:
        """A port of this computer's on the host's loopback (no namespace here): no computer may
        reach it through its forwarder."""
        if self.namespace is None:
            self._guarded.add(port)
            self._policy.server_ports.add(port)

    async def close(self) -> None:
        try:
            await self.proxy.close()
        finally:
            for port in self._guarded:
                self._policy.server_ports.discard(port)
            self._guarded.clear()
            for namespace in (self.namespace, self._commands):
                if namespace is not None:
                    namespace.close()
