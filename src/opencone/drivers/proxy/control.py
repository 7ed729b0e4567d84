"""What a computer routed through its own forwarder offers: change the route, report it.

Browser computers (drivers/chromium/proxied.py) and desktops (their browser and,
when exec may use the network, their shell commands) share this.
"""

from __future__ import annotations

from typing import Any

from opencone.drivers.base import DriverError
from opencone.drivers.netns import NetNamespace
from opencone.drivers.network import ComputerNetwork
from opencone.drivers.proxy.egress import EgressRefused
from opencone.drivers.proxy.forwarder import ForwardingProxy


class RoutedThroughProxy:
    proxy: ForwardingProxy | None = None
    network: ComputerNetwork | None = None  # (the proxy's, with the computer's network namespaces)

    async def change_proxy(self, proxy_url: str | None) -> dict[str, Any]:
        """Switch the upstream (None or "" = direct) without restarting anything."""
        if self.proxy is None:
            raise DriverError("this computer has no proxy to change")
        try:
            await self.proxy.check_upstream(proxy_url)
            self.proxy.set_upstream(proxy_url)
        except ValueError as exc:
            raise DriverError(f"invalid proxy_url: {exc}") from None
        except EgressRefused as exc:
            raise DriverError(f"proxy_url refused: {exc}") from None
        return self.proxy_status()

    def proxy_status(self) -> dict[str, Any]:
        """For the computer's status: the route (password masked) and the bytes through it."""
        if self.proxy is None:
            return {"upstream": None, "bytes_sent": 0, "bytes_received": 0, "connections": 0}
        s = self.proxy.stats()
        return {"upstream": s["upstream"], "bytes_sent": s["bytes_sent"], "bytes_received": s["bytes_received"],
                "connections": s["connections"]}  # every one the browser opened, refused ones included

    async def command_network(self) -> tuple[NetNamespace | None, dict[str, str]]:
        """Where this computer's shell commands go when they may use the network: their network
        namespace (None: the host's) and the proxy variables that lead to the forwarder."""
        if self.network is None:
            return None, {}
        return await self.network.for_commands()
