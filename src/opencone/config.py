"""Server settings, read from the environment with the ``OPENCONE_`` prefix.

One settings object is built at start-up and handed down; nothing below the
edge reads the environment itself, so tests can start servers side by side.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from opencone.drivers.proxy.egress import parse_allow
from opencone.drivers.proxy.url import parse_proxy_url


def _default_chromium() -> str:
    # Debian's /usr/bin/chromium is a shell wrapper that adds extension flags we do
    # not want; the real binary sits behind it.
    for candidate in ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium") or "chromium"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPENCONE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: Path = Path(".opencone")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; SQLite file in the data dir when unset."
    )
    api_key: str | None = Field(default=None, description="Bootstraps this key for the default organisation.")
    public_url: str | None = Field(
        default=None, description="Base URL used in links we hand out (screenshot URLs, endpoints)."
    )

    chromium_path: str = Field(default_factory=_default_chromium)
    browser_chromium_path: str | None = Field(
        default=None, description="The binary of browser computers alone (desktops keep chromium_path): "
                                  "Debian's chromium-headless-shell takes half the CPU per page load and "
                                  "0.6x the memory, at a stealth cost (no navigator.plugins).")
    pool_size: int = Field(default=2, ge=0, le=64, description="Pre-launched browsers always kept ready (the floor).")
    pool_max: int = Field(default=32, ge=0, le=512,
                          description="Most browsers the pool keeps ready or launching after a burst of creates.")
    pool_memory_reserve_mb: int = Field(
        default=2048, ge=0, description="Pools launch ahead of demand only while free memory stays above this.")
    pool_idle_seconds: float = Field(default=50.0, gt=0,
                                     description="A pool shrinks back to its floor this long after the last burst.")
    pool_launch_parallel: int = Field(default=0, ge=0, le=64,
                                      description="Launches a pool runs at once; 0: one per core plus one.")
    max_computers: int = Field(default=100, ge=1, description="Live computers allowed on this server.")

    default_max_lifetime_seconds: int = Field(default=3600, ge=1)
    max_lifetime_cap_seconds: int = Field(default=24 * 3600, ge=1)
    default_inactivity_timeout_seconds: int = Field(default=120, ge=1)
    inactivity_timeout_cap_seconds: int = Field(default=24 * 3600, ge=1)
    reaper_interval_seconds: float = Field(default=0.25, gt=0)
    expiring_soon_seconds: float = Field(
        default=10.0, ge=0, description="An `expiring_soon` event is sent this long before a computer's deadline "
                                        "(at most half its lifetime or idle timeout)."
    )

    # -- /computers/{id}/events --
    events_queue_size: int = Field(default=1000, ge=1, description="Events queued per subscriber before dropping.")
    events_history_size: int = Field(default=256, ge=0, description="Recent events kept per computer for resuming.")
    events_heartbeat_seconds: float = Field(default=15.0, gt=0, description="A heartbeat event after this silence.")

    # -- request bodies (api/guard.py) --
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=64 * 1024,
        description="Largest request body taken; a larger one is a 413 before it is read or parsed.",
    )
    max_upload_bytes: int = Field(
        default=100 * 1024 * 1024, ge=1,
        description="Largest file PUT /computers/{id}/files/{path} takes (streamed to disk, not held in "
                    "memory); a larger one is a 413.",
    )

    action_timeout_seconds: float = Field(default=20.0, gt=0)
    navigation_timeout_seconds: float = Field(default=30.0, gt=0)
    screenshot_quality: int = Field(default=80, ge=1, le=100)
    file_ttl_seconds: int = Field(default=3600, ge=1, description="How long a screenshot URL stays valid.")

    # a computer created without `display`: browsers as the SDK's helpers assume, desktops as every official
    # Lightcone example converts a model's 0-999 coordinates for `computer.create(kind="desktop")`
    default_width: int = Field(default=1024, ge=64, le=8192, description="A browser's width when create names none.")
    default_height: int = Field(default=768, ge=64, le=8192)
    desktop_default_width: int = Field(default=1280, ge=64, le=8192,
                                       description="A desktop's width when create names none.")
    desktop_default_height: int = Field(default=720, ge=64, le=8192)

    metrics_public: bool = Field(
        default=False, description="GET /metrics without an API key (for a scraper on a trusted network); by "
                                   "default it takes a key of the default organisation, as GET /status does.")

    ws_compression: bool = Field(
        default=False, description="permessage-deflate on the server's WebSockets (the CDP endpoint) when a "
                                   "client offers it: for clients across a slow link. Off by default: on "
                                   "loopback or a LAN it costs both ends CPU for every CDP message.")

    log_level: str = "info"

    desktop_pool_size: int = Field(default=0, ge=0, le=16, description="Pre-launched desktops always kept ready.")
    desktop_pool_max: int = Field(default=8, ge=0, le=128,
                                  description="Most desktops the pool keeps ready or launching after a burst.")
    environment_pool: str = Field(
        default="", description="Computers kept ready already restored from saved environments, as "
                                "<environment_id>[:<count>][@<w>x<h>], comma separated (core/environment_pool.py).")
    desktop_max_width: int = Field(default=1920, ge=64, le=8192,
                                   description="Largest screen a desktop can be resized to without a new one.")
    desktop_max_height: int = Field(default=1200, ge=64, le=8192)

    # -- exec: shell commands in a bubblewrap sandbox (one /workspace per computer) --
    exec_network: bool = Field(
        default=False,
        description="Give commands the host's network (bwrap --share-net). That includes 127.0.0.1, so a "
                    "command can reach every local service, other computers' CDP ports among them: "
                    "only for a server with a single trusted user.",
    )
    exec_workspace_dir: Path | None = Field(
        default=None,
        description="Where the per-computer workspaces live; by default <run dir>/ws, or a private dir in "
                    "the system temp dir when the sandbox user (65534) cannot reach the run dir.",
    )
    exec_workspace_max_mb: int = Field(
        default=4096, ge=0,
        description="The size cap of each computer's /workspace: its own filesystem of this size (a sparse "
                    "file, loop-mounted; needs a server that may mount, e.g. running as root). 0: no cap.",
    )
    exec_max_output_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1, description="Output kept by /exec/sync; the rest is dropped and marked."
    )
    exec_max_processes: int = Field(
        default=256, ge=8, le=65536,
        description="Processes one computer's commands may have at once (cgroup pids.max; needs a server "
                    "that may create control groups, e.g. running as root).",
    )
    exec_max_memory_mb: int = Field(
        default=2048, ge=16, description="Memory one computer's commands may use together (cgroup memory limit)."
    )

    # -- proxies: every browser computer's traffic goes through its own forwarder (drivers/proxy) --
    advanced_proxy_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("opencone_advanced_proxy_url", "advanced_proxy_url"),
        description="Upstream proxy for `use_advanced_proxy: true` (http://, https:// or socks5://, with "
                    "user:password@ if needed). Read from OPENCONE_ADVANCED_PROXY_URL or ADVANCED_PROXY_URL.",
    )
    proxy_connect_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long a computer's proxy waits to reach its upstream before a 502."
    )
    # -- egress: where computers' traffic may go (drivers/proxy/egress.py) --
    egress_allow: str = Field(
        default="",
        description="Destinations computers may reach although the policy refuses them: comma-separated hosts, "
                    "host:port pairs and CIDR ranges (127.0.0.1:8000,intranet.example,10.20.0.0/16); an entry "
                    "opens only what it names.",
    )
    egress_policy: Literal["public", "any"] = Field(
        default="public",
        description="'public': computers reach public addresses only (no loopback, private, link-local or "
                    "cloud-metadata ones) plus OPENCONE_EGRESS_ALLOW; 'any': everything, for a single trusted "
                    "user. This server's own ports are refused either way.",
    )

    network_namespaces: bool = Field(
        default=True,
        description="Each computer's browser (and networked commands) in a network namespace of its own, whose "
                    "only way out is its forwarder (needs a server that may make them, e.g. root). false: on the "
                    "host's network, every computer's own ports refused by number instead.",
    )

    # -- models (gateway/registry.py): read as the vendors' SDKs read them, plus a models file --
    openai_api_key: str | None = Field(default=None, validation_alias=AliasChoices("openai_api_key"), repr=False,
                                       description="OPENAI_API_KEY: openai/<name> models go to OpenAI.")
    openai_base_url: str | None = Field(default=None, validation_alias=AliasChoices("openai_base_url"),
                                        description="OPENAI_BASE_URL: another OpenAI-compatible Responses API.")
    anthropic_api_key: str | None = Field(default=None, validation_alias=AliasChoices("anthropic_api_key"),
                                          repr=False, description="ANTHROPIC_API_KEY: anthropic/<name> models.")
    anthropic_base_url: str | None = Field(default=None, validation_alias=AliasChoices("anthropic_base_url"),
                                           description="ANTHROPIC_BASE_URL.")
    lightcone_api_key: str | None = Field(default=None, repr=False,
                                          description="tzafon.* models go to Lightcone's own API with this key.")
    lightcone_base_url: str = Field(default="https://api.tzafon.ai", description="Lightcone's API.")
    models_file: Path | None = Field(
        default=None, description="A TOML file of models (vLLM, Ollama… servers); <data dir>/models.toml if present.")
    default_model: str | None = Field(default=None, description="The model a task or call that names none gets.")
    model_timeout_seconds: float = Field(default=120.0, gt=0, description="One upstream model call's time limit.")
    model_max_retries: int = Field(default=2, ge=0, le=10,
                                   description="Retries of an upstream call on 408/409/429/5xx, with backoff.")
    max_running_tasks: int = Field(default=10, ge=1, description="Agent tasks running at once (429 beyond).")
    # -- the agent loop (agent/loop.py) --
    agent_max_steps: int = Field(default=100, ge=1, le=10000,
                                 description="Model calls a task may make when its start names no max_steps.")
    agent_max_failures: int = Field(default=3, ge=1, le=100,
                                    description="Failures in a row (model errors, unusable answers, steps whose "
                                                "every action failed) before a task fails.")
    agent_settle_ms: int = Field(default=250, ge=0, le=10000,
                                 description="Wait after a step's input actions before the next screenshot.")

    # -- computers as MCP tools (/mcp and `opencone mcp`, opencone/mcp/) --
    mcp_groups: str = Field(
        default="", description="Opt-in MCP tool groups, comma-separated: 'exec' (shell commands in the "
                                "computer's sandbox), 'evaluate' (JavaScript in the page). None by default.")
    mcp_screenshot_max_side: int = Field(
        default=1280, ge=200, le=2000, description="The MCP screenshot's longest side in pixels: larger screens "
                                                   "are scaled down (and pointer tools take that image's pixels).")

    # -- saved environments of persistent computers (core/environments.py) --
    storage_cap_bytes: int = Field(
        default=5 * 1024**3, ge=0,
        validation_alias=AliasChoices("opencone_storage_cap_bytes", "opencone_environment_storage_cap_bytes"),
        description="Storage per organisation for saved environments and recordings together; at or over it a "
                    "persistent create or a recording is refused (4xx) and a recording in progress stops. "
                    "OPENCONE_ENVIRONMENT_STORAGE_CAP_BYTES is its older name.",
    )
    environment_save_timeout_seconds: float = Field(
        default=60.0, gt=0, description="Longest one save may take (also bounds a server shutdown)."
    )
    environment_save_grace_seconds: float = Field(
        default=5.0, ge=0, description="How long Chromium gets to exit cleanly (flush its profile) before a save."
    )
    # -- recordings of computers' screens (core/recording.py) --
    recording_max_fps: float = Field(default=15.0, gt=0, le=60,
                                     description="Most frames a second a recording encodes (newer frames replace "
                                                 "waiting ones); a still screen encodes none.")
    recording_crf: int = Field(default=26, ge=0, le=51,
                               description="x264's constant rate factor for recordings: lower is sharper and bigger.")
    # -- fleet mode: computers on many machines (fleet/; README "Running a fleet") --
    fleet: Literal["local", "ray"] = Field(
        default="local",
        description="local: one process holds every computer, records in SQLite or PostgreSQL (nothing of "
                    "fleet/ is imported). ray: this server is a stateless API replica placing computers on "
                    "node agents of a Ray cluster; needs OPENCONE_DATABASE_URL=postgresql+asyncpg://...",
    )
    fleet_internal_token: str | None = Field(
        default=None, min_length=16,
        description="The secret replicas and node agents share for the agents' /internal routes.")
    node_port: int = Field(default=0, ge=0, le=65535,
                           description="A node agent's internal port (0: any free port, registered in the nodes "
                                       "table).")
    node_address: str | None = Field(
        default=None, description="The address a node agent binds and registers; by default its Ray node's IP.")
    fleet_placement_k: int = Field(default=2, ge=1, le=16,
                                   description="Placement draws this many ready nodes and takes the least loaded.")
    fleet_heartbeat_ttl_seconds: float = Field(
        default=10.0, gt=0, description="A node whose agent has not reported for this long gets no new computers.")
    fleet_node_lost_seconds: float = Field(
        default=20.0, ge=0,
        description="A replica declares a node lost (dead, its computers terminated as node_lost) once its agent "
                    "has not reported for this long while PostgreSQL answered throughout (fleet/replica_sweep.py); "
                    "0: never (only Ray's controller decides). At least 3 s: agents report every 2 s.")
    fleet_route_ttl_seconds: float = Field(
        default=5.0, gt=0, le=3600,
        description="A replica keeps where a computer lives this long (an end NOTIFY'd by PostgreSQL drops it "
                    "at once; the TTL covers a replica that was not listening).")
    fleet_browser_memory_mb: int = Field(
        default=256, ge=0, description="Free memory a node must have left to take one more browser.")
    fleet_desktop_memory_mb: int = Field(
        default=512, ge=0, description="Free memory a node must have left to take one more desktop.")

    test_save_delay_seconds: float = Field(
        default=0.0, ge=0,
        description="TEST ONLY: sleep this long between writing a save's temporary file and renaming it, so "
                    "tests can kill the server mid-save. Leave at 0.",
    )
    test_clock_file: Path | None = Field(
        default=None,
        description="TEST ONLY: a file holding seconds the server's clock runs ahead of the system's, read "
                    "whenever it changes (core/clock.py), so tests can let lifetimes expire without waiting.",
    )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if value.startswith("postgresql+asyncpg://"):
            if importlib.util.find_spec("asyncpg") is None:
                raise ValueError("a postgresql+asyncpg:// database needs asyncpg: pip install 'opencone[postgres]'")
            return value
        if value.startswith("sqlite+aiosqlite://"):
            return value
        scheme = value.split("://", 1)[0] if "://" in value else "(none)"  # never echo the URL: it may hold a password
        raise ValueError(f"unsupported database URL scheme {scheme!r}; use sqlite+aiosqlite:///<file> or "
                         "postgresql+asyncpg://<user>:<password>@<host>/<database>")

    @model_validator(mode="after")
    def _check_fleet(self) -> Settings:
        if self.fleet == "ray" and not (self.database_url or "").startswith("postgresql+asyncpg://"):
            # every replica must see the same records and nodes: a per-process SQLite file cannot be that
            raise ValueError("OPENCONE_FLEET=ray needs OPENCONE_DATABASE_URL=postgresql+asyncpg://... "
                             "(the replicas and node agents share PostgreSQL)")
        return self

    @field_validator("fleet_node_lost_seconds")
    @classmethod
    def _check_fleet_node_lost_seconds(cls, value: float) -> float:
        if 0 < value < 3:  # under a heartbeat period or so, healthy nodes would be declared lost
            raise ValueError("OPENCONE_FLEET_NODE_LOST_SECONDS must be 0 (off) or at least 3 (agents report every 2 s)")
        return value

    @field_validator("advanced_proxy_url")
    @classmethod
    def _check_advanced_proxy_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_proxy_url(value)  # a bad URL stops the server at start-up, with the reason
        return value.strip()

    @field_validator("mcp_groups")
    @classmethod
    def _check_mcp_groups(cls, value: str) -> str:
        groups = {g.strip() for g in value.split(",") if g.strip()}
        unknown = groups - {"exec", "evaluate"}
        if unknown:  # a typo would silently leave a group off: stop at start-up, naming it
            raise ValueError(f"unknown MCP tool group(s) {', '.join(sorted(unknown))}; allowed: exec, evaluate")
        return ",".join(sorted(groups))

    @field_validator("environment_pool")
    @classmethod
    def _check_environment_pool(cls, value: str) -> str:
        from opencone.core.environment_pool import parse  # (it imports this module)

        parse(value)  # a bad entry stops the server at start-up, naming it
        return value

    @field_validator("egress_allow")
    @classmethod
    def _check_egress_allow(cls, value: str) -> str:
        parse_allow(value)  # a bad entry stops the server at start-up, naming it
        return value

    @field_validator("browser_chromium_path")
    @classmethod
    def _check_browser_chromium_path(cls, value: str | None) -> str | None:
        if value is not None and not (os.path.isfile(value) and os.access(value, os.X_OK)):  # (a dir is X_OK)
            raise ValueError(f"{value} is not an executable file (Debian's headless shell: apt-get install "
                             "chromium-headless-shell, then /usr/lib/chromium/chromium-headless-shell)")
        return value

    @property
    def browser_executable(self) -> str:
        """The Chromium binary of browser computers (a desktop's browser is always chromium_path)."""
        return self.browser_chromium_path or self.chromium_path

    def default_display(self, kind: str) -> tuple[int, int]:
        """(width, height) of a computer of ``kind`` created without a display."""
        if kind == "desktop":
            return self.desktop_default_width, self.desktop_default_height
        return self.default_width, self.default_height

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'opencone.db').resolve()}"

    @property
    def run_dir(self) -> Path:
        """Per-process scratch (browser profiles); everything here dies with its computer."""
        return (self.data_dir / "run").resolve()

    @property
    def files_dir(self) -> Path:
        return (self.data_dir / "files").resolve()
