"""Saved environments and recordings through fleet replicas (fleet/replica_storage.py), without Ray.

Two nodes, two replicas (tests/fleet_direct.py). A persistent computer made through replica A is logged in
on tests/pages/login.html and ended; its environment is listed by replica B (merged over the nodes) and a
create from it through B lands on the node holding it, logged in, even when the placer would pick the other
node. A kept recording is read through a replica while its computer lives and after it was deleted: PyAV
decodes it, a Range gets the node's 206. Another organisation gets 404s, bad ids 4xx JSON; the node of an
environment full: 429, stopped: 503.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import tzafon
from conftest import wait_until
from fleet_direct import DirectFleet, start_direct_fleet
from playwright.sync_api import sync_playwright
from test_environments import _state
from test_recording import BLUE, CHROMIUM, RED, decode, is_colour

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


def test_a_saved_environment_through_any_replica(fleet: DirectFleet, site: str) -> None:
    env_id, node = _saved_env(fleet, "alice", site, "fleet-env")
    other_node = next(n.node_id for n in fleet.nodes if n.node_id != node)
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

            # the node is full now (3 slots): a create from its environment is a 429 saying so
            third = a.computers.create(kind="browser", extra_body={"node_hint": node})
            try:
                with fleet.http(replica=1) as h:
                    full = _problem(h.post("/computers", json={"kind": "browser", "environment_id": env_id}), 429)
                    assert node in full["detail"] and env_id in full["detail"]
                    # ...and a hint to another node than the environment's is a 422
                    _problem(h.post("/computers", json={"environment_id": env_id, "node_hint": other_node}), 422)
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
