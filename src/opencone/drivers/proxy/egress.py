"""Where a computer's traffic may go: the egress policy every forwarder applies.

By default a computer reaches public addresses only. Loopback, unspecified
(0.0.0.0 reaches this host), private (RFC 1918), shared (CGNAT, 100.64/10),
unique-local, link-local, cloud-metadata, multicast and reserved destinations
are refused however they are spelled (decimal, octal, hex or short IPv4; IPv6
forms that carry an IPv4 address inside) and whatever a name resolves to: a name
is resolved here, every answer is checked, and the connection goes to an answer
that passed (no second lookup that a rebinding DNS server could answer
differently).

The operator opens what they name (``OPENCONE_EGRESS_ALLOW``: hosts, host:port
pairs, CIDR ranges; an entry opens only what it names), or everything
(``OPENCONE_EGRESS_POLICY=any``, for a single trusted user). The server's own
ports are never reachable, whatever the settings.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from opencone.drivers.proxy.errors import UpstreamError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Mode = Literal["public", "any"]

ALLOW_SETTING = "OPENCONE_EGRESS_ALLOW"
MODE_SETTING = "OPENCONE_EGRESS_POLICY"
BLOCKED = "ERR_BLOCKED_BY_ADMINISTRATOR"  # the Chromium net error for "refused by a policy"

# cloud metadata services on addresses that are otherwise unremarkable (the rest are link-local)
_METADATA = {ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.169.123", "100.100.100.200", "168.63.129.16", "fd00:ec2::254",
)}
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$")
_V4_PART = re.compile(r"^(0x[0-9a-f]*|0[0-7]*|[1-9][0-9]*)$")


class EgressRefused(UpstreamError):
    """The destination is one the policy refuses; the message names it, why, and the setting."""

    def __init__(self, message: str) -> None:
        super().__init__(message, BLOCKED)


def parse_ip(host: str) -> IPAddress | None:
    """The address ``host`` denotes, however it is spelled (``[::1]``, ``2130706433``,
    ``0x7f.1``, ``0177.0.0.1``, ``127.1``), or None for a name. IPv4 numbers are read the
    way inet_aton and browsers read them, so nothing that connects somewhere slips by."""
    text = host.strip().lower().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_V4_PART.match(p) for p in parts):
        return None
    numbers = [_v4_number(p) for p in parts]
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = 0
    for n in head:
        value = value << 8 | n
    return ipaddress.IPv4Address(value << 8 * (5 - len(numbers)) | last)


def _v4_number(part: str) -> int:
    """One part of an IPv4 address as inet_aton reads it: 0x… hex, 0… octal, else decimal."""
    if part.startswith("0x"):
        return int(part[2:] or "0", 16)
    return int(part, 8) if part.startswith("0") else int(part)


def embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo): a
    connection to it may end up at them."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo:
        found += list(ip.teredo)
    packed = int(ip)
    if ip in _NAT64 or ip in _NAT64_LOCAL or (packed >> 32 == 0 and packed > 1):  # NAT64, IPv4-compatible
        found.append(ipaddress.IPv4Address(packed & 0xFFFFFFFF))
    return found


def why_not_public(ip: IPAddress) -> str | None:
    """What makes ``ip`` (or an IPv4 address inside it) a destination computers may not reach."""
    for a in (*embedded_ipv4(ip), ip):  # (the IPv4 inside first: its name for it is the telling one)
        if a in _METADATA:
            return "a cloud metadata address"
        if a.is_loopback:
            return "a loopback address"
        if a.is_unspecified:
            return "an unspecified address (it reaches this host)"
        if a.is_link_local:
            return "a link-local address (where cloud metadata services live)"
        if isinstance(a, ipaddress.IPv4Address) and a in _SHARED:
            return "a shared (CGNAT) address"
        if a.is_multicast:
            return "a multicast address"
        if a.is_reserved:
            return "a reserved address"
        if a.is_private:
            return "a private address"
        if not a.is_global:
            return "a reserved address"
    return None


def canonical_name(host: str) -> str:
    return host.strip().lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """One operator entry: a host name, an address or a CIDR range, with or without a port."""

    text: str
    name: str | None = None
    network: IPNetwork | None = None
    port: int | None = None

    def opens(self, name: str | None, ip: IPAddress | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.name is not None:
            return name == self.name
        if ip is None or self.network is None:
            return False
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return any(a.version == self.network.version and a in self.network for a in (ip, mapped) if a is not None)


def parse_allow(text: str | None) -> tuple[AllowEntry, ...]:
    """``OPENCONE_EGRESS_ALLOW``: comma-separated hosts, ``host:port`` pairs and CIDR ranges;
    a ValueError names the entry that is wrong and the forms allowed."""
    entries = []
    for raw in (text or "").split(","):
        item = raw.strip()
        if item:
            entries.append(_parse_entry(item))
    return tuple(entries)


_ENTRY_FORMS = "a host (intranet.example), host:port (127.0.0.1:8000, [::1]:8000) or a CIDR range (10.20.0.0/16)"


def _parse_entry(item: str) -> AllowEntry:
    bad = ValueError(f"{ALLOW_SETTING}: {item!r} is not {_ENTRY_FORMS}")
    if "/" in item:
        try:
            return AllowEntry(item, network=ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise bad from None
    host, port = item, None
    if item.startswith("["):
        inner, closed, rest = item[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise bad
        host, port_text = inner, rest[1:]
        if rest and not port_text:
            raise bad
        port = _port(port_text, bad) if port_text else None
    elif item.count(":") == 1:
        host, port_text = item.split(":")
        port = _port(port_text, bad)
    ip = parse_ip(host)
    if ip is not None:
        return AllowEntry(item, network=ipaddress.ip_network(ip), port=port)
    name = canonical_name(host)
    if not _NAME.match(name):
        raise bad
    return AllowEntry(item, name=name, port=port)


def _port(text: str, bad: ValueError) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise bad
    return int(text)


def _local_addresses() -> frozenset[IPAddress]:
    """This host's own addresses (a destination on one of them with the server's port is the server)."""
    import psutil  # (only here: the policy itself needs no process table)

    found: set[IPAddress] = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                ip = parse_ip(a.address)
                if ip is not None:
                    found.add(ip)
    return frozenset(found)


@dataclass
class EgressPolicy:
    """What one server's computers may reach. ``server_ports`` (its API port, and any port of
    its own a computer could otherwise name) are refused in every mode."""

    allow: tuple[AllowEntry, ...] = ()
    mode: Mode = "public"
    server_ports: set[int] = field(default_factory=set)
    _local: frozenset[IPAddress] | None = field(default=None, repr=False)

    @classmethod
    def open(cls) -> EgressPolicy:
        """Everything allowed (but the server's own ports): a single trusted user's setting, and tests'."""
        return cls(mode="any")

    @classmethod
    def from_settings(cls, allow: str | None, mode: str, server_ports: Iterable[int] = ()) -> EgressPolicy:
        if mode not in ("public", "any"):
            raise ValueError(f"{MODE_SETTING} must be 'public' (the default) or 'any', not {mode!r}")
        return cls(parse_allow(allow), mode, set(server_ports))  # type: ignore[arg-type]

    def _is_server(self, ip: IPAddress, port: int) -> bool:
        if port not in self.server_ports:
            return False
        if ip.is_loopback or ip.is_unspecified or any(a.is_loopback or a.is_unspecified for a in embedded_ipv4(ip)):
            return True
        if self._local is None:
            self._local = _local_addresses()
        return ip in self._local

    def refusal(self, host: str, ip: IPAddress | None, port: int) -> str | None:
        """Why a connection to ``ip`` (what ``host`` resolved to, or None when it was not
        resolved here) on ``port`` is refused; None when it may go."""
        name = None if parse_ip(host) is not None else canonical_name(host)
        target = _target(host, port)
        if ip is not None and self._is_server(ip, port):
            return f"egress policy: {target} is a port of this opencone server; no computer may reach it"
        if self.mode == "any" or any(e.opens(name, ip, port) for e in self.allow):
            return None
        why = why_not_public(ip) if ip is not None else None
        if why is None and name is not None and (name == "localhost" or name.endswith(".localhost")):
            why = "a loopback name"
        if why is None:
            return None
        shown = target if ip is None or canonical_name(host).strip("[]") == str(ip) else f"{target} ({ip})"
        example = _target(name if name is not None else str(ip), port)
        return (f"egress policy: {shown} is {why}, which computers may not reach; to allow it add it to "
                f"{ALLOW_SETTING} (e.g. {example})")

    def check_unresolved(self, host: str, port: int) -> None:
        """A destination reached through an upstream proxy, which resolves names itself: only
        what the name or literal says can be checked here."""
        reason = self.refusal(host, parse_ip(host), port)
        if reason:
            raise EgressRefused(reason)

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` a connection may go to, in resolver order; EgressRefused when
        the policy refuses all of them (socket.gaierror when the name does not resolve)."""
        literal = parse_ip(host)
        if literal is not None:
            reason = self.refusal(host, literal, port)
            if reason:
                raise EgressRefused(reason)
            return [str(literal)]
        # (the canonical name: LOCALHOST. is localhost, as a browser would have written it)
        infos = await asyncio.get_running_loop().getaddrinfo(canonical_name(host), port, type=socket.SOCK_STREAM)
        allowed, first_reason = [], None
        for *_, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            reason = self.refusal(host, ip, port)
            if reason is None:
                if str(ip) not in allowed:
                    allowed.append(str(ip))
            elif first_reason is None:
                first_reason = reason
        if not allowed:
            raise EgressRefused(first_reason or f"egress policy: {host} has no address")
        return allowed


def destination(host: str, port: int) -> str:
    """One key for every spelling of a destination (``0x7f.1`` and ``127.0.0.1``, ``LOCALHOST.``
    and ``localhost``): how the forwarder files a failure, and how a URL finds it again."""
    ip = parse_ip(host)
    return f"{ip if ip is not None else canonical_name(host)}:{port}"


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
