"""Gym resets and steps (opencone.gym) beside their anchors, on the same machine and local page.

- reset: ``ComputerEnv.reset()`` from a saved environment taken from the environment pool
  (``OPENCONE_ENVIRONMENT_POOL``), from the same environment restored cold (a display the pool
  was not made with), and with no environment (the plain browser pool); the anchor is what
  BrowserGym's reset does, a new Chromium and a page: browsergym-core pins playwright 1.44 and
  so cannot share this environment (opencone pins 1.65), so the anchor is a raw Playwright
  ``launch`` + ``new_page`` + ``goto`` + screenshot of the same Chromium, which is a floor for it
  (BrowserGym adds its DOM marking, AX tree and a 0.5 s sleep on top);
- steps per second: one env, and 8 envs in a ``ComputerVectorEnv``, each step a click with its
  observation (screenshot, snapshot, url, tabs); the anchor is a raw Playwright loop of the same
  click + screenshot + ``aria_snapshot`` on one page of a browser of its own;
- step overhead: ``POST /step`` with no observation beside the REST ``/click`` it wraps, and a
  step with its observation beside the four REST calls it replaces (click, tabs, screenshot,
  snapshot), alternated.

Usage: .venv/bin/python bench/bench_gym.py [--resets 10] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import Site, loadavg, start_server, summary

from opencone.config import Settings
from opencone.gym import ComputerEnv, ComputerVectorEnv

PAGES = Path(__file__).resolve().parent.parent / "tests" / "pages"
VIEW = (800, 600)


def metric(server: Any, name: str, label: str) -> float:
    for line in httpx.get(f"{server.base_url}/metrics", headers={"authorization": f"Bearer {server.api_key}"},
                          timeout=30).text.splitlines():
        if line.startswith(name) and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def saved_environment(tmp: Path, site: str) -> tuple[Path, str]:
    data = tmp / "data"
    srv = start_server(tmp, data_dir=data)
    try:
        with srv.http() as h:
            cid = h.post("/computers", json={"persistent": True}).json()["id"]
            h.post(f"/computers/{cid}/step", json={"action": {"action": "navigate",
                                                              "url": f"{site}/gym_cookie.html?set=bench"}})
            h.delete(f"/computers/{cid}")
    finally:
        srv.stop()
    return data, cid


def resets(server: Any, site: str, env_id: str, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ready = f'environment="{env_id}"'
    env = ComputerEnv(server.base_url, server.api_key, environment_id=env_id, viewport=VIEW,
                      start_url=f"{site}/gym_counter.html")
    create, total, hits = [], [], 0
    for _ in range(n):
        deadline = time.monotonic() + 60
        while metric(server, "opencone_environment_pool_ready", ready) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        before = metric(server, "opencone_environment_pool_hits_total", "")
        _obs, info = env.reset()
        hits += int(metric(server, "opencone_environment_pool_hits_total", "") > before)
        create.append(info["create_ms"])
        total.append(info["reset_ms"])
    env.close()
    out["env_pool"] = {"create_ms": summary(create), "reset_ms": summary(total), "pool_hits": hits}
    cold = ComputerEnv(server.base_url, server.api_key, environment_id=env_id, viewport=(640, 480),
                       start_url=f"{site}/gym_counter.html")
    create, total = [], []
    for _ in range(max(3, n // 2)):
        _obs, info = cold.reset()
        create.append(info["create_ms"])
        total.append(info["reset_ms"])
    cold.close()
    out["env_cold"] = {"create_ms": summary(create), "reset_ms": summary(total)}
    plain = ComputerEnv(server.base_url, server.api_key, viewport=(1024, 768), start_url=f"{site}/gym_counter.html")
    create, total = [], []
    for _ in range(n):
        time.sleep(1.0)  # the browser pool refills half a second after a take
        _obs, info = plain.reset()
        create.append(info["create_ms"])
        total.append(info["reset_ms"])
    plain.close()
    out["no_env_browser_pool"] = {"create_ms": summary(create), "reset_ms": summary(total)}
    return out


def playwright_anchor(site: str, n: int, steps: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    chromium = Settings().browser_executable
    launches, loop = [], []
    with sync_playwright() as p:
        for _ in range(n):
            t0 = time.perf_counter()
            browser = p.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": VIEW[0], "height": VIEW[1]})
            page.goto(f"{site}/gym_counter.html")
            page.screenshot(type="jpeg", quality=80)
            launches.append((time.perf_counter() - t0) * 1000)
            browser.close()
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": VIEW[0], "height": VIEW[1]})
        page.goto(f"{site}/gym_counter.html")
        t0 = time.perf_counter()
        for _ in range(steps):
            s0 = time.perf_counter()
            page.mouse.click(110, 122)
            page.screenshot(type="jpeg", quality=80)
            page.aria_snapshot(mode="ai")  # type: ignore[call-arg]
            loop.append((time.perf_counter() - s0) * 1000)
        rate = steps / (time.perf_counter() - t0)
        browser.close()
    return {"launch_goto_screenshot_ms": summary(launches), "click_screenshot_snapshot_ms": summary(loop),
            "steps_per_s": rate}


def step_rates(server: Any, site: str, steps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    env = ComputerEnv(server.base_url, server.api_key, viewport=VIEW, start_url=f"{site}/gym_counter.html")
    env.reset()
    times = []
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step({"action": "click", "x": 110, "y": 122})
        times.append(env.last_step_ms)
    out["1_env"] = {"steps_per_s": steps / (time.perf_counter() - t0), "step_ms": summary(times)}
    env.close()
    venv = ComputerVectorEnv(8, server.base_url, server.api_key, viewport=VIEW, start_url=f"{site}/gym_counter.html")
    venv.reset()
    per, t0 = [], time.perf_counter()
    rounds = max(5, steps // 4)
    for _ in range(rounds):
        s0 = time.perf_counter()
        venv.step([{"action": "click", "x": 110, "y": 122}] * 8)
        per.append((time.perf_counter() - s0) * 1000)
    out["8_envs"] = {"steps_per_s": 8 * rounds / (time.perf_counter() - t0), "vector_step_ms": summary(per)}
    venv.close()
    return out


def overhead(server: Any, site: str, n: int) -> dict[str, Any]:
    with server.http() as h:
        cid = h.post("/computers", json={"display": {"width": VIEW[0], "height": VIEW[1]}}).json()["id"]
        h.post(f"/computers/{cid}/navigate", json={"url": f"{site}/gym_counter.html"})
        rest, step, rest4, full = [], [], [], []
        for _ in range(3):  # warm up both paths
            h.post(f"/computers/{cid}/click", json={"x": 110, "y": 122})
            h.post(f"/computers/{cid}/step", json={"action": {"action": "click", "x": 110, "y": 122}, "observe": []})
        for _ in range(n):
            t0 = time.perf_counter()
            h.post(f"/computers/{cid}/click", json={"x": 110, "y": 122})
            t1 = time.perf_counter()
            h.post(f"/computers/{cid}/step", json={"action": {"action": "click", "x": 110, "y": 122}, "observe": []})
            t2 = time.perf_counter()
            h.post(f"/computers/{cid}/click", json={"x": 110, "y": 122})
            h.post(f"/computers/{cid}/batch", json={"actions": [{"type": "list_tabs"}]})
            shot = h.post(f"/computers/{cid}/screenshot", json={}).json()
            h.get(shot["result"]["screenshot_url"])  # the image itself, which /step sends inline
            h.post(f"/computers/{cid}/snapshot", json={})
            t3 = time.perf_counter()
            h.post(f"/computers/{cid}/step", json={"action": {"action": "click", "x": 110, "y": 122}})
            t4 = time.perf_counter()
            rest.append((t1 - t0) * 1000)
            step.append((t2 - t1) * 1000)
            rest4.append((t3 - t2) * 1000)
            full.append((t4 - t3) * 1000)
        h.delete(f"/computers/{cid}")
    return {"rest_click_ms": summary(rest), "step_click_no_observe_ms": summary(step),
            "ratio_p50": statistics.median(step) / statistics.median(rest),
            "rest_click_tabs_screenshot_snapshot_ms": summary(rest4), "step_click_observed_ms": summary(full),
            "observed_ratio_p50": statistics.median(full) / statistics.median(rest4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resets", type=int, default=10)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    site = Site(PAGES)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gym-"))
    report: dict[str, Any] = {"load_before": loadavg()}
    try:
        data, env_id = saved_environment(tmp, site.url)
        server = start_server(tmp, data_dir=data, env={"OPENCONE_POOL_SIZE": "2",
                                                       "OPENCONE_ENVIRONMENT_POOL": f"{env_id}:2@{VIEW[0]}x{VIEW[1]}"})
        try:
            report["reset"] = resets(server, site.url, env_id, args.resets)
            report["steps"] = step_rates(server, site.url, args.steps)
            report["overhead"] = overhead(server, site.url, args.steps)
        finally:
            server.stop()
        report["anchor_playwright"] = playwright_anchor(site.url, max(3, args.resets // 2), args.steps)
    finally:
        site.close()
    report["load_after"] = loadavg()
    print(json.dumps(report, indent=1, default=lambda v: round(v, 2) if isinstance(v, float) else str(v)))


if __name__ == "__main__":
    main()
