"""What a computer routed through its own forwarder offers: change the route, report it.

Browser computers (drivers/chromium/proxied.py) and desktops (their browser and,
when exec may use the network, their shell commands) share this.
"""

from __future__ import annotations

from typing import Any

from opencone.drivers.base import DriverError
from opencone.drivers.proxy.forwarder import ForwardingProxy

PROXY_ENV_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class RoutedThroughProxy:
    proxy: ForwardingProxy | None = None

    async def change_proxy(self, proxy_url: str | None) -> dict[str, Any]:
        """Switch the upstream (None or "" = direct) without restarting anything."""
        if self.proxy is None:
            raise DriverError("this computer has no proxy to change")
        try:
            self.proxy.set_upstream(proxy_url)
        except ValueError as exc:
            raise DriverError(f"invalid proxy_url: {exc}") from None
        return self.proxy_status()

    def proxy_status(self) -> dict[str, Any]:
        """For the computer's status: the route (password masked) and the bytes through it."""
        if self.proxy is None:
            return {"upstream": None, "bytes_sent": 0, "bytes_received": 0}
        s = self.proxy.stats()
        return {"upstream": s["upstream"], "bytes_sent": s["bytes_sent"], "bytes_received": s["bytes_received"]}

    def proxy_env(self) -> dict[str, str]:
        """Environment variables that send a shell command's traffic through the forwarder."""
        return {name: self.proxy.url for name in PROXY_ENV_NAMES} if self.proxy is not None else {}
