"""Agent-loop benchmark: what the server adds to each step of a task, beside the raw cost of
the step's own browser work, and steps per second with 1 and 10 tasks at once.

Run by hand, never in CI:

    .venv/bin/python bench/bench_agent.py            # 3 tasks of 30 steps, then 10 at once of 20
    .venv/bin/python bench/bench_agent.py --quick    # 1 task of 10 steps, then 10 at once of 5

The model is tests/fake_models in its fast mode (another process, the OpenAI Responses wire
format with the computer_use_preview tool): it answers in about a millisecond, without
looking, with a click at the middle of the screenshot, until the task has taken its steps.
The page has a button there that counts clicks, so the screen changes every step.

* **server time per step**: from the moment the fake has answered one model request to the
  moment it has the next one, read from the fake's own request log (its clock on both ends).
  In between the server parses the answer, runs the click through ComputerService.perform,
  takes a screenshot the same way, stores it, writes the events and the task's record, builds
  the next request (the three newest screenshots as base64) and sends it.
* **raw step**: the same click (``page.mouse.click``) and the same screenshot (CDP
  ``Page.captureScreenshot``, JPEG q80) done directly on a Chromium launched with opencone's
  own launcher, same flags and size: the least any agent loop could spend on the step.
* **steps/s**: model steps done by all tasks together over the time from the first model
  request to the last answer, for one task at a time and for ten at once.

``OPENCONE_AGENT_SETTLE_MS=0``: the loop's pause before a screenshot after input (250 ms by
default, for pages that are still reacting) is off, or it alone would be the step time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import Site, loadavg, start_server, summary
from bench_browser import QUALITY, Raw

from opencone.config import Settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fake_models import start_fake  # noqa: E402 (tests/ holds the fakes)

WIDTH, HEIGHT = 1024, 768
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>agent bench</title></head>
<body style="margin:0;font:20px sans-serif">
<button id="b" style="position:absolute;left:412px;top:334px;width:200px;height:100px"
  onclick="this.textContent='clicks: ' + (++window.n)">clicks: 0</button>
<script>window.n = 0</script></body></html>
"""


class StepRaw(Raw):
    async def step(self) -> float:
        """A click at the middle and a screenshot: the browser work of one agent step."""
        t0 = time.perf_counter()
        await self.page.mouse.click(WIDTH / 2, HEIGHT / 2)
        shot = await self.cdp.send("Page.captureScreenshot", {"format": "jpeg", "quality": QUALITY})
        base64.b64decode(shot["data"])
        return (time.perf_counter() - t0) * 1000


def run_task(client: Any, url: str, steps: int) -> dict[str, Any]:
    task = client.agent.tasks.start(instruction="click the button", model="openai/computer-use-preview",
                                    start_url=url, viewport_width=WIDTH, viewport_height=HEIGHT,
                                    max_steps=steps + 5)
    while True:
        status = client.agent.tasks.retrieve_status(task.task_id)
        if status.status in ("completed", "failed", "cancelled", "max_steps"):
            return dict(status)
        time.sleep(0.05)


def gaps(entries: list[dict[str, Any]]) -> list[float]:
    """Server time between consecutive model requests of one task, in ms."""
    out = []
    for a, b in zip(entries, entries[1:], strict=False):
        out.append((b["t"] - (a["t"] + a["duration_ms"] / 1000)) * 1000)
    return out


def fmt(s: dict[str, Any]) -> str:
    return f"p50 {s['p50']:7.1f}  p95 {s['p95']:7.1f}  (n={s['n']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    single_tasks, single_steps, many, many_steps = (1, 10, 10, 5) if args.quick else (3, 30, 10, 20)
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    (tmp / "site").mkdir()
    (tmp / "site" / "index.html").write_text(PAGE)
    site = Site(tmp / "site")
    url = f"{site.url}/index.html"
    print(f"load average at start: {loadavg()}")
    results: dict[str, Any] = {}
    fake = start_fake(mode="fast", fast_steps=single_steps, log_bodies=False)
    server = start_server(tmp / "server", env={**fake.openai_env(), "OPENCONE_AGENT_SETTLE_MS": "0",
                                               "OPENCONE_POOL_SIZE": "10", "OPENCONE_MAX_RUNNING_TASKS": "20"})
    raw = StepRaw(Settings().browser_executable, tmp)
    try:
        raw.open(url)
        client = server.client()
        server.wait_warm(10, timeout=120)
        # one task at a time: per-step server time, and steps/s
        step_ms: list[float] = []
        single_rate = []
        raw_ms = [raw.run(raw.step()) for _ in range(3)]  # warm-up
        raw_ms = []
        for _ in range(single_tasks):
            fake.clear()
            raw_ms += [raw.run(raw.step()) for _ in range(10)]
            end = run_task(client, url, single_steps)
            assert end["status"] == "completed" and end["steps"] == single_steps + 1, end
            log = fake.model_requests(bodies=False)
            step_ms += gaps(log)
            window = log[-1]["t"] + log[-1]["duration_ms"] / 1000 - log[0]["t"]
            single_rate.append(len(log) / window)
            raw_ms += [raw.run(raw.step()) for _ in range(10)]
        s_api, s_raw = summary(step_ms), summary(raw_ms)
        print(f"\nserver time per agent step (model answer -> next model request), {single_tasks} task(s) of "
              f"{single_steps} steps, one at a time")
        print(f"  through the agent loop   {fmt(s_api)} ms")
        print(f"  raw click + screenshot   {fmt(s_raw)} ms")
        print(f"  ratio of medians         {s_api['p50'] / s_raw['p50']:.2f}x  "
              f"(+{s_api['p50'] - s_raw['p50']:.1f} ms per step)")
        print(f"  steps/s, 1 task          {statistics.median(single_rate):.1f}")
        results.update(step=s_api, raw=s_raw, rate1=statistics.median(single_rate))
        # ten at once: throughput
        fake.script(fast_steps=many_steps)
        fake.clear()
        server.wait_warm(10, timeout=120)
        ends: list[dict[str, Any]] = []
        threads = [threading.Thread(target=lambda: ends.append(run_task(server.client(), url, many_steps)))
                   for _ in range(many)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(ends) == many and all(e["status"] == "completed" for e in ends), ends
        log = fake.model_requests(bodies=False)
        window = max(e["t"] + e["duration_ms"] / 1000 for e in log) - min(e["t"] for e in log)
        rate = len(log) / window
        print(f"\n{many} tasks at once, {many_steps} steps each: {len(log)} model steps in {window:.2f} s "
              f"= {rate:.1f} steps/s ({rate / results['rate1']:.1f}x one task's rate)")
        results.update(rate10=rate)
        print(f"\nload average at end: {loadavg()}")
    finally:
        raw.close()
        server.stop()
        fake.stop()
        site.close()
    asyncio.set_event_loop(None)


if __name__ == "__main__":
    main()
