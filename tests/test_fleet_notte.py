"""The Notte session API (both eras) and OpenEnv through fleet replicas (fleet/replica_notte.py,
fleet/replica_openenv.py), against two node servers started without Ray (tests/fleet_direct.py).

Driven with the same real clients as on a single server: the current ``notte-sdk`` and the seed-era
``notte==1.2.1`` (tests/notte_clients), openenv-core's client, httpx. A session or an episode started
through replica A is driven through replica B: it lives on one node, and either replica finds it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from conftest import wait_until
from fleet_direct import DirectFleet, start_direct_fleet
from notte_clients import NotteProcess
from openenv.core.env_server.types import ResetResponse, SchemaResponse, State, StepResponse
from openenv.core.generic_client import GenericEnvClient
from playwright.sync_api import sync_playwright

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[DirectFleet]:
    fleet = start_direct_fleet(tmp_path_factory.mktemp("fleet-notte"), postgres, nodes=2, replicas=2,
                               browser_slots=2, desktop_slots=0)  # 2 computers a node at most
    yield fleet
    fleet.stop()


@pytest.fixture(scope="module")
def other(fleet: DirectFleet) -> str:
    return fleet.new_org_key("notte-other")


def _html(fleet: DirectFleet, cid: str) -> str:
    with fleet.http(replica=0) as h:
        return h.post(f"/computers/{cid}/html", json={}).json()["result"]["html_content"]  # type: ignore[no-any-return]


def _log(fleet: DirectFleet, cid: str) -> list[str]:
    match = re.search(r"LOG(\[.*?\])END", _html(fleet, cid), re.S)
    assert match
    return json.loads(match.group(1))  # type: ignore[no-any-return]


def _status(fleet: DirectFleet, cid: str, replica: int = 0) -> str:
    with fleet.http(replica=replica) as h:
        return str(h.get(f"/computers/{cid}").json()["status"])


def _problem(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and detail
    return detail


@pytest.fixture
def sdk(fleet: DirectFleet, tmp_path: Path) -> Iterator[list[NotteProcess]]:
    """The current client against each replica."""
    clients = [NotteProcess("sdk", s.base_url, fleet.key, tmp_path / f"sdk-{i}.log")
               for i, s in enumerate(fleet.replicas)]
    yield clients
    for c in clients:
        c.close()


def test_a_session_started_through_one_replica_is_driven_through_the_other(
        fleet: DirectFleet, sdk: list[NotteProcess], other: str, site: str) -> None:
    a, b = sdk
    started = a.call("enter", idle_timeout_minutes=2, max_duration_minutes=10)  # with client.Session(...)
    sid = started["session_id"]
    assert started["status"] == "active" and started["closed_at"] is None
    assert started["viewer_url"] == f"{fleet.replicas[0].base_url}/live#{sid}"  # the replica's, not the node's
    assert fleet.node_of(sid) in {n.node_id for n in fleet.nodes}  # its fleet record, before the answer

    attached = b.call("attach", session_id=sid)  # client.Session(session_id=...) through replica B
    assert attached["session_id"] == sid and attached["status"] == "active"
    assert b.call("execute", type="goto", url=f"{site}/perception.html")["success"] is True
    obs = b.call("observe")
    assert obs["url"] == f"{site}/perception.html" and obs["screenshot_bytes"] > 1000
    search = next(x for x in obs["actions"] if x["text_label"] == "Search")
    buy = next(x for x in obs["actions"] if x["text_label"] == "Buy")
    b.call("execute", type="fill", id=search["id"], value="typed through b")
    a.call("execute", type="click", id=buy["id"])  # the ids of B's observation, on A: one session, one node
    assert _log(fleet, sid)[-2:] == ["q=typed through b", "buy"]
    with fleet.http(replica=1) as h:
        shot = h.post(f"/sessions/{sid}/page/screenshot")
        assert shot.status_code == 200, shot.text
        assert base64.b64decode(shot.json()["raw"])[:3] == b"\xff\xd8\xff"  # a JPEG
    cdp_url = b.call("cdp_url")
    assert cdp_url.startswith(fleet.replicas[1].base_url.replace("http", "ws"))
    with sync_playwright() as pw:  # the session's browser over its cdp_url: replica B's relay
        page = pw.chromium.connect_over_cdp(cdp_url).contexts[0].pages[0]
        assert page.input_value("#q") == "typed through b"
    assert sid in [x["session_id"] for x in b.call("list")]

    with fleet.http(other, replica=1) as h:  # another organisation: no such session, through either replica
        assert h.get(f"/sessions/{sid}").status_code == 404
        assert h.delete(f"/sessions/{sid}/stop").status_code == 404
        assert h.post(f"/sessions/{sid}/page/observe", json={}).status_code == 404
        assert h.get("/sessions/").json()["items"] == []

    ended = a.call("exit")  # leaving the with block stops it
    assert ended["status"] == "closed" and ended["closed_at"] and ended["close_reason"] == "manual"
    assert b.call("status")["status"] == "closed"
    assert wait_until(lambda: _status(fleet, sid, replica=1) == "terminated", 15)
    with fleet.http(replica=1) as h:
        assert "already stopped" in _problem(h.delete(f"/sessions/{sid}/stop"), 409)
        assert "closed" in _problem(h.post(f"/sessions/{sid}/page/observe", json={}), 409)


def test_sessions_listed_over_both_nodes_page_as_one_server(fleet: DirectFleet) -> None:
    made: list[str] = []
    try:
        with fleet.http(replica=1) as h:
            for _ in range(5):  # until both nodes hold one (the placer spreads them)
                answer = h.post("/sessions/start", json={"idle_timeout_minutes": 2})
                assert answer.status_code == 200, answer.text
                made.append(answer.json()["session_id"])
                if len({fleet.node_of(s) for s in made}) == 2:
                    break
            assert len({fleet.node_of(s) for s in made}) == 2
        with fleet.http(replica=0) as h:
            whole = h.get("/sessions/", params={"page_size": 100}).json()
            ids = [x["session_id"] for x in whole["items"]]
            assert ids[:len(made)] == made[::-1]  # newest first, across the nodes
            pages = [h.get("/sessions/", params={"page": p, "page_size": 1}).json() for p in (1, 2)]
            assert [p["items"][0]["session_id"] for p in pages] == ids[:2]
            assert pages[0]["has_next"] and not pages[0]["has_previous"] and pages[1]["has_previous"]
            last = h.get("/sessions/", params={"page": len(ids), "page_size": 1}).json()
            assert not last["has_next"] and [x["session_id"] for x in last["items"]] == ids[-1:]
            # bad input: the same 422s as a single server, with what was wrong
            assert "page_size" in json.dumps(h.get("/sessions/", params={"page_size": 1000}).json())
            assert h.get("/sessions/", params={"page": 0}).status_code == 422
            assert "max_duration_minutes" in _problem(
                h.post("/sessions/start", json={"idle_timeout_minutes": 20, "max_duration_minutes": 10}), 422)
            assert h.post("/sessions/start", content=b"{nope", headers={"content-type": "application/json"}
                          ).status_code == 422
            assert "no session" in _problem(h.get("/sessions/comp_0000000000000000"), 404)
            assert _problem(h.post(f"/sessions/{made[0]}/page/dance", json={}), 404)
            assert h.get("/sessions/..%2F..%2Fcomputers").status_code == 404
            for odd in ("%2E%2E", "a%20b", "x" * 200):  # ids no session has: not a path to the node's other routes
                assert "no session" in _problem(h.get(f"/sessions/{odd}"), 404)
                assert "no session" in _problem(h.post(f"/sessions/{odd}/page/observe", json={}), 404)
            assert h.get("/sessions/").status_code == 200
        with httpx.Client(base_url=fleet.replicas[0].base_url) as anon:
            assert anon.post("/sessions/start", json={}).status_code == 401
    finally:
        with fleet.http(replica=0) as h:
            for sid in made:
                assert h.delete(f"/sessions/{sid}/stop").json()["status"] == "closed"


def test_a_seed_era_session_is_found_by_its_id_in_the_body(fleet: DirectFleet, other: str, site: str,
                                                           tmp_path: Path) -> None:
    seed = NotteProcess("seed", fleet.replicas[0].base_url, fleet.key, tmp_path / "seed.log")
    try:
        started = seed.call("start", session_timeout_minutes=2)
        sid = started["session_id"]
        assert started["status"] == "active" and fleet.node_of(sid)
        body = {"session_id": sid, "keep_alive": True, "session_timeout_minutes": 2, "screenshot": None}
        with fleet.http(replica=1) as h:  # the same session, its id in the body, through replica B
            obs = h.post("/env/observe", json={**body, "url": f"{site}/perception.html"})
            assert obs.status_code == 200, obs.text
            assert obs.json()["session"]["session_id"] == sid and obs.json()["metadata"]["title"] == "Perception"
            link = next(x for x in obs.json()["space"]["actions"] if x["description"] == 'Follow the link "Next page"')
            step = h.post("/env/step", json={**body, "action_id": link["id"]})
            assert step.status_code == 200, step.text
        assert wait_until(lambda: "The next page" in _html(fleet, sid))
        assert seed.call("scrape")["data"]["markdown"].startswith("# The next page")  # the client, through A
        with fleet.http(other, replica=1) as h:  # another organisation: as a single server says it, 400
            assert "no session" in _problem(h.post("/env/observe", json={**body}), 400)
            assert "no session" in _problem(h.post("/session/close", json={"session_id": sid}), 400)
        closed = seed.call("close")
        assert closed["status"] == "closed" and closed["session_id"] == sid
        assert wait_until(lambda: _status(fleet, sid, replica=1) == "terminated", 15)
    finally:
        seed.close()

    def sessions(replica: int) -> dict[str, str]:
        with fleet.http(replica=replica) as h:
            listed = h.get("/sessions/", params={"only_active": False, "page_size": 100}).json()["items"]
        return {x["session_id"]: x["status"] for x in listed}

    before = sessions(0)
    one = NotteProcess("seed", fleet.replicas[1].base_url, fleet.key, tmp_path / "one-shot.log")
    try:  # an operation without a session makes its own on a node and closes it (keep_alive false)
        assert one.call("observe", url=f"{site}/page2.html")["title"] == "page two"
    finally:
        one.close()
    made = {s: status for s, status in sessions(0).items() if s not in before}
    assert list(made.values()) == ["closed"]
    [once] = made
    with fleet.http(replica=0) as h:  # found through the other replica by its fleet record
        assert h.get(f"/sessions/{once}").json()["status"] == "closed"
    with fleet.http(replica=1) as h:
        ended = h.get(f"/computers/{once}").json()
    assert ended["status"] == "terminated" and ended["termination_reason"] == "deleted"
    with fleet.http(replica=0) as h:  # bad input: 400 with what was wrong
        assert "session_timeout_minutes" in _problem(h.post("/session/start", json={"session_timeout_minutes": 31}),
                                                     400)
        assert "must not be given" in _problem(h.post("/session/start", json={"session_id": sid}), 400)
        assert "required" in _problem(h.post("/session/close", json={}), 400)
        assert _problem(h.post("/env/step", content=b"{nope", headers={"content-type": "application/json"}), 400)
        assert "no session" in _problem(h.post("/env/observe", json={"session_id": "comp_0000000000000000"}), 400)
        assert _problem(h.post("/env/step", json={"session_id": "x" * 65, "action_id": "L1"}), 400)


def _openenv_url(fleet: DirectFleet, replica: int, key: str | None = None) -> str:
    base = fleet.replicas[replica].base_url
    return base.replace("http://", f"http://opencone:{key or fleet.key}@") + "/openenv"


def test_an_openenv_episode_over_http_through_both_replicas(fleet: DirectFleet, other: str, site: str) -> None:
    with fleet.http(replica=0) as a, fleet.http(replica=1) as b:
        r = a.post("/openenv/reset", json={"start_url": f"{site}/gym_form.html", "observe": ["snapshot"],
                                           "success": {"text_contains": "Ordered blue for Ada"}, "max_steps": 5})
        assert r.status_code == 200, r.text
        first = ResetResponse.model_validate(r.json())
        episode, computer = first.observation["episode_id"], first.observation["computer_id"]
        assert fleet.node_of(computer)  # its fleet record, before the answer
        for act in ({"action_str": 'fill("e4", "Ada")'}, {"action": "select_option", "ref": "e6", "values": ["blue"]},
                    {"action_str": 'click("e7")'}):  # through B: the episode's node
            step = StepResponse.model_validate(
                b.post("/openenv/step", json={"action": act, "episode_id": episode, "timeout_s": 30}).json())
            assert step.observation["last_action_error"] is None, (act, step.observation)
        assert step.reward == 1.0 and step.done
        state = State.model_validate(a.get("/openenv/state", params={"episode_id": episode}).json())
        assert state.episode_id == episode and state.step_count == 3
        with fleet.http(other, replica=1) as h:  # another organisation's: no such episode
            assert h.get("/openenv/state", params={"episode_id": episode}).status_code == 404
            assert h.post("/openenv/close", json={"episode_id": episode}).status_code == 404
        assert b.post("/openenv/close", json={"episode_id": episode}).status_code == 204
        assert wait_until(lambda: _status(fleet, computer) == "terminated", 15)
        assert "/openenv/reset" in _problem(a.post("/openenv/step", json={"action": {"action": "wait", "ms": 0},
                                                                          "episode_id": episode}), 404)

        # an episode named by the client, reset again through the other replica: on the node it lives on
        named = a.post("/openenv/reset", json={"episode_id": "run-1", "observe": ["url"]}).json()["observation"]
        again = b.post("/openenv/reset", json={"episode_id": "run-1", "observe": ["url"]}).json()["observation"]
        assert again["computer_id"] != named["computer_id"]
        assert fleet.node_of(again["computer_id"]) == fleet.node_of(named["computer_id"])
        assert wait_until(lambda: _status(fleet, named["computer_id"]) == "terminated", 15)  # the reset ended it
        assert b.get("/openenv/state", params={"episode_id": "run-1"}).json()["computer_id"] == again["computer_id"]
        assert a.post("/openenv/close", json={"episode_id": "run-1"}).status_code == 204

        # bad input: the node's own 4xx, said by the replica
        assert "episode_id" in _problem(a.post("/openenv/step", json={"action": {"action": "wait", "ms": 0}}), 422)
        assert a.post("/openenv/reset", json={"viewport": {"width": 1}}).status_code == 422
        assert a.post("/openenv/reset", json={"kind": "toaster"}).status_code == 422
        assert a.post("/openenv/step", json={"action": "nope", "episode_id": "x"}).status_code == 422
        assert a.get("/openenv/state", params={"episode_id": "ep_none"}).status_code == 404
        SchemaResponse.model_validate(b.get("/openenv/schema").json())
        assert b.get("/openenv/health").json() == {"status": "healthy"}
    assert httpx.post(f"{fleet.replicas[1].base_url}/openenv/reset", json={}).status_code == 401
    assert httpx.get(f"{fleet.replicas[1].base_url}/openenv/state", auth=("opencone", "wrong")).status_code == 401


def test_an_openenv_websocket_episode_through_a_replica(fleet: DirectFleet, site: str) -> None:
    async def episode() -> tuple[list[float | None], str]:
        async with GenericEnvClient(base_url=_openenv_url(fleet, 1)) as env:
            first = await env.reset(start_url=f"{site}/gym_counter.html", goal="reach three",
                                    success={"text_contains": "Reached three"}, observe=["snapshot", "url"])
            computer = first.observation["computer_id"]
            assert fleet.node_of(computer)  # recorded as its observation passed the relay
            assert _status(fleet, computer, replica=0) == "ready"
            bad = await env.step({"action": "click", "ref": "e77"})
            assert "ref e77" in bad.observation["last_action_error"] and bad.done is False
            rewards = []
            for act in ({"action_str": "click('e3')"}, {"action": "click", "ref": "e3"},
                        {"action_type": "CLICK", "x": 110, "y": 122}):
                result = await env.step(act)
                assert result.observation["last_action_error"] is None, result.observation
                rewards.append(result.reward)
            assert result.done and (await env.state())["step_count"] == 4
            return rewards, computer

    rewards, computer = asyncio.run(episode())
    assert rewards == [0.0, 0.0, 1.0]
    assert wait_until(lambda: _status(fleet, computer, replica=0) == "terminated", 15)  # the socket closed

    async def refusals() -> None:
        ws_url = fleet.replicas[0].base_url.replace("http://", "ws://") + "/openenv/ws"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url):
                pass
        assert refused.value.response.status_code == 401
        async with websockets.connect(f"{ws_url}?token={fleet.key}") as ws:
            await ws.send("{nope")
            assert json.loads(await ws.recv())["data"]["code"] == "INVALID_JSON"
            await ws.send(json.dumps({"type": "reset", "data": {"kind": "toaster"}}))
            assert json.loads(await ws.recv())["data"]["code"] == "VALIDATION_ERROR"
            await ws.send(json.dumps({"type": "state"}))  # still open after the errors
            assert json.loads(await ws.recv())["type"] == "state"

    asyncio.run(refusals())


def test_starts_fill_the_fleet_node_by_node_then_429(fleet: DirectFleet) -> None:
    """Each node holds two computers: four starts land two and two, then every kind of start is refused."""
    with fleet.http(replica=1) as h:
        assert wait_until(lambda: h.get("/computers").json() == [], 30)  # the earlier tests' computers ended
        made: list[str] = []
        try:
            for _ in range(4):
                answer = h.post("/sessions/start", json={})
                assert answer.status_code == 200, answer.text
                made.append(answer.json()["session_id"])
            assert sorted(Counter(fleet.node_of(s) for s in made).values()) == [2, 2]
            assert "no node of the fleet can take a browser" in _problem(h.post("/sessions/start", json={}), 429)
            for path, body in (("/sessions/start", {}), ("/session/start", {"keep_alive": True}),
                               ("/env/observe", {"url": "http://127.0.0.1:9/"}), ("/openenv/reset", {})):
                assert _problem(h.post(path, json=body), 429), path

            async def socket() -> dict[str, Any]:  # a socket's reset, as a full single server answers it
                url = fleet.replicas[1].base_url.replace("http://", "ws://") + f"/openenv/ws?token={fleet.key}"
                async with websockets.connect(url) as ws:
                    await ws.send(json.dumps({"type": "reset", "data": {}}))
                    return json.loads(await ws.recv())  # type: ignore[no-any-return]

            refused = asyncio.run(socket())
            assert refused["type"] == "error" and refused["data"]["code"] == "CAPACITY_REACHED", refused
        finally:
            for sid in made:
                assert h.delete(f"/sessions/{sid}/stop").json()["status"] == "closed"


BAD_START = b'"idle_timeout_minutes": -1, "session_timeout_minutes": 99, "kind": "toaster"'  # no start takes it
HOSTILE = [b"{nope", b"[]", b'"x"', b"\xff\xfe\x00", b"[" * 100_000,
           b'{"session_id": 5, "episode_id": 5, ' + BAD_START + b"}",
           b'{"session_id": "' + b"s" * 300 + b'", "episode_id": "' + b"e" * 300 + b'", ' + BAD_START + b"}",
           b'{"session_id": "../../computers", "action_id": "L1", "action": {"action": "wait"}, "episode_id": "../x", '
           + BAD_START + b"}",
           b'{"session_id": "\\ud800", "keep_alive": "maybe", ' + BAD_START + b"}"]


def test_hostile_bodies_get_a_4xx_json_answer_never_a_5xx(fleet: DirectFleet) -> None:
    posts = ["/sessions/start", "/sessions/comp_0000000000000000/page/observe",
             "/sessions/comp_0000000000000000/page/execute", "/session/start", "/session/close", "/env/observe",
             "/env/step", "/env/scrape", "/openenv/reset", "/openenv/step", "/openenv/close"]
    with fleet.http(replica=0) as h:
        before = {c["id"] for c in h.get("/computers").json()}
        for path in posts:
            for body in HOSTILE:
                answer = h.post(path, content=body, headers={"content-type": "application/json"})
                assert 400 <= answer.status_code < 500, (path, body[:60], answer.status_code, answer.text[:300])
                assert isinstance(answer.json()["detail"], str), (path, body[:60])
        for path in ("/sessions/?page=x", "/sessions/?only_active=perhaps", "/openenv/state?episode_id=" + "e" * 300):
            assert 400 <= h.get(path).status_code < 500, path
        assert {c["id"] for c in h.get("/computers").json()} == before  # none of it made a computer


async def _mark_dead(fleet: DirectFleet, node_ids: set[str]) -> None:
    """The controller's verdict on lost nodes (no Ray here): dead, their computers node_lost."""
    from opencone.core.store.db import make_engine, sessionmaker
    from opencone.fleet import registry

    engine = make_engine(fleet.url)
    try:
        async with sessionmaker(engine)() as s:
            for node_id in node_ids:
                await registry.mark_dead(s, node_id)
    finally:
        await engine.dispose()


def test_a_session_whose_node_is_lost_ended_in_error(fleet: DirectFleet, tmp_path: Path) -> None:
    """Last in the module: it kills nodes. The session's state died with its node; the fleet record says how."""
    with fleet.http(replica=0) as h:
        # the test before filled the fleet: its ends reach the nodes' reports with their next heartbeat
        def room() -> int:
            return sum(n["capacity_browser"] - n["live_browser"] - n["reserved_browser"]
                       for n in h.get("/nodes").json() if n["state"] == "ready")
        assert wait_until(lambda: room() >= 2, 20), h.get("/nodes").json()
        started = h.post("/sessions/start", json={})
        assert started.status_code == 200, started.text
        sid = started.json()["session_id"]
        seed_sid = h.post("/session/start", json={"keep_alive": True}).json()["session_id"]
        assert h.get(f"/sessions/{sid}").json()["status"] == "active"  # (its route now held by replica A)
    lost = {fleet.node_of(sid), fleet.node_of(seed_sid)}
    for node in fleet.nodes:
        if node.node_id in lost:
            node.proc.kill()  # without grace: its browsers die with it
            node.proc.wait(10)
    asyncio.run(_mark_dead(fleet, lost))
    for replica in (0, 1):
        with fleet.http(replica=replica) as h:
            status = h.get(f"/sessions/{sid}")
            assert status.status_code == 200, status.text
            ended = status.json()
            assert ended["status"] == "error" and "node_lost" in ended["error"] and ended["closed_at"]
            assert "already stopped" in _problem(h.delete(f"/sessions/{sid}/stop"), 409)
            assert "node_lost" in _problem(h.post(f"/sessions/{sid}/page/observe", json={}), 409)
            closed = h.post("/session/close", json={"session_id": seed_sid, "keep_alive": True})
            assert closed.status_code == 200 and closed.json()["status"] == "error", closed.text
            assert "node_lost" in _problem(h.post("/env/observe", json={"session_id": seed_sid, "keep_alive": True}),
                                           400)
    sdk = NotteProcess("sdk", fleet.replicas[1].base_url, fleet.key, tmp_path / "sdk.log")
    try:  # the current client reads it as a session that ended in error
        assert sdk.call("attach", session_id=sid)["status"] == "error"
    finally:
        sdk.close()
