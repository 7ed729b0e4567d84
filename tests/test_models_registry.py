"""The model registry: zero-configuration families from the vendors' variables, and a models file."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import start_server

from opencone.gateway.registry import ModelRegistry, ModelsFileError, NoModelConfigured, UnknownModel


def settings(tmp_path: Path, **kw: object) -> SimpleNamespace:
    base = {"openai_api_key": None, "openai_base_url": None, "anthropic_api_key": None, "anthropic_base_url": None,
            "lightcone_api_key": None, "lightcone_base_url": "https://api.tzafon.ai", "models_file": None,
            "default_model": None, "data_dir": tmp_path}
    return SimpleNamespace(**{**base, **kw})


def test_nothing_configured_names_the_settings(tmp_path: Path) -> None:
    registry = ModelRegistry.load(settings(tmp_path), {})
    with pytest.raises(NoModelConfigured) as err:
        registry.resolve(None)
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENCONE_MODELS_FILE"):
        assert name in str(err.value)


def test_vendor_keys_open_their_families(tmp_path: Path) -> None:
    registry = ModelRegistry.load(settings(tmp_path, openai_api_key="sk-1", openai_base_url="http://127.0.0.1:9/v1",
                                           anthropic_api_key="ak-1", lightcone_api_key="lc-1"), {})
    entry = registry.resolve("openai/computer-use-preview")
    assert (entry.provider, entry.upstream_model, entry.base_url, entry.api_key) == (
        "openai", "computer-use-preview", "http://127.0.0.1:9/v1", "sk-1")
    assert registry.resolve("anthropic/claude-sonnet-4-5").upstream_model == "claude-sonnet-4-5"
    lc = registry.resolve("tzafon.northstar-cua-fast")
    assert (lc.provider, lc.upstream_model) == ("lightcone", "tzafon.northstar-cua-fast")
    assert "sk-1" not in repr(entry) and "ak-1" not in repr(registry.resolve("anthropic/x"))
    with pytest.raises(UnknownModel) as err:
        registry.resolve("mistral/large")
    assert "openai/*" in str(err.value) and "anthropic/*" in str(err.value)
    assert registry.resolve(None).id == "tzafon.northstar-cua-fast"  # the first family configured


def test_a_models_file_adds_entries_and_the_default(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text('''
[[models]]
id = "qwen3-vl"
provider = "openai-chat"
base_url = "http://127.0.0.1:8000/v1"
api_key_env = "VLLM_KEY"
upstream_model = "Qwen/Qwen3-VL-8B-Instruct"
dialect = "qwen3vl"
display = [1280, 800]
max_images = 2
default = true

[[models]]
id = "claude"
provider = "anthropic"
upstream_model = "claude-sonnet-4-5"
''')
    registry = ModelRegistry.load(settings(tmp_path), {"VLLM_KEY": "v-1"})
    entry = registry.resolve(None)
    assert (entry.id, entry.dialect, entry.display, entry.max_images, entry.api_key) == (
        "qwen3-vl", "qwen3vl", (1280, 800), 2, "v-1")
    assert registry.resolve("claude").provider == "anthropic"
    assert registry.described() == ["qwen3-vl", "claude"]


@pytest.mark.parametrize(("body", "says"), [
    ('[[models]]\nprovider = "openai"', "id is required"),
    ('[[models]]\nid = "a"\nprovider = "bedrock"', "provider must be one of"),
    ('[[models]]\nid = "a"\nprovider = "openai-chat"\nbase_url = "http://h/v1"', "needs dialect"),
    ('[[models]]\nid = "a"\nprovider = "openai-chat"\ndialect = "qwen3vl"', "needs base_url"),
    ('[[models]]\nid = "a"\nprovider = "openai"\napi_key_env = "NOPE"', "NOPE, which is not set"),
    ('[[models]]\nid = "a"\nprovider = "openai"\ncolour = "red"', "unknown field(s) colour"),
    ('[[models]]\nid = "a"\nprovider = "openai"\ndisplay = [10, 10]', "display must be"),
    ('[[models]]\nid = "a"\nprovider = "openai"\n[[models]]\nid = "a"\nprovider = "openai"', "appears twice"),
    ("[[models", "cannot be read"),
])
def test_a_bad_models_file_says_which_entry_and_field(tmp_path: Path, body: str, says: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(body)
    with pytest.raises(ModelsFileError) as err:
        ModelRegistry.load(settings(tmp_path, models_file=path), {})
    assert says in str(err.value)


def test_the_server_does_not_start_on_a_bad_models_file(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[[models]]\nid = "x"\nprovider = "nope"\n')
    with pytest.raises(RuntimeError) as err:
        start_server(tmp_path, env={"OPENCONE_MODELS_FILE": str(path)}, timeout=30)
    assert "provider must be one of" in str(err.value)
