"""The egress policy on a real forwarder: raw requests spelled the ways an attacker spells them.

A browser canonicalises a URL's host before it asks its proxy; a shell command or a
hand-written client does not. So these tests speak to a ForwardingProxy directly,
with the default policy, and a local site that records every request: a refused
destination must get a 403 that names the policy, and the site must see nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from proxy_servers import RecordingHttpProxy, Site, run_site

from opencone.drivers.proxy import ForwardingProxy
from opencone.drivers.proxy.egress import EgressPolicy, parse_allow, parse_ip, why_not_public

aio = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def target() -> Iterator[Site]:
    with run_site() as s:
        yield s


async def raw(proxy: ForwardingProxy, request: str) -> str:
    """One request to the forwarder; its answer's head and body, as text."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(request.encode())
    await writer.drain()
    try:
        return (await asyncio.wait_for(reader.read(65536), 10)).decode(errors="replace")
    finally:
        writer.close()


@pytest.mark.parametrize(("spelling", "address"), [
    ("127.0.0.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("0x7f.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"), ("017700000001", "127.0.0.1"), ("127.1", "127.0.0.1"), ("127.0.0.1.", "127.0.0.1"),
    ("[::1]", "::1"), ("0", "0.0.0.0"), ("0xa9fea9fe", "169.254.169.254"), ("[::ffff:7f00:1]", "::ffff:7f00:1"),
])
def test_every_spelling_of_an_address_is_read_as_that_address(spelling: str, address: str) -> None:
    assert str(parse_ip(spelling)) == address


@pytest.mark.parametrize(("host", "why"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"), ("::127.0.0.1", "loopback"),
    ("64:ff9b::7f00:1", "loopback"), ("2002:7f00:1::", "loopback"), ("0.0.0.0", "unspecified"),
    ("10.0.0.1", "private"), ("172.31.255.255", "private"), ("192.168.0.1", "private"), ("fd12::1", "private"),
    ("100.64.0.1", "CGNAT"), ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"),
    ("168.63.129.16", "metadata"), ("100.100.100.200", "metadata"), ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"), ("224.0.0.251", "multicast"), ("240.0.0.1", "reserved"),
])
def test_non_public_addresses_are_named_for_what_they_are(host: str, why: str) -> None:
    ip = parse_ip(host)
    assert ip is not None
    assert why in (why_not_public(ip) or ""), (host, why_not_public(ip))


@pytest.mark.parametrize("host", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "93.184.215.14"])
def test_public_addresses_pass(host: str) -> None:
    ip = parse_ip(host)
    assert ip is not None and why_not_public(ip) is None


def test_allow_entries_open_only_what_they_name() -> None:
    policy = EgressPolicy(parse_allow("127.0.0.1:8000, intranet.example,10.20.0.0/16,[::1]:9000"))
    opened = [("127.0.0.1", 8000), ("10.20.3.4", 22), ("10.20.255.1", 443), ("::1", 9000), ("::ffff:127.0.0.1", 8000)]
    for host, port in opened:
        assert policy.refusal(host, parse_ip(host), port) is None, (host, port)
    assert policy.refusal("intranet.example", parse_ip("10.9.9.9"), 1234) is None  # a named host, wherever it is
    shut = [("127.0.0.1", 8001), ("127.0.0.2", 8000), ("10.21.0.1", 22), ("::1", 9001),
            ("other.example", 80)]
    for host, port in shut:
        ip = parse_ip(host) or parse_ip("10.1.1.1")
        assert policy.refusal(host, ip, port), (host, port)


@pytest.mark.parametrize("entry", ["not a host", "127.0.0.1:0", "host:99999", "[::1", "10.0.0.0/33", "a:b",
                                   "http://x.example"])
def test_a_bad_allow_entry_is_refused_by_name(entry: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_allow(f"127.0.0.1:8000,{entry}")
    assert repr(entry) in str(err.value) and "CIDR" in str(err.value)


@pytest.fixture
async def strict() -> AsyncIterator[ForwardingProxy]:
    async with ForwardingProxy(connect_timeout=3) as proxy:  # the default policy
        yield proxy


@aio
async def test_odd_spellings_of_a_local_server_are_refused_and_it_sees_nothing(
        strict: ForwardingProxy, target: Site) -> None:
    refused: list[tuple[str, int, str]] = []
    strict.on_refused = lambda host, port, why: refused.append((host, port, why))
    port = target.port
    before = len(target.seen)
    for host in ("127.0.0.1", "2130706433", "0x7f.0.0.1", "0177.1", "127.000.000.001", "localhost", "LOCALHOST.",
                 "[::ffff:127.0.0.1]", "[::1]", "0.0.0.0", "0"):
        for request in (f"GET http://{host}:{port}/x HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n",
                        f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"):
            answer = await raw(strict, request)
            assert answer.startswith("HTTP/1.1 403"), (request, answer[:200])
            assert "egress policy" in answer and "ERR_BLOCKED_BY_ADMINISTRATOR" in answer, answer
    assert len(target.seen) == before, target.seen[before:]
    assert len(refused) == 22 and all("egress policy" in why for *_, why in refused)


@aio
async def test_the_allowlist_opens_exactly_its_entry(target: Site) -> None:
    policy = EgressPolicy(parse_allow(f"127.0.0.1:{target.port}"))
    async with ForwardingProxy(policy=policy) as proxy:
        ok = await raw(proxy, f"GET http://127.0.0.1:{target.port}/open HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith("HTTP/1.1 200"), ok[:200]
        also = await raw(proxy, f"GET http://localhost:{target.port}/by-name HTTP/1.1\r\nHost: x\r\n\r\n")
        assert also.startswith("HTTP/1.1 200"), also[:200]  # (a name for that very address and port)
        shut = await raw(proxy, f"GET http://127.0.0.1:{target.port + 1}/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert shut.startswith("HTTP/1.1 403"), shut[:200]


@aio
async def test_an_upstream_proxy_is_checked_and_so_is_what_is_sent_through_it(target: Site) -> None:
    recorder = await RecordingHttpProxy().start()
    try:
        async with ForwardingProxy(connect_timeout=3) as proxy:
            with pytest.raises(Exception) as err:
                await proxy.check_upstream(recorder.url())
            assert "egress policy" in str(err.value) and "loopback" in str(err.value)
        allowed = EgressPolicy(parse_allow(f"127.0.0.1:{recorder.port}"))
        async with ForwardingProxy(recorder.url(), policy=allowed, connect_timeout=3) as proxy:
            await proxy.check_upstream(recorder.url())  # allowlisted: fine
            for host in ("10.0.0.7", "169.254.169.254", "[fd00::2]", "127.0.0.1"):
                for request in (f"GET http://{host}:{target.port}/ HTTP/1.1\r\nHost: {host}\r\n\r\n",
                                f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}\r\n\r\n"):
                    answer = await raw(proxy, request)
                    assert answer.startswith("HTTP/1.1 403"), (request, answer[:200])
            assert recorder.seen == [], recorder.seen  # nothing was sent on
    finally:
        await recorder.close()


@aio
async def test_the_servers_own_port_is_refused_even_by_an_open_policy(target: Site) -> None:
    policy = EgressPolicy.open()
    policy.server_ports.add(target.port)
    async with ForwardingProxy(policy=policy) as proxy:
        for host in ("127.0.0.1", "localhost", "0.0.0.0", "[::ffff:127.0.0.1]"):
            answer = await raw(proxy, f"GET http://{host}:{target.port}/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith("HTTP/1.1 403") and "port of this opencone server" in answer, answer[:300]
        other = await raw(proxy, f"GET http://127.0.0.1:{target.port + 1}/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert "403" not in other.split("\r\n", 1)[0]  # open: anything else goes (here: nothing listens)
