"""One agent task per adapter, end to end: the tzafon SDK starts it, opencone's loop runs it on a
real browser showing tests/pages/agent_form.html, a fake provider (tests/fake_models, another
process, the vendor's own wire format) decides every step from the screenshot it is sent, and
the form's own server records what the browser submitted.

A task passes only if the screenshot reached the model at the size it was declared, the model's
coordinates were turned back into the right screen pixels (a miss leaves the form unsubmitted),
the actions ran, and the loop stopped on the provider's done signal: ``completed``, exit code 0,
and the recorded submission is the typed value.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Server, start_server
from fake_models import FakeModels
from fake_models.site import FormSite
from PIL import Image

VALUE = "blue-42"
INSTRUCTION = f"Type '{VALUE}' into the field and submit the form."
TERMINAL = ("completed", "failed", "cancelled", "max_steps")


def models_file(path: Path, fake: FakeModels) -> Path:
    """The chat VLMs a user would list for their vLLM servers, here each one the fake in a dialect."""
    entries = []
    for model_id, dialect, upstream in (("qwen3-vl", "qwen3vl", "Qwen/Qwen3-VL-8B-Instruct"),
                                        ("northstar-local", "northstar", "Tzafon/Northstar-CUA-Fast"),
                                        ("ui-tars", "uitars", "ByteDance-Seed/UI-TARS-1.5-7B")):
        entries.append(f'[[models]]\nid = "{model_id}"\nprovider = "openai-chat"\n'
                       f'base_url = "{fake.dialect_base_url(dialect)}"\napi_key_env = "FAKE_VLLM_KEY"\n'
                       f'upstream_model = "{upstream}"\ndialect = "{dialect}"\n')
    path.write_text("\n".join(entries))
    return path


def agent_env(tmp: Path, fake: FakeModels, **extra: str) -> dict[str, str]:
    """Configured as a user would: the vendors' own variables, Lightcone's, and a models file."""
    return {**fake.openai_env(), **fake.anthropic_env(), "OPENCONE_LIGHTCONE_API_KEY": fake.api_key,
            "OPENCONE_LIGHTCONE_BASE_URL": fake.lightcone_base_url, "FAKE_VLLM_KEY": fake.api_key,
            "OPENCONE_MODELS_FILE": str(models_file(tmp / "models.toml", fake)), "OPENCONE_AGENT_SETTLE_MS": "100",
            **extra}


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory: pytest.TempPathFactory, fake_models_server: FakeModels) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("agent-adapters")
    srv = start_server(tmp, env=agent_env(tmp, fake_models_server))
    yield srv
    srv.stop()


def stream_task(server: Server, **params: Any) -> list[dict[str, Any]]:
    params.setdefault("instruction", INSTRUCTION)
    events = [dict(e) for e in server.client().agent.tasks.start_stream(**params)]
    assert events, "no events"
    return events


def images_in(body: Any) -> list[tuple[int, int]]:
    """The size of every image a model request carried (data URLs and Anthropic base64 sources)."""
    found: list[tuple[int, int]] = []

    def size(b64: str) -> tuple[int, int]:
        return Image.open(io.BytesIO(base64.b64decode(b64))).size

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("type") == "base64" and isinstance(value.get("data"), str):
                found.append(size(value["data"]))
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value.startswith("data:image/"):
            found.append(size(value.partition(",")[2]))

    walk(body)
    return found


def assert_done(server: Server, events: list[dict[str, Any]], form_site: FormSite) -> dict[str, Any]:
    types = [e["type"] for e in events]
    assert types[0] == "task_started" and types[-1] == "completed", types
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert "screenshot" in types and "action" in types and "action_result" in types
    assert all(e["ok"] for e in events if e["type"] == "action_result"), events
    assert types.count("completed") == 1 and not set(types) & {"failed", "cancelled", "max_steps"}
    end = events[-1]
    assert end["exit_code"] == 0 and VALUE in (end["result"] or "")
    status = server.client().agent.tasks.retrieve_status(events[0]["task_id"])
    assert status.status == "completed" and status.exit_code == 0 and status.task_id == events[0]["task_id"]
    assert form_site.wait_for_submission() == [VALUE]  # what the browser sent, recorded outside opencone
    return end


def assert_clicks_where_the_model_meant(events: list[dict[str, Any]], requests: list[dict[str, Any]],
                                       viewport: tuple[int, int], batched: bool) -> None:
    """Each click ran within 2 screen pixels of the point the fake aimed at on the image it was sent
    (its log says where, in that image's pixels): the dialect's coordinate space was undone exactly."""
    checked = 0
    for step, request in enumerate(requests, 1):
        decision = request.get("decision") or {}
        steps = decision.get("steps") or []
        planned = [s for s in (steps if batched else steps[:1]) if s["step"] == "click"]
        actual = [e["action"] for e in events if e["type"] == "action" and e["step"] == step
                  and e["action"]["type"] == "click"]
        assert len(actual) == len(planned), (step, planned, actual)
        iw, ih = decision["screen"]["size"] if planned else (1, 1)
        for want, got in zip(planned, actual, strict=True):
            ex, ey = want["x"] * viewport[0] / iw, want["y"] * viewport[1] / ih
            assert abs(got["x"] - ex) <= 2 and abs(got["y"] - ey) <= 2, (step, want, got, (iw, ih))
            checked += 1
    assert checked >= 2


CASES = [
    # model id, viewport, what the request must show
    pytest.param("openai/computer-use-preview", (1280, 720), "preview", id="openai-preview"),
    pytest.param("openai/gpt-5.4", (1280, 720), "ga", id="openai-ga-batched"),
    pytest.param("anthropic/claude-sonnet-4-5", (1280, 720), "computer_20250124", id="anthropic-20250124"),
    pytest.param("anthropic/claude-opus-4-5", (1600, 900), "computer_20251124", id="anthropic-20251124-scaled"),
    pytest.param("qwen3-vl", (1280, 720), "qwen3vl", id="chat-qwen3vl"),
    pytest.param("northstar-local", (1280, 720), "northstar", id="chat-northstar"),
    pytest.param("ui-tars", (1024, 768), "uitars", id="chat-uitars"),
    pytest.param("tzafon.northstar-cua-fast", (1280, 720), "lightcone", id="lightcone"),
]


@pytest.mark.parametrize(("model", "viewport", "flavour"), CASES)
def test_a_task_per_adapter_fills_in_the_form(agent_server: Server, fake_models: FakeModels, form_site: FormSite,
                                              model: str, viewport: tuple[int, int], flavour: str) -> None:
    w, h = viewport
    events = stream_task(agent_server, model=model, start_url=form_site.form_url, viewport_width=w,
                         viewport_height=h)
    assert_done(agent_server, events, form_site)
    shots = [e for e in events if e["type"] == "screenshot"]
    assert all((s["width"], s["height"]) == viewport for s in shots)
    requests = fake_models.model_requests()
    assert len(requests) == events[-1]["steps"] >= 2
    body = requests[-1]["body"]
    if flavour in ("preview", "ga", "lightcone"):
        tool = body["tools"][0]
        expected = {"preview": "computer_use_preview", "ga": "computer", "lightcone": "computer_use"}[flavour]
        assert tool["type"] == expected and requests[-1]["path"] == "/v1/responses"
        if flavour != "ga":
            assert (tool["display_width"], tool["display_height"]) == viewport
        if flavour == "ga":  # the batch: click the field, type, click submit in one computer_call
            assert any(len(e.get("raw", {}).get("actions") or []) >= 3 for e in events if e["type"] == "action")
    elif flavour.startswith("computer_"):
        tool = body["tools"][0]
        assert tool["type"] == flavour and requests[-1]["path"] == "/v1/messages"
        beta = {"computer_20250124": "computer-use-2025-01-24", "computer_20251124": "computer-use-2025-11-24"}
        assert beta[flavour] in requests[-1]["headers"]["anthropic-beta"]
        model_size = (1366, 768) if viewport == (1600, 900) else viewport  # FWXGA for 16:9 screens
        assert (tool["display_width_px"], tool["display_height_px"]) == model_size
        assert set(images_in(body)) == {model_size}  # every screenshot shown at the model's size
        clicks = [e["action"] for e in events if e["type"] == "action" and e["action"]["type"] == "click"]
        assert clicks and all(c["x"] < w and c["y"] < h for c in clicks)  # scaled back to screen pixels
    else:
        assert requests[-1]["path"] == f"/dialect/{flavour}/v1/chat/completions"
        system = body["messages"][0]
        assert system["role"] == "system"
        if flavour != "uitars":
            assert "computer_use" in system["content"] and "<tool_call>" in system["content"]
        else:
            assert "Action Space" in json.dumps(body["messages"][1])
    assert_clicks_where_the_model_meant(events, requests, viewport, batched=flavour == "ga")
    # every request showed the newest screenshot, at the screen's size unless scaled for the model
    for request in requests:
        sizes = images_in(request["body"])
        assert sizes and len(sizes) <= 3  # only the most recent screenshots (max_images)


def test_only_the_most_recent_screenshots_are_sent(agent_server: Server, fake_models: FakeModels,
                                                   form_site: FormSite) -> None:
    """After more steps than max_images (3), each request still carries three images at most, and
    the older turns are text stubs; the task still completes."""
    events = stream_task(agent_server, model="anthropic/claude-sonnet-4-5", start_url=form_site.form_url,
                         viewport_width=1280, viewport_height=720)
    assert_done(agent_server, events, form_site)
    counts = [len(images_in(r["body"])) for r in fake_models.model_requests()]
    assert counts == [1, 2, 3, 3], counts
    last = json.dumps(fake_models.model_requests()[-1]["body"])
    assert "an older screenshot, no longer shown" in last


ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_shows_the_agent_example_file() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"`examples/agent_task.py`:\n\n```python\n(.*?)```", readme, re.S)
    assert block, "README has no agent task example block"
    assert block.group(1).strip() in (ROOT / "examples" / "agent_task.py").read_text()


def test_the_readme_agent_example_runs(agent_server: Server, fake_models: FakeModels, form_site: FormSite) -> None:
    env = {**os.environ, "TZAFON_API_KEY": agent_server.api_key, "LIGHTCONE_BASE_URL": agent_server.base_url,
           "TASK": INSTRUCTION, "START_URL": form_site.form_url, "MODEL": "openai/computer-use-preview"}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "agent_task.py")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert re.search(r"completed after \d+ steps: Submitted 'blue-42'", out.stdout), out.stdout
    assert "status: completed exit code: 0" in out.stdout and "action: {'type': 'click'" in out.stdout
    assert form_site.wait_for_submission() == [VALUE]
