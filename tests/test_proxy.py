"""change-proxy and use_advanced_proxy through the official SDK, on a real server.

Every browser computer's Chromium talks to its own forwarder (drivers/proxy);
these tests switch its upstream between direct, a recording HTTP proxy (A) and a
recording SOCKS5 proxy (B), all on 127.0.0.1, and check in the proxies' own
records where each page load went — in the same tab of the same browser.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import Server, start_server
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright
from proxy_servers import (
    LoopThread,
    RecordingHttpProxy,
    RecordingSocks5Proxy,
    Site,
    closed_port,
    make_cert,
    run_site,
    server_tls,
)
from tzafon import Lightcone


@dataclass
class Net:
    site: Site
    tls_site: Site | None
    a: RecordingHttpProxy
    b: RecordingSocks5Proxy
    loop: LoopThread

    @property
    def a_url(self) -> str:
        return self.a.url("alice", "pa%3Ass")

    @property
    def b_url(self) -> str:
        return self.b.url("bob", "hunter2")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    loop = LoopThread()
    cert = make_cert(tmp_path_factory.mktemp("cert"))
    a = loop.run(RecordingHttpProxy(user="alice", password="pa:ss").start())
    b = loop.run(RecordingSocks5Proxy(user="bob", password="hunter2").start())
    with run_site() as site:
        if cert is None:
            yield Net(site, None, a, b, loop)
        else:
            with run_site(server_tls(*cert)) as tls_site:
                yield Net(site, tls_site, a, b, loop)
    loop.run(a.close())
    loop.run(b.close())
    loop.stop()


@pytest.fixture(scope="module")
def proxy_server(tmp_path_factory: pytest.TempPathFactory, net: Net) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("proxy-server"),
                       env={"ADVANCED_PROXY_URL": net.a_url, "OPENCONE_PROXY_CONNECT_TIMEOUT_SECONDS": "2"})
    yield srv
    srv.stop()


def _loads(client: Lightcone, cid: str, url: str) -> None:
    res = client.computers.navigate(cid, url=url)
    assert res.status == "success", res.error_message
    assert f"page {urlsplit(url).path}" in client.computers.html(cid).result["html_content"]


def test_change_proxy_moves_traffic_in_the_same_tab(proxy_server: Server, net: Net) -> None:
    client = proxy_server.client()
    comp = client.computers.create(kind="browser")
    try:
        url = f"{net.site.url}/direct"
        _loads(client, comp.id, url)
        assert net.a.seen == [] and net.b.seen == [] and "/direct" in net.site.seen

        res = client.computers.change_proxy(comp.id, proxy_url=net.a_url)
        assert res.status == "success", res.error_message
        assert res.result["proxy"]["upstream"] == f"http://alice:***@127.0.0.1:{net.a.port}"
        _loads(client, comp.id, f"{net.site.url}/via-a")
        assert f"GET {net.site.url}/via-a" in net.a.seen and net.b.seen == []

        res = client.computers.change_proxy(comp.id, proxy_url=net.b_url)
        assert res.status == "success", res.error_message
        seen_a = list(net.a.seen)
        _loads(client, comp.id, f"{net.site.url}/via-b")
        assert f"CONNECT 127.0.0.1:{net.site.port}" in net.b.seen and net.a.seen == seen_a
        assert res.result["proxy"]["bytes_received"] > 0

        for empty in ("", None):
            res = client.computers.change_proxy(comp.id, proxy_url=empty)  # type: ignore[arg-type]
            assert res.status == "success" and res.result["proxy"]["upstream"] is None
        seen_b = list(net.b.seen)
        _loads(client, comp.id, f"{net.site.url}/direct-again")
        assert net.a.seen == seen_a and net.b.seen == seen_b

        tabs = client.computers.tabs.list(comp.id).result["tabs"]
        assert len(tabs) == 1  # the same tab throughout: the browser was never restarted
    finally:
        client.computers.delete(comp.id)


def test_a_context_a_cdp_client_creates_goes_through_the_computer_proxy(proxy_server: Server, net: Net) -> None:
    client = proxy_server.client()
    comp = client.computers.create(kind="browser")
    try:
        res = client.computers.change_proxy(comp.id, proxy_url=net.a_url)
        assert res.status == "success", res.error_message
        with sync_playwright() as pw:
            browser = pw.chromium.connect_over_cdp(
                f"{proxy_server.base_url}/computers/{comp.id}/cdp?token={proxy_server.api_key}")
            try:
                page = browser.new_context().new_page()  # a context of its own, no proxy of its own
                page.goto(f"{net.site.url}/cdp-context")
                assert "page /cdp-context" in page.content()
                with pytest.raises(PlaywrightError, match="change-proxy"):
                    browser.new_context(proxy={"server": net.b.url("bob", "hunter2")})
            finally:
                browser.close()
        assert f"GET {net.site.url}/cdp-context" in net.a.seen
        assert not any("cdp-context" in line for line in net.b.seen)
    finally:
        client.computers.delete(comp.id)


def test_bad_proxy_urls_and_unreachable_upstreams_say_why(proxy_server: Server, net: Net) -> None:
    client = proxy_server.client()
    comp = client.computers.create(kind="browser")
    try:
        for bad, why in [("ftp://127.0.0.1:21", "unsupported proxy scheme"), ("http://127.0.0.1", "no port"),
                         ("socks5://h:99999", "1 to 65535")]:
            res = client.computers.change_proxy(comp.id, proxy_url=bad)
            assert res.status == "error" and why in (res.error_message or ""), res.error_message
        dead = f"http://127.0.0.1:{closed_port()}"
        assert client.computers.change_proxy(comp.id, proxy_url=dead).status == "success"
        res = client.computers.navigate(comp.id, url=f"{net.site.url}/unreachable")
        msg = res.error_message or ""
        assert res.status == "error" and "connection refused" in msg and "ERR_PROXY_CONNECTION_FAILED" in msg, msg
        assert f"upstream proxy {dead}" in msg
        # direct again, a site that refuses: the same code as a browser without a proxy reports
        assert client.computers.change_proxy(comp.id, proxy_url=None).status == "success"  # type: ignore[arg-type]
        res = client.computers.navigate(comp.id, url=f"http://127.0.0.1:{closed_port()}/refused")
        assert res.status == "error" and "net::ERR_CONNECTION_REFUSED" in (res.error_message or "")
        assert client.computers.change_proxy(comp.id, proxy_url=dead).status == "success"
        if net.tls_site is not None:
            res = client.computers.navigate(comp.id, url=f"{net.tls_site.url}/unreachable")
            msg = res.error_message or ""
            assert res.status == "error" and "ERR_PROXY_CONNECTION_FAILED" in msg and "connection refused" in msg
        assert client.computers.change_proxy(comp.id, proxy_url="").status == "success"
        _loads(client, comp.id, f"{net.site.url}/recovered")
    finally:
        client.computers.delete(comp.id)


def test_use_advanced_proxy_routes_through_the_configured_upstream(proxy_server: Server, net: Net) -> None:
    client = proxy_server.client()
    comp = client.computers.create(kind="browser", use_advanced_proxy=True)
    try:
        before = len(net.a.seen)
        _loads(client, comp.id, f"{net.site.url}/advanced")
        assert f"GET {net.site.url}/advanced" in net.a.seen[before:]
    finally:
        client.computers.delete(comp.id)


def test_status_shows_the_route_and_bytes(proxy_server: Server, net: Net) -> None:
    client = proxy_server.client()
    comp = client.computers.create(kind="browser")
    try:
        client.computers.change_proxy(comp.id, proxy_url=net.b_url)
        _loads(client, comp.id, f"{net.site.url}/counted")
        with proxy_server.http() as http:
            proxy = http.get(f"/computers/{comp.id}/status").json()["proxy"]
        assert proxy["upstream"] == f"socks5://bob:***@127.0.0.1:{net.b.port}"
        assert proxy["bytes_sent"] > 0 and proxy["bytes_received"] > 0
    finally:
        client.computers.delete(comp.id)


def test_use_advanced_proxy_without_one_configured_is_a_clear_422(tmp_path: Path) -> None:
    import tzafon

    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "0"})
    try:
        with pytest.raises(tzafon.UnprocessableEntityError, match="ADVANCED_PROXY_URL"):
            srv.client().computers.create(kind="browser", use_advanced_proxy=True)
    finally:
        srv.stop()


def test_a_desktop_routes_its_browser_and_networked_exec_through_its_proxy(
        tmp_path: Path, net: Net) -> None:
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "0", "OPENCONE_EXEC_NETWORK": "true",
                                      "OPENCONE_PROXY_CONNECT_TIMEOUT_SECONDS": "2"})
    try:
        client = srv.client()
        comp = client.computers.create(kind="desktop")
        try:
            before_a = len(net.a.seen)
            _loads(client, comp.id, f"{net.site.url}/desktop-direct")
            assert not any("/desktop-direct" in seen for seen in net.a.seen[before_a:])
            changed = client.computers.change_proxy(comp.id, proxy_url=net.a_url)
            assert changed.status == "success", changed.error_message
            _loads(client, comp.id, f"{net.site.url}/desktop-via-a")
            assert f"GET {net.site.url}/desktop-via-a" in net.a.seen[before_a:]
            # a shell command with network goes the same way (curl honours http_proxy)
            out = client.computers.exec.sync(
                comp.id, command=f"curl -s -o /dev/null -w '%{{http_code}}' {net.site.url}/desktop-exec")
            assert out.stdout == "200", (out.stdout, out.stderr)
            assert f"GET {net.site.url}/desktop-exec" in net.a.seen[before_a:]
            with srv.http() as http:
                proxy = http.get(f"/computers/{comp.id}/status").json()["proxy"]
            assert proxy["upstream"].startswith("http://alice:***@") and proxy["bytes_received"] > 0
        finally:
            client.computers.delete(comp.id)
    finally:
        srv.stop()
