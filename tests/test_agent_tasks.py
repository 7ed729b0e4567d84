"""Agent tasks under control: pause and resume, injected messages, limits (max_steps,
max_duration_seconds, running tasks), upstream failures and garbage, idempotency, dropped and
re-attached streams, the start parameters, and a restart. Everything through the tzafon SDK
(or plain HTTP where the SDK has no method), against the fake providers, on a real browser.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tzafon
from conftest import Server, start_server, wait_until
from fake_models import FakeModels
from fake_models.site import FormSite
from test_agent_adapters import INSTRUCTION, VALUE, agent_env, assert_done, images_in, stream_task

PREVIEW = "openai/computer-use-preview"


@pytest.fixture(scope="module")
def tasks_server(tmp_path_factory: pytest.TempPathFactory, fake_models_server: FakeModels) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("agent-tasks")
    srv = start_server(tmp, env=agent_env(tmp, fake_models_server, OPENCONE_MAX_RUNNING_TASKS="3"))
    yield srv
    srv.stop()


def status(server: Server, task_id: str) -> Any:
    return server.client().agent.tasks.retrieve_status(task_id)


def wait_ended(server: Server, task_id: str, timeout: float = 30) -> Any:
    assert wait_until(lambda: status(server, task_id).status in ("completed", "failed", "cancelled", "max_steps"),
                      timeout), status(server, task_id)
    return status(server, task_id)


def replay(server: Server, task_id: str, after: int = 0) -> list[dict[str, Any]]:
    """Re-attach through the SDK's own SSE decoder (it has no method for this endpoint of ours)."""
    client = server.client()
    stream = client.get(f"/agent/tasks/{task_id}/stream", cast_to=object, stream=True,
                        stream_cls=tzafon.Stream[object], options={"headers": {"Last-Event-ID": str(after)}})
    return [dict(e) for e in stream]  # type: ignore[arg-type]


def texts_of(body: dict[str, Any]) -> str:
    return json.dumps(body.get("input") or body.get("messages"))


# -- pause, resume, inject ---------------------------------------------------------------------------------------


def test_no_model_request_while_paused_and_resume_finishes(tasks_server: Server, fake_models: FakeModels,
                                                            form_site: FormSite) -> None:
    fake_models.script(latency=0.5)
    client = tasks_server.client()
    task = client.agent.tasks.start(instruction=INSTRUCTION, model=PREVIEW, start_url=form_site.form_url,
                                    viewport_width=1280, viewport_height=720)
    assert task.status in ("queued", "running") and task.task_id.startswith("task_")
    assert wait_until(lambda: len(fake_models.model_requests(bodies=False)) >= 1, 20)
    assert client.agent.tasks.pause(task.task_id).status == "paused"  # while the first model call is in flight
    time.sleep(1.0)  # the call in flight answers; its actions wait for the resume
    paused_at = len(fake_models.model_requests(bodies=False))
    time.sleep(1.5)
    assert len(fake_models.model_requests(bodies=False)) == paused_at == 1
    assert status(tasks_server, task.task_id).status == "paused"
    assert form_site.submissions() == []
    assert client.agent.tasks.resume(task.task_id).status == "running"
    end = wait_ended(tasks_server, task.task_id)
    assert end.status == "completed" and end.exit_code == 0
    events = replay(tasks_server, task.task_id)
    types = [e["type"] for e in events]
    assert types.index("paused") < types.index("resumed") < types.index("action_result")  # the actions waited
    assert form_site.wait_for_submission() == [VALUE]


def test_an_injected_message_goes_with_the_next_model_request(tasks_server: Server, fake_models: FakeModels,
                                                               form_site: FormSite) -> None:
    client = tasks_server.client()
    task = client.agent.tasks.start(instruction=INSTRUCTION, model=PREVIEW, start_url=form_site.form_url,
                                    viewport_width=1280, viewport_height=720)
    client.agent.tasks.pause(task.task_id)
    assert status(tasks_server, task.task_id).status == "paused"
    before = len(fake_models.model_requests(bodies=False))
    message = "Change of plan: type 'green-7' into the field instead."
    assert client.agent.tasks.inject_message(task.task_id, message=message).status == "queued"
    client.agent.tasks.resume(task.task_id)
    end = wait_ended(tasks_server, task.task_id)
    assert end.status == "completed"
    requests = fake_models.model_requests()
    assert message in texts_of(requests[before]["body"])  # the very next request carried it
    assert all(message not in texts_of(r["body"]) for r in requests[:before])
    assert form_site.wait_for_submission() == ["green-7"]  # and the model acted on it
    events = replay(tasks_server, task.task_id)
    injected = [e for e in events if e["type"] == "message_injected"]
    assert len(injected) == 1 and injected[0]["message"] == message


# -- limits --------------------------------------------------------------------------------------------------------


def test_max_steps_ends_the_task_with_its_own_status(tasks_server: Server, fake_models: FakeModels,
                                                     form_site: FormSite) -> None:
    events = stream_task(tasks_server, model=PREVIEW, start_url=form_site.form_url, viewport_width=1280,
                         viewport_height=720, max_steps=2)
    assert events[-1]["type"] == "max_steps" and events[-1]["exit_code"] != 0 and events[-1]["steps"] == 2
    assert len(fake_models.model_requests(bodies=False)) == 2
    st = status(tasks_server, events[0]["task_id"])
    assert st.status == "max_steps" and st.exit_code == 1
    assert form_site.submissions() == []


def test_max_duration_cancels_without_counting_paused_time(tasks_server: Server, fake_models: FakeModels,
                                                           form_site: FormSite) -> None:
    fake_models.script(latency=1.0)
    client = tasks_server.client()
    t0 = time.monotonic()
    task = client.agent.tasks.start(instruction=INSTRUCTION, model=PREVIEW, start_url=form_site.form_url,
                                    viewport_width=1280, viewport_height=720, max_duration_seconds=2)
    client.agent.tasks.pause(task.task_id)
    time.sleep(2.5)  # paused past the whole budget: not counted
    assert status(tasks_server, task.task_id).status == "paused"
    client.agent.tasks.resume(task.task_id)
    end = wait_ended(tasks_server, task.task_id)
    took = time.monotonic() - t0
    assert end.status == "cancelled" and end.exit_code == 1 and end.reason == "max_duration", end
    assert 4.3 < took < 8, took  # 2.5 s paused + 2 s of running, then cancelled in the model call
    assert form_site.submissions() == []


def test_running_tasks_are_capped_with_a_429(tasks_server: Server, fake_models: FakeModels,
                                             form_site: FormSite) -> None:
    client = tasks_server.client()
    started = []
    for _ in range(3):
        t = client.agent.tasks.start(instruction=INSTRUCTION, model=PREVIEW, start_url=form_site.form_url)
        client.agent.tasks.pause(t.task_id)
        started.append(t.task_id)
    computers = {c.id for c in client.computers.list()}
    with pytest.raises(tzafon.RateLimitError) as err:
        client.agent.tasks.start(instruction=INSTRUCTION, model=PREVIEW, start_url=form_site.form_url)
    assert err.value.status_code == 429 and isinstance(err.value.body, dict)
    assert "OPENCONE_MAX_RUNNING_TASKS" in err.value.body["detail"]
    assert {c.id for c in client.computers.list()} == computers  # the refused start made no computer
    for task_id in started:
        assert client.post(f"/agent/tasks/{task_id}/cancel", cast_to=object)["status"] == "cancelled"
    assert all(status(tasks_server, t).status == "cancelled" for t in started)
    assert not fake_models.model_requests(bodies=False)  # paused before their first step


# -- failures ------------------------------------------------------------------------------------------------------


def test_429_and_500_are_retried_then_the_task_completes(tasks_server: Server, fake_models: FakeModels,
                                                         form_site: FormSite) -> None:
    fake_models.script({"status": 429, "count": 1, "retry_after": 0.2}, {"status": 500, "count": 1})
    events = stream_task(tasks_server, model=PREVIEW, start_url=form_site.form_url, viewport_width=1280,
                         viewport_height=720)
    assert_done(tasks_server, events, form_site)
    statuses = [r.get("status") for r in fake_models.model_requests(bodies=False)]
    assert statuses[:3] == [429, 500, 200], statuses
    errors = [e for e in events if e["type"] == "error"]
    assert [(e["status"], e["retrying"]) for e in errors] == [(429, True), (500, True)]


def test_garbage_is_reported_and_the_model_asked_again(tasks_server: Server, fake_models: FakeModels,
                                                       form_site: FormSite) -> None:
    # an action that names nothing (output), then a 200 that is not JSON (body)
    fake_models.script({"garbage": "output", "count": 1}, {"garbage": "body", "count": 1})
    events = stream_task(tasks_server, model=PREVIEW, start_url=form_site.form_url, viewport_width=1280,
                         viewport_height=720)
    assert_done(tasks_server, events, form_site)
    errors = [e for e in events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["bad_action", "bad_model_output"], errors
    assert "dance" in errors[0]["message"] and "not JSON" in errors[1]["message"]
    # the model heard why: the unreadable call's error went back with the next request
    assert "'dance' is not a computer action" in json.dumps(fake_models.model_requests()[1]["body"])


def test_garbage_every_time_fails_the_task(tasks_server: Server, fake_models: FakeModels,
                                           form_site: FormSite) -> None:
    fake_models.script({"garbage": "output", "count": 50})
    events = stream_task(tasks_server, model="anthropic/claude-sonnet-4-5", start_url=form_site.form_url)
    assert events[-1]["type"] == "failed" and events[-1]["reason"] == "repeated_failures"
    assert events[-1]["exit_code"] == 1 and len(fake_models.model_requests(bodies=False)) == 3
    assert status(tasks_server, events[0]["task_id"]).status == "failed"


def test_a_loop_that_goes_nowhere_is_stopped(tasks_server: Server, fake_models: FakeModels) -> None:
    """The fast mode clicks the middle of the screen until told to stop; on a page that never
    changes that is the same action on the same screen, again and again."""
    fake_models.script(mode="fast", fast_steps=50)
    events = stream_task(tasks_server, model=PREVIEW, start_url="data:text/html,<p>nothing changes here</p>",
                         viewport_width=1280, viewport_height=720)
    assert events[-1]["type"] == "failed" and events[-1]["reason"] == "stuck", events[-1]
    assert events[-1]["steps"] == 4 and len(fake_models.model_requests(bodies=False)) == 4


# -- idempotency, streams ------------------------------------------------------------------------------------------


def test_a_retried_start_is_the_same_task(tasks_server: Server, fake_models: FakeModels,
                                          form_site: FormSite) -> None:
    client = tasks_server.client()
    computers = len(client.computers.list())
    params = dict(instruction=INSTRUCTION, model=PREVIEW, start_url=form_site.form_url, viewport_width=1280,
                  viewport_height=720, idempotency_key="order-1234", keep_alive=True)
    first = client.agent.tasks.start(**params)
    again = client.agent.tasks.start(**params)
    assert first.reused is False and again.reused is True and again.task_id == first.task_id
    assert again.idempotency_key == "order-1234"
    # a retried start_stream streams that same task, from its first event
    events = [dict(e) for e in client.agent.tasks.start_stream(**params)]
    assert events[0]["type"] == "task_started" and events[0]["task_id"] == first.task_id
    assert events[-1]["type"] == "completed"
    listed = [t for t in client.get("/agent/tasks", cast_to=object) if t.get("idempotency_key") == "order-1234"]
    assert len(listed) == 1 and len(client.computers.list()) == computers + 1  # one task, one computer
    assert form_site.wait_for_submission() == [VALUE] and len(fake_models.model_requests(bodies=False)) == 4
    client.computers.delete(events[0]["computer_id"])


def test_a_dropped_stream_never_stops_the_task_and_reattaching_loses_nothing(
        tasks_server: Server, fake_models: FakeModels, form_site: FormSite) -> None:
    fake_models.script(latency=0.3)
    client = tasks_server.client()
    stream = client.agent.tasks.start_stream(instruction=INSTRUCTION, model=PREVIEW, start_url=form_site.form_url,
                                             viewport_width=1280, viewport_height=720)
    seen = []
    for event in stream:
        seen.append(dict(event))
        if len(seen) == 5:
            break
    stream.close()  # the client goes away mid-task
    task_id = seen[0]["task_id"]
    assert status(tasks_server, task_id).status == "running"
    rest = replay(tasks_server, task_id, after=seen[-1]["seq"])  # re-attached while it still runs
    assert rest[-1]["type"] == "completed"
    got = [e["seq"] for e in seen + rest if "seq" in e and e["type"] != "heartbeat"]
    assert got == list(range(1, got[-1] + 1))  # none lost, none twice
    everything = [e for e in replay(tasks_server, task_id) if e["type"] != "heartbeat"]
    assert everything == [e for e in seen + rest if e["type"] != "heartbeat"]
    # ?from=N is the same as Last-Event-ID: N-1; and an ended task's stream ends by itself
    with httpx.Client(base_url=tasks_server.base_url, timeout=30) as http:
        r = http.get(f"/agent/tasks/{task_id}/stream", params={"from": 3, "token": tasks_server.api_key})
    frames = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    assert [f["seq"] for f in frames] == list(range(3, got[-1] + 1))
    assert "id: 3\nevent: " in r.text and "[DONE]" not in r.text
    assert form_site.wait_for_submission() == [VALUE]


# -- what a start can ask for -------------------------------------------------------------------------------------


def test_start_parameters_do_what_they_say(tasks_server: Server, fake_models: FakeModels,
                                           form_site: FormSite) -> None:
    events = stream_task(
        tasks_server, model="openai/gpt-5.4", start_url=form_site.form_url, viewport_width=1100, viewport_height=700,
        screenshot_mode="base64", stream_mode="concise", stream_deltas=True, temperature=0.3,
        system_prompt="Always be brief.", metadata={"order": "A-17"},
        context=[{"role": "user", "content": "Hello, I need a form filled in."},
                 {"role": "assistant", "content": "Sure, tell me what to type."}])
    assert_done_concise(events, form_site)
    types = {e["type"] for e in events}
    assert not types & {"step_started", "action", "action_result"}  # concise
    assert "progress_update" in types and "".join(e["delta"] for e in events if e["type"] == "progress_update")
    shots = [e for e in events if e["type"] == "screenshot"]
    assert shots and all(s["image"].startswith("data:image/jpeg;base64,") and "url" not in s for s in shots)
    assert all((s["width"], s["height"]) == (1100, 700) for s in shots)
    assert images_in(shots[0]) == [(1100, 700)]
    assert events[0]["metadata"] == {"order": "A-17"}
    first = fake_models.model_requests()[0]["body"]
    assert first["temperature"] == 0.3 and first["stream"] is True
    assert first["instructions"].endswith("Always be brief.") and "computer-use agent" in first["instructions"]
    said = texts_of(first)
    assert said.index("Hello, I need a form filled in.") < said.index("Sure, tell me") < said.index(VALUE)
    retrieved = tasks_server.client().get(f"/agent/tasks/{events[0]['task_id']}", cast_to=object)
    assert retrieved["metadata"] == {"order": "A-17"} and retrieved["usage"]["input_tokens"] > 0


def assert_done_concise(events: list[dict[str, Any]], form_site: FormSite) -> None:
    assert events[0]["type"] == "task_started" and events[-1]["type"] == "completed"
    assert events[-1]["exit_code"] == 0
    assert form_site.wait_for_submission() == [VALUE]


def test_actions_take_the_rest_api_path_and_keep_alive_keeps_the_computer(
        tasks_server: Server, fake_models: FakeModels, form_site: FormSite) -> None:
    client = tasks_server.client()
    events = stream_task(tasks_server, model=PREVIEW, start_url=form_site.form_url, viewport_width=1280,
                         viewport_height=720, keep_alive=True)
    assert_done(tasks_server, events, form_site)
    cid = events[0]["computer_id"]
    assert client.computers.retrieve(cid).status != "terminated"
    # the computer's own /events saw every action as the REST API would have run it
    request_ids = {e["request_id"] for e in events if e["type"] == "action_result"}
    completed: list[dict[str, Any]] = []
    with httpx.Client(base_url=tasks_server.base_url, timeout=30) as http, \
            http.stream("GET", f"/computers/{cid}/events", params={"from": 1, "token": tasks_server.api_key}) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and json.loads(line[5:])["type"] == "action_completed":
                completed.append(json.loads(line[5:]))
                if request_ids <= {e["request_id"] for e in completed}:
                    break
    assert any("screenshot_url" in (e.get("result") or {}) for e in completed)
    html = client.computers.html(cid).result["html_content"]
    assert '"submissions":["blue-42"]' in html  # the page's own record, read back over the REST API
    # and by default a task's own computer ends with it
    other = stream_task(tasks_server, model=PREVIEW, start_url="data:text/html,<p>x</p>", max_steps=1)
    assert wait_until(lambda: client.computers.retrieve(other[0]["computer_id"]).status == "terminated", 10)
    client.computers.delete(cid)


def test_computer_id_reuses_a_live_computer_and_on_missing_computer(tasks_server: Server, fake_models: FakeModels,
                                                                    form_site: FormSite) -> None:
    client = tasks_server.client()
    mine = client.computers.create(kind="browser", display={"width": 1280, "height": 720})
    events = stream_task(tasks_server, model=PREVIEW, computer_id=mine.id, start_url=form_site.form_url)
    assert events[0]["computer_id"] == mine.id and events[-1]["type"] == "completed"
    assert client.computers.retrieve(mine.id).status != "terminated"  # a computer it was given is kept
    client.computers.delete(mine.id)
    with pytest.raises(tzafon.NotFoundError) as err:
        client.agent.tasks.start(instruction=INSTRUCTION, model=PREVIEW, computer_id=mine.id,
                                 on_missing_computer="fail")
    assert "on_missing_computer" in err.value.body["detail"]
    with pytest.raises(tzafon.NotFoundError):  # restore (the default): not live, never saved
        client.agent.tasks.start(instruction=INSTRUCTION, model=PREVIEW, computer_id=mine.id)
    fresh = stream_task(tasks_server, model=PREVIEW, computer_id=mine.id, on_missing_computer="create_new",
                        start_url="data:text/html,<p>x</p>", max_steps=1)
    assert fresh[0]["computer_id"] != mine.id and fresh[-1]["type"] in ("completed", "max_steps")


def test_a_persistent_task_saves_its_computer_and_a_later_task_restores_it(
        tasks_server: Server, fake_models: FakeModels, form_site: FormSite) -> None:
    client = tasks_server.client()
    first = stream_task(tasks_server, model=PREVIEW, start_url=form_site.form_url, viewport_width=1280,
                        viewport_height=720, save_session=True)
    assert first[-1]["type"] == "completed"
    saved = first[0]["computer_id"]
    assert wait_until(lambda: any(e.id == saved for e in client.computers.list(type="persistent")), 20)
    form_site.clear()
    again = stream_task(tasks_server, model=PREVIEW, computer_id=saved, start_url=form_site.form_url,
                        viewport_width=1280, viewport_height=720)
    assert again[-1]["type"] == "completed" and again[0]["computer_id"] != saved
    assert client.get(f"/agent/tasks/{again[0]['task_id']}", cast_to=object)["kind"] == "browser"
    assert form_site.wait_for_submission() == [VALUE]
    with tasks_server.http() as http:
        assert http.delete(f"/environments/{saved}").status_code == 204


# -- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "field"), [
    ({}, "instruction"),
    ({"instruction": ""}, "instruction"),
    ({"instruction": "x", "max_steps": 0}, "max_steps"),
    ({"instruction": "x", "screenshot_mode": "png"}, "screenshot_mode"),
    ({"instruction": "x", "kind": "phone"}, "kind"),
    ({"instruction": "x", "start_url": "file:///etc/passwd"}, "start_url"),
    ({"instruction": "x", "persistent": True, "save_session": False}, "save_session"),
    ({"instruction": "x", "keep_alive": True, "terminate_on_completion": True}, "keep_alive"),
    ({"instruction": "x", "context": [{"role": "system", "content": "x"}]}, "context"),
    ({"instruction": "x", "metadata": {"a": 1}}, "metadata"),
])
def test_bad_input_is_a_422_naming_the_field(tasks_server: Server, body: dict[str, Any], field: str) -> None:
    with tasks_server.http() as http:
        for path in ("/agent/tasks", "/agent/tasks/stream"):
            r = http.post(path, json=body)
            assert r.status_code == 422, r.text
            assert r.headers["content-type"] == "application/problem+json" and field in r.json()["detail"]
        assert http.get("/agent/tasks/task_nope").status_code == 404
        assert http.post("/agent/tasks/task_nope/pause").status_code == 404
        assert http.post("/agent/tasks/task_nope/messages", json={"message": "hi"}).status_code == 404
        assert http.post("/agent/tasks/task_nope/messages", json={}).status_code == 422


def test_an_unknown_model_is_a_404_that_lists_the_configured_ones(tasks_server: Server) -> None:
    with pytest.raises(tzafon.NotFoundError) as err:
        tasks_server.client().agent.tasks.start(instruction="x", model="nope/never")
    assert "openai/*" in err.value.body["detail"] and "qwen3-vl" in err.value.body["detail"]


def test_without_any_model_a_start_names_the_settings(server: Server) -> None:
    """The suite's plain server has no model configured."""
    with pytest.raises(tzafon.BadRequestError) as err:
        server.client().agent.tasks.start(instruction="x", start_url="about:blank")
    detail = err.value.body["detail"]
    assert "OPENAI_API_KEY" in detail and "OPENCONE_MODELS_FILE" in detail


def test_an_ended_task_refuses_controls_with_409(tasks_server: Server, fake_models: FakeModels) -> None:
    events = stream_task(tasks_server, model=PREVIEW, start_url="data:text/html,<p>x</p>", max_steps=1)
    task_id = events[0]["task_id"]
    with tasks_server.http() as http:
        for path, body in (("pause", None), ("resume", None), ("messages", {"message": "hi"})):
            r = http.post(f"/agent/tasks/{task_id}/{path}", json=body)
            assert r.status_code == 409 and r.headers["x-should-retry"] == "false", r.text
        assert http.post(f"/agent/tasks/{task_id}/cancel").json()["status"] == events[-1]["type"]


# -- a restart -----------------------------------------------------------------------------------------------------


def test_a_restart_marks_running_tasks_failed(tmp_path: Path, fake_models: FakeModels, form_site: FormSite) -> None:
    fake_models.script(latency=3)  # still thinking when the server dies
    env = agent_env(tmp_path, fake_models)
    first = start_server(tmp_path, env=env)
    try:
        task = first.client().agent.tasks.start(instruction=INSTRUCTION, model=PREVIEW, start_url=form_site.form_url)
        assert wait_until(lambda: len(fake_models.model_requests(bodies=False)) >= 1, 20)
    finally:
        first.stop(sig=9)
    fake_models.script(latency=0)
    second = start_server(tmp_path, api_key=first.api_key, data_dir=first.data_dir, env=env)
    try:
        st = status(second, task.task_id)
        assert st.status == "failed" and st.exit_code == 1 and st.reason == "server_restarted"
        assert "restarted" in st.error
        events = replay(second, task.task_id)
        assert [e["type"] for e in events] == ["failed"] and events[0]["reason"] == "server_restarted"
    finally:
        second.stop()


@pytest.mark.parametrize("model", ["anthropic/claude-sonnet-4-5", "qwen3-vl"])
def test_deltas_stream_from_the_other_formats_too(tasks_server: Server, fake_models: FakeModels,
                                                  form_site: FormSite, model: str) -> None:
    """stream_deltas makes the upstream call a stream (Anthropic's and a chat server's SSE), read
    with the vendor SDK's own parser; the deltas arrive as progress_update events."""
    events = stream_task(tasks_server, model=model, start_url=form_site.form_url, viewport_width=1280,
                         viewport_height=720, stream_deltas=True)
    assert_done(tasks_server, events, form_site)
    assert all(r["stream"] for r in fake_models.model_requests(bodies=False))
    deltas = "".join(e["delta"] for e in events if e["type"] == "progress_update")
    assert deltas and ("I will" in deltas or "<tool_call>" in deltas), deltas[:200]


def test_a_desktop_task_fills_in_the_form_in_its_browser(tasks_server: Server, fake_models: FakeModels,
                                                         form_site: FormSite) -> None:
    """kind: desktop. The screenshots are the whole X screen (window manager, browser window and
    all), the clicks go through XTest: the same loop, the same adapters."""
    events = stream_task(tasks_server, model="anthropic/claude-sonnet-4-5", kind="desktop",
                         start_url=form_site.form_url, viewport_width=1280, viewport_height=800)
    assert_done(tasks_server, events, form_site)
    assert events[0]["kind"] == "desktop"
    assert {(e["width"], e["height"]) for e in events if e["type"] == "screenshot"} == {(1280, 800)}


def test_a_pending_safety_check_is_reported_and_acknowledged(tasks_server: Server, fake_models: FakeModels,
                                                             form_site: FormSite) -> None:
    """A computer_call with a pending safety check: a safety_check event, and the next request
    acknowledges it (the fake, like OpenAI, answers 400 otherwise, which would fail the task)."""
    fake_models.script({"safety_check": True, "count": 1})
    events = stream_task(tasks_server, model=PREVIEW, start_url=form_site.form_url, viewport_width=1280,
                         viewport_height=720)
    assert_done(tasks_server, events, form_site)
    checks = [e for e in events if e["type"] == "safety_check"]
    assert len(checks) == 1 and checks[0]["checks"][0]["code"] == "malicious_instructions"
    acked = [i for i in fake_models.model_requests()[1]["body"]["input"] if i.get("acknowledged_safety_checks")]
    assert acked and acked[0]["acknowledged_safety_checks"][0]["id"] == checks[0]["checks"][0]["id"]
