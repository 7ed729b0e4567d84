"""Saved environments and recordings through fleet replicas (fleet/replica_storage.py), without Ray.

Two nodes, two replicas (tests/fleet_direct.py). A persistent computer made through replica A is logged in
on tests/pages/login.html and ended; its environment is listed by replica B (merged over the nodes) and a
create from it through B lands on the node holding it, logged in, even when the placer would pick the other
node. A kept recording is read through a replica while its computer lives and after it was deleted: PyAV
decodes it, a Range gets the node's 206. Another organisation gets 404s, bad ids 4xx JSON; the node of an
environment named by node_hint and full: 429, stopped: 503.

On a fleet of two nodes with one browser slot each (``TestMoves``, first: its fleet is stopped before the
other starts), an environment whose node is full, or a create whose node_hint names the other node, is moved
to the node the computer lands on: still logged in there, ``fleet_objects`` names that node and the old node
has no archive left; while a persistent computer made from it runs on its node it stays there (409).
"""

from __future__ import annotations

import io
import json
import socket
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tzafon
from conftest import wait_until
from fleet_direct import DirectFleet, start_direct_fleet
from playwright.sync_api import sync_playwright
from test_environments import _state
from test_recording import BLUE, CHROMIUM, RED, decode, is_colour

from opencone.fleet.agent_routes import node_key

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[DirectFleet]:
    fleet = start_direct_fleet(tmp_path_factory.mktemp("fleet-storage"), postgres, nodes=2, replicas=2,
                               browser_slots=3, desktop_slots=1)
    yield fleet
    fleet.stop()


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["id"] for row in rows]


def _problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, (answer.status_code, answer.text)
    body = answer.json()
    assert body["status"] == status and body["detail"], body
    return body  # type: ignore[no-any-return]


def _saved_env(fleet: DirectFleet, login: str, site: str, context: str) -> tuple[str, str]:
    """A persistent browser logged in as ``login`` through replica A, ended: (its environment id, its node)."""
    a = fleet.client(replica=0).computers.create(kind="browser", persistent=True, context_id=context)
    assert a.persistent is True
    node = fleet.node_of(a.id)
    assert _state(fleet.client(replica=1), a.id, site, login=login)["logged_in"]
    fleet.client(replica=0).computers.delete(a.id)
    with fleet.http(replica=1) as h:  # the save runs as the computer ends, on its node
        assert wait_until(lambda: h.get(f"/environments/{a.id}").status_code == 200, 30)
    return a.id, node


def _archive(fleet: DirectFleet, node_id: str, env_id: str) -> Path:
    node = next(n for n in fleet.nodes if n.node_id == node_id)
    return node.dir / "environments" / f"{env_id}.tar"  # a node's data dir is its node dir (fleet/node.py)


def _create_on(fleet: DirectFleet, node_id: str, **fields: Any) -> str:
    return _create_on_kind(fleet, node_id, "browser", **fields)


def _create_on_kind(fleet: DirectFleet, node_id: str, kind: str, **fields: Any) -> str:
    """A computer on ``node_id`` (node_hint), retried while that node's last report still shows its
    slot taken (a computer that just ended); its id."""
    deadline = time.monotonic() + 20
    with fleet.http() as h:
        while True:
            answer = h.post("/computers", json={"kind": kind, "node_hint": node_id, **fields})
            if answer.status_code != 429 or time.monotonic() > deadline:
                assert answer.status_code == 200, answer.text
                assert fleet.node_of(answer.json()["id"]) == node_id
                return answer.json()["id"]  # type: ignore[no-any-return]
            time.sleep(0.2)


def _holder(fleet: DirectFleet, env_id: str) -> str:
    return fleet.sql(f"SELECT node_id FROM fleet_objects WHERE id = '{env_id}'")[0][0]


SMALL_CAP = 16 << 20  # a saved test profile is about 1.5 MB


def _tar(*members: tuple[str, str, bytes | str], compression: str = "") -> bytes:
    """A tar of ``(name, type, data or link target)`` members, type one of ``types``' keys."""
    types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE,
             "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=f"w:{compression}", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = types[kind]
            if kind == "file":
                assert isinstance(data, bytes)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind in ("sym", "lnk"):
                assert isinstance(data, str)
                info.linkname = data
            tar.addfile(info)
    return out.getvalue()


def _declared_status(base: str, path: str, headers: dict[str, str], length: int) -> int:
    """The status a node answers to a PUT whose headers declare ``length`` bytes, before any is sent."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    lines = [f"PUT {path} HTTP/1.1", f"host: {host}:{port}", f"content-length: {length}",
             *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = sock.recv(4096).decode("latin-1")
    return int(head.split(" ", 2)[1])


@pytest.fixture(scope="class")
def small(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[DirectFleet]:
    """Two nodes of one browser slot each, for TestMoves alone (stopped after it)."""
    fleet = start_direct_fleet(tmp_path_factory.mktemp("fleet-moves"), postgres, nodes=2, replicas=2,
                               browser_slots=1, desktop_slots=0,
                               node_env={"OPENCONE_STORAGE_CAP_BYTES": str(SMALL_CAP)})
    yield fleet
    fleet.stop()


class TestMoves:
    """Two nodes of one browser slot each: an environment goes where its computer is placed."""

    def test_an_environment_moves_to_the_node_with_room(self, small: DirectFleet, site: str) -> None:
        env_id, a_node = _saved_env(small, "carol", site, "fleet-move")
        b_node = next(n.node_id for n in small.nodes if n.node_id != a_node)
        assert _archive(small, a_node, env_id).is_file()
        client = small.client(replica=1)

        filler = _create_on(small, a_node)  # the environment's node is full now
        try:
            restored = client.computers.create(kind="browser", environment_id=env_id)
            try:
                assert small.node_of(restored.id) == b_node and restored.environment_id == env_id
                state = _state(client, restored.id, site)
                assert state["logged_in"] and state["local_storage"] == "carol", state
                assert state["session_cookie"] == "s-carol"
            finally:
                client.computers.delete(restored.id)
            # one node holds it: the fleet's table says so, the old node has no archive nor record left
            assert _holder(small, env_id) == b_node
            assert _archive(small, b_node, env_id).is_file()
            assert not _archive(small, a_node, env_id).exists()
            with small.http(replica=0) as h:
                assert _ids(h.get("/environments").json()).count(env_id) == 1
                assert h.get(f"/environments/{env_id}").json()["size_bytes"] > 0
        finally:
            small.client().computers.delete(filler)

        # node_hint naming the other node than the holder's (now B): moved back to A, still logged in
        with small.http() as h:
            deadline = time.monotonic() + 20
            while (back := h.post("/computers", json={"kind": "browser", "environment_id": env_id,
                                                      "node_hint": a_node})).status_code == 429:
                assert time.monotonic() < deadline, back.text  # A's slot shows free at its next report
                time.sleep(0.2)
            assert back.status_code == 200, back.text
        try:
            assert small.node_of(back.json()["id"]) == a_node
            state = _state(client, back.json()["id"], site)
            assert state["logged_in"] and state["session_cookie"] == "s-carol", state
        finally:
            client.computers.delete(back.json()["id"])
        assert _holder(small, env_id) == a_node
        assert _archive(small, a_node, env_id).is_file() and not _archive(small, b_node, env_id).exists()

    def test_an_environment_in_use_on_its_node_stays_there(self, small: DirectFleet, site: str) -> None:
        """A persistent computer made from it saves back into it on its node when it ends: no move."""
        env_id, a_node = _saved_env(small, "dave", site, "fleet-stay")
        b_node = next(n.node_id for n in small.nodes if n.node_id != a_node)
        user = _create_on(small, a_node, environment_id=env_id, persistent=True)  # fills A, too
        try:
            with small.http(replica=1) as h:
                for body in ({"environment_id": env_id}, {"environment_id": env_id, "node_hint": b_node}):
                    busy = _problem(h.post("/computers", json={"kind": "browser", **body}), 409)
                    assert env_id in busy["detail"] and "persistent" in busy["detail"], busy
                # bad input around a move is still the client's 4xx: a hint naming no node, the holder full
                _problem(h.post("/computers", json={"environment_id": env_id, "node_hint": "node-nope"}), 422)
                full = _problem(h.post("/computers", json={"environment_id": env_id, "node_hint": a_node}), 429)
                assert a_node in full["detail"]
            assert _holder(small, env_id) == a_node
            assert _archive(small, a_node, env_id).is_file() and not _archive(small, b_node, env_id).exists()
            assert _state(small.client(), user, site)["logged_in"]
        finally:
            small.client().computers.delete(user)
        with small.http() as h:  # its state saved back on A, which still holds the environment
            assert wait_until(lambda: h.get(f"/environments/{env_id}").json().get("saved_by") == user, 30)
        assert _holder(small, env_id) == a_node


    def test_an_imported_archive_is_checked_as_hostile_bytes(self, small: DirectFleet) -> None:
        """A node's import route (what a move streams into) refuses what ``pack`` could not have written,
        and what does not fit under the organisation's cap; it keeps nothing of a refused archive."""
        org = "org_import_check"  # a node makes an organisation a replica speaks for on first sight
        node = small.nodes[0]
        headers = {"authorization": f"Bearer {node_key(small.token, org)}", "x-opencone-org": org}
        meta = {"kind": "browser", "created_at": "2026-01-01T00:00:00+00:00",
                "saved_at": "2026-01-01T00:00:00+00:00", "context_id": "hostile", "saved_by": None}
        ok_profile = [("profile", "dir", b""), ("profile/Default", "dir", b""),
                      ("profile/Default/Preferences", "file", b"{}")]
        bad = {
            "traversal": _tar(*ok_profile, ("profile/../../escaped", "file", b"x")),
            "absolute": _tar(("/profile", "dir", b""), ("/profile/x", "file", b"x")),
            "another part": _tar(*ok_profile, ("etc", "dir", b""), ("etc/passwd", "file", b"x")),
            "absolute symlink": _tar(*ok_profile, ("profile/link", "sym", "/etc/passwd")),
            "escaping symlink": _tar(*ok_profile, ("profile/Default/link", "sym", "../../../outside")),
            "escaping hard link": _tar(*ok_profile, ("profile/hard", "lnk", "../outside")),
            "hard link into another part": _tar(*ok_profile, ("profile/hard", "lnk", "home/.bashrc")),
            "character device": _tar(*ok_profile, ("profile/tty", "chr", b"")),
            "block device": _tar(*ok_profile, ("profile/sda", "blk", b"")),
            "compressed": _tar(*ok_profile, compression="gz"),
            "not a tar": b"not a tar archive " * 100,
            "truncated": _tar(*ok_profile, ("profile/big", "file", b"x" * 100_000))[:20_000],
            "a desktop's parts as a browser": _tar(("home", "dir", b""), ("home/.bashrc", "file", b"")),
        }
        url = f"{node.url}/internal/v1/environments/comp_hostile/archive"
        with httpx.Client(timeout=60) as h:
            for why, data in bad.items():
                answer = h.put(url, content=data, headers={**headers, "x-opencone-environment": json.dumps(meta)})
                assert answer.status_code == 422, (why, answer.status_code, answer.text)
                assert answer.json()["detail"], why
            # the record's fields are checked too, and the id (a file name on the node)
            # links inside their part are what a real profile has (and a pipe, what pack writes for one)
            good = _tar(*ok_profile, ("profile/Default/Prefs-link", "sym", "Preferences"),
                        ("profile/Default/Prefs-hard", "lnk", "profile/Default/Preferences"),
                        ("profile/pipe", "fifo", b""))
            for fields in ({"kind": "vm"}, {"kind": ["browser"]}, {"created_at": "yesterday"},
                           {"saved_at": "2026-01-01T00:00:00"}, {"context_id": "c" * 300}, {"saved_by": "../x"}):
                answer = h.put(url, content=good, headers={**headers,
                                                           "x-opencone-environment": json.dumps({**meta, **fields})})
                assert answer.status_code == 422, (fields, answer.text)
            _problem(h.put(url, content=good, headers=headers), 422)  # no record at all
            _problem(h.put(url.replace("comp_hostile", "comp.x"), content=good,
                           headers={**headers, "x-opencone-environment": json.dumps(meta)}), 422)

            # over the organisation's room under its cap: refused as it streams in (no length declared)
            def flood() -> Iterator[bytes]:
                for _ in range((SMALL_CAP >> 20) + 4):
                    yield b"\0" * (1 << 20)

            big = h.put(url, content=flood(), headers={**headers, "x-opencone-environment": json.dumps(meta)})
            assert _problem(big, 413)["room_bytes"] == SMALL_CAP
            # ...and before a byte of the body is read when its declared length says so (a raw request:
            # httpx sends no fewer bytes than it declares)
            assert _declared_status(node.url, "/internal/v1/environments/comp_hostile/archive",
                                    {**headers, "x-opencone-environment": json.dumps(meta)}, SMALL_CAP + 1) == 413

            # nothing of it kept: no archive, no temporary file, no record for the organisation
            assert list((node.dir / "environments").glob("comp_hostile*")) == []
            listed = h.get(f"{node.url}/internal/v1/environments", headers=headers)
            assert listed.status_code == 200 and listed.json() == []

            # what pack writes is taken, and exported again byte for byte with its record
            taken = h.put(url, content=good, headers={**headers, "x-opencone-environment": json.dumps(meta)})
            assert taken.status_code == 200 and taken.json()["size_bytes"] == len(good), taken.text
            out = h.get(url, headers=headers)
            assert out.status_code == 200 and out.content == good
            assert json.loads(out.headers["x-opencone-environment"])["context_id"] == "hostile"
            # an organisation's only: the internal token alone is not enough
            _problem(h.get(url, headers={"authorization": f"Bearer {small.token}"}), 404)
            assert h.delete(url, headers=headers).status_code == 204
            _problem(h.get(url, headers=headers), 404)
            assert not (node.dir / "environments" / "comp_hostile.tar").exists()


def test_a_saved_environment_through_any_replica(fleet: DirectFleet, site: str) -> None:
    env_id, node = _saved_env(fleet, "alice", site, "fleet-env")
    a, b = fleet.client(replica=0), fleet.client(replica=1)

    # listed by either replica, merged over the nodes, filtered by context as on one server
    listed = [r if isinstance(r, dict) else r.model_dump() for r in b.computers.list(type="persistent")]
    row = next(r for r in listed if r["id"] == env_id)
    assert row["status"] == "saved" and row["kind"] == "browser" and row["size_bytes"] > 0
    with fleet.http(replica=0) as h:
        assert env_id in _ids(h.get("/environments").json())
        assert env_id in _ids(h.get("/environments", params={"context_id": "fleet-env"}).json())
        assert env_id not in _ids(h.get("/environments", params={"context_id": "other"}).json())
        assert h.get(f"/environments/{env_id}").json()["id"] == env_id

    # a computer on the environment's node makes the placer prefer the other node (best of the two):
    # the create from the environment still goes to its node, and is logged in there
    filler = a.computers.create(kind="browser", extra_body={"node_hint": node})
    try:
        restored = b.computers.create(kind="browser", environment_id=env_id)
        try:
            assert restored.environment_id == env_id
            assert fleet.node_of(restored.id) == node
            state = _state(a, restored.id, site)
            assert state["logged_in"] and state["local_storage"] == "alice", state
            assert state["session_cookie"] == "s-alice"
            # the fleet record says what the computer is
            assert fleet.sql(f"SELECT environment_id FROM computers WHERE id = '{restored.id}'")[0][0] == env_id

            # the node is full now (3 slots): a create from its environment with node_hint naming that node
            # is a 429 saying so (without the hint the environment would move: TestMoves)
            third = a.computers.create(kind="browser", extra_body={"node_hint": node})
            try:
                with fleet.http(replica=1) as h:
                    full = _problem(h.post("/computers", json={"kind": "browser", "environment_id": env_id,
                                                               "node_hint": node}), 429)
                    assert node in full["detail"] and env_id in full["detail"]
                    # ...and a hint naming no ready node is a 422
                    _problem(h.post("/computers", json={"environment_id": env_id, "node_hint": "node-x"}), 422)
            finally:
                a.computers.delete(third.id)
        finally:
            a.computers.delete(restored.id)
    finally:
        a.computers.delete(filler.id)

    # another organisation: nothing to see, restore or delete, through either replica
    other_key = fleet.new_org_key("env-b")
    for replica in (0, 1):
        with fleet.http(other_key, replica=replica) as h:
            _problem(h.get(f"/environments/{env_id}"), 404)
            _problem(h.delete(f"/environments/{env_id}"), 404)
            assert env_id not in _ids(h.get("/environments").json())
            assert env_id not in _ids(h.get("/computers", params={"type": "persistent"}).json())
    with pytest.raises(tzafon.NotFoundError):
        fleet.client(other_key).computers.create(kind="browser", environment_id=env_id)

    # bad input: 4xx JSON
    with fleet.http() as h:
        missing = _problem(h.post("/computers", json={"kind": "browser", "environment_id": "comp_nope"}), 404)
        assert "environment" in missing["detail"]
        _problem(h.post("/computers", json={"kind": "browser", "environment_id": "../x"}), 404)
        _problem(h.post("/computers", json={"kind": "desktop", "environment_id": env_id}), 422)  # a browser's
        _problem(h.get("/environments/%2e%2e"), 404)
        _problem(h.get("/environments/" + "x" * 300), 404)
        _problem(h.get("/environments", params={"context_id": "c" * 300}), 422)
        _problem(h.get("/computers", params={"type": "saved"}), 422)

        # the documented delete, through the other replica than the one that lists
        assert h.delete(f"/environments/{env_id}").status_code == 204
    with fleet.http(replica=1) as h:
        _problem(h.get(f"/environments/{env_id}"), 404)
        _problem(h.delete(f"/environments/{env_id}"), 404)
        assert env_id not in _ids(h.get("/environments").json())
    with pytest.raises(tzafon.NotFoundError):
        b.computers.create(kind="browser", environment_id=env_id)


def _replay_plays(base: str, key: str, rec_id: str, actions: int) -> None:
    """The live view's replay page, served by a replica, lists the recording, plays it and seeks to an
    action: Chromium's media player reads the MP4 with Range requests through the replica."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            view = browser.new_page()
            errors: list[str] = []
            view.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                    if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
            view.on("pageerror", lambda e: errors.append(str(e)))
            partial: list[str] = []  # the media player's answers with a Content-Range
            view.on("response", lambda r: partial.append(r.headers.get("content-range", ""))
                    if r.status == 206 and f"/recordings/{rec_id}" in r.url else None)
            view.goto(f"{base}/live/replay#{rec_id}")
            view.fill("#key", key)
            view.click("#connect")
            view.wait_for_selector(f"#recordings tr[data-id='{rec_id}']")
            view.wait_for_selector("#timeline li")
            assert view.locator("#timeline li").count() == actions
            view.wait_for_function("() => document.getElementById('video').readyState >= 1", timeout=20000)
            assert view.evaluate("() => document.getElementById('video').duration") > 0.5
            view.locator("#timeline li").nth(actions - 1).click()
            view.wait_for_function("() => document.getElementById('video').currentTime > 0", timeout=20000)
            view.wait_for_function("() => document.getElementById('video').readyState >= 2", timeout=20000)
            assert not errors, errors
            assert partial and all(c.startswith("bytes ") for c in partial), partial
        finally:
            browser.close()


def test_a_kept_recording_while_and_after_its_computer_lives(fleet: DirectFleet) -> None:
    client = fleet.client(replica=0)
    comp = client.computers.create(kind="browser", extra_body={"recording": {"keep": True}})
    rec = comp.model_extra["recording"]
    assert rec["status"] == "recording" and rec["keep"] is True
    rec_id = rec["id"]
    assert rec["video_url"] == f"{fleet.replicas[0].base_url}/recordings/{rec_id}"
    try:
        b = fleet.client(replica=1)
        assert b.computers.navigate(comp.id, url=RED).status == "success"
        assert b.computers.click(comp.id, x=100, y=60).status == "success"
        with fleet.http(replica=1) as h:
            during = h.get(f"/computers/{comp.id}/recording")
            assert during.status_code == 200 and during.headers["content-type"] == "video/mp4", during.text
            assert during.headers["x-recording-id"] == rec_id
            _, frames = decode(during.content)
            assert frames and any(is_colour(c, "red") for _, c in frames)
            # ?token= works on the replica as on one server (a <video src>)
            by_token = httpx.get(f"{fleet.replicas[1].base_url}/computers/{comp.id}/recording/timeline",
                                 params={"token": fleet.key}, timeout=60)
            assert by_token.status_code == 200 and by_token.json()["recording"]["id"] == rec_id
        assert b.computers.navigate(comp.id, url=BLUE).status == "success"
        with fleet.http(replica=0) as h:
            stopped = h.post(f"/computers/{comp.id}/recording/stop")
            assert stopped.status_code == 200, stopped.text
            assert stopped.json()["status"] == "ready" and stopped.json()["frames"] >= 2
        with fleet.http(replica=1) as h:  # a second recording, started and deleted through the other replica
            again = h.post(f"/computers/{comp.id}/recording/start", json={"keep": True})
            assert again.status_code == 200, again.text
            second = again.json()["id"]
            assert second != rec_id and again.json()["status"] == "recording"
            _problem(h.post(f"/computers/{comp.id}/recording/start"), 409)  # one at a time, as on one server
            assert h.get(f"/computers/{comp.id}/recording/timeline").json()["recording"]["id"] == second
            assert h.delete(f"/recordings/{second}").status_code == 204  # in progress: stopped, then deleted
            _problem(h.get(f"/recordings/{second}"), 404)
    finally:
        client.computers.delete(comp.id)

    # after the DELETE (replica A's, which wrote the end in the fleet record and keeps no route to the
    # computer: it answers an ended computer from the record), the recording is read from the node
    assert fleet.sql(f"SELECT status FROM computers WHERE id = '{comp.id}'")[0][0] == "terminated"
    with fleet.http(replica=0) as h:
        video = h.get(f"/computers/{comp.id}/recording")
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4", video.text
        # relayed byte for byte, with the node's length (a player sizes its buffer by it), not chunked
        assert int(video.headers["content-length"]) == len(video.content)
        assert "transfer-encoding" not in video.headers
        facts, frames = decode(video.content)
        assert facts["codec"] == "h264" and len(frames) >= 2 and is_colour(frames[-1][1], "blue")
        timeline = h.get(f"/computers/{comp.id}/recording/timeline").json()
        assert [a["kind"] for a in timeline["actions"]] == ["navigate", "click", "navigate"]
        assert h.get(f"/computers/{comp.id}").json()["status"] == "terminated"
    with fleet.http(replica=1) as h:
        assert rec_id in _ids(h.get("/recordings").json())
        assert _ids(h.get("/recordings", params={"computer_id": comp.id}).json()) == [rec_id]
        whole = h.get(f"/recordings/{rec_id}")
        assert whole.status_code == 200 and whole.content == video.content
        part = h.get(f"/recordings/{rec_id}", headers={"range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == video.content[:100]
        assert part.headers["content-range"] == f"bytes 0-99/{len(video.content)}"
        assert part.headers["content-length"] == "100"
        tail = h.get(f"/recordings/{rec_id}", headers={"range": "bytes=-50"})
        assert tail.status_code == 206 and tail.content == video.content[-50:]
        assert h.get(f"/recordings/{rec_id}/timeline").json()["recording"]["status"] == "ready"
    _replay_plays(fleet.replicas[1].base_url, fleet.key, rec_id, len(timeline["actions"]))

    # another organisation sees none of it
    other_key = fleet.new_org_key("rec-b")
    with fleet.http(other_key, replica=1) as h:
        for path in (f"/recordings/{rec_id}", f"/recordings/{rec_id}/timeline", f"/computers/{comp.id}/recording",
                     f"/computers/{comp.id}/recording/timeline"):
            _problem(h.get(path), 404)
        _problem(h.delete(f"/recordings/{rec_id}"), 404)
        assert h.get("/recordings").json() == []
    no_key = httpx.get(f"{fleet.replicas[0].base_url}/recordings/{rec_id}", timeout=30)
    _problem(no_key, 401)

    # bad ids and queries: 4xx JSON
    with fleet.http() as h:
        _problem(h.get("/recordings/nope"), 422)
        _problem(h.get("/recordings/rec_XYZ/timeline"), 422)
        _problem(h.delete("/recordings/rec_" + "0" * 65), 422)
        _problem(h.get("/recordings/rec_0123abcd"), 404)
        _problem(h.get("/recordings", params={"computer_id": "c" * 200}), 422)
        _problem(h.get("/computers/comp_nope/recording"), 404)
        _problem(h.get("/computers/..%2Fx/recording"), 404)

        assert h.delete(f"/recordings/{rec_id}").status_code == 204
        _problem(h.get(f"/recordings/{rec_id}"), 404)
        _problem(h.get(f"/computers/{comp.id}/recording"), 404)
        assert rec_id not in _ids(h.get("/recordings").json())


def test_a_desktop_environment_moves_with_its_workspace_and_browser(fleet: DirectFleet, site: str) -> None:
    """A desktop's environment (home, /workspace, its browser's profile) moves to the node with room."""
    client = fleet.client(replica=0)
    a = client.computers.create(kind="desktop", persistent=True)
    node = fleet.node_of(a.id)
    other = next(n.node_id for n in fleet.nodes if n.node_id != node)
    try:
        assert _state(client, a.id, site, login="erin")["logged_in"]  # in the desktop's own Chromium
        res = client.computers.exec.sync(a.id, command="echo kept > note.txt")
        has_exec = res.exit_code == 0  # exec needs bubblewrap; the rest does not
    finally:
        client.computers.delete(a.id)
    with fleet.http() as h:
        assert wait_until(lambda: h.get(f"/environments/{a.id}").status_code == 200, 60)
    with tarfile.open(_archive(fleet, node, a.id)) as tar:
        parts = {name.split("/", 1)[0] for name in tar.getnames()}
    assert {"workspace", "browser"} <= parts, parts

    filler = _create_on_kind(fleet, node, "desktop")  # its node's one desktop slot taken
    try:
        b = fleet.client(replica=1).computers.create(kind="desktop", environment_id=a.id)
        try:
            assert fleet.node_of(b.id) == other
            state = _state(client, b.id, site)
            assert state["logged_in"] and state["local_storage"] == "erin", state
            if has_exec:
                assert client.computers.exec.sync(b.id, command="cat note.txt").stdout.strip() == "kept"
        finally:
            client.computers.delete(b.id)
    finally:
        client.computers.delete(filler)
    assert _holder(fleet, a.id) == other and not _archive(fleet, node, a.id).exists()
    with fleet.http() as h:
        assert h.delete(f"/environments/{a.id}").status_code == 204
    assert not _archive(fleet, other, a.id).exists()


def test_the_node_of_an_environment_stopped_is_a_503(fleet: DirectFleet, site: str) -> None:
    """Last in the module: it stops a node. What that node holds is a clear 503, not a 404 or a 500."""
    client = fleet.client(replica=0)
    comp = client.computers.create(kind="browser", extra_body={"recording": {"keep": True}})
    node = fleet.node_of(comp.id)
    assert client.computers.navigate(comp.id, url=RED).status == "success"
    client.computers.delete(comp.id)
    env_id, env_node = _saved_env(fleet, "bob", site, "fleet-gone")
    with fleet.http() as h:
        assert h.get(f"/computers/{comp.id}/recording").status_code == 200
    stopped = {node, env_node}
    for n in fleet.nodes:
        if n.node_id in stopped:
            n.stop()
    with fleet.http(replica=1) as h:
        assert wait_until(lambda: h.post("/computers", json={"kind": "browser", "environment_id": env_id})
                          .status_code == 503, 20)
        gone = _problem(h.post("/computers", json={"kind": "browser", "environment_id": env_id}), 503)
        assert env_node in gone["detail"]
        _problem(h.get(f"/environments/{env_id}"), 503)
        _problem(h.get(f"/computers/{comp.id}/recording"), 503)
        # the list has what the ready nodes hold, without the stopped node's
        assert env_id not in _ids(h.get("/environments").json())
