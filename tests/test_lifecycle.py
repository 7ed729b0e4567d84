"""Computer lifecycle, accounts and auth through the SDK and raw HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import httpx
import pytest
import tzafon
from conftest import Server, jpeg_size
from tzafon import Lightcone

FIELDS = ("id", "kind", "status", "created_at", "expires_at", "idle_expires_at", "last_activity_at",
          "max_lifetime_seconds", "inactivity_timeout_seconds", "idle_timeout_enabled", "auto_kill", "endpoints")


def test_health_needs_no_auth_and_docs_are_served(server: Server) -> None:
    health = httpx.get(f"{server.base_url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert httpx.get(f"{server.base_url}/docs").status_code == 200
    spec = httpx.get(f"{server.base_url}/openapi.json").json()
    assert "/computers/{computer_id}/click" in spec["paths"]


def test_create_fills_every_field(client: Lightcone) -> None:
    comp = client.computers.create(kind="browser")
    try:
        data = comp.model_dump()
        for name in FIELDS:
            assert data.get(name) is not None, name
        assert comp.id.startswith("comp_")
        assert comp.status == "ready"
        assert comp.kind == "browser"
        assert comp.created_at.endswith("Z")
        assert comp.idle_timeout_enabled is True and comp.auto_kill is True
        assert comp.endpoints["status"].endswith(f"/computers/{comp.id}/status")
        assert client.computers.retrieve(comp.id).id == comp.id
        status = client.computers.retrieve_status(comp.id)
        assert status.status == "ready" and status.expires_at == comp.expires_at
    finally:
        client.computers.delete(comp.id)


def test_list_is_a_bare_array_of_live_computers(server: Server, client: Lightcone) -> None:
    a = client.computers.create()
    b = client.computers.create()
    try:
        raw = server.http().get("/computers")
        assert raw.headers["content-type"].startswith("application/json")
        assert isinstance(raw.json(), list)
        ids = [c.id for c in client.computers.list(type="live")]
        assert a.id in ids and b.id in ids
        client.computers.delete(a.id)
        ids = [c.id for c in client.computers.list()]
        assert a.id not in ids and b.id in ids
        assert isinstance(client.computers.list(type="persistent"), list)
    finally:
        client.computers.delete(b.id)


def test_deleted_computer_stays_retrievable_as_terminated(client: Lightcone) -> None:
    comp = client.computers.create()
    client.computers.delete(comp.id)
    gone = client.computers.retrieve(comp.id)
    assert gone.status == "terminated"
    assert gone.model_extra["termination_reason"] == "deleted"
    assert gone.model_extra["terminated_at"].endswith("Z")
    client.computers.delete(comp.id)  # deleting again is harmless
    with pytest.raises(tzafon.ConflictError) as err:
        client.computers.keepalive(comp.id)
    assert "terminated" in err.value.body["detail"]
    with pytest.raises(tzafon.ConflictError):
        client.computers.click(comp.id, x=1, y=1)


def test_keepalive_resets_the_idle_timer(client: Lightcone) -> None:
    comp = client.computers.create(inactivity_timeout_seconds=60)
    try:
        time.sleep(0.05)
        alive = client.computers.keepalive(comp.id)
        assert alive["status"] == "ready"
        assert alive["idle_expires_at"] > comp.idle_expires_at
        assert alive["last_activity_at"] > comp.last_activity_at
        after_click = client.computers.retrieve(comp.id)
        client.computers.click(comp.id, x=5, y=5)
        assert client.computers.retrieve(comp.id).last_activity_at > after_click.last_activity_at
    finally:
        client.computers.delete(comp.id)


def test_lifetime_options_and_deprecated_aliases(client: Lightcone) -> None:
    comp = client.computers.create(timeout_seconds=600, auto_kill=False)
    try:
        assert comp.max_lifetime_seconds == 600
        assert comp.idle_timeout_enabled is False and comp.auto_kill is False
        assert comp.idle_expires_at is None
    finally:
        client.computers.delete(comp.id)
    comp = client.computers.create(max_lifetime_seconds=300, inactivity_timeout_seconds=30, idle_timeout_enabled=True)
    try:
        assert (comp.max_lifetime_seconds, comp.inactivity_timeout_seconds) == (300, 30)
    finally:
        client.computers.delete(comp.id)


def test_display_sets_the_viewport(client: Lightcone) -> None:
    with client.computer.create(display={"width": 800, "height": 600}) as comp:
        shot = comp.screenshot()
        with urllib.request.urlopen(comp.get_screenshot_url(shot)) as resp:
            data = resp.read()
        assert jpeg_size(data) == (800, 600)


def test_empty_json_body_and_unknown_fields_are_tolerated(server: Server) -> None:
    with server.http() as http:
        r = http.post("/computers", content=b"", headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        cid = r.json()["id"]
        r2 = http.post("/computers", json={"kind": "browser", "some_future_field": 1})
        assert r2.status_code == 200
        keep = http.post(f"/computers/{cid}/keepalive", content=b"", headers={"content-type": "application/json"})
        assert keep.status_code == 200
        for c in (cid, r2.json()["id"]):
            assert http.delete(f"/computers/{c}", headers={"content-type": "application/json"}).status_code == 204


def test_missing_or_wrong_key_is_401_with_json(server: Server) -> None:
    r = httpx.get(f"{server.base_url}/computers")
    assert r.status_code == 401
    assert "Authorization" in r.json()["detail"]
    r = httpx.get(f"{server.base_url}/computers", headers={"authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["status"] == 401
    with pytest.raises(tzafon.AuthenticationError):
        Lightcone(api_key="wrong", base_url=server.base_url, max_retries=0).computers.list()


def _cli(server: Server, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "opencone", "keys", *args, "--data-dir", str(server.data_dir)],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_organisations_do_not_see_each_others_computers(server: Server, client: Lightcone) -> None:
    other_key = _cli(server, "create", "--new-org", "other", "--name", "isolation-test")
    other = Lightcone(api_key=other_key, base_url=server.base_url, max_retries=0)
    mine = client.computers.create()
    try:
        with pytest.raises(tzafon.NotFoundError):
            other.computers.retrieve(mine.id)
        with pytest.raises(tzafon.NotFoundError):
            other.computers.click(mine.id, x=1, y=1)
        with pytest.raises(tzafon.NotFoundError):
            other.computers.delete(mine.id)
        assert mine.id not in [c.id for c in other.computers.list()]
        theirs = other.computers.create()
        assert theirs.id not in [c.id for c in client.computers.list()]
        other.computers.delete(theirs.id)
    finally:
        client.computers.delete(mine.id)


def test_keys_cli_lists_and_revokes(server: Server) -> None:
    key = _cli(server, "create", "--name", "to-revoke")
    assert key.startswith("oc_")
    listing = _cli(server, "list")
    assert "to-revoke" in listing and key not in listing  # only a prefix is ever shown
    rows = [json.loads(line) for line in _cli(server, "list", "--json").splitlines()]
    key_id = next(r["id"] for r in rows if r["name"] == "to-revoke")
    c = Lightcone(api_key=key, base_url=server.base_url, max_retries=0)
    assert isinstance(c.computers.list(), list)
    assert isinstance(c.computers.list(), list)  # (from the server's key cache now, which lasts a minute)
    _cli(server, "revoke", key_id)
    with pytest.raises(tzafon.AuthenticationError):  # at once: the CLI's change drops the server's cache
        c.computers.list()


def test_first_start_without_a_key_prints_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    from conftest import start_server

    env = {k: v for k, v in os.environ.items() if k != "OPENCONE_API_KEY"}
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "0"})
    srv.stop()
    # start again without OPENCONE_API_KEY: the store has keys, so no new one is printed
    port_env = {**env, "OPENCONE_POOL_SIZE": "0"}
    fresh = tmp_path / "fresh"
    proc = subprocess.Popen([sys.executable, "-m", "opencone", "serve", "--port", "0", "--data-dir", str(fresh)],
                            env=port_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            lines.append(line)
            if "export TZAFON_API_KEY=" in line:
                break
        key = lines[-1].split("=", 1)[1].strip()
        assert key.startswith("oc_")
    finally:
        proc.terminate()
        proc.wait(20)
    listing = subprocess.run([sys.executable, "-m", "opencone", "keys", "list", "--data-dir", str(fresh)],
                             capture_output=True, text=True, check=True).stdout
    assert "first-start" in listing and key not in listing
