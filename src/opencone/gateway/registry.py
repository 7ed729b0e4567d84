"""The models a server can call: read once at start, from the environment and a models file.

Zero configuration covers the common cases, the way the vendors' own SDKs read
their settings:

* ``OPENAI_API_KEY`` (and ``OPENAI_BASE_URL``): every id ``openai/<name>`` goes to
  that upstream's Responses API as model ``<name>``;
* ``ANTHROPIC_API_KEY`` (and ``ANTHROPIC_BASE_URL``): every ``anthropic/<name>``;
* ``OPENCONE_LIGHTCONE_API_KEY`` (and ``OPENCONE_LIGHTCONE_BASE_URL``): the
  ``tzafon.*`` ids go to Lightcone itself.

Everything else, above all OpenAI-compatible servers a user runs (vLLM, SGLang,
Ollama, LM Studio), is an entry of the models file (``OPENCONE_MODELS_FILE``,
TOML; ``<data dir>/models.toml`` when present)::

    [[models]]
    id = "qwen3-vl"                       # what clients name
    provider = "openai-chat"              # openai | openai-chat | anthropic | lightcone
    base_url = "http://127.0.0.1:8000/v1"
    api_key_env = "VLLM_API_KEY"          # optional: the variable holding its key
    upstream_model = "Qwen/Qwen3-VL-8B-Instruct"
    dialect = "qwen3vl"                   # openai-chat only: output format and coordinates
    coordinates = "grid1000"              # dialect "json" only: grid1000 (default) or pixels
    display = [1280, 800]                 # optional: the largest screenshot it is shown
    max_images = 3                        # optional: screenshots kept in its context
    default = true                        # optional: the model a task gets when it names none

A file entry wins over a pattern for the same id. Keys are read here, once, and
never shown (``ModelEntry.__repr__`` leaves them out).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

Provider = Literal["openai", "openai-chat", "anthropic", "lightcone"]
PROVIDERS: tuple[str, ...] = get_args(Provider)
# the output formats (and coordinate spaces) of OpenAI-compatible chat VLMs (spec §c.2)
DIALECTS = ("qwen3vl", "northstar", "qwen25vl", "uitars", "opencua", "json")
# the json dialect's coordinate spaces (the other dialects fix their own)
COORDINATES = ("grid1000", "pixels")
LIGHTCONE_BASE_URL = "https://api.tzafon.ai"
DEFAULT_MAX_IMAGES = 3

# what a task gets when it names no model and no file entry is the default, by the first
# provider configured (in this order)
PATTERN_DEFAULTS = {"lightcone": "tzafon.northstar-cua-fast", "openai": "openai/computer-use-preview",
                    "anthropic": "anthropic/claude-sonnet-4-5"}
NOTHING_CONFIGURED = ("no model is configured: set OPENAI_API_KEY, ANTHROPIC_API_KEY, OPENCONE_LIGHTCONE_API_KEY "
                      "or OPENCONE_MODELS_FILE")


class ModelsFileError(ValueError):
    """The models file is malformed; the message names the entry and the field."""


class UnknownModel(LookupError):
    """No configured model has this id; the message lists the ones that are."""


class NoModelConfigured(LookupError):
    """Nothing is configured at all; the message names the settings to set."""


@dataclass(frozen=True, slots=True)
class ModelEntry:
    id: str
    provider: Provider
    upstream_model: str
    base_url: str | None = None  # None: the SDK's own default (api.openai.com, api.anthropic.com)
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    dialect: str | None = None
    display: tuple[int, int] | None = None
    max_images: int = DEFAULT_MAX_IMAGES
    default: bool = False
    source: Literal["environment", "file"] = "file"
    coordinates: str | None = None  # the json dialect's space; None: its default (grid1000)

    @property
    def owned_by(self) -> str:
        return {"openai": "openai", "openai-chat": "openai-compatible", "anthropic": "anthropic",
                "lightcone": "lightcone"}[self.provider]


@dataclass(frozen=True, slots=True)
class Pattern:
    """A whole family of ids routed to one upstream: ``prefix<name>`` → model ``<name>``
    (``strip`` false: the id itself is the upstream model, as for ``tzafon.*``)."""

    prefix: str
    provider: Provider
    base_url: str | None
    api_key: str | None = field(repr=False)
    api_key_env: str
    strip: bool = True

    def entry(self, model_id: str) -> ModelEntry:
        upstream = model_id[len(self.prefix):] if self.strip else model_id
        return ModelEntry(model_id, self.provider, upstream, self.base_url, self.api_key, self.api_key_env,
                          source="environment")


class ModelRegistry:
    def __init__(self, entries: list[ModelEntry], patterns: list[Pattern], default: str | None = None) -> None:
        self.entries = {e.id: e for e in entries}
        self.patterns = patterns
        self._default = default

    @classmethod
    def load(cls, settings: Any, environ: Mapping[str, str]) -> ModelRegistry:
        """From the server's settings (its OpenAI/Anthropic/Lightcone keys and URLs, the models
        file, the default) and the environment that a file entry's ``api_key_env`` names."""
        patterns = []
        if settings.lightcone_api_key:
            patterns.append(Pattern("tzafon.", "lightcone", settings.lightcone_base_url or LIGHTCONE_BASE_URL,
                                    settings.lightcone_api_key, "OPENCONE_LIGHTCONE_API_KEY", strip=False))
        if settings.openai_api_key:
            patterns.append(Pattern("openai/", "openai", settings.openai_base_url, settings.openai_api_key,
                                    "OPENAI_API_KEY"))
        if settings.anthropic_api_key:
            patterns.append(Pattern("anthropic/", "anthropic", settings.anthropic_base_url,
                                    settings.anthropic_api_key, "ANTHROPIC_API_KEY"))
        path = settings.models_file
        if path is None and (settings.data_dir / "models.toml").is_file():
            path = settings.data_dir / "models.toml"
        entries = read_models_file(Path(path), environ) if path is not None else []
        return cls(entries, patterns, settings.default_model)

    @property
    def configured(self) -> bool:
        return bool(self.entries or self.patterns)

    def resolve(self, model_id: str | None) -> ModelEntry:
        """The entry for ``model_id`` (the default when None). NoModelConfigured when nothing is
        configured, UnknownModel (listing what is) when this id is not."""
        if not self.configured:
            raise NoModelConfigured(NOTHING_CONFIGURED)
        if model_id is None:
            model_id = self.default_id()
        entry = self.entries.get(model_id)
        if entry is not None:
            return entry
        for pattern in self.patterns:
            if model_id.startswith(pattern.prefix) and len(model_id) > len(pattern.prefix):
                return pattern.entry(model_id)
        raise UnknownModel(f"unknown model {model_id!r}; configured: {', '.join(self.described()) or 'none'}")

    def default_id(self) -> str:
        """The model a request that names none gets."""
        if self._default:
            return self._default
        for entry in self.entries.values():
            if entry.default:
                return entry.id
        for pattern in self.patterns:
            return PATTERN_DEFAULTS[pattern.provider]
        return next(iter(self.entries))  # (configured: at least one entry)

    def described(self) -> list[str]:
        """Every configured id, and each family as ``prefix*``: for messages and listings."""
        return [*self.entries, *(f"{p.prefix}*" for p in self.patterns)]


def read_models_file(path: Path, environ: Mapping[str, str]) -> list[ModelEntry]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ModelsFileError(f"the models file {path} does not exist (OPENCONE_MODELS_FILE)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ModelsFileError(f"the models file {path} cannot be read: {exc}") from None
    raw = data.get("models", [])
    if not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw):
        raise ModelsFileError(f"{path}: expected [[models]] tables")
    entries: list[ModelEntry] = []
    for n, item in enumerate(raw, 1):
        entry = _entry(item, f"{path}: model {n}", environ)
        if any(e.id == entry.id for e in entries):
            raise ModelsFileError(f"{path}: model id {entry.id!r} appears twice")
        entries.append(entry)
    if sum(e.default for e in entries) > 1:
        raise ModelsFileError(f"{path}: more than one model has default = true")
    return entries


_FIELDS = {"id", "provider", "base_url", "api_key_env", "upstream_model", "dialect", "coordinates", "display",
           "max_images", "default"}


def _entry(item: dict[str, Any], where: str, environ: Mapping[str, str]) -> ModelEntry:
    unknown = set(item) - _FIELDS
    if unknown:
        raise ModelsFileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; allowed: "
                              f"{', '.join(sorted(_FIELDS))}")
    model_id = _text(item, "id", where)
    where = f"{where} ({model_id!r})"
    provider = _text(item, "provider", where)
    if provider not in PROVIDERS:
        raise ModelsFileError(f"{where}: provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
    dialect = item.get("dialect")
    if provider == "openai-chat":
        if dialect not in DIALECTS:
            raise ModelsFileError(f"{where}: an openai-chat model needs dialect = one of {', '.join(DIALECTS)}")
    elif dialect is not None:
        raise ModelsFileError(f"{where}: dialect is for openai-chat models only")
    coordinates = item.get("coordinates")
    if coordinates is not None:
        if dialect != "json":
            raise ModelsFileError(f"{where}: coordinates is for the json dialect only (the {dialect or provider} "
                                  "format fixes its own coordinate space)")
        if coordinates not in COORDINATES:
            raise ModelsFileError(f"{where}: coordinates must be one of {', '.join(COORDINATES)}, not {coordinates!r}")
    key_env = item.get("api_key_env")
    if key_env is not None and (not isinstance(key_env, str) or not key_env):
        raise ModelsFileError(f"{where}: api_key_env must be the name of an environment variable")
    if key_env and not environ.get(key_env):
        raise ModelsFileError(f"{where}: api_key_env names {key_env}, which is not set")
    display = item.get("display")
    if display is not None:
        if not (isinstance(display, list) and len(display) == 2
                and all(isinstance(v, int) and 64 <= v <= 8192 for v in display)):
            raise ModelsFileError(f"{where}: display must be [width, height], each 64 to 8192")
        display = (display[0], display[1])
    max_images = item.get("max_images", DEFAULT_MAX_IMAGES)
    if not isinstance(max_images, int) or isinstance(max_images, bool) or not 1 <= max_images <= 50:
        raise ModelsFileError(f"{where}: max_images must be a whole number from 1 to 50")
    default = item.get("default", False)
    if not isinstance(default, bool):
        raise ModelsFileError(f"{where}: default must be true or false")
    base_url = item.get("base_url")
    if base_url is not None and (not isinstance(base_url, str) or not base_url.startswith(("http://", "https://"))):
        raise ModelsFileError(f"{where}: base_url must be an http:// or https:// URL")
    if provider == "openai-chat" and base_url is None:
        raise ModelsFileError(f"{where}: an openai-chat model needs base_url (its server, e.g. http://…/v1)")
    upstream = item.get("upstream_model", model_id)
    if not isinstance(upstream, str) or not upstream:
        raise ModelsFileError(f"{where}: upstream_model must be a non-empty string")
    return ModelEntry(model_id, provider, upstream, base_url, environ.get(key_env) if key_env else None,  # type: ignore[arg-type]
                      key_env, dialect, display, max_images, default, coordinates=coordinates)


def _text(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ModelsFileError(f"{where}: {name} is required (a non-empty string)")
    return value.strip()
