"""Per-computer forwarding proxy: switch a browser's upstream proxy without restarting it."""

from opencone.drivers.proxy.dial import UpstreamError
from opencone.drivers.proxy.forwarder import Failure, ForwardingProxy
from opencone.drivers.proxy.url import UpstreamProxy, parse_proxy_url

__all__ = ["Failure", "ForwardingProxy", "UpstreamError", "UpstreamProxy", "parse_proxy_url"]
