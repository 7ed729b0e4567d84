"""The OpenEnv endpoint (/openenv) driven by OpenEnv's own client and wire models (openenv-core):
an episode over its WebSocket (GenericEnvClient, the key as Basic user info of the URL) and one
over HTTP (its ResetResponse/StepResponse/State models), each reaching the reward its reset
asked for; refusals; a closed socket ends its computer."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from openenv.core.env_server.types import (
    HealthResponse,
    ResetResponse,
    SchemaResponse,
    State,
    StepResponse,
)
from openenv.core.generic_client import GenericEnvClient

from tests.conftest import Server, wait_until


def openenv_url(server: Server, key: str | None = None) -> str:
    return server.base_url.replace("http://", f"http://opencone:{key or server.api_key}@") + "/openenv"


def status(server: Server, computer_id: str) -> str:
    with server.http() as h:
        return str(h.get(f"/computers/{computer_id}").json()["status"])


def test_websocket_episode_with_openenvs_client(server: Server, site: str) -> None:
    async def episode() -> tuple[list[float | None], str]:
        async with GenericEnvClient(base_url=openenv_url(server)) as env:
            first = await env.reset(start_url=f"{site}/gym_counter.html", goal="reach three",
                                    success={"text_contains": "Reached three"}, observe=["snapshot", "url"])
            assert first.reward is None and first.done is False
            obs = first.observation
            assert obs["goal"] == "reach three" and obs["url"].endswith("/gym_counter.html")
            assert 'button "Add one" [ref=e3]' in obs.get("snapshot", ""), obs
            bad = await env.step({"action": "click", "ref": "e77"})  # the agent's mistake: an observation
            assert "ref e77" in bad.observation["last_action_error"] and bad.done is False
            rewards = []
            for act in ({"action_str": "click('e3')"}, {"action": "click", "ref": "e3"},
                        {"action_type": "CLICK", "x": 110, "y": 122}):  # BrowserGym, ours, OSWorld
                result = await env.step(act)
                assert result.observation["last_action_error"] is None, result.observation
                rewards.append(result.reward)
            assert result.done and 'paragraph [ref=e5]: "Count: 3"' in result.observation["snapshot"]
            state = await env.state()
            assert state["step_count"] == 4 and state["done"] is True
            with pytest.raises(RuntimeError, match="is done; reset it"):
                await env.step({"action": "wait", "ms": 0})
            again = await env.reset(start_url=f"{site}/gym_counter.html", observe=["snapshot"], episode_id="run-2")
            assert '"Count: 0"' in again.observation["snapshot"] and again.observation["episode_id"] == "run-2"
            assert again.observation["computer_id"] != obs["computer_id"]
            assert wait_until(lambda: status(server, obs["computer_id"]) == "terminated", 10)
            return rewards, again.observation["computer_id"]

    rewards, last = asyncio.run(episode())
    assert rewards == [0.0, 0.0, 1.0]
    assert wait_until(lambda: status(server, last) == "terminated", 10)  # the socket closed: its computer ended


def test_websocket_refusals(server: Server) -> None:
    ws_url = server.base_url.replace("http://", "ws://") + "/openenv/ws"

    async def run() -> None:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url):
                pass
        assert refused.value.response.status_code == 401
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(ws_url.replace("ws://", "ws://opencone:wrong@")):
                pass
        async with websockets.connect(f"{ws_url}?token={server.api_key}") as ws:
            for message, code in (("{nope", "INVALID_JSON"), (json.dumps({"type": "dance"}), "UNKNOWN_TYPE"),
                                  (json.dumps({"type": "step", "data": {"action": "wait"}}), "VALIDATION_ERROR"),
                                  (json.dumps({"type": "reset", "data": {"kind": "toaster"}}), "VALIDATION_ERROR"),
                                  (json.dumps({"type": "reset", "data": {"start_url": "file:///etc/passwd"}}),
                                   "VALIDATION_ERROR")):
                await ws.send(message)
                reply = json.loads(await ws.recv())
                assert reply["type"] == "error" and reply["data"]["code"] == code, (message, reply)
            await ws.send(json.dumps({"type": "state"}))  # the socket is still open after the errors
            assert json.loads(await ws.recv())["type"] == "state"

    asyncio.run(run())


def test_http_episode_in_openenvs_wire_models(server: Server, site: str) -> None:
    with server.http() as h:
        r = h.post("/openenv/reset", json={"seed": 7, "start_url": f"{site}/gym_form.html", "observe": ["snapshot"],
                                           "success": {"text_contains": "Ordered blue for Ada"}, "max_steps": 5})
        first = ResetResponse.model_validate(r.json())
        episode = first.observation["episode_id"]
        for act in ({"action_str": 'fill("e4", "Ada")'}, {"action": "select_option", "ref": "e6", "values": ["blue"]},
                    {"action_str": 'click("e7")'}):
            step = StepResponse.model_validate(
                h.post("/openenv/step", json={"action": act, "episode_id": episode, "timeout_s": 30}).json())
            assert step.observation["last_action_error"] is None, (act, step.observation["snapshot"])
        assert step.reward == 1.0 and step.done
        state = State.model_validate(h.get("/openenv/state", params={"episode_id": episode}).json())
        assert state.episode_id == episode and state.step_count == 3
        computer = first.observation["computer_id"]
        assert h.post("/openenv/close", json={"episode_id": episode}).status_code == 204
        assert wait_until(lambda: status(server, computer) == "terminated", 10)
        r = h.post("/openenv/step", json={"action": {"action": "wait", "ms": 0}})
        assert r.status_code == 422 and "episode_id" in r.json()["detail"]
        r = h.post("/openenv/step", json={"action": {"action": "wait", "ms": 0}, "episode_id": episode})
        assert r.status_code == 404 and "/openenv/reset" in r.json()["detail"]
        assert h.post("/openenv/reset", json={"viewport": {"width": 1}}).status_code == 422
        assert h.get("/openenv/state", params={"episode_id": "ep_none"}).status_code == 404
        SchemaResponse.model_validate(h.get("/openenv/schema").json())
        assert HealthResponse.model_validate(h.get("/openenv/health").json()).status.value == "healthy"
    assert httpx.post(f"{server.base_url}/openenv/reset", json={}).status_code == 401
    basic = httpx.post(f"{server.base_url}/openenv/state", auth=("opencone", "wrong"))
    assert basic.status_code in (401, 405)
    assert httpx.get(f"{server.base_url}/openenv/state", auth=("opencone", "wrong")).status_code == 401
