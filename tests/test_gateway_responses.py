"""``/v1/responses`` through a real server: passed on to upstreams with a Responses API
(``openai/*`` and a Lightcone entry, both the fake's), emulated over chat for the others
(``anthropic/*``, an ``openai-chat`` entry), kept in the server's database.

The fake model server (tests/fake_models, another process) logs every request it gets, so
what each upstream was sent (the whole history of a chain, inlined screenshots) is read
from there; answers are read back through the ``openai`` and ``tzafon`` SDKs, whose
``responses.stream()`` enforces the events' order.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import Server, start_server, wait_until
from fake_models import FakeModels
from openai.types.responses import Response as OpenAIResponse
from tzafon.types import ResponseCreateResponse, ResponseOutputMessage

MODELS_TOML = """
[[models]]
id = "vllm-chat"
provider = "openai-chat"
base_url = "{base}"
api_key_env = "FAKE_MODELS_KEY"
upstream_model = "fake-chat"
dialect = "qwen3vl"

[[models]]
id = "vllm-qwen"
provider = "openai-chat"
base_url = "{base}"
api_key_env = "FAKE_MODELS_KEY"
upstream_model = "Qwen/Qwen3-VL-8B-Instruct"
dialect = "qwen3vl"

[[models]]
id = "tzafon.northstar-cua-fast"
provider = "lightcone"
base_url = "{lightcone}"
api_key_env = "FAKE_MODELS_KEY"
"""
EMULATED = "anthropic/claude-sonnet-4-5"


def _env(fake: FakeModels, models: Path) -> dict[str, str]:
    return {**fake.openai_env(), **fake.anthropic_env(), "OPENCONE_MODELS_FILE": str(models),
            "FAKE_MODELS_KEY": fake.api_key, "OPENCONE_POOL_SIZE": "0", "OPENCONE_MODEL_MAX_RETRIES": "0"}


@pytest.fixture(scope="module")
def models_file(tmp_path_factory: pytest.TempPathFactory, fake_models_server: FakeModels) -> Path:
    path = tmp_path_factory.mktemp("gateway-models") / "models.toml"
    path.write_text(MODELS_TOML.format(base=fake_models_server.base_url,
                                       lightcone=fake_models_server.lightcone_base_url))
    return path


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_models_server: FakeModels, models_file: Path) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("gateway-responses"), env=_env(fake_models_server, models_file))
    yield srv
    srv.stop()


def _openai(server: Server, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(api_key=key or server.api_key, base_url=f"{server.base_url}/v1", max_retries=0)


def _other_org_key(server: Server) -> str:
    out = subprocess.run([sys.executable, "-m", "opencone", "keys", "create", "--new-org", "other", "--data-dir",
                          str(server.data_dir)], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip().splitlines()[-1]


def _texts(entry: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, text) of each chat message the fake got."""
    out = []
    for m in entry["body"]["messages"]:
        content = m.get("content")
        text = content if isinstance(content, str) or content is None else " ".join(
            p.get("text", "") for p in content if p.get("type") == "text")
        out.append((m["role"], text))
    return out


# -- native --------------------------------------------------------------------------------------------
def test_native_create_retrieve_items_chain_delete(gw: Server, fake_models: FakeModels) -> None:
    client = _openai(gw)
    first = client.responses.create(model="openai/gpt-5.4", input="hello native", instructions="be kind")
    assert first.output_text == "echo: hello native" and first.id.startswith("resp_")
    sent = fake_models.requests(api="responses")[-1]
    assert sent["model"] == "gpt-5.4" and sent["body"]["instructions"] == "be kind"
    assert client.responses.retrieve(first.id).output_text == "echo: hello native"
    items = client.responses.input_items.list(first.id)
    assert [i.type for i in items.data] == ["message"]
    second = client.responses.create(model="openai/gpt-5.4", input="again", previous_response_id=first.id)
    assert second.previous_response_id == first.id  # the upstream holds the chain: passed on as it was
    assert fake_models.requests(api="responses")[-1]["body"]["previous_response_id"] == first.id
    client.responses.delete(first.id)
    assert fake_models.requests(api="responses.delete")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_another_organisations_response_is_no_response(gw: Server, fake_models: FakeModels) -> None:
    mine = _openai(gw)
    native = mine.responses.create(model="openai/gpt-5.4", input="secret")
    emulated = mine.responses.create(model=EMULATED, input="secret")
    theirs = _openai(gw, _other_org_key(gw))
    before = fake_models.last_seq()
    for rid in (native.id, emulated.id):
        with pytest.raises(openai.NotFoundError) as err:
            theirs.responses.retrieve(rid)
        assert err.value.body["code"] == "response_not_found"
        with pytest.raises(openai.NotFoundError):
            theirs.responses.delete(rid)
        with pytest.raises(openai.NotFoundError):
            theirs.responses.create(model="openai/gpt-5.4", input="more", previous_response_id=rid)
    assert fake_models.requests(since=before) == []  # the upstream was never asked
    assert mine.responses.retrieve(native.id).id == native.id and mine.responses.retrieve(emulated.id).id


def test_native_streams_pass_through_and_are_noted(gw: Server, fake_models: FakeModels) -> None:
    client = _openai(gw)
    with client.responses.stream(model="openai/gpt-5.4", input="streamed native") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.output_text == "echo: streamed native"
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert client.responses.retrieve(final.id).status == "completed"  # noted as ours from its first event
    # the upstream's replay, passed on: from the event after starting_after
    replay = list(client.responses.retrieve(final.id, stream=True, starting_after=2))
    assert [e.type for e in replay] == kinds[3:] and replay[0].sequence_number == 3
    assert fake_models.requests(api="responses.retrieve")[-1]["query"] == "stream=true&starting_after=2"
    # a native background response: cancelled at its upstream
    fake_models.script(latency=6)
    slow = client.responses.create(model="openai/gpt-5.4", input="slowly", background=True)
    assert client.responses.cancel(slow.id).status == "cancelled"
    assert fake_models.requests(api="responses.cancel")


def test_own_screenshot_links_are_inlined_other_urls_pass(gw: Server, fake_models: FakeModels) -> None:
    lc = gw.client()
    computer = lc.computers.create(kind="browser")
    try:
        url = lc.computers.screenshot(computer.id).result["screenshot_url"]  # what get_screenshot_url gives
        for model in ("openai/gpt-5.4", EMULATED):
            out = _openai(gw).responses.create(model=model, input=[{"role": "user", "content": [
                {"type": "input_text", "text": "what is on it"}, {"type": "input_image", "image_url": url}]}])
            assert out.output_text == "echo: what is on it [images: 1024x768 jpeg]", model
    finally:
        lc.computers.delete(computer.id)
    sent = fake_models.requests(api="responses")[-1]["body"]["input"][0]["content"][1]["image_url"]
    assert sent.startswith("data:image/jpeg;base64,")
    foreign = "https://images.example/cat.png"
    _openai(gw).responses.create(model="openai/gpt-5.4", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "x"}, {"type": "input_image", "image_url": foreign}]}])
    assert fake_models.requests(api="responses")[-1]["body"]["input"][0]["content"][1]["image_url"] == foreign


# -- emulated ------------------------------------------------------------------------------------------
def test_emulated_create_retrieve_items_delete(gw: Server, fake_models: FakeModels) -> None:
    client = _openai(gw)
    created = client.responses.create(model=EMULATED, input="hello emulated", metadata={"k": "v"})
    raw = client.responses.with_raw_response.retrieve(created.id)
    body = json.loads(raw.text)
    OpenAIResponse.model_validate(body)  # every field the openai SDK's type wants, of its type
    assert body["id"] == created.id and body["status"] == "completed" and body["model"] == EMULATED
    assert body["output"][0]["content"][0]["text"] == "echo: hello emulated" and body["metadata"] == {"k": "v"}
    assert body["usage"]["input_tokens"] > 0 and isinstance(body["created_at"], int)
    assert fake_models.requests(api="messages")[-1]["model"] == "claude-sonnet-4-5"
    items = client.responses.input_items.list(created.id)
    assert items.data[0].type == "message" and items.data[0].content[0].text == "hello emulated"
    deleted = httpx.delete(f"{gw.base_url}/v1/responses/{created.id}",
                           headers={"authorization": f"Bearer {gw.api_key}"}, timeout=10)
    assert deleted.json() == {"id": created.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_previous_response_id_sends_the_whole_chain_but_not_old_instructions(gw: Server,
                                                                              fake_models: FakeModels) -> None:
    client = _openai(gw)
    first = client.responses.create(model="vllm-chat", input="first question", instructions="old rules")
    second = client.responses.create(model="vllm-chat", input="second question", previous_response_id=first.id,
                                     instructions="new rules")
    assert second.output_text == "echo: second question" and second.previous_response_id == first.id
    assert _texts(fake_models.requests(api="chat")[-1]) == [
        ("system", "new rules"), ("user", "first question"), ("assistant", "echo: first question"),
        ("user", "second question")]
    # the chain goes on with another emulated upstream, and with a native one (its items as input)
    third = client.responses.create(model=EMULATED, input="third", previous_response_id=second.id)
    sent = fake_models.requests(api="messages")[-1]["body"]
    assert "system" not in sent and [m["role"] for m in sent["messages"]] == ["user", "assistant"] * 2 + ["user"]
    client.responses.create(model="openai/gpt-5.4", input="fourth", previous_response_id=third.id)
    native = fake_models.requests(api="responses")[-1]["body"]
    assert "previous_response_id" not in native and len(native["input"]) == 7
    assert [i.get("role") for i in native["input"]] == ["user", "assistant"] * 3 + ["user"]


def test_store_false_is_never_retrievable(gw: Server, fake_models: FakeModels) -> None:
    client = _openai(gw)
    gone = client.responses.create(model=EMULATED, input="forget me", store=False)
    assert gone.output_text == "echo: forget me" and gone.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(gone.id)
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model=EMULATED, input="more", previous_response_id=gone.id)
    assert err.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=EMULATED, input="x", store=False, background=True)


def test_background_runs_and_cancel_cancels(gw: Server, fake_models: FakeModels) -> None:
    client = _openai(gw)
    done = client.responses.create(model=EMULATED, input="in the background", background=True)
    assert done.status == "in_progress" and done.background is True
    assert wait_until(lambda: client.responses.retrieve(done.id).status == "completed", timeout=10)
    assert client.responses.retrieve(done.id).output_text == "echo: in the background"
    fake_models.script(latency=6)
    t0 = time.monotonic()
    slow = client.responses.create(model=EMULATED, input="never mind", background=True)
    assert time.monotonic() - t0 < 2 and slow.status == "in_progress"
    assert wait_until(lambda: fake_models.requests(api="messages")[-1]["body"]["messages"][0]["content"][0]["text"]
                      == "never mind", timeout=5)
    assert client.responses.retrieve(slow.id).status == "in_progress"
    assert client.responses.cancel(slow.id).status == "cancelled"
    assert time.monotonic() - t0 < 5  # the upstream call was abandoned, not waited for
    assert client.responses.retrieve(slow.id).status == "cancelled"
    assert client.responses.cancel(slow.id).status == "cancelled"  # twice is no error
    fake_models.script(latency=0)
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(client.responses.create(model="vllm-chat", input="fg").id)  # not background


def test_stream_event_order_is_what_the_sdk_enforces_and_replays(gw: Server, fake_models: FakeModels) -> None:
    fake_models.script(chunk=4)
    client = _openai(gw)
    with client.responses.stream(model=EMULATED, input="stream this answer") as stream:
        events = [event for event in stream]
        final = stream.get_final_response()
    assert final.output_text == "echo: stream this answer" and final.status == "completed"
    kinds = [e.type for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 4  # one per upstream chunk
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * deltas,
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # GET ?stream=true&starting_after=N: the same events from N+1, after the end too
    with httpx.stream("GET", f"{gw.base_url}/v1/responses/{final.id}", params={"stream": "true", "starting_after": 4},
                      headers={"authorization": f"Bearer {gw.api_key}"}, timeout=10) as replay:
        lines = [json.loads(line[6:]) for line in replay.iter_lines() if line.startswith("data: ")]
    assert [(e["sequence_number"], e["type"], e.get("delta")) for e in lines] == [
        (e.sequence_number, e.type, getattr(e, "delta", None)) for e in events[5:]]
    assert lines[-1]["type"] == "response.completed" and lines[-1]["response"]["id"] == final.id


def test_a_background_stream_can_be_followed_live_from_where_it_dropped(gw: Server, fake_models: FakeModels) -> None:
    fake_models.script(chunk=2, stream_interval=0.1)
    client = _openai(gw)
    stream = client.responses.create(model="vllm-chat", input="a longer answer to follow", background=True,
                                     stream=True)
    seen = []
    for event in stream:
        seen.append(event)
        if len(seen) == 5:
            break  # the client drops the stream: the response goes on
    stream.close()
    rid = seen[0].response.id
    assert client.responses.retrieve(rid).status == "in_progress"  # still being made, as the upstream streams
    rest = list(client.responses.retrieve(rid, stream=True, starting_after=seen[-1].sequence_number))
    assert rest[0].sequence_number == 5 and rest[-1].type == "response.completed"
    text = "".join(e.delta for e in seen + rest if e.type == "response.output_text.delta")
    assert text == "echo: a longer answer to follow"
    # a background response created without a stream can be followed live too, delta by delta
    quiet = client.responses.create(model=EMULATED, input="followed from the start", background=True)
    events = list(client.responses.retrieve(quiet.id, stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 5 and "".join(deltas) == "echo: followed from the start"
    assert events[0].type == "response.created" and events[-1].type == "response.completed"


def test_function_calls_come_out_as_items_streamed_or_not(gw: Server, fake_models: FakeModels) -> None:
    fake_models.script(mode="fast", chunk=5)
    client = _openai(gw)
    tool = {"type": "function", "name": "computer_use", "description": "use the computer",
            "parameters": {"type": "object", "properties": {"action": {"type": "string"}}}}
    plain = client.responses.create(model="vllm-qwen", input="click something", tools=[tool])
    call = plain.output[0]
    assert call.type == "function_call" and call.name == "computer_use"
    assert json.loads(call.arguments)["action"] == "left_click"
    with client.responses.stream(model="vllm-qwen", input="click something", tools=[tool]) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert final.output[0].type == "function_call" and json.loads(final.output[0].arguments)["action"] == "left_click"
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    sent = fake_models.requests(api="chat")[-1]["body"]
    assert sent["tools"][0] == {"type": "function", "function": {
        "name": "computer_use", "description": "use the computer", "parameters": tool["parameters"]}}
    # its output goes back as a tool message
    client.responses.create(model="vllm-qwen", previous_response_id=final.id, input=[
        {"type": "function_call_output", "call_id": final.output[0].call_id, "output": "clicked"}], tools=[tool])
    messages = fake_models.requests(api="chat")[-1]["body"]["messages"]
    assert messages[-2]["tool_calls"][0]["id"] == final.output[0].call_id
    assert messages[-1] == {"role": "tool", "tool_call_id": final.output[0].call_id, "content": "clicked"}


def test_upstream_failures_and_bad_requests(gw: Server, fake_models: FakeModels) -> None:
    client = _openai(gw)
    fake_models.fail(503, message="overloaded, sorry")
    with pytest.raises(openai.InternalServerError) as err:
        client.responses.create(model=EMULATED, input="hi")
    assert err.value.status_code == 502 and "overloaded, sorry" in err.value.message
    fake_models.fail(500, message="native is down")
    with pytest.raises(openai.InternalServerError) as native:
        client.responses.create(model="openai/gpt-5.4", input="hi")
    assert native.value.status_code == 502 and "native is down" in native.value.message
    fake_models.fail(500, message="mid stream")
    with client.responses.stream(model=EMULATED, input="hi") as stream:
        kinds = [e.type for e in stream]
    assert kinds[-1] == "response.failed"
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=EMULATED, input=42)  # type: ignore[arg-type]
    assert bad.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as tool:
        client.responses.create(model=EMULATED, input="x", tools=[{"type": "web_search"}])
    assert tool.value.body["param"] == "tools[0]"
    with pytest.raises(openai.NotFoundError) as model:
        client.responses.create(model="nobody", input="x")
    assert model.value.body["code"] == "model_not_found" and "tzafon.northstar-cua-fast" in model.value.message


# -- the tzafon SDK ------------------------------------------------------------------------------------
def test_the_tzafon_sdk_gets_typed_responses(gw: Server, fake_models: FakeModels) -> None:
    client = gw.client()
    for model in ("tzafon.northstar-cua-fast", EMULATED):
        created = client.responses.create(model=model, input="from tzafon")
        assert isinstance(created, ResponseCreateResponse) and isinstance(created.created_at, int)
        assert created.status == "completed" and created.object == "response"
        assert isinstance(created.output[0], ResponseOutputMessage), created.output  # strict: not a plain dict
        assert created.output[0].content[0].text == "echo: from tzafon"
        assert client.responses.retrieve(created.id)["id"] == created.id
    assert fake_models.requests(api="responses")[-1]["path"] == "/v1/responses"  # Lightcone's, through /v1
    background = client.responses.create(model=EMULATED, input="bg", background=True)
    assert background.status == "in_progress"
    assert client.responses.cancel(background.id)["status"] in ("cancelled", "completed")


def test_a_restart_fails_what_was_running(tmp_path: Path, fake_models: FakeModels, models_file: Path) -> None:
    srv = start_server(tmp_path, env=_env(fake_models, models_file))
    try:
        fake_models.script(latency=6)
        rid = _openai(srv).responses.create(model=EMULATED, input="slow", background=True).id
        assert wait_until(lambda: fake_models.requests(api="messages"), timeout=5)
    finally:
        srv.stop(signal.SIGKILL)  # a crash: nothing said it failed on the way down
    again = start_server(tmp_path, api_key=srv.api_key, data_dir=srv.data_dir, env=_env(fake_models, models_file))
    try:
        body = _openai(again).responses.retrieve(rid)
        assert body.status == "failed" and "stopped" in body.error.message  # said by the next start
    finally:
        again.stop()
