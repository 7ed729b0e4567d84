"""``opencone mcp``: the tools over stdio, for desktop clients that start a command.

The process is a thin bridge: an MCP server on stdin/stdout (the SDK's low-level ``Server``) whose
``tools/list`` and ``tools/call`` go to a server's ``/mcp`` over Streamable HTTP with an API key,
in the sessionless 2026-07-28 era (nothing to go stale: when the server goes away a call says so
as a tool error, and the next one connects again).
So there is one tool set, served and checked in one place, and the running server's locks, idle
timers, events and live view see these calls as they see any other. Without ``--url`` the bridge
first starts its own server (``opencone serve`` as a child process on a free loopback port, its
output on stderr so nothing but MCP reaches stdout) and stops it when the client hangs up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from opencone import __version__
from opencone.mcp.server import INSTRUCTIONS

KEY_FILE = "mcp-embedded.key"  # the embedded server's key, made once per data dir (0600)
LOCK_FILE = "mcp-embedded.lock"  # one embedded server per data dir: a second would kill the first's browsers


class BridgeError(RuntimeError):
    """Said on stderr, with exit status 2."""


@dataclass(frozen=True, slots=True)
class Remote:
    url: str  # the server's base URL
    key: str


def _check(remote: Remote) -> None:
    """Fail early and plainly (a desktop client shows only stderr): the server is up and takes the key."""
    try:
        r = httpx.get(f"{remote.url}/computers", headers={"authorization": f"Bearer {remote.key}"}, timeout=15)
    except httpx.HTTPError as exc:
        raise BridgeError(f"cannot reach the opencone server at {remote.url}: {exc}") from None
    if r.status_code == 401:
        raise BridgeError(f"the server at {remote.url} refused the API key (give --key or OPENCONE_API_KEY / "
                          "TZAFON_API_KEY)")
    if r.status_code != 200:
        raise BridgeError(f"the server at {remote.url} answered {r.status_code}: {r.text[:300]}")


async def _serve(remote: Remote) -> None:
    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.server import Server
    from mcp.server.stdio import stdio_server
    from mcp_types import CallToolRequestParams, CallToolResult, ListToolsResult, PaginatedRequestParams, TextContent
    from mcp_types.version import LATEST_MODERN_VERSION

    class Upstream:
        """One upstream client, kept open in a task of its own: when the server goes away the SDK
        client's task group fails there (not in a request's task, nor in the bridge's), the calls in
        flight fail with it, and the next call opens a new client."""

        def __init__(self, http: httpx2.AsyncClient, tg: Any) -> None:
            self.http, self.tg = http, tg
            self.client: Client | None = None
            self.failure = "no connection"
            self.lock = anyio.Lock()

        async def get(self) -> Client:
            async with self.lock:
                if self.client is None:
                    ready = anyio.Event()
                    self.tg.start_soon(self._hold, ready)
                    await ready.wait()
                if self.client is None:
                    raise ConnectionError(self.failure)
                return self.client

        async def _hold(self, ready: anyio.Event) -> None:
            self.failure = "no connection"
            try:
                async with Client(streamable_http_client(f"{remote.url}/mcp", http_client=self.http),
                                  mode=LATEST_MODERN_VERSION) as client:
                    self.client = client
                    ready.set()
                    await anyio.sleep_forever()
            except Exception as exc:
                self.failure = describe(exc)
            finally:
                self.client = None
                ready.set()

    def describe(exc: BaseException) -> str:
        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
        return f"{type(leaf).__name__}: {leaf}"

    def unreachable(exc: BaseException) -> str:
        return f"the opencone server at {remote.url} did not answer ({describe(exc)}); is it running?"

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[Upstream]:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {remote.key}"},
                                      timeout=httpx2.Timeout(60, read=3700)) as http, \
                anyio.create_task_group() as tg:  # (exec may take an hour)
            yield Upstream(http, tg)
            tg.cancel_scope.cancel()

    async def list_tools(ctx: Any, params: PaginatedRequestParams | None) -> ListToolsResult:
        return await (await ctx.lifespan_context.get()).list_tools()  # type: ignore[no-any-return]

    async def call_tool(ctx: Any, params: CallToolRequestParams) -> CallToolResult:
        try:
            client = await ctx.lifespan_context.get()
            result = await client.call_tool(params.name, params.arguments or {})
        except Exception as exc:  # the server is gone or restarting: said to the model, not a protocol error
            return CallToolResult(is_error=True, content=[TextContent(type="text", text=unreachable(exc))])
        return CallToolResult(content=result.content, structured_content=result.structured_content,
                              is_error=result.is_error)

    server: Server[Any] = Server("opencone", version=__version__, instructions=INSTRUCTIONS, lifespan=lifespan,
                                 on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _embedded_key(data_dir: Path) -> str:
    path = data_dir / KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        key = path.read_text().strip()
        if key:
            return key
    key = f"oc_mcp_{secrets.token_urlsafe(24)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


def _die_with_parent() -> None:
    """In the child: SIGTERM when the bridge dies, even of SIGKILL (Linux's PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


@contextlib.contextmanager
def embedded(data_dir: Path, timeout: float = 90) -> Iterator[Remote]:
    """``opencone serve`` on a free loopback port for as long as the bridge runs."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(data_dir / LOCK_FILE, "w")  # held until the server is stopped
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise BridgeError(f"another embedded opencone server uses {data_dir}: connect to a running server with "
                          "--url and --key, or give another --data-dir") from None
    port = _free_port()
    key = _embedded_key(data_dir)
    env = {**os.environ, "OPENCONE_API_KEY": key, "OPENCONE_HOST": "127.0.0.1", "OPENCONE_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "opencone", "serve", "--data-dir", str(data_dir)],
                            env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), stderr=sys.stderr.fileno(),
                            start_new_session=True,  # the client's ^C or hang-up reaches us, and we stop it
                            preexec_fn=_die_with_parent)
    remote = Remote(f"http://127.0.0.1:{port}", key)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise BridgeError(f"the embedded opencone server exited with {proc.returncode} (its log is above)")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{remote.url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise BridgeError(f"the embedded opencone server did not start in {timeout:g} s")
            time.sleep(0.1)
        yield remote
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # it ends its computers and browsers itself
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        lock.close()


def run(url: str | None, key: str | None, data_dir: Path) -> None:
    """Serve MCP on stdio until the client hangs up: bridged to ``url``, or to an embedded server."""
    import anyio

    if url:
        if not key:
            raise BridgeError("--url needs an API key: --key, or OPENCONE_API_KEY / TZAFON_API_KEY")
        remote = Remote(url.rstrip("/").removesuffix("/mcp"), key)
        _check(remote)
        anyio.run(_serve, remote)
        return
    with embedded(data_dir) as remote:
        anyio.run(_serve, remote)
