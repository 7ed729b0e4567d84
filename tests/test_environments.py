"""Saved environments: ``persistent`` computers, ``environment_id``, ``GET /computers?type=persistent``.

The browser tests log in on tests/pages/login.html (a cookie, a session cookie,
localStorage and an IndexedDB record), end the computer, and check a new
computer created from the environment is still logged in: on the same server,
after a restart, and after a server killed in the middle of a save. The
desktop test does the same in a desktop's own browser, and writes a file in its
home through its terminal and one in /workspace through exec.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import tzafon
from conftest import Server, desktop_home, page_state, start_server, wait_until
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


def _desktop_dirs(server: Server) -> set[Path]:
    return {p for p in (server.data_dir / "run").resolve().glob("desktop-*") if p.is_dir()}


def _new_desktop(client: Lightcone, server: Server, **create: Any) -> tuple[str, Path]:
    """Create a desktop; its id and its home directory on the host (the terminal's HOME)."""
    before = _desktop_dirs(server)
    comp = client.computers.create(kind="desktop", **create)
    [workdir] = _desktop_dirs(server) - before
    return comp.id, desktop_home(server, workdir)


def _in_terminal(client: Lightcone, cid: str, command: str) -> None:
    """Type ``command`` into the desktop's xterm, which sits behind its maximized browser."""
    assert client.computers.hotkey(cid, keys=["alt", "tab"]).status == "success"  # openbox: focus the xterm
    time.sleep(0.3)
    assert client.computers.type(cid, text=command + "\n").status == "success"


def _read(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else ""


def test_desktop_home_workspace_and_browser_are_saved_and_restored(server: Server, client: Lightcone,
                                                                   site: str) -> None:
    a, home_a = _new_desktop(client, server, persistent=True)
    try:
        assert _state(client, a, site, login="alice")["logged_in"]  # in the desktop's own Chromium
        _in_terminal(client, a, "echo kept-home > note.txt")
        assert wait_until(lambda: _read(home_a / "note.txt") == "kept-home", 10), "the terminal did not write"
        res = client.computers.exec.sync(a, command="mkdir -p sub && echo kept > sub/note.txt")
        has_exec = res.exit_code == 0  # exec needs bubblewrap; the rest does not
    finally:
        client.computers.delete(a)
    saved = _saved(client, a)
    assert saved is not None and saved["kind"] == "desktop" and saved["status"] == "saved", saved
    archive = _env_dir(server) / f"{a}.tar"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "home/note.txt" in names and any(n.startswith("browser/") for n in names), names

    # restored: the home file (as the terminal sees it), /workspace, and the browser still logged in
    b, home_b = _new_desktop(client, server, environment_id=a)
    try:
        assert _read(home_b / "note.txt") == "kept-home"
        state = _state(client, b, site)
        assert state["logged_in"], state
        assert state["local_storage"] == "alice" and state["cookie"] == "c-alice"
        assert state["indexed_db"] == "t-alice" and state["session_cookie"] == "s-alice"
        _in_terminal(client, b, "cat note.txt > seen.txt")
        assert wait_until(lambda: _read(home_b / "seen.txt") == "kept-home", 10), "the terminal cannot read it"
        if has_exec:
            assert client.computers.exec.sync(b, command="cat sub/note.txt").stdout.strip() == "kept"
    finally:
        client.computers.delete(b)

    # an archive from before desktops saved their browser (no browser/ part) still restores
    old = archive.with_name("old.tar")
    with tarfile.open(archive) as src, tarfile.open(old, "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src.getmembers():
            if member.name != "browser" and not member.name.startswith("browser/"):
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    os.replace(old, archive)
    c, home_c = _new_desktop(client, server, environment_id=a)
    try:
        assert _read(home_c / "note.txt") == "kept-home"
        assert not _state(client, c, site)["logged_in"]  # a fresh browser, working
    finally:
        client.computers.delete(c)
    with server.http() as http:
        assert http.delete(f"/environments/{a}").status_code == 204


def _close_browser_window(client: Lightcone, cid: str) -> None:
    """Close the desktop browser's only window as a user would: Chromium then exits."""
    assert client.computers.click(cid, x=500, y=400).status == "success"  # focus the page
    assert client.computers.hotkey(cid, keys=["ctrl", "shift", "w"]).status == "success"
    assert wait_until(lambda: client.computers.html(cid).status == "error", 15), "the browser did not close"


def test_a_closed_desktop_browser_keeps_its_profile_and_it_is_saved(server: Server, client: Lightcone,
                                                                    site: str) -> None:
    a, _home = _new_desktop(client, server, persistent=True)
    try:
        assert _state(client, a, site, login="alice")["logged_in"]
        _close_browser_window(client, a)
        # the next navigate starts the browser again, on the same profile: still logged in
        assert _state(client, a, site)["logged_in"]
        _close_browser_window(client, a)  # and the desktop ends with its browser closed
    finally:
        client.computers.delete(a)
    with tarfile.open(_env_dir(server) / f"{a}.tar") as tar:
        assert any(n.startswith("browser/") for n in tar.getnames())
    b, _home = _new_desktop(client, server, environment_id=a)
    try:
        state = _state(client, b, site)
        assert state["logged_in"] and state["local_storage"] == "alice", state
    finally:
        client.computers.delete(b)
    with server.http() as http:
        assert http.delete(f"/environments/{a}").status_code == 204


def test_a_first_save_over_the_cap_is_shown_and_cannot_be_restored(tmp_path: Path, site: str) -> None:
    srv = start_server(tmp_path, env={"OPENCONE_ENVIRONMENT_STORAGE_CAP_BYTES": "1"})
    try:
        client = srv.client()
        a = client.computers.create(kind="browser", persistent=True, context_id="capped")
        assert _state(client, a.id, site, login="alice")["logged_in"]
        client.computers.delete(a.id)

        listed = _saved(client, a.id)
        assert listed is not None, "a failed first save left no trace"
        assert listed["status"] == "not_saved" and listed["size_bytes"] == 0 and listed["saved_at"] is None
        assert listed["kind"] == "browser" and listed["context_id"] == "capped" and listed["endpoints"] == {}
        assert "cap" in listed["last_error"], listed
        assert not (_env_dir(srv) / f"{a.id}.tar").exists()
        with srv.http() as http:
            got = http.get(f"/environments/{a.id}").json()
            assert got["status"] == "not_saved" and got["last_error"] == listed["last_error"]
            assert got.items() <= listed.items()  # the listing (via the SDK) has the same fields, and more None
            r = http.post("/computers", json={"kind": "browser", "environment_id": a.id})
            assert r.status_code == 409, r.text
            assert "nothing was saved" in r.json()["detail"] and "cap" in r.json()["detail"]
            # nothing stored counts for nothing: a persistent create is still allowed
            b = http.post("/computers", json={"kind": "browser", "persistent": True}).json()
            assert http.delete(f"/computers/{b['id']}").status_code == 204
            assert http.delete(f"/environments/{a.id}").status_code == 204
            assert http.get(f"/environments/{a.id}").status_code == 404
        assert not any(p.name.endswith(".tar") for p in _env_dir(srv).iterdir())
    finally:
        srv.stop()


def test_stray_archives_and_temporary_files_are_removed_at_start(tmp_path: Path, site: str) -> None:
    data = tmp_path / "data"
    srv = start_server(_mk(tmp_path / "s1"), data_dir=data)
    try:
        client = srv.client()
        a = client.computers.create(kind="browser", persistent=True)
        assert _state(client, a.id, site, login="alice")["logged_in"]
        client.computers.delete(a.id)
        size = _saved(client, a.id)["size_bytes"]  # type: ignore[index]
    finally:
        srv.stop()

    envs = data / "environments"
    kept = envs / f"{a.id}.tar"
    # a save renamed into place just before a crash: the archive is newer than its row's size
    with open(kept, "ab") as f:
        f.write(b"\0" * 10240)
    stray = [envs / "comp_neverrecorded.tar", envs / f"{a.id}.tar.tmp-0123abcd", envs / "comp_x.tar.tmp-ffff0000"]
    for path in stray:
        path.write_bytes(b"half a save")
    other = envs / "notes.txt"  # not ours to judge: left alone
    other.write_text("keep me")

    srv = start_server(_mk(tmp_path / "s2"), data_dir=data)
    try:
        assert not [p.name for p in stray if p.exists()]
        assert kept.is_file() and other.read_text() == "keep me"
        client = srv.client()
        assert _saved(client, a.id)["size_bytes"] == size + 10240  # type: ignore[index]
        b = client.computers.create(kind="browser", environment_id=a.id)
        try:
            assert _state(client, b.id, site)["local_storage"] == "alice"
        finally:
            client.computers.delete(b.id)
    finally:
        srv.stop()
