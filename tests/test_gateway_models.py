"""``/v1/models`` (and ``/models``, ``/v1/models/{id}``) and ``opencone models [--check]``, with
upstreams configured as a user would (the fake model providers of tests/fake_models, a
models file) and with none at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from conftest import Server, start_server
from fake_models import FakeModels

MODELS_TOML = """
[[models]]
id = "vllm-qwen"
provider = "openai-chat"
base_url = "{base}"
api_key_env = "FAKE_MODELS_KEY"
upstream_model = "Qwen/Qwen3-VL-8B-Instruct"
dialect = "qwen3vl"
default = true

[[models]]
id = "dead-end"
provider = "openai-chat"
base_url = "http://127.0.0.1:9/v1"
upstream_model = "nothing"
dialect = "uitars"

[[models]]
id = "misnamed"
provider = "openai-chat"
base_url = "{base}"
api_key_env = "FAKE_MODELS_KEY"
upstream_model = "no-such-model"
dialect = "qwen3vl"
"""
NO_MODELS = {"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": "", "OPENCONE_LIGHTCONE_API_KEY": ""}  # (and no file)


@pytest.fixture(scope="module")
def models_env(tmp_path_factory: pytest.TempPathFactory, fake_models_server: FakeModels) -> dict[str, str]:
    path = tmp_path_factory.mktemp("models") / "models.toml"
    path.write_text(MODELS_TOML.format(base=fake_models_server.base_url))
    return {**fake_models_server.openai_env(), **fake_models_server.anthropic_env(), "OPENCONE_MODELS_FILE": str(path),
            "FAKE_MODELS_KEY": fake_models_server.api_key, "OPENCONE_POOL_SIZE": "0"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, models_env: dict[str, str]) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("gateway-models"), env=models_env)
    yield srv
    srv.stop()


def test_models_lists_file_entries_and_families(gw: Server) -> None:
    client = openai.OpenAI(api_key=gw.api_key, base_url=f"{gw.base_url}/v1", max_retries=0)
    listed = client.models.list()
    assert [m.id for m in listed.data] == ["vllm-qwen", "dead-end", "misnamed", "openai/*", "anthropic/*"]
    by_id = {m.id: m.model_dump() for m in listed.data}
    assert by_id["vllm-qwen"]["provider"] == "openai-chat" and by_id["vllm-qwen"]["dialect"] == "qwen3vl"
    assert by_id["vllm-qwen"]["default"] is True and by_id["openai/*"]["default"] is False
    assert by_id["openai/*"]["family"] is True and by_id["openai/*"]["owned_by"] == "openai"
    assert all(m.object == "model" and isinstance(m.created, int) for m in listed.data)
    unversioned = httpx.get(f"{gw.base_url}/models", headers={"authorization": f"Bearer {gw.api_key}"}, timeout=10)
    assert unversioned.json() == json.loads(client.models.with_raw_response.list().text)
    assert client.models.retrieve("vllm-qwen").owned_by == "openai-compatible"
    routed = client.models.retrieve("anthropic/claude-opus-4-5")  # an id a family routes
    assert routed.model_dump()["provider"] == "anthropic" and routed.model_dump()["family"] is False
    assert client.models.retrieve("openai/*").model_dump()["family"] is True
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-nothing")
    assert err.value.body["code"] == "model_not_found"
    assert "vllm-qwen, dead-end, misnamed, openai/*" in err.value.message
    assert gw.client().models.list()["data"][0]["id"] == "vllm-qwen"  # the tzafon SDK: raw JSON
    r = httpx.get(f"{gw.base_url}/v1/models", timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"


def test_a_request_that_names_no_model_gets_the_default(gw: Server, fake_models: FakeModels) -> None:
    reply = httpx.post(f"{gw.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {gw.api_key}"},
                       json={"messages": [{"role": "user", "content": "who answers?"}]}, timeout=10)
    assert reply.status_code == 200
    assert fake_models.requests(api="chat")[-1]["model"] == "Qwen/Qwen3-VL-8B-Instruct"


def test_with_nothing_configured_the_server_starts_and_says_what_to_set(tmp_path: Path) -> None:
    srv = start_server(tmp_path, env={**NO_MODELS, "OPENCONE_POOL_SIZE": "0"})
    try:
        client = openai.OpenAI(api_key=srv.api_key, base_url=f"{srv.base_url}/v1", max_retries=0)
        assert client.models.list().data == []
        for call in (lambda: client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}]),
                     lambda: client.responses.create(input="hi")):
            with pytest.raises(openai.BadRequestError) as err:
                call()
            assert err.value.body["code"] == "no_model_configured"
            for setting in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENCONE_MODELS_FILE"):
                assert setting in err.value.message
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("openai/gpt-5.4")
    finally:
        srv.stop()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opencone", "models", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def test_the_cli_lists_the_same_and_checks_each_upstream(models_env: dict[str, str], tmp_path: Path,
                                                         fake_models: FakeModels) -> None:
    env = {**models_env, "OPENCONE_DATA_DIR": str(tmp_path), "COLUMNS": "300"}
    checked = _cli(env, "--check", "--json")
    assert checked.returncode == 1, checked.stderr  # dead-end does not answer
    rows = [json.loads(line) for line in checked.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["vllm-qwen", "dead-end", "misnamed", "openai/*", "anthropic/*"]
    assert rows[0]["base_url"] == fake_models.base_url and rows[0]["key"] == "FAKE_MODELS_KEY"
    assert fake_models.api_key not in checked.stdout  # the variable's name, never the key
    answers = {r["id"]: (r["answers"], r["check"]) for r in rows}
    assert answers["vllm-qwen"][0] and answers["openai/*"][0] and answers["anthropic/*"][0], answers
    assert not answers["dead-end"][0] and "did not answer" in answers["dead-end"][1]
    assert not answers["misnamed"][0] and "does not list 'no-such-model'" in answers["misnamed"][1]
    assert {e["api"] for e in fake_models.requests()} == {"models"}
    key = fake_models.api_key
    fake_models.script(api_key="another")
    try:
        table = _cli(env, "--check")
    finally:
        fake_models.script(api_key=key)  # (reset() restores the fake's key, not the launcher's note of it)
    assert table.returncode == 1
    line = next(line for line in table.stdout.splitlines() if "openai/*" in line)
    assert "answered 401" in line and "OPENAI_API_KEY" in line
    nothing = _cli({**NO_MODELS, "OPENCONE_DATA_DIR": str(tmp_path)})
    assert nothing.returncode == 0 and "no model is configured" in nothing.stdout
