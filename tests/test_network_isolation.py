"""A computer reaches neither the host nor another computer: attacked from the outside.

Each browser (a browser computer's, a desktop's) runs in a network namespace of its
own where nothing listens but its forwarding proxy, and the forwarder refuses, by
default, every loopback, private, link-local and metadata destination, however it
is spelled and whatever a name resolves to. These tests attack a real server as a
tenant would, with the ports read from the server's own processes (never guessed):
another organisation's DevTools and forwarder, the API itself, a local page
server, private and metadata addresses (through a recording upstream proxy on
127.0.0.1, which must see none of them: nothing leaves the machine).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
from conftest import Server, start_server, wait_until
from proxy_servers import LoopThread, RecordingHttpProxy, Site, run_site
from test_events import Subscriber
from tzafon import Lightcone


@dataclass
class Net:
    recorder: RecordingHttpProxy  # an upstream proxy on 127.0.0.1 that records what reaches it
    allowed: Site  # a local page server on the allowlist
    loop: LoopThread


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    loop = LoopThread()
    recorder = loop.run(RecordingHttpProxy().start())
    with run_site() as allowed:
        yield Net(recorder, allowed, loop)
    loop.run(recorder.close())
    loop.stop()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, net: Net) -> Iterator[Server]:
    """The default policy, with only the recorder and one local site on the allowlist."""
    srv = start_server(tmp_path_factory.mktemp("egress"), env={
        "OPENCONE_POOL_SIZE": "0",
        "OPENCONE_EGRESS_ALLOW": f"127.0.0.1:{net.recorder.port}, 127.0.0.1:{net.allowed.port}"})
    yield srv
    srv.stop()


def other_org(server: Server, name: str) -> Lightcone:
    out = subprocess.run([sys.executable, "-m", "opencone", "keys", "create", "--new-org", name,
                          "--data-dir", str(server.data_dir)], capture_output=True, text=True, timeout=60, check=True)
    return Lightcone(api_key=out.stdout.strip(), base_url=server.base_url, max_retries=0)


# -- what the server's own processes say -----------------------------------------------------
def browser_mains(server: Server) -> set[int]:
    found = set()
    for p in psutil.Process(server.process.pid).children(recursive=True):
        try:
            line = p.cmdline()
        except psutil.Error:
            continue
        if line and line[0].endswith("/chromium") and not any(a.startswith("--type=") for a in line):
            found.add(p.pid)
    return found


def flag(pid: int, name: str) -> str:
    for arg in psutil.Process(pid).cmdline():
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"no --{name} on {pid}")


@dataclass
class Browser:
    pid: int

    @property
    def devtools_port(self) -> int:
        """Its launch flag, or when that is 0, the port it wrote into its profile (DevToolsActivePort)."""
        port = int(flag(self.pid, "remote-debugging-port"))
        return port or int((Path(flag(self.pid, "user-data-dir")) / "DevToolsActivePort").read_text().split()[0])

    @property
    def forwarder_port(self) -> int:
        return int(urlsplit(flag(self.pid, "proxy-server")).port or 0)

    @property
    def netns(self) -> str:
        return os.readlink(f"/proc/{self.pid}/ns/net")


def create_with_browser(server: Server, client: Lightcone, **kw: object) -> tuple[str, Browser]:
    """A new computer and its Chromium (the server runs with an empty warm pool)."""
    before = browser_mains(server)
    comp = client.computers.create(**kw)  # type: ignore[arg-type]
    assert wait_until(lambda: browser_mains(server) - before, 10)
    [pid] = browser_mains(server) - before
    return comp.id, Browser(pid)


def refused(client: Lightcone, cid: str, url: str) -> str:
    res = client.computers.navigate(cid, url=url)
    assert res.status == "error", f"{url} loaded"
    return res.error_message or ""


def policy_refused(client: Lightcone, cid: str, url: str) -> None:
    why = refused(client, cid, url)
    assert "egress policy" in why and "ERR_BLOCKED_BY_ADMINISTRATOR" in why, why


# -- tests -------------------------------------------------------------------------------------
def test_one_tenant_cannot_reach_another_tenants_browser_or_forwarder(strict: Server, net: Net) -> None:
    a, b = other_org(strict, "tenant-a"), other_org(strict, "tenant-b")
    a_id, a_browser = create_with_browser(strict, a)
    b_id, b_browser = create_with_browser(strict, b)
    try:
        host = os.readlink("/proc/self/ns/net")
        assert len({host, a_browser.netns, b_browser.netns}) == 3, "each browser has a network of its own"
        assert a.computers.navigate(a_id, url=f"{net.allowed.url}/a-page").status == "success"
        [a_tab] = a.computers.tabs.list(a_id).result["tabs"]
        devtools, forwarder = a_browser.devtools_port, a_browser.forwarder_port
        for path in ("/json/list", f"/json/close/{a_tab['tab_id']}", "/json/version"):
            policy_refused(b, b_id, f"http://127.0.0.1:{devtools}{path}")
        policy_refused(b, b_id, f"http://localhost:{forwarder}/")
        change = b.computers.change_proxy(b_id, proxy_url=f"http://127.0.0.1:{forwarder}")
        assert change.status == "error" and "egress policy" in (change.error_message or "")
        # A is untouched: its tab is there and works
        tabs = a.computers.tabs.list(a_id).result["tabs"]
        assert [t["tab_id"] for t in tabs] == [a_tab["tab_id"]]
        assert a.computers.navigate(a_id, url=f"{net.allowed.url}/still-mine").status == "success"
    finally:
        a.computers.delete(a_id)
        b.computers.delete(b_id)


def test_even_an_open_policy_leaves_other_computers_out_of_reach(tmp_path: Path, net: Net) -> None:
    """``OPENCONE_EGRESS_POLICY=any`` lets a computer reach the host's loopback, yet another
    computer's DevTools and forwarder are not on it (they are in namespaces of their own), and
    the API's port stays refused."""
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "0", "OPENCONE_EGRESS_POLICY": "any",
                                      "OPENCONE_EGRESS_ALLOW": ""})
    try:
        a, b = other_org(srv, "open-a"), other_org(srv, "open-b")
        a_id, a_browser = create_with_browser(srv, a)
        b_id, _ = create_with_browser(srv, b)
        assert b.computers.navigate(b_id, url=f"{net.allowed.url}/open").status == "success"  # loopback is open
        assert a.computers.navigate(a_id, url=f"{net.allowed.url}/a").status == "success"
        [a_tab] = a.computers.tabs.list(a_id).result["tabs"]
        for path in ("/json/list", f"/json/close/{a_tab['tab_id']}"):
            assert "ERR_CONNECTION_REFUSED" in refused(b, b_id, f"http://127.0.0.1:{a_browser.devtools_port}{path}")
        before = a.computers.retrieve_status(a_id).model_extra["proxy"]
        assert b.computers.change_proxy(b_id, proxy_url=f"http://127.0.0.1:{a_browser.forwarder_port}").status \
            == "success"  # (a route the open policy allows: it just leads nowhere)
        refused(b, b_id, f"{net.allowed.url}/via-a")
        assert not [s for s in net.allowed.seen if "via-a" in s]
        after = a.computers.retrieve_status(a_id).model_extra["proxy"]
        assert after["bytes_sent"] == before["bytes_sent"], "B's traffic went through A's forwarder"
        assert b.computers.change_proxy(b_id, proxy_url=None).status == "success"
        policy_refused(b, b_id, f"{srv.base_url}/health")
        assert [t["tab_id"] for t in a.computers.tabs.list(a_id).result["tabs"]] == [a_tab["tab_id"]]
    finally:
        srv.stop()


def test_without_namespaces_every_computers_own_ports_are_refused_by_number(tmp_path: Path, net: Net) -> None:
    """``OPENCONE_NETWORK_NAMESPACES=false`` (or a server that may not make them): browsers are on
    the host's network, their DevTools and forwarder ports on its loopback; the policy refuses
    each of them, even when it is open."""
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "0", "OPENCONE_NETWORK_NAMESPACES": "false",
                                      "OPENCONE_EGRESS_POLICY": "any", "OPENCONE_EGRESS_ALLOW": ""})
    try:
        a, b = other_org(srv, "flat-a"), other_org(srv, "flat-b")
        a_id, a_browser = create_with_browser(srv, a)
        b_id, _ = create_with_browser(srv, b)
        assert a_browser.netns == os.readlink("/proc/self/ns/net")  # (so the ports below are on our loopback)
        with socket.create_connection(("127.0.0.1", a_browser.devtools_port), timeout=5):
            pass
        assert b.computers.navigate(b_id, url=f"{net.allowed.url}/flat").status == "success"
        for port in (a_browser.devtools_port, a_browser.forwarder_port):
            why = refused(b, b_id, f"http://127.0.0.1:{port}/json/list")
            assert "port of this opencone server" in why, why
        change = b.computers.change_proxy(b_id, proxy_url=f"http://127.0.0.1:{a_browser.forwarder_port}")
        assert change.status == "error" and "port of this opencone server" in (change.error_message or "")
        assert len(a.computers.tabs.list(a_id).result["tabs"]) == 1
    finally:
        srv.stop()


def test_the_api_and_local_servers_are_refused_unless_allowlisted(strict: Server, net: Net, site: str) -> None:
    client = strict.client()
    cid, _ = create_with_browser(strict, client)
    try:
        assert client.computers.navigate(cid, url=f"{net.allowed.url}/listed").status == "success"
        port = urlsplit(site).port
        for url in (f"{site}/page2.html", f"http://localhost:{port}/page2.html",
                    f"http://2130706433:{port}/", f"http://0x7f.1:{port}/", f"http://0177.0.0.1:{port}/",
                    f"http://127.1:{port}/", f"http://[::1]:{port}/", f"http://[::ffff:127.0.0.1]:{port}/",
                    f"http://0.0.0.0:{port}/"):
            why = refused(client, cid, url)
            assert "egress policy" in why and "OPENCONE_EGRESS_ALLOW" in why, (url, why)
        why = refused(client, cid, f"{strict.base_url}/health")
        assert "port of this opencone server" in why, why
        # an allowlist entry opens only what it names: another port of the same host stays shut
        policy_refused(client, cid, f"http://127.0.0.1:{net.allowed.port + 1 if net.allowed.port < 65535 else 1}/")
    finally:
        client.computers.delete(cid)


def _names_for_loopback() -> list[str]:
    """Host names this machine resolves to loopback without DNS (/etc/hosts), besides localhost."""
    names = []
    with open("/etc/hosts") as hosts:
        for line in hosts:
            fields = line.split("#", 1)[0].split()
            if len(fields) >= 2 and (fields[0].startswith("127.") or fields[0] == "::1"):
                names += [n for n in fields[1:] if n != "localhost"]
    return names


def test_names_that_resolve_to_loopback_are_refused(strict: Server, site: str) -> None:
    client = strict.client()
    cid, _ = create_with_browser(strict, client)
    port = urlsplit(site).port
    names = ["localhost", *_names_for_loopback()]
    try:
        for name in names:
            why = refused(client, cid, f"http://{name}:{port}/page2.html")
            assert "egress policy" in why, (name, why)
            assert "loopback" in why, why
    finally:
        client.computers.delete(cid)


def test_private_and_metadata_addresses_never_leave_the_machine(strict: Server, net: Net) -> None:
    """Through an upstream proxy (the recorder, on the allowlist) a destination's name or
    address is checked before anything is sent: the recorder sees the allowed site, and none
    of the others."""
    client = strict.client()
    cid, _ = create_with_browser(strict, client)
    try:
        assert client.computers.change_proxy(cid, proxy_url=net.recorder.url()).status == "success"
        assert client.computers.navigate(cid, url=f"{net.allowed.url}/through-recorder").status == "success"
        assert any("through-recorder" in s for s in net.recorder.seen), net.recorder.seen
        for host in ("10.1.2.3", "192.168.1.1", "172.16.5.4", "100.64.0.1", "169.254.169.254", "168.63.129.16",
                     "[fd00::1]", "[fe80::1]", "[::ffff:169.254.169.254]", "[fd00:ec2::254]", "0xa9fea9fe"):
            policy_refused(client, cid, f"http://{host}/latest/meta-data/")
            policy_refused(client, cid, f"https://{host}/")
        leaked = [s for s in net.recorder.seen if f"127.0.0.1:{net.allowed.port}/" not in s]  # (its favicon too)
        assert leaked == [], leaked
    finally:
        client.computers.delete(cid)


def test_a_refused_connection_is_an_egress_blocked_event(strict: Server, site: str) -> None:
    client = strict.client()
    cid, _ = create_with_browser(strict, client)
    events = Subscriber(client, cid)
    try:
        policy_refused(client, cid, f"{site}/page2.html")
        event = events.wait_for(lambda e: e["type"] == "egress_blocked")
        assert event["host"] == "127.0.0.1" and event["port"] == urlsplit(site).port
        assert "OPENCONE_EGRESS_ALLOW" in event["reason"]
    finally:
        client.computers.delete(cid)


def test_a_desktops_browser_and_networked_commands_are_confined_too(tmp_path: Path, net: Net, site: str) -> None:
    """A desktop's browser has a namespace of its own; with exec's network on, its shell commands
    have another (not the browser's: its DevTools port is not there), whose only way out is the
    forwarder: the host's loopback answers nothing, the policy refuses the API."""
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "0", "OPENCONE_EXEC_NETWORK": "true",
                                      "OPENCONE_EGRESS_ALLOW": f"127.0.0.1:{net.allowed.port}"})
    try:
        client = srv.client()
        comp = client.computers.create(kind="desktop")
        [main] = browser_mains(srv)
        browser = Browser(main)
        assert browser.netns != os.readlink("/proc/self/ns/net")
        assert client.computers.navigate(comp.id, url=f"{net.allowed.url}/desk").status == "success"
        policy_refused(client, comp.id, f"{srv.base_url}/health")

        def sh(command: str) -> subprocess.CompletedProcess[str]:
            out = client.computers.exec.sync(comp.id, command=command, timeout_seconds=20)
            return subprocess.CompletedProcess(command, out.exit_code, out.stdout, out.stderr)

        ok = sh(f"curl -s -o /dev/null -w '%{{http_code}}' {net.allowed.url}/desk-exec")
        assert ok.stdout == "200", ok
        blocked = sh(f"curl -s -w '%{{http_code}}' {srv.base_url}/health")
        assert blocked.stdout.endswith("403") and "port of this opencone server" in blocked.stdout, blocked
        for port in (urlsplit(srv.base_url).port, urlsplit(site).port, browser.devtools_port):
            direct = sh(f"curl -s --noproxy '*' -m 5 http://127.0.0.1:{port}/")
            assert direct.returncode != 0, (port, direct)  # nothing on this network but the forwarder
        netns = sh("readlink /proc/self/ns/net").stdout.strip()
        assert netns and netns not in (browser.netns, os.readlink("/proc/self/ns/net"))
        client.computers.delete(comp.id)
    finally:
        srv.stop()


def test_a_desktops_commands_cannot_open_another_desktops_x_server(tmp_path: Path) -> None:
    """With exec's network on, a desktop's commands are in a namespace of their own: the X
    servers' abstract sockets (in the host's network) are not there, and of the socket files
    their sandbox holds only their own desktop's."""
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "0", "OPENCONE_EXEC_NETWORK": "true"})
    try:
        client = srv.client()
        a, b = client.computers.create(kind="desktop"), client.computers.create(kind="desktop")
        a_display = client.computers.exec.sync(a.id, command="echo $DISPLAY").stdout.strip()
        b_display = client.computers.exec.sync(b.id, command="echo $DISPLAY").stdout.strip()
        assert a_display.startswith(":") and a_display != b_display
        own = client.computers.exec.sync(b.id, command="xdpyinfo >/dev/null && echo OWN-OK")
        assert own.stdout.strip() == "OWN-OK", own
        other = client.computers.exec.sync(b.id, command=f"xdpyinfo -display {a_display} >/dev/null && echo REACHED")
        assert "REACHED" not in other.stdout and other.exit_code != 0, other
    finally:
        srv.stop()


def test_a_bad_allowlist_stops_the_server_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as err:
        start_server(tmp_path, env={"OPENCONE_EGRESS_ALLOW": "127.0.0.1:8000,not a host"}, timeout=30)
    assert "OPENCONE_EGRESS_ALLOW" in str(err.value) and "not a host" in str(err.value)
    assert re.search(r"host:port", str(err.value))
