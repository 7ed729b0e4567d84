"""``/v1/chat/completions`` through a real server, its upstreams the fake model providers
(tests/fake_models, another process), configured as a user would: ``OPENAI_BASE_URL`` and
``OPENAI_API_KEY``, ``ANTHROPIC_BASE_URL`` and ``ANTHROPIC_API_KEY``, a models file.

Every answer checked here is read back through the official SDKs (``openai``, ``tzafon``),
and what reached the upstream through the fake's own request log.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from conftest import Server, start_server
from fake_models import FakeModels

MODELS_TOML = """
[[models]]
id = "vllm-chat"
provider = "openai-chat"
base_url = "{base}"
api_key_env = "FAKE_MODELS_KEY"
upstream_model = "fake-chat"
dialect = "qwen3vl"

[[models]]
id = "dead-end"
provider = "openai-chat"
base_url = "http://127.0.0.1:9/v1"
upstream_model = "nothing"
dialect = "qwen3vl"
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_models_server: FakeModels) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("gateway-chat")
    models = tmp / "models.toml"
    models.write_text(MODELS_TOML.format(base=fake_models_server.base_url))
    env = {**fake_models_server.openai_env(), **fake_models_server.anthropic_env(),
           "OPENCONE_MODELS_FILE": str(models), "FAKE_MODELS_KEY": fake_models_server.api_key,
           "OPENCONE_POOL_SIZE": "0", "OPENCONE_MODEL_MAX_RETRIES": "0", "OPENCONE_MODEL_TIMEOUT_SECONDS": "2"}
    srv = start_server(tmp, env=env)
    yield srv
    srv.stop()


def _openai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(api_key=server.api_key, base_url=f"{server.base_url}/v1", max_retries=0)


def _only(fake: FakeModels, api: str) -> dict:
    entries = fake.requests(api=api)
    assert len(entries) == 1, entries
    return entries[0]


def test_openai_models_go_to_openai_by_their_name(gw: Server, fake_models: FakeModels) -> None:
    reply = _openai(gw).chat.completions.create(model="openai/gpt-5.4", messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}])
    assert reply.choices[0].message.content == "echo: hello there"
    sent = _only(fake_models, "chat")
    assert sent["model"] == "gpt-5.4" and sent["body"]["messages"][1] == {"role": "user", "content": "hello there"}
    assert sent["headers"]["authorization"] == f"Bearer {fake_models.api_key}"  # the upstream's key, not ours


def test_streams_chunk_by_chunk_with_usage_then_done(gw: Server, fake_models: FakeModels) -> None:
    fake_models.script(chunk=3, stream_interval=0.15)
    client = _openai(gw)
    t0 = time.monotonic()
    arrivals, texts, usage = [], [], None
    stream = client.chat.completions.create(model="openai/gpt-5.4", messages=[{"role": "user", "content": "abcdefghi"}],
                                            stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        arrivals.append(time.monotonic() - t0)
        if chunk.choices:
            texts.append(chunk.choices[0].delta.content or "")
            assert chunk.usage is None
        else:
            usage = chunk.usage
    assert "".join(texts) == "echo: abcdefghi"
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0
    # passed on as the upstream sent them, not gathered first: the first came long before the last
    assert arrivals[-1] - arrivals[0] > 0.5, arrivals
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {gw.api_key}"},
                      json={"model": "openai/gpt-5.4", "messages": [{"role": "user", "content": "x"}], "stream": True},
                      timeout=30) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        body = raw.read().decode()
    assert body.rstrip().endswith("data: [DONE]")


def test_fields_openai_does_not_know_are_dropped_for_openai_and_sent_to_vllm(gw: Server,
                                                                               fake_models: FakeModels) -> None:
    extras = {"top_k": 5, "repetition_penalty": 1.1, "chat_template_kwargs": {"enable_thinking": False}}
    raw = _openai(gw).chat.completions.with_raw_response.create(
        model="openai/gpt-5.4", messages=[{"role": "user", "content": "hi"}], temperature=0.5, extra_body=extras)
    assert raw.headers["x-opencone-dropped-fields"] == "chat_template_kwargs, repetition_penalty, top_k"
    sent = _only(fake_models, "chat")["body"]
    assert sent["temperature"] == 0.5 and not set(extras) & set(sent)
    fake_models.clear()
    raw = _openai(gw).chat.completions.with_raw_response.create(
        model="vllm-chat", messages=[{"role": "user", "content": "hi"}], extra_body=extras)
    assert "x-opencone-dropped-fields" not in raw.headers
    sent = _only(fake_models, "chat")
    assert sent["model"] == "fake-chat" and {k: sent["body"][k] for k in extras} == extras


def test_anthropic_models_are_translated_both_ways_images_and_tools_included(gw: Server,
                                                                             fake_models: FakeModels) -> None:
    client = gw.client()
    computer = client.computers.create(kind="browser")
    try:
        url = client.computers.screenshot(computer.id).result["screenshot_url"]
        jpeg = httpx.get(url, timeout=10).content
        messages = [
            {"role": "system", "content": "You look at screens."},
            {"role": "user", "content": "what is the weather"},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
            {"role": "user", "content": [{"type": "text", "text": "describe this screen"},
                                         {"type": "image_url", "image_url": {"url": url}}]},
        ]
        tools = [{"type": "function", "function": {"name": "weather", "description": "the weather",
                                                   "parameters": {"type": "object", "properties": {}}}}]
        reply = _openai(gw).chat.completions.create(model="anthropic/claude-sonnet-4-5", messages=messages,
                                                    tools=tools, max_tokens=300)
    finally:
        client.computers.delete(computer.id)
    # the fake decoded the image it got: a JPEG of the computer's screen
    assert reply.choices[0].message.content == "echo: describe this screen [images: 1024x768 jpeg]"
    assert reply.object == "chat.completion" and reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 0 and reply.model == "anthropic/claude-sonnet-4-5"
    sent = _only(fake_models, "messages")
    body = sent["body"]
    assert sent["model"] == "claude-sonnet-4-5" and body["system"] == "You look at screens."
    assert body["max_tokens"] == 300 and body["tools"][0]["name"] == "weather"
    assert body["tools"][0]["input_schema"] == {"type": "object", "properties": {}}
    user, assistant, results = body["messages"]
    assert assistant == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}}]}
    # the tool's result and the next user turn are one user message, as Messages requires
    assert results["role"] == "user" and results["content"][0] == {
        "type": "tool_result", "tool_use_id": "call_1", "content": "rain"}
    image = results["content"][2]
    assert image["source"]["type"] == "base64" and image["source"]["media_type"] == "image/jpeg"
    assert base64.b64decode(image["source"]["data"]) == jpeg  # our own link, inlined: the very bytes
    assert user == {"role": "user", "content": [{"type": "text", "text": "what is the weather"}]}


def test_anthropic_streams_as_chat_chunks_with_usage(gw: Server, fake_models: FakeModels) -> None:
    stream = _openai(gw).chat.completions.create(model="anthropic/claude-sonnet-4-5", stream=True,
                                                 messages=[{"role": "user", "content": "stream me"}],
                                                 stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: stream me"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1 and _only(fake_models, "messages")["stream"] is True


def test_a_foreign_image_url_passes_through(gw: Server, fake_models: FakeModels) -> None:
    url = "https://images.example/cat.png"
    _openai(gw).chat.completions.create(model="vllm-chat", messages=[{"role": "user", "content": [
        {"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": url}}]}])
    assert _only(fake_models, "chat")["body"]["messages"][0]["content"][1]["image_url"]["url"] == url


def test_an_expired_screenshot_link_is_a_400_naming_the_field(gw: Server, fake_models: FakeModels) -> None:
    url = f"{gw.base_url}/files/{'A' * 32}.jpg"
    with pytest.raises(openai.BadRequestError) as err:
        _openai(gw).chat.completions.create(model="vllm-chat", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}]}])
    assert err.value.body["param"] == "messages[0].content[0].image_url"
    assert "expired" in err.value.body["message"] and not fake_models.requests(api="chat")


def test_upstream_failures_are_502_504_with_the_upstreams_message(gw: Server, fake_models: FakeModels) -> None:
    client = _openai(gw)
    ask = {"messages": [{"role": "user", "content": "hi"}]}
    fake_models.fail(500, message="the GPUs are on fire")
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="openai/gpt-5.4", **ask)
    assert err.value.status_code == 502 and "the GPUs are on fire" in err.value.message
    assert err.value.body["type"] == "upstream_error" and err.value.response.headers["x-should-retry"] == "false"
    fake_models.fail(429, retry_after=7)
    with pytest.raises(openai.RateLimitError) as rate:
        client.chat.completions.create(model="anthropic/claude-sonnet-4-5", **ask)
    assert rate.value.response.headers["retry-after"] == "7" and "Rate limit" in rate.value.message
    fake_models.script({"delay": 4})
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as slow:
        client.chat.completions.create(model="vllm-chat", **ask)
    assert slow.value.status_code == 504 and time.monotonic() - t0 < 3.5  # OPENCONE_MODEL_TIMEOUT_SECONDS=2
    with pytest.raises(openai.InternalServerError) as dead:
        client.chat.completions.create(model="dead-end", **ask)
    assert dead.value.status_code == 502 and "dead-end could not be reached" in dead.value.message


def test_bad_requests_are_openai_shaped_4xx(gw: Server, fake_models: FakeModels) -> None:
    client = _openai(gw)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.body["code"] == "model_not_found"
    assert "vllm-chat" in unknown.value.message and "openai/*" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="vllm-chat", messages=[])
    assert empty.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as n:
        client.chat.completions.create(model="anthropic/claude-sonnet-4-5", n=2,
                                       messages=[{"role": "user", "content": "hi"}])
    assert n.value.body["param"] == "n"
    http = httpx.Client(base_url=gw.base_url, timeout=10)
    r = http.post("/chat/completions", content=b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
                  headers={"authorization": f"Bearer {gw.api_key}", "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "messages[0].content"  # api/guard.py, our shape
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert not fake_models.model_requests()


def test_the_tzafon_sdk_gets_chat_completions(gw: Server, fake_models: FakeModels) -> None:
    client = gw.client()
    reply = client.chat.create_completion(model="vllm-chat", messages=[{"role": "user", "content": "from tzafon"}])
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"] == "echo: from tzafon"
    streamed = client.chat.create_completion(model="anthropic/claude-sonnet-4-5", stream=True,
                                             messages=[{"role": "user", "content": "from tzafon"}])
    assert isinstance(streamed, str) and streamed.rstrip().endswith("data: [DONE]") and "echo: from" in streamed
