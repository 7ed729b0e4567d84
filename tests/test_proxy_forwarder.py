"""The per-computer forwarding proxy (opencone.drivers.proxy), on real sockets.

Everything listens on 127.0.0.1: a target site (http and https), a recording
HTTP(S) upstream proxy and a recording SOCKS5 proxy (tests/proxy_servers.py),
httpx as a plain proxy client, and a real Chromium whose only proxy is the
forwarder, switched at runtime in the same tab.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, async_playwright
from proxy_servers import (
    BIG,
    RecordingHttpProxy,
    RecordingSocks5Proxy,
    Site,
    client_tls,
    closed_port,
    make_cert,
    run_site,
    server_tls,
    silent_server,
)

from opencone.config import _default_chromium
from opencone.drivers.chromium.launcher import ChromiumProcess, chromium_command, launch_chromium
from opencone.drivers.proxy import ForwardingProxy, parse_proxy_url
from opencone.drivers.proxy.egress import EgressPolicy

aio = pytest.mark.asyncio(loop_scope="session")
# these tests talk to servers and proxies on 127.0.0.1: an open policy (the egress tests check the default one)
LOCAL = EgressPolicy.open()



# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    made = make_cert(tmp_path_factory.mktemp("cert"))
    if made is None:
        pytest.skip("openssl is not installed: cannot make a certificate for the https tests")
    return made


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with run_site() as s:
        yield s


@pytest.fixture(scope="module")
def tls_site(cert: tuple[Path, Path]) -> Iterator[Site]:
    with run_site(server_tls(*cert)) as s:
        yield s


@pytest.fixture
async def proxy_a() -> AsyncIterator[RecordingHttpProxy]:
    p = await RecordingHttpProxy(user="alice", password="s3cret:/@").start()
    yield p
    await p.close()


@pytest.fixture
async def proxy_b() -> AsyncIterator[RecordingSocks5Proxy]:
    p = await RecordingSocks5Proxy(user="bob", password="hunter2").start()
    yield p
    await p.close()


@pytest.fixture
async def fwd() -> AsyncIterator[ForwardingProxy]:
    async with ForwardingProxy(connect_timeout=5, policy=LOCAL) as f:
        yield f


def a_url(p: RecordingHttpProxy, password: str = "s3cret%3A%2F%40") -> str:
    return p.url("alice", password)


# -- URL validation -------------------------------------------------------------------------
def test_parse_proxy_url_accepts_the_documented_forms() -> None:
    p = parse_proxy_url("http://user:pa%40ss@proxy.example:8080")
    assert (p.scheme, p.host, p.port, p.username, p.password) == ("http", "proxy.example", 8080, "user", "pa@ss")
    assert p.masked == "http://user:***@proxy.example:8080"
    assert "pa@ss" not in repr(p) and p.basic_auth() == "Basic dXNlcjpwYUBzcw=="
    assert parse_proxy_url("https://10.0.0.1:443/").scheme == "https"
    s = parse_proxy_url("SOCKS5H://u:p@[::1]:1080")
    assert (s.scheme, s.host, s.port, s.address) == ("socks5", "::1", 1080, "[::1]:1080")
    assert parse_proxy_url("  socks5://h:1  ").username is None


@pytest.mark.parametrize(("url", "message"), [
    ("", "empty"),
    ("   ", "empty"),
    ("proxy.example:8080", "no scheme"),
    ("ftp://proxy.example:21", "unsupported proxy scheme 'ftp'"),
    ("socks4://proxy.example:1080", "unsupported proxy scheme"),
    ("http://proxy.example", "no port"),
    ("http://:8080", "no host"),
    ("http://proxy.example:0", "1 to 65535"),
    ("http://proxy.example:70000", "1 to 65535"),
    ("http://proxy.example:port", "1 to 65535"),
    ("http://proxy.example:8080/path", "must not have a path"),
    ("http://proxy.example:8080?x=1", "must not have a path"),
    ("http://proxy example:8080", "spaces or control characters"),
    ("socks5://" + "u" * 300 + ":p@h:1080", "1 to 255 bytes"),
])
def test_parse_proxy_url_rejects_malformed_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("?", r"\?")):
        parse_proxy_url(url)


@aio
async def test_a_bad_url_leaves_the_route_as_it_was(fwd: ForwardingProxy) -> None:
    fwd.set_upstream("http://u:pw@127.0.0.1:9")
    with pytest.raises(ValueError, match="unsupported proxy scheme"):
        fwd.set_upstream("gopher://127.0.0.1:70")
    assert fwd.stats()["upstream"] == "http://u:***@127.0.0.1:9"
    fwd.set_upstream("")
    assert fwd.upstream is None and fwd.stats()["upstream"] is None


# -- plain proxy clients (httpx) ------------------------------------------------------------
@aio
async def test_direct_get_post_and_byte_counters(fwd: ForwardingProxy, site: Site) -> None:
    async with httpx.AsyncClient(proxy=fwd.url) as c:
        r = await c.get(f"{site.url}/hello")
        assert r.status_code == 200 and "page /hello" in r.text
        assert "connection" not in r.headers  # kept alive (see the forwarder's docstring)
        big = await c.get(f"{site.url}/big")
        assert big.content == BIG
        body = b"x" * 300_000
        echo = await c.post(f"{site.url}/echo", content=body)
        assert echo.content == body
    s = fwd.stats()
    assert s["bytes_received"] > len(BIG) + len(body) and s["bytes_sent"] > len(body)
    assert s["connections"] == 1 and s["reused"] == 2 and s["errors"] == 0 and s["upstream"] is None
    assert site.seen[-3:] == ["/hello", "/big", "/echo"]


@aio
async def test_http_upstream_with_credentials(fwd: ForwardingProxy, site: Site, proxy_a: RecordingHttpProxy) -> None:
    fwd.set_upstream(a_url(proxy_a))
    async with httpx.AsyncClient(proxy=fwd.url) as c:
        r = await c.get(f"{site.url}/via-a?q=1")
        assert r.status_code == 200 and "page /via-a?q=1" in r.text
        assert proxy_a.seen == [f"GET {site.url}/via-a?q=1"]  # absolute-URI, with Proxy-Authorization
        fwd.set_upstream(a_url(proxy_a, "wrong"))
        r = await c.get(f"{site.url}/denied")
        assert r.status_code == 502 and "rejected the credentials" in r.text
        fwd.set_upstream(proxy_a.url())
        r = await c.get(f"{site.url}/denied")
        assert r.status_code == 502 and "requires credentials" in r.headers["x-opencone-proxy-error"]
    assert proxy_a.rejected == 2 and "/denied" not in site.seen
    assert "s3cret" not in str(fwd.stats()) and "wrong" not in str(fwd.stats())


@aio
async def test_socks5_upstream_with_credentials(fwd: ForwardingProxy, site: Site,
                                                proxy_b: RecordingSocks5Proxy) -> None:
    fwd.set_upstream(proxy_b.url("bob", "hunter2", scheme="socks5h"))
    async with httpx.AsyncClient(proxy=fwd.url) as c:
        assert (await c.get(f"{site.url}/via-b")).status_code == 200
        assert proxy_b.seen == [f"CONNECT 127.0.0.1:{site.port}"]
        fwd.set_upstream(proxy_b.url("bob", "nope"))
        r = await c.get(f"{site.url}/denied")
        assert r.status_code == 502 and "rejected the username/password" in r.text
        fwd.set_upstream(proxy_b.url())
        r = await c.get(f"{site.url}/denied")
        assert r.status_code == 502 and "accepts none of our authentication methods" in r.text
        fwd.set_upstream(proxy_b.url("bob", "hunter2"))
        dead = closed_port()
        r = await c.get(f"http://127.0.0.1:{dead}/")
        assert r.status_code == 502 and "connection refused by the destination" in r.text
        assert fwd.error_for(f"http://127.0.0.1:{dead}/x") == r.headers["x-opencone-proxy-error"]


@aio
async def test_unreachable_and_silent_upstreams_fail_fast(site: Site, tls_site: Site) -> None:
    """Refused at once; a proxy that accepts and says nothing gets ``connect_timeout`` for the
    CONNECT or SOCKS handshake. (A plain-http request forwarded to an HTTP proxy that then stays
    silent waits like a slow server would: the client's own timeout ends it.)"""
    silent = await silent_server()
    quiet_port = silent.sockets[0].getsockname()[1]
    try:
        async with ForwardingProxy(connect_timeout=0.5, policy=LOCAL) as f, \
                httpx.AsyncClient(proxy=f.url, timeout=10) as c:
            for upstream, why in [
                (f"http://127.0.0.1:{closed_port()}", "connection refused"),
                (f"socks5://127.0.0.1:{closed_port()}", "connection refused"),
                (f"socks5://u:p@127.0.0.1:{quiet_port}", "timed out after 0.5 s"),
            ]:
                f.set_upstream(upstream)
                t0 = time.monotonic()
                r = await c.get(f"{site.url}/never")
                assert r.status_code == 502 and why in r.text, (upstream, r.text)
                assert time.monotonic() - t0 < 3
            f.set_upstream(f"http://127.0.0.1:{quiet_port}")
            t0 = time.monotonic()
            with pytest.raises(httpx.ProxyError, match="502"):  # CONNECT answered 502 after the timeout
                await c.get(f"{tls_site.url}/never")
            assert time.monotonic() - t0 < 3
            failure = f.failure_for(f"{tls_site.url}/")
            assert failure is not None and failure.code == "ERR_PROXY_CONNECTION_FAILED"
            assert "timed out after 0.5 s" in failure.reason
            assert f.stats()["errors"] == 4
            f.set_upstream(None)  # direct to a closed port: the code Chromium itself would report
            r = await c.get(f"http://127.0.0.1:{closed_port()}/")
            assert r.status_code == 502 and r.headers["x-opencone-net-error"] == "ERR_CONNECTION_REFUSED"
    finally:
        silent.close()


@aio
async def test_https_upstream_proxy(cert: tuple[Path, Path], site: Site, tls_site: Site) -> None:
    upstream = await RecordingHttpProxy(user="t", password="p", tls=server_tls(*cert)).start()
    try:
        async with ForwardingProxy(upstream.url("t", "p"), upstream_tls=client_tls(cert[0]), policy=LOCAL) as f, \
                httpx.AsyncClient(proxy=f.url, verify=client_tls(cert[0])) as c:
            assert (await c.get(f"{site.url}/tls-proxy")).status_code == 200
            assert (await c.get(f"{tls_site.url}/tls-in-tls")).status_code == 200  # TLS inside the TLS to the proxy
            assert upstream.seen == [f"GET {site.url}/tls-proxy", f"CONNECT 127.0.0.1:{tls_site.port}"]
        # without our CA the proxy's self-signed certificate is refused, with a reason
        async with ForwardingProxy(upstream.url("t", "p"), policy=LOCAL) as f, httpx.AsyncClient(proxy=f.url) as c:
            r = await c.get(f"{site.url}/untrusted")
            assert r.status_code == 502 and "TLS handshake" in r.text and "CERTIFICATE_VERIFY_FAILED" in r.text
    finally:
        await upstream.close()


# -- raw sockets: tunnels, route changes, close ---------------------------------------------
async def _open_tunnel(fwd: ForwardingProxy, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", fwd.port)
    writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    return reader, writer


async def _http_over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return await reader.readexactly(length)


@aio
async def test_a_route_change_drops_open_tunnels_unless_asked_not_to(
        fwd: ForwardingProxy, site: Site, proxy_a: RecordingHttpProxy) -> None:
    r1, w1 = await _open_tunnel(fwd, site.port)
    assert b"page /kept-alive" in await _http_over(r1, w1, "/kept-alive")  # a keep-alive tunnel, as Chromium has
    fwd.set_upstream(a_url(proxy_a), drop_open=False)
    assert b"page /still-direct" in await _http_over(r1, w1, "/still-direct")
    assert proxy_a.seen == []  # the old tunnel still goes direct: why dropping is the default
    fwd.set_upstream(f"http://127.0.0.1:{closed_port()}")  # default: connections on another route are dropped
    assert await asyncio.wait_for(r1.read(), 2) == b""
    w1.close()
    assert fwd.stats()["open_connections"] == 0


@aio
async def test_close_ends_listener_and_open_tunnels(site: Site) -> None:
    fwd = await ForwardingProxy(policy=LOCAL).start()
    port = fwd.port
    reader, writer = await _open_tunnel(fwd, site.port)
    t0 = time.monotonic()
    await fwd.close()
    assert await asyncio.wait_for(reader.read(), 2) == b""
    assert time.monotonic() - t0 < 2
    writer.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


@aio
async def test_requests_that_are_not_proxy_requests_get_400(fwd: ForwardingProxy) -> None:
    for head in (b"GET /origin-form HTTP/1.1\r\nHost: x\r\n\r\n", b"GET https://x/ HTTP/1.1\r\n\r\n",
                 b"CONNECT nohost HTTP/1.1\r\n\r\n", b"garbage\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", fwd.port)
        writer.write(head)
        answer = await asyncio.wait_for(reader.read(), 2)
        assert answer.startswith(b"HTTP/1.1 400"), (head, answer)
        writer.close()


# -- Chromium ---------------------------------------------------------------------------------
@dataclass
class Browser:
    fwd: ForwardingProxy
    process: ChromiumProcess
    page: Page


PROXY_FLAGS = ["--proxy-bypass-list=<-loopback>", "--ignore-certificate-errors"]


@contextlib.asynccontextmanager
async def chromium(profile: Path, extra_args: list[str]) -> AsyncIterator[tuple[ChromiumProcess, Page]]:
    process = await launch_chromium(_default_chromium(), profile, extra_args=extra_args)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.connect_over_cdp(process.ws_url)
            context = browser.contexts[0]
            page = context.pages[0] if context.pages else await context.new_page()
            yield process, page
    finally:
        await process.terminate()


@pytest.fixture(scope="module")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Browser]:
    async with ForwardingProxy(connect_timeout=2, policy=LOCAL) as fwd:
        flags = [f"--proxy-server={fwd.url}", *PROXY_FLAGS]
        async with chromium(tmp_path_factory.mktemp("chromium") / "profile", flags) as (process, page):
            yield Browser(fwd, process, page)


async def _title(page: Page, url: str) -> str:
    response = await page.goto(url, timeout=15_000)
    assert response is not None and response.status == 200, (url, response and response.status)
    return await page.title()


@aio
async def test_browser_goes_direct_then_through_a_then_b_in_the_same_tab(
        browser: Browser, site: Site, tls_site: Site, proxy_a: RecordingHttpProxy,
        proxy_b: RecordingSocks5Proxy) -> None:
    fwd, page = browser.fwd, browser.page
    fwd.set_upstream(None)
    pid, tabs = browser.process.pid, len(page.context.pages)
    before = fwd.stats()

    assert await _title(page, f"{site.url}/direct") == "page /direct"
    assert await _title(page, f"{tls_site.url}/direct-tls") == "page /direct-tls"
    direct = fwd.stats()
    assert direct["bytes_sent"] > before["bytes_sent"] and direct["bytes_received"] > before["bytes_received"]
    assert proxy_a.seen == [] and proxy_b.seen == []
    assert "/direct" in site.seen and "/direct-tls" in tls_site.seen

    fwd.set_upstream(a_url(proxy_a))
    assert await _title(page, f"{site.url}/via-a") == "page /via-a"
    assert await _title(page, f"{tls_site.url}/via-a-tls") == "page /via-a-tls"
    assert f"GET {site.url}/via-a" in proxy_a.seen
    assert f"CONNECT 127.0.0.1:{tls_site.port}" in proxy_a.seen  # the direct tunnel was not reused
    assert proxy_b.seen == []
    via_a = fwd.stats()
    assert via_a["bytes_received"] > direct["bytes_received"]

    fwd.set_upstream(proxy_b.url("bob", "hunter2"))
    seen_a = list(proxy_a.seen)
    assert await _title(page, f"{site.url}/via-b") == "page /via-b"
    assert await _title(page, f"{tls_site.url}/via-b-tls") == "page /via-b-tls"
    assert f"CONNECT 127.0.0.1:{site.port}" in proxy_b.seen and f"CONNECT 127.0.0.1:{tls_site.port}" in proxy_b.seen
    assert proxy_a.seen == seen_a
    assert fwd.stats()["bytes_received"] > via_a["bytes_received"]

    fwd.set_upstream(None)
    seen_b = list(proxy_b.seen)
    assert await _title(page, f"{tls_site.url}/direct-again") == "page /direct-again"
    assert proxy_a.seen == seen_a and proxy_b.seen == seen_b
    # the same browser process and the same tab throughout
    assert browser.process.pid == pid and browser.process.process.returncode is None
    assert len(page.context.pages) == tabs


@aio
async def test_browser_bad_upstream_fails_clearly_and_fast(browser: Browser, site: Site, tls_site: Site) -> None:
    fwd, page = browser.fwd, browser.page
    silent = await silent_server()
    try:
        for upstream, why in [(f"http://127.0.0.1:{closed_port()}", "connection refused"),
                              (f"socks5://127.0.0.1:{silent.sockets[0].getsockname()[1]}", "timed out after 2 s")]:
            fwd.set_upstream(upstream)
            t0 = time.monotonic()
            with pytest.raises(PlaywrightError, match="ERR_TUNNEL_CONNECTION_FAILED"):
                await page.goto(f"{tls_site.url}/unreachable", timeout=15_000)
            assert time.monotonic() - t0 < 8
            # Chromium commits its error page just after goto fails; a goto right away would be
            # "interrupted by another navigation to chrome-error://chromewebdata/"
            with contextlib.suppress(PlaywrightError):
                await page.wait_for_url("chrome-error://**", timeout=3000)
            assert why in (fwd.error_for(f"{tls_site.url}/unreachable") or "")
            # plain http: Chromium shows the proxy's 502 page; the header carries the reason
            response = await page.goto(f"{site.url}/unreachable", timeout=15_000)
            assert response is not None and response.status == 502
            assert why in response.headers["x-opencone-proxy-error"]
            assert why in await page.inner_text("body")
    finally:
        silent.close()
        fwd.set_upstream(None)
    assert await _title(page, f"{site.url}/recovered") == "page /recovered"


@aio
async def test_browser_through_an_https_upstream(browser: Browser, cert: tuple[Path, Path], site: Site,
                                                 tls_site: Site) -> None:
    upstream = await RecordingHttpProxy(user="t", password="p", tls=server_tls(*cert)).start()
    browser.fwd._tls = client_tls(cert[0])  # the test CA; a server uses the system CAs
    try:
        browser.fwd.set_upstream(upstream.url("t", "p"))
        assert await _title(browser.page, f"{site.url}/https-proxy") == "page /https-proxy"
        assert await _title(browser.page, f"{tls_site.url}/https-proxy-tls") == "page /https-proxy-tls"
        assert f"GET {site.url}/https-proxy" in upstream.seen
        assert f"CONNECT 127.0.0.1:{tls_site.port}" in upstream.seen
    finally:
        browser.fwd.set_upstream(None)
        browser.fwd._tls = None
        await upstream.close()


@aio
async def test_chromium_bypasses_the_proxy_for_loopback_without_the_flag(
        tmp_path: Path, site: Site, proxy_a: RecordingHttpProxy) -> None:
    """Why the launcher adds --proxy-bypass-list=<-loopback>: without it 127.0.0.1 goes direct."""
    async with ForwardingProxy(a_url(proxy_a), policy=LOCAL) as fwd:
        async with chromium(tmp_path / "p1", [f"--proxy-server={fwd.url}"]) as (_process, page):
            assert await _title(page, f"{site.url}/bypassed") == "page /bypassed"
        assert "/bypassed" in site.seen and not any("/bypassed" in s for s in proxy_a.seen)
        async with chromium(tmp_path / "p2", [f"--proxy-server={fwd.url}", *PROXY_FLAGS]) as (_process, page):
            assert await _title(page, f"{site.url}/proxied") == "page /proxied"
        assert f"GET {site.url}/proxied" in proxy_a.seen


def test_launcher_adds_the_proxy_flags() -> None:
    cmd = chromium_command("chromium", Path("/tmp/p"), 800, 600, proxy_server="http://127.0.0.1:5555")
    assert "--proxy-server=http://127.0.0.1:5555" in cmd
    # loopback is proxied too (<-loopback>); only the .invalid names of Chromium's own services skip it
    assert "--proxy-bypass-list=<-loopback>;*.invalid" in cmd
    assert not any(c.startswith("--proxy") for c in chromium_command("chromium", Path("/tmp/p"), 800, 600))


@aio
async def test_browser_websocket_goes_through_the_upstream(browser: Browser, site: Site,
                                                           proxy_a: RecordingHttpProxy) -> None:
    """Chromium tunnels ws:// through the proxy with CONNECT, like https."""
    import websockets

    async def echo(ws: websockets.ServerConnection) -> None:
        async for message in ws:
            await ws.send(f"echo {message}")

    async with websockets.serve(echo, "127.0.0.1", 0) as ws_server:
        ws_port = ws_server.sockets[0].getsockname()[1]
        browser.fwd.set_upstream(a_url(proxy_a))
        try:
            await _title(browser.page, f"{site.url}/ws-page")
            answer = await browser.page.evaluate("""(url) => new Promise((resolve, reject) => {
                const ws = new WebSocket(url);
                ws.onopen = () => ws.send("hi");
                ws.onmessage = (e) => { resolve(e.data); ws.close(); };
                ws.onerror = () => reject(new Error("websocket failed"));
            })""", f"ws://127.0.0.1:{ws_port}/")
            assert answer == "echo hi"
            assert f"CONNECT 127.0.0.1:{ws_port}" in proxy_a.seen
        finally:
            browser.fwd.set_upstream(None)
