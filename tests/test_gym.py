"""opencone.gym against a real server: Gymnasium's own env checker, an episode that reaches its
task's reward, failed actions as observations, the BrowserGym and OSWorld adapters, the async
twin, and the vector env stepping 8 browsers; plus the step endpoint's refusals."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from opencone.gym import AsyncComputerEnv, ComputerEnv, ComputerVectorEnv, Task
from tests.conftest import Server

VIEW = (800, 600)


def ref(snapshot: str, role: str, name: str) -> str:
    found = re.search(rf'{role} "{re.escape(name)}"[^\n]*\[ref=(e\d+)\]', snapshot)
    assert found, f"no {role} {name!r} in:\n{snapshot}"
    return found.group(1)


class ReachThree(Task):
    """The counter page's task: press "Add one" until it says "Reached three"."""

    goal = "Make the counter reach three"

    def __init__(self, site: str) -> None:
        self.start_url = f"{site}/gym_counter.html"

    def reward(self, obs: dict[str, Any], computer: Any) -> tuple[float, bool]:
        done = "Reached three" in obs["snapshot"]
        return (1.0 if done else 0.0), done


def test_check_env_passes(server: Server, site: str) -> None:
    env = ComputerEnv(server.base_url, server.api_key, start_url=f"{site}/gym_counter.html", viewport=VIEW)
    try:
        check_env(env.unwrapped, skip_render_check=True)
    finally:
        env.close()


def test_episode_reaches_the_tasks_reward_and_reset_releases_the_computer(server: Server, site: str) -> None:
    env = ComputerEnv(server.base_url, server.api_key, task=ReachThree(site), viewport=VIEW, max_steps=10)
    try:
        obs, info = env.reset(seed=1)
        assert obs["goal"] == "Make the counter reach three"
        assert obs["url"].endswith("/gym_counter.html") and obs["title"] == "Counter"
        assert obs["screenshot"].shape == (600, 800, 3) and obs["screenshot"].dtype == np.uint8
        assert obs["screenshot"].std() > 0  # a page, not a blank frame
        first = info["computer_id"]
        add = ref(obs["snapshot"], "button", "Add one")
        rewards, terminated = [], False
        while not terminated:
            obs, reward, terminated, truncated, step_info = env.step({"action": "click", "ref": add})
            assert step_info["action_ok"] and not truncated
            rewards.append(reward)
        assert rewards == [0.0, 0.0, 1.0]
        assert 'paragraph [ref=e5]: "Count: 3"' in obs["snapshot"]
        _obs, info = env.reset()
        assert info["computer_id"] != first
        with server.http() as h:
            assert h.get(f"/computers/{first}").json()["status"] == "terminated"
    finally:
        env.close()
    with server.http() as h:  # close releases the last one
        assert h.get(f"/computers/{info['computer_id']}").json()["status"] == "terminated"


def test_a_failed_action_is_an_observation(server: Server, site: str) -> None:
    env = ComputerEnv(server.base_url, server.api_key, start_url=f"{site}/gym_counter.html", viewport=VIEW,
                      max_steps=3)
    try:
        env.reset()
        obs, reward, terminated, truncated, info = env.step({"action": "click", "ref": "e999"})
        assert not info["action_ok"] and "ref e999 is not in snapshot" in obs["last_action_error"]
        assert obs["url"].endswith("/gym_counter.html") and obs["snapshot"]  # still observed
        obs, *_rest, info = env.step({"action": "clik", "x": 1, "y": 2})  # refused before any request
        assert not info["action_ok"] and "clik" in obs["last_action_error"]
        obs, *_rest, info = env.step({"action": "click", "x": 5000, "y": 5})  # off the screen: the server says
        assert "outside the screen" in obs["last_action_error"]
        assert _rest[2] is True  # truncated: max_steps reached
        obs, *_rest, info = env.step("click('e3'")  # a BrowserGym string that does not parse
        assert "not a BrowserGym action" in obs["last_action_error"]
        obs, *_rest, info = env.step("__import__('os').system('true')")  # parsed, never evaluated
        assert "one function call a line" in obs["last_action_error"]
        obs, *_rest, info = env.step("exec('x = 1')")
        assert "BrowserGym has no action exec()" in obs["last_action_error"]
        obs, *_rest, info = env.step("click(open('/etc/passwd').read())")
        assert "must be literals" in obs["last_action_error"]
        obs, *_rest, info = env.step("hover('e3')")  # BrowserGym's hover: the pointer onto the element
        assert info["action_ok"], obs["last_action_error"]
        obs, *_rest, info = env.step("upload_file('e3', 'a.txt')")
        assert "PUT /computers" in obs["last_action_error"]
    finally:
        env.close()


def form_state(server: Server, computer_id: str) -> dict[str, Any]:
    with server.http() as h:
        snap = h.post(f"/computers/{computer_id}/step", json={"observe": ["snapshot", "url"]}).json()
    return {"title": snap["title"], "out": re.findall(r'paragraph[^\n]*: "?(Ordered [^"\n]*)', snap["snapshot"])}


def boxes(server: Server, computer_id: str) -> dict[str, tuple[float, float]]:
    """Each named element's centre in screenshot pixels, from a JSON snapshot."""
    with server.http() as h:
        res = h.post(f"/computers/{computer_id}/snapshot", json={"format": "json"}).json()["result"]
    out = {}
    for el in res["elements"]:
        box = el.get("box")
        if box and el.get("name"):
            out[el["name"]] = (box[0] + box[2] / 2, box[1] + box[3] / 2)  # [x, y, width, height]
    return out


def test_browsergym_and_osworld_adapters_reach_the_state_our_actions_do(server: Server, site: str) -> None:
    env = ComputerEnv(server.base_url, server.api_key, start_url=f"{site}/gym_form.html", viewport=VIEW)
    try:
        # our own actions, on refs
        obs, info = env.reset()
        name, colour = ref(obs["snapshot"], "textbox", "Name"), ref(obs["snapshot"], "combobox", "Colour")
        send = ref(obs["snapshot"], "button", "Send order")
        for act in ({"action": "fill", "ref": name, "text": "Ada"},
                    {"action": "select_option", "ref": colour, "values": ["blue"]},
                    {"action": "click", "ref": send}):
            obs, *_rest, step_info = env.step(act)
            assert step_info["action_ok"], obs["last_action_error"]
        ours = form_state(server, info["computer_id"])
        assert ours == {"title": "Sent: Ada/blue", "out": ["Ordered blue for Ada"]}

        # BrowserGym's strings, its bids being our refs
        obs, info = env.reset()
        obs, _r, terminated, _t, step_info = env.step(
            f'fill("{name}", "Ada")\nselect_option("{colour}", "blue")\nclick("{send}")')
        assert step_info["action_ok"], obs["last_action_error"]
        assert form_state(server, info["computer_id"]) == ours
        obs, _r, terminated, _t, step_info = env.step('report_infeasible("nothing left to do")')
        assert terminated and step_info["message"] == "nothing left to do" and step_info["agent_success"] is False

        # OSWorld's computer_13, in pixels: click the field, type, Tab to the select, arrows, click Send
        obs, info = env.reset()
        at = boxes(server, info["computer_id"])
        for act in ({"action_type": "CLICK", "x": at["Name"][0], "y": at["Name"][1]},
                    {"action_type": "TYPING", "text": "Ada"},
                    {"action_type": "PRESS", "key": "tab"},
                    {"action_type": "PRESS", "key": "down"},
                    {"action_type": "PRESS", "key": "down"},
                    {"action_type": "MOVE_TO", "parameters": {"x": at["Send order"][0], "y": at["Send order"][1]}},
                    {"action_type": "CLICK"}):  # where the pointer is now
            obs, _r, terminated, _t, step_info = env.step(act)
            assert step_info["action_ok"], (act, obs["last_action_error"])
        assert form_state(server, info["computer_id"]) == ours
        obs, _r, terminated, _t, step_info = env.step("DONE")
        assert terminated and step_info["agent_success"] is True
    finally:
        env.close()


def test_async_env_runs_episodes_side_by_side(server: Server, site: str) -> None:
    async def episode(env: AsyncComputerEnv, presses: int) -> str:
        obs, _info = await env.reset()
        add = ref(obs["snapshot"], "button", "Add one")
        for _ in range(presses):
            obs, *_rest = await env.step(f"click('{add}')")
        await env.close()
        return re.search(r'"Count: (\d+)"', obs["snapshot"]).group(1)  # type: ignore[union-attr]

    async def main() -> list[str]:
        envs = [AsyncComputerEnv(server.base_url, server.api_key, start_url=f"{site}/gym_counter.html",
                                 viewport=VIEW, observe=("snapshot",)) for _ in range(2)]
        return await asyncio.gather(episode(envs[0], 1), episode(envs[1], 2))

    assert asyncio.run(main()) == ["1", "2"]  # two computers, not one page clicked three times


def test_vector_env_steps_8_computers(server: Server, site: str) -> None:
    venv = ComputerVectorEnv(8, server.base_url, server.api_key, task=ReachThree(site), viewport=VIEW,
                             observe=("snapshot", "url"))
    try:
        obs, infos = venv.reset(seed=0)
        assert len(set(infos["computer_id"])) == 8
        add = ref(obs["snapshot"][0], "button", "Add one")
        for expected in ("1", "2", "3"):
            obs, rewards, terminated, truncated, infos = venv.step([{"action": "click", "ref": add}] * 8)
            assert all(f'"Count: {expected}"' in s for s in obs["snapshot"]), obs["snapshot"]
        assert rewards.tolist() == [1.0] * 8 and terminated.all() and not truncated.any()
        obs, rewards, terminated, _tr, infos = venv.step([{"action": "wait", "ms": 0}] * 8)  # NEXT_STEP autoreset
        assert all('"Count: 0"' in s for s in obs["snapshot"]) and not terminated.any()
    finally:
        venv.close()


def test_step_endpoint_refuses_bad_input(server: Server, cid: str) -> None:
    with server.http() as h:
        r = h.post(f"/computers/{cid}/step", json={"action": {"action": "teleport"}})
        assert r.status_code == 422 and "click" in r.json()["detail"]
        r = h.post(f"/computers/{cid}/step", json={"action": {"action": "click", "ref": "e1", "x": 1, "y": 1}})
        assert r.status_code == 422 and "not both" in r.json()["detail"]
        r = h.post(f"/computers/{cid}/step", json={"action": {"action": "type", "text": "a", "speed": 3}})
        assert r.status_code == 422 and "speed" in r.text
        r = h.post(f"/computers/{cid}/step", json={"observe": ["smell"]})
        assert r.status_code == 422 and "screenshot" in r.text
        r = h.post(f"/computers/{cid}/step", json={"action": {"action": "navigate", "url": "file:///etc/passwd"}})
        assert r.status_code == 422 and "scheme" in r.json()["detail"]
        assert h.post("/computers/comp_nope/step", json={}).status_code == 404
    r = httpx.post(f"{server.base_url}/computers/{cid}/step", json={})
    assert r.status_code == 401


@pytest.mark.parametrize("bad", [{"environment_id": None, "bogus": 1}])
def test_reset_refuses_unknown_options(server: Server, bad: dict[str, Any]) -> None:
    env = ComputerEnv(server.base_url, server.api_key, viewport=VIEW)
    try:
        with pytest.raises(ValueError, match="bogus"):
            env.reset(options=bad)
    finally:
        env.close()
