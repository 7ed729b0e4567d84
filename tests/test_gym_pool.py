"""Resets from saved environments, through the environment pool (OPENCONE_ENVIRONMENT_POOL).

One server saves a browser (a cookie and localStorage) and a desktop (a file in /workspace);
a second server on the same data directory keeps one of each ready, already restored. A gym
reset from either environment then starts from its saved state, and /metrics shows the creates
were pool hits; a reset the pool does not match (another display) still restores, cold.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opencone.gym import ComputerEnv, Task
from tests.conftest import Server, start_server, wait_until

NOTE = "hello from the saved desktop"


def metric(server: Server, name: str, **labels: str) -> float:
    with server.http() as h:
        text = h.get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}{{{want}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, site: str) -> Iterator[tuple[Server, str, str]]:
    tmp = tmp_path_factory.mktemp("gym-pool")
    data = tmp / "data"
    first = start_server(tmp, data_dir=data)
    try:
        with first.http() as h:
            browser = h.post("/computers", json={"kind": "browser", "persistent": True}).json()["id"]
            r = h.post(f"/computers/{browser}/step", json={
                "action": {"action": "navigate", "url": f"{site}/gym_cookie.html?set=blue42"}, "observe": ["snapshot"]})
            assert "cookie=blue42 storage=blue42" in r.json()["snapshot"]
            desktop = h.post("/computers", json={"kind": "desktop", "persistent": True}).json()["id"]
            r = h.post(f"/computers/{desktop}/exec/sync", json={"command": f"echo '{NOTE}' > /workspace/note.txt"})
            assert r.json()["exit_code"] == 0
            for cid in (browser, desktop):  # a persistent computer's DELETE answers once its state is saved
                assert h.delete(f"/computers/{cid}").status_code in (200, 204)
                assert h.get(f"/environments/{cid}").json()["status"] == "saved"
    finally:
        first.stop()
    pool = f"{browser}:1@800x600,{desktop}:1"
    second = start_server(tmp, data_dir=data, env={"OPENCONE_ENVIRONMENT_POOL": pool})
    try:
        yield second, browser, desktop
    finally:
        second.stop()


def test_reset_from_a_saved_browser_takes_a_restored_computer_from_the_pool(saved: tuple[Server, str, str],
                                                                             site: str) -> None:
    server, browser, _desktop = saved
    assert wait_until(lambda: metric(server, "opencone_environment_pool_ready", environment=browser) >= 1, 60)
    hits = metric(server, "opencone_environment_pool_hits_total")
    creates_hit = metric(server, "opencone_computer_creates_total", kind="browser", pool="hit")
    env = ComputerEnv(server.base_url, server.api_key, environment_id=browser, viewport=(800, 600),
                      start_url=f"{site}/gym_cookie.html", observe=("snapshot",))
    try:
        obs, info = env.reset()
        assert "cookie=blue42 storage=blue42" in obs["snapshot"]
        assert metric(server, "opencone_environment_pool_hits_total") == hits + 1
        assert metric(server, "opencone_computer_creates_total", kind="browser", pool="hit") == creates_hit + 1
        with server.http() as h:
            assert h.get(f"/computers/{info['computer_id']}").json()["environment_id"] == browser
        # the pool refills in the background
        assert wait_until(lambda: metric(server, "opencone_environment_pool_ready", environment=browser) >= 1, 60)
    finally:
        env.close()
    other = ComputerEnv(server.base_url, server.api_key, environment_id=browser, viewport=(640, 480),
                        start_url=f"{site}/gym_cookie.html", observe=("snapshot",))
    try:  # a display the pool was not made with: restored cold, the pool left as it was
        obs, _info = other.reset()
        assert "cookie=blue42 storage=blue42" in obs["snapshot"]
        assert metric(server, "opencone_environment_pool_hits_total") == hits + 1
    finally:
        other.close()


def test_a_saved_again_environment_is_restored_anew(saved: tuple[Server, str, str], site: str) -> None:
    server, browser, _desktop = saved
    assert wait_until(lambda: metric(server, "opencone_environment_pool_ready", environment=browser) >= 1, 60)
    with server.http() as h:  # a persistent computer of the environment saves over it when it ends
        cid = h.post("/computers", json={"environment_id": browser, "persistent": True}).json()["id"]
        r = h.post(f"/computers/{cid}/step", json={
            "action": {"action": "navigate", "url": f"{site}/gym_cookie.html?set=red7"}, "observe": ["snapshot"]})
        assert "cookie=red7" in r.json()["snapshot"]
        assert h.delete(f"/computers/{cid}").status_code in (200, 204)
    env = ComputerEnv(server.base_url, server.api_key, environment_id=browser, viewport=(800, 600),
                      start_url=f"{site}/gym_cookie.html", observe=("snapshot",))
    try:
        hits = metric(server, "opencone_environment_pool_hits_total")
        obs, _info = env.reset()  # the pool's computers hold blue42: not handed out
        assert "cookie=red7 storage=red7" in obs["snapshot"]
        assert metric(server, "opencone_environment_pool_hits_total") == hits
        assert wait_until(lambda: metric(server, "opencone_environment_pool_ready", environment=browser) >= 1, 60)
        obs, _info = env.reset()  # the new pool restored the new state
        assert "cookie=red7 storage=red7" in obs["snapshot"]
        assert metric(server, "opencone_environment_pool_hits_total") == hits + 1
    finally:
        env.close()


class ReadNote(Task):
    """A task whose goal is a file of the saved /workspace: read in setup, through exec."""

    def setup(self, computer: Any) -> str:
        res = computer.exec("cat /workspace/note.txt")
        return str(res["stdout"]).strip() if res["exit_code"] == 0 else f"no note: {res['stderr']}"


def test_reset_from_a_saved_desktop_restores_its_workspace(saved: tuple[Server, str, str]) -> None:
    server, _browser, desktop = saved
    assert wait_until(lambda: metric(server, "opencone_environment_pool_ready", environment=desktop) >= 1, 90)
    before = metric(server, "opencone_computer_creates_total", kind="desktop", pool="hit")
    env = ComputerEnv(server.base_url, server.api_key, kind="desktop", environment_id=desktop, viewport=(1280, 720),
                      observe=("screenshot",), task=ReadNote())
    try:
        obs, _info = env.reset()
        assert obs["goal"] == NOTE
        assert obs["screenshot"].shape == (720, 1280, 3)
        assert metric(server, "opencone_computer_creates_total", kind="desktop", pool="hit") == before + 1
    finally:
        env.close()


def test_a_bad_pool_setting_stops_the_server(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="environment pool entry"):
        start_server(tmp_path, env={"OPENCONE_ENVIRONMENT_POOL": "env_a:two"}, timeout=30)
