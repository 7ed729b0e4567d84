"""The ``opencone`` command: serve, manage API keys, list models, and show a running server's status."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from opencone.config import Settings

app = typer.Typer(help="opencone: self-hosted computers for AI agents.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Where state lives [default: ./.opencone]")]


def _settings(data_dir: Path | None, **overrides: object) -> Settings:
    from pydantic import ValidationError

    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:  # each bad setting on a line, named as the user sets it, its value not echoed
        for err in exc.errors():
            name = f"OPENCONE_{str(err['loc'][0]).upper()}: " if err["loc"] else ""
            typer.echo(f"opencone: bad setting: {name}{err['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind [default: 8765]")] = None,
    data_dir: DataDir = None,
) -> None:
    """Start the server."""
    import uvicorn

    from opencone.api.app import create_app

    settings = _settings(data_dir, host=host, port=port)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # endless streams (screencast, events) never finish on their own: after 3 s uvicorn cancels them,
    # or a SIGTERM would wait for every viewer to hang up
    if settings.fleet == "ray":  # a stateless API replica of a fleet (fleet/replica.py); imported only then
        from opencone.fleet.replica import create_replica_app

        application = create_replica_app(settings)
    else:
        application = create_app(settings)
    uvicorn.run(application, host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), access_log=False, timeout_graceful_shutdown=3,
                ws_max_size=128 * 2**20,  # a CDP command can carry a file (Playwright sends up to 50 MB)
                ws_per_message_deflate=settings.ws_compression)



ray_app = typer.Typer(help="The fleet on a Ray cluster: node agents and their controller.", no_args_is_help=True)
app.add_typer(ray_app, name="ray")


@ray_app.command("up")
def ray_up(
    address: Annotated[str, typer.Option(help="The Ray cluster (ray://..., host:port, or auto)")] = "auto",
    node_data_dir: Annotated[str | None, typer.Option(help="Where each node keeps its agent's state "
                                                           "[default: /var/lib/opencone/nodes]")] = None,
) -> None:
    """Start the fleet's controller on the head; it starts one agent per node with opencone slots, then this
    command exits (they live on in the cluster). Needs OPENCONE_DATABASE_URL and OPENCONE_FLEET_INTERNAL_TOKEN."""
    from opencone.fleet import ray as fleet_ray

    status = fleet_ray.start(address, data_dir=node_data_dir)
    print(json.dumps({"agents": status["agents"], "errors": status["errors"]}, indent=2))


@ray_app.command("down")
def ray_down(address: Annotated[str, typer.Option(help="The Ray cluster")] = "auto") -> None:
    """Stop the controller and every node agent (their computers end as server_shutdown)."""
    from opencone.fleet import ray as fleet_ray

    print("stopped" if fleet_ray.stop(address) else "no fleet controller is running")

async def _accounts(settings: Settings):  # type: ignore[no-untyped-def]
    from opencone.core.accounts import KEYS_CHANGED, Accounts
    from opencone.core.store.db import make_engine, migrate, sessionmaker

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    await migrate(engine)
    return engine, Accounts(sessionmaker(engine), changes=settings.data_dir / KEYS_CHANGED)  # the server sees it


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key")] = "",
    new_org: Annotated[str | None, typer.Option(help="Create a new organisation with this name for the key")] = None,
    data_dir: DataDir = None,
) -> None:
    """Create an API key and print it (only its hash is stored)."""

    async def run() -> str:
        engine, accounts = await _accounts(_settings(data_dir))
        try:
            org = await accounts.create_org(new_org) if new_org else await accounts.ensure_org()
            return await accounts.create_key(org, name)
        finally:
            await engine.dispose()

    print(asyncio.run(run()))


@keys_app.command("list")
def keys_list(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key, for scripts")] = False,
) -> None:
    """List API keys (their prefixes, never the keys)."""

    async def run():  # type: ignore[no-untyped-def]
        engine, accounts = await _accounts(_settings(data_dir))
        try:
            return await accounts.list_keys()
        finally:
            await engine.dispose()

    keys = asyncio.run(run())
    if as_json:
        for k in keys:
            print(json.dumps({"id": k.id, "org_id": k.org_id, "name": k.name, "prefix": k.prefix,
                              "created_at": k.created_at.isoformat(),
                              "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None}))
        return
    table = Table("id", "organisation", "name", "prefix", "created", "revoked")
    for k in keys:
        table.add_row(k.id, k.org_id, k.name, k.prefix + "…", k.created_at.isoformat(timespec="seconds"),
                      k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, data_dir: DataDir = None) -> None:
    """Revoke a key by its id (see `opencone keys list`)."""

    async def run() -> bool:
        engine, accounts = await _accounts(_settings(data_dir))
        try:
            return await accounts.revoke_key(key_id)
        finally:
            await engine.dispose()

    if not asyncio.run(run()):
        console.print(f"[red]no key {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


@app.command()
def models(
    check: Annotated[bool, typer.Option("--check", help="Ask each upstream whether it answers (and takes its key)")]
    = False,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per model, for scripts")] = False,
) -> None:
    """List the models this server can call (as GET /v1/models does), from the environment and the
    models file; with --check, whether each upstream answers (exit 1 if one does not)."""
    from opencone.gateway import listing
    from opencone.gateway.registry import NOTHING_CONFIGURED, ModelRegistry, ModelsFileError

    settings = _settings(data_dir)
    try:
        registry = ModelRegistry.load(settings, os.environ)
    except ModelsFileError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    rows = listing.rows(registry)
    checks: dict[str, listing.Check] = {}
    if check and rows:
        from opencone.gateway.clients import UpstreamClients

        async def run() -> list[listing.Check]:
            clients = UpstreamClients(min(settings.model_timeout_seconds, 15.0), max_retries=0)
            try:
                return await listing.check(registry, clients)
            finally:
                await clients.close()

        checks = {c.id: c for c in asyncio.run(run())}
    if as_json:
        for row in rows:
            if row["id"] in checks:
                row = {**row, "answers": checks[row["id"]].ok, "check": checks[row["id"]].detail}
            print(json.dumps(row))
    elif not rows:
        console.print(NOTHING_CONFIGURED)
    else:
        table = Table("id", "provider", "upstream model", "base URL", "dialect", "key from", "default",
                      *(["check"] if check else []))
        for row in rows:
            cells = [row["id"], row["provider"], row["upstream_model"], row["base_url"], row["dialect"], row["key"],
                     "yes" if row["default"] else ""]
            if check:
                c = checks[row["id"]]
                cells.append(f"[green]{c.detail}[/green]" if c.ok else f"[red]{c.detail}[/red]")
            table.add_row(*cells)
        console.print(table)
    if check and not all(c.ok for c in checks.values()):
        raise typer.Exit(1)


def _default_url() -> str:
    return os.environ.get("LIGHTCONE_BASE_URL") or f"http://127.0.0.1:{os.environ.get('OPENCONE_PORT', '8765')}"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


@app.command()
def status(
    url: Annotated[str | None, typer.Option(
        "--url", envvar="OPENCONE_URL",
        help="The server [default: $LIGHTCONE_BASE_URL, else http://127.0.0.1:$OPENCONE_PORT or 8765]")] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar=["OPENCONE_API_KEY", "TZAFON_API_KEY"], show_envvar=True,
        help="A key of the default organisation")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The server's GET /status answer, for scripts")] = False,
) -> None:
    """The running server at a glance: computers, pools, streams, memory and load (GET /status)."""
    import httpx

    base = (url or _default_url()).rstrip("/")
    if not api_key:
        console.print("[red]no API key: pass --api-key or set OPENCONE_API_KEY (a key of the default "
                      "organisation)[/red]")
        raise typer.Exit(2)
    try:
        resp = httpx.get(f"{base}/status", headers={"authorization": f"Bearer {api_key}"}, timeout=10)
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach {base}: {exc}[/red]")
        raise typer.Exit(1) from None
    if resp.status_code != 200:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text[:200]
        console.print(f"[red]{base}/status answered {resp.status_code}: {detail}[/red]")
        raise typer.Exit(1)
    st = resp.json()
    if as_json:
        print(json.dumps(st, indent=2))
        return
    if st.get("role") == "fleet-replica":
        _fleet_status(base, st)
        return
    host, comps = st["host"], st["computers"]
    console.print(f"[bold]opencone {st['version']}[/bold] at {base}, up {st['uptime_seconds']:,.0f} s")
    console.print(f"load {' '.join(f'{x:g}' for x in host['load'])} on {host['cpus']} cores · memory "
                  f"{_mib(host['memory_available_bytes'])} free of {_mib(host['memory_total_bytes'])} · "
                  f"server {_mib(host['server_rss_bytes'])}")
    console.print(f"{comps['live']} live computers of {st['max_computers']} · "
                  f"{st['streams']['event_subscribers']} event streams · "
                  f"{st['streams']['screencast_viewers']} screencast viewers · "
                  f"{st['exec']['running']} commands running ({st['exec']['started']} started) · "
                  f"agent tasks: {', '.join(f'{n} {s}' for s, n in st['agent_tasks'].items()) or 'none'}")
    pools = Table("pool", "ready", "launching", "floor", "target", "max", "misses", title="pools")
    for p in st["pools"]:
        pools.add_row(p["pool"], *(str(p[k]) for k in ("ready", "launching", "floor", "target", "max", "misses")))
    console.print(pools)
    if comps["list"]:
        table = Table("id", "organisation", "kind", "status", "age", "idle", title="computers")
        for c in comps["list"]:
            table.add_row(c["id"], c["org_id"], c["kind"], c["status"], f"{c['age_seconds']:,.0f} s",
                          f"{c['idle_seconds']:,.0f} s")
        console.print(table)


def _fleet_status(base: str, st: dict[str, Any]) -> None:
    """A fleet replica's GET /status (fleet/replica_ops.py): its nodes and the fleet's computers."""
    comps, slots = st["computers"], st["slots"]
    console.print(f"[bold]opencone {st['version']}[/bold] fleet replica at {base}, up {st['uptime_seconds']:,.0f} s")
    console.print(f"{comps['live']} live computers · browser slots {slots['browser']['used']}/"
                  f"{slots['browser']['capacity']} used · desktop slots {slots['desktop']['used']}/"
                  f"{slots['desktop']['capacity']} used · by kind: "
                  f"{', '.join(f'{n} {k}' for k, n in comps['by_kind'].items()) or 'none'}")
    table = Table("node", "state", "browsers", "desktops", "load", "free memory", "pools ready", "heartbeat",
                  title="fleet nodes")
    for n in st["nodes"]:
        s = n["slots"]
        pools = ("unreachable" if n["reachable"] is False else
                 ", ".join(f"{p['pool']} {p['ready']}" for p in n["pools"] or []) or "-")
        table.add_row(n["id"], n["state"], f"{s['browser']['used']}/{s['browser']['capacity']}",
                      f"{s['desktop']['used']}/{s['desktop']['capacity']}", f"{n['load']:g}",
                      _mib(n["free_memory_bytes"]), pools, n["heartbeat_at"] or "-")
    console.print(table)


@app.command()
def mcp(
    url: Annotated[str | None, typer.Option(
        "--url", envvar="OPENCONE_URL",
        help="A running server to bridge to (its /mcp); without it, an embedded server is started")] = None,
    key: Annotated[str | None, typer.Option(
        "--key", envvar=["OPENCONE_API_KEY", "TZAFON_API_KEY"], show_envvar=True,
        help="An API key of that server")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="The embedded server's state [default: $OPENCONE_DATA_DIR, else ~/.opencone]")] = None,
) -> None:
    """MCP over stdio, for clients that start a command (Claude Desktop/Code, Cursor): computers as tools."""
    from opencone.mcp import sdk_available

    if not sdk_available():
        print("opencone mcp needs the optional extra: pip install 'opencone[mcp]'", file=sys.stderr)
        raise typer.Exit(2)
    from opencone.mcp.stdio import BridgeError, run

    # stdout carries MCP only: every log line goes to stderr
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="opencone mcp: %(levelname)s %(message)s")
    where = data_dir or (Path(os.environ["OPENCONE_DATA_DIR"]) if os.environ.get("OPENCONE_DATA_DIR")
                         else Path.home() / ".opencone")
    try:
        run(url, key, where)
    except BridgeError as exc:
        print(f"opencone mcp: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
