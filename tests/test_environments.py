"""Saved environments: ``persistent`` computers, ``environment_id``, ``GET /computers?type=persistent``.

The browser tests log in on tests/pages/login.html (a cookie, a session cookie,
localStorage and an IndexedDB record), end the computer, and check a new
computer created from the environment is still logged in: on the same server,
after a restart, and after a server killed in the middle of a save.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import tzafon
from conftest import Server, page_state, start_server
from tzafon import Lightcone


def _state(client: Lightcone, cid: str, site: str, login: str | None = None) -> dict[str, Any]:
    url = f"{site}/login.html" + (f"?login={login}" if login else "")
    assert client.computers.navigate(cid, url=url).status == "success"
    deadline = time.monotonic() + 10
    while True:
        html = client.computers.html(cid).result["html_content"]
        if "STATE{" in html:
            return page_state(html)
        assert time.monotonic() < deadline, "the login page did not finish its check"
        time.sleep(0.1)


def _saved(client: Lightcone, env_id: str, **query: str) -> dict[str, Any] | None:
    rows = client.computers.list(type="persistent", extra_query=query or None)
    for row in rows:
        data = row if isinstance(row, dict) else row.model_dump()
        if data["id"] == env_id:
            return data
    return None


def _other_org(server: Server) -> Lightcone:
    out = subprocess.run([sys.executable, "-m", "opencone", "keys", "create", "--new-org", "env-other",
                          "--name", "env-test", "--data-dir", str(server.data_dir)],
                         capture_output=True, text=True, timeout=60, check=True)
    return Lightcone(api_key=out.stdout.strip(), base_url=server.base_url, max_retries=0)


def test_browser_login_survives_the_end_of_a_persistent_computer(server: Server, client: Lightcone,
                                                                 site: str) -> None:
    a = client.computers.create(kind="browser", persistent=True, context_id="env-ctx-1")
    assert a.persistent is True and a.context_id == "env-ctx-1"
    try:
        assert _state(client, a.id, site, login="alice")["logged_in"]
        assert [c.id for c in client.computers.list(extra_query={"context_id": "env-ctx-1"})] == [a.id]
        assert client.computers.list(extra_query={"context_id": "nope"}) == []
    finally:
        client.computers.delete(a.id)

    saved = _saved(client, a.id)
    assert saved is not None, "the ended persistent computer is not listed as saved"
    assert saved["kind"] == "browser" and saved["status"] == "saved" and saved["context_id"] == "env-ctx-1"
    assert saved["size_bytes"] > 0 and saved["saved_at"] and saved["created_at"]
    assert _saved(client, a.id, context_id="env-ctx-1") is not None
    assert _saved(client, a.id, context_id="other") is None

    # restored without persistent: logged in, and the saved state is left unchanged
    b = client.computers.create(kind="browser", environment_id=a.id)
    try:
        assert b.environment_id == a.id
        state = _state(client, b.id, site)
        assert state["logged_in"], state
        assert state["local_storage"] == "alice" and state["indexed_db"] == "t-alice"
        assert state["session_cookie"] == "s-alice"  # session cookies are kept too
        _state(client, b.id, site, login="mallory")
    finally:
        client.computers.delete(b.id)
    assert _saved(client, a.id)["saved_at"] == saved["saved_at"]  # type: ignore[index]
    c = client.computers.create(kind="browser", environment_id=a.id)
    try:
        assert _state(client, c.id, site)["local_storage"] == "alice"
    finally:
        client.computers.delete(c.id)

    # another organisation cannot see, restore or delete it
    other = _other_org(server)
    with pytest.raises(tzafon.NotFoundError):
        other.computers.create(kind="browser", environment_id=a.id)
    assert a.id not in [r["id"] if isinstance(r, dict) else r.id for r in other.computers.list(type="persistent")]
    assert httpx.delete(f"{server.base_url}/environments/{a.id}",
                        headers={"Authorization": f"Bearer {other.api_key}"}).status_code == 404

    # the wrong kind and unknown ids are clear errors
    with pytest.raises(tzafon.UnprocessableEntityError):
        client.computers.create(kind="desktop", environment_id=a.id)
    with pytest.raises(tzafon.NotFoundError) as err:
        client.computers.create(kind="browser", environment_id="comp_doesnotexist")
    assert "environment" in str(err.value)

    # documented delete
    with server.http() as http:
        assert http.get(f"/environments/{a.id}").json()["id"] == a.id
        assert http.delete(f"/environments/{a.id}").status_code == 204
        assert http.delete(f"/environments/{a.id}").status_code == 404
    assert _saved(client, a.id) is None
    with pytest.raises(tzafon.NotFoundError):
        client.computers.create(kind="browser", environment_id=a.id)


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _env_dir(server: Server) -> Path:
    return server.data_dir / "environments"


def test_saved_state_survives_a_restart_and_a_kill_during_a_save(tmp_path: Path, site: str) -> None:
    data = tmp_path / "data"
    delay = {"OPENCONE_TEST_SAVE_DELAY_SECONDS": "3"}
    srv = start_server(_mk(tmp_path / "s1"), data_dir=data, env=delay)
    try:
        client = srv.client()
        a = client.computers.create(kind="browser", persistent=True)
        assert _state(client, a.id, site, login="alice")["logged_in"]
        client.computers.delete(a.id)
        assert _saved(client, a.id) is not None
    finally:
        srv.stop()

    # a restarted server restores it; a persistent computer from it starts to save over it, and is killed
    srv = start_server(_mk(tmp_path / "s2"), data_dir=data, env=delay)
    try:
        client = srv.client()
        b = client.computers.create(kind="browser", environment_id=a.id, persistent=True)
        state = _state(client, b.id, site)
        assert state["logged_in"] and state["local_storage"] == "alice", state
        assert _state(client, b.id, site, login="bob")["local_storage"] == "bob"
        saved_before = (_env_dir(srv) / f"{a.id}.tar").read_bytes()

        def send_delete() -> None:
            try:
                with srv.http() as http:
                    http.delete(f"/computers/{b.id}", timeout=30)
            except httpx.HTTPError:
                pass

        sender = threading.Thread(target=send_delete, daemon=True)
        sender.start()
        deadline = time.monotonic() + 20
        while not any(".tmp-" in p.name for p in _env_dir(srv).iterdir()):
            assert time.monotonic() < deadline, "the save never wrote its temporary file"
            time.sleep(0.02)
        srv.stop(signal.SIGKILL)
        sender.join(10)
        assert (_env_dir(srv) / f"{a.id}.tar").read_bytes() == saved_before
    finally:
        srv.stop(signal.SIGKILL)

    srv = start_server(_mk(tmp_path / "s3"), data_dir=data)
    try:
        assert not any(".tmp-" in p.name for p in _env_dir(srv).iterdir()), "a half-written save was left"
        client = srv.client()
        c = client.computers.create(kind="browser", environment_id=a.id, persistent=True)
        try:
            state = _state(client, c.id, site)
            assert state["logged_in"] and state["local_storage"] == "alice", state
            _state(client, c.id, site, login="carol")
        finally:
            client.computers.delete(c.id)
        # persistent + environment_id: the new state replaced the saved one, under the same id
        d = client.computers.create(kind="browser", environment_id=a.id)
        try:
            state = _state(client, d.id, site)
            assert state["logged_in"] and state["local_storage"] == "carol", state
        finally:
            client.computers.delete(d.id)
        size = _saved(client, a.id)["size_bytes"]  # type: ignore[index]
    finally:
        srv.stop()

    # the storage cap: a persistent create at the cap is a 422; a save over it keeps the previous state
    srv = start_server(_mk(tmp_path / "s4"), data_dir=data, env={"OPENCONE_ENVIRONMENT_STORAGE_CAP_BYTES": str(size)})
    try:
        client = srv.client()
        with pytest.raises(tzafon.UnprocessableEntityError) as err:
            client.computers.create(kind="browser", persistent=True)
        assert "cap" in str(err.value)
    finally:
        srv.stop()
    srv = start_server(_mk(tmp_path / "s5"), data_dir=data,
                       env={"OPENCONE_ENVIRONMENT_STORAGE_CAP_BYTES": str(size + 1)})
    try:
        client = srv.client()
        e = client.computers.create(kind="browser", environment_id=a.id, persistent=True)
        _state(client, e.id, site, login="dave&pad=2000000")  # a bigger profile: over the cap
        client.computers.delete(e.id)
        saved = _saved(client, a.id)
        assert saved is not None and saved["last_error"] and "cap" in saved["last_error"]
        f = client.computers.create(kind="browser", environment_id=a.id)
        try:
            assert _state(client, f.id, site)["local_storage"] == "carol"
        finally:
            client.computers.delete(f.id)
    finally:
        srv.stop()


def test_desktop_workspace_is_saved_and_restored(server: Server, client: Lightcone) -> None:
    a = client.computers.create(kind="desktop", persistent=True)
    try:
        res = client.computers.exec.sync(a.id, command="mkdir -p sub && echo kept > sub/note.txt")
        if res.exit_code != 0:
            pytest.skip(f"exec is not available here: {res}")
    finally:
        client.computers.delete(a.id)
    saved = _saved(client, a.id)
    assert saved is not None and saved["kind"] == "desktop"
    b = client.computers.create(kind="desktop", environment_id=a.id)
    try:
        assert client.computers.exec.sync(b.id, command="cat sub/note.txt").stdout.strip() == "kept"
    finally:
        client.computers.delete(b.id)
    with server.http() as http:
        assert http.delete(f"/environments/{a.id}").status_code == 204
