"""No Chromium outlives its computer: delete, expiry, crash, shutdown, server kill.

These tests run their own servers with an empty warm pool, so every Chromium
process under the server's run directory belongs to a live computer.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import Server, start_server, wait_until


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "0"})
    yield srv
    srv.stop()


def browser_mains(server: Server) -> set[int]:
    """Chromium browser processes (each in its sandbox, below the server)."""
    return {c.pid for c in psutil.Process(server.process.pid).children(recursive=True)
            if c.name() == "chromium" and not any(a.startswith("--type=") for a in c.cmdline())}


def test_delete_and_expiry_end_every_process(bare: Server) -> None:
    client = bare.client()
    assert bare.chromium_pids() == set()
    comp = client.computers.create()
    assert len(bare.chromium_pids()) >= 3  # browser, zygotes, renderer…
    client.computers.delete(comp.id)
    assert wait_until(lambda: bare.chromium_pids() == set(), 5)

    client.computers.create(max_lifetime_seconds=1)
    assert bare.chromium_pids()
    assert wait_until(lambda: bare.chromium_pids() == set(), 5)
    assert wait_until(lambda: not list(bare.sandbox_root.glob("browser-*")), 5), "profiles are removed"


def test_a_crashed_browser_ends_only_its_computer(bare: Server, site: str) -> None:
    client = bare.client()
    a = client.computers.create()
    mains_a = browser_mains(bare)
    b = client.computers.create()
    [b_main] = browser_mains(bare) - mains_a
    os.kill(b_main, signal.SIGKILL)
    assert wait_until(lambda: client.computers.retrieve(b.id).status == "terminated", 5)
    assert client.computers.retrieve(b.id).model_extra["termination_reason"] == "browser_crashed"
    assert client.computers.navigate(a.id, url=f"{site}/page2.html").status == "success"
    assert "Second page" in client.computers.html(a.id).result["html_content"]
    client.computers.delete(a.id)
    assert wait_until(lambda: bare.chromium_pids() == set(), 5)


def renderers(server: Server) -> set[int]:
    return {c.pid for c in psutil.Process(server.process.pid).children(recursive=True)
            if c.name() == "chromium" and "--type=renderer" in c.cmdline()}


@pytest.mark.parametrize("kind", ["browser", "desktop"])
def test_a_crashed_renderer_is_replaced_and_the_next_action_works(bare: Server, site: str, kind: str) -> None:
    """A tab whose renderer is killed (as the kernel's OOM killer would) is replaced by a new tab;
    the computer stays live, says so in a ``tab_crashed`` event, and its next navigate works."""
    from test_events import Subscriber

    client = bare.client()
    comp = client.computers.create(kind=kind)
    events = Subscriber(client, comp.id)
    try:
        assert client.computers.navigate(comp.id, url=f"{site}/page2.html").status == "success"
        [crashed] = client.computers.tabs.list(comp.id).result["tabs"]
        victims = renderers(bare)
        assert victims
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        event = events.wait_for(lambda e: e["type"] == "tab_crashed")
        assert event["tab_id"] == crashed["tab_id"] and event["url"].endswith("/page2.html")
        assert event["replaced_by"] and event["replaced_by"] != crashed["tab_id"]
        assert client.computers.navigate(comp.id, url=f"{site}/page2.html?again").status == "success"
        assert "Second page" in client.computers.html(comp.id).result["html_content"]
        assert client.computers.screenshot(comp.id).status == "success"
        tabs = client.computers.tabs.list(comp.id).result["tabs"]
        assert [t["tab_id"] for t in tabs] == [event["replaced_by"]] and tabs[0]["is_main_tab"]
        assert client.computers.retrieve(comp.id).status in ("ready", "running")
    finally:
        client.computers.delete(comp.id)


def test_server_shutdown_ends_every_computer(tmp_path: Path) -> None:
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "1"})
    client = srv.client()
    ids = [client.computers.create().id for _ in range(2)]
    assert srv.chromium_pids()
    assert srv.stop(signal.SIGTERM) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean stop
    assert "Application shutdown complete" in srv.log()
    assert wait_until(lambda: srv.chromium_pids() == set(), 5)
    again = start_server(tmp_path, data_dir=srv.data_dir, api_key=srv.api_key, env={"OPENCONE_POOL_SIZE": "0"})
    try:
        for cid in ids:
            comp = again.client().computers.retrieve(cid)
            assert comp.status == "terminated"
            assert comp.model_extra["termination_reason"] == "server_shutdown"
    finally:
        again.stop()


def test_after_a_server_kill_the_next_start_cleans_up(tmp_path: Path) -> None:
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "1"})
    cid = srv.client().computers.create().id
    srv.stop(signal.SIGKILL)
    # the parent-death signal takes the browsers down with the server
    assert wait_until(lambda: srv.chromium_pids() == set(), 10)
    again = start_server(tmp_path, data_dir=srv.data_dir, api_key=srv.api_key, env={"OPENCONE_POOL_SIZE": "0"})
    try:
        comp = again.client().computers.retrieve(cid)
        assert comp.status == "terminated"
        assert comp.model_extra["termination_reason"] == "server_restarted"
        assert again.client().computers.list() == []
    finally:
        again.stop()


def test_leftovers_of_a_previous_server_are_killed_at_start(tmp_path: Path) -> None:
    """A process that escaped the parent-death signal is found by its run-dir marker."""
    import subprocess

    data = tmp_path / "data"
    marker = (data / "run" / "browser-leftover").resolve()
    marker.mkdir(parents=True)
    # the marker rides on the command line, as a browser's --user-data-dir does
    stray = subprocess.Popen(["sh", "-c", f"sleep 300 # {marker}"], start_new_session=True)
    srv = start_server(tmp_path, data_dir=data, env={"OPENCONE_POOL_SIZE": "0"})
    try:
        assert wait_until(lambda: stray.poll() is not None, 5)
        assert not marker.exists()
    finally:
        srv.stop()
