"""``opencone mcp`` over stdio, driven by the official ``mcp`` client that starts it as a command
(as Claude Desktop, Claude Code and Cursor do): bridged to a running server with a key, and with
its own embedded server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Server, start_server, wait_until
from mcp import Client, StdioServerParameters
from mcp_helpers import create, ok, round_trip, text

from opencone.testing import pids_with


def command(*args: str, **env: str) -> StdioServerParameters:
    # the SDK gives a stdio server a minimal environment (HOME, PATH, ...): what it needs is passed
    return StdioServerParameters(command=sys.executable, args=["-m", "opencone", "mcp", *args],
                                 env={"OPENCONE_POOL_SIZE": "1", "OPENCONE_EGRESS_ALLOW": "127.0.0.1", **env})


async def test_bridged_to_a_running_server(server: Server, site: str) -> None:
    # the key by environment, as a client's config file gives it
    async with Client(command("--url", server.base_url, OPENCONE_API_KEY=server.api_key)) as c:
        assert c.session.protocol_version == "2026-07-28"
        await round_trip(c, site)
        # the bridge adds nothing of its own: the server's computers are the ones it lists
        cid = await create(c, f"{site}/mcp.html")
        try:
            with server.http() as h:
                assert cid in {v["id"] for v in h.get("/computers").json()}
        finally:
            await ok(c, "computer_close", computer_id=cid)


def test_refuses_a_wrong_key_plainly(server: Server) -> None:
    proc = subprocess.run([sys.executable, "-m", "opencone", "mcp", "--url", server.base_url, "--key", "wrong"],
                          input="", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""  # stdout is MCP's: nothing else goes there
    assert "refused the API key" in proc.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("OPENCONE_API_KEY", "TZAFON_API_KEY")}
    proc = subprocess.run([sys.executable, "-m", "opencone", "mcp", "--url", server.base_url], input="",
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "--url needs an API key" in proc.stderr


async def test_embedded_server(tmp_path: Path, site: str) -> None:
    data = tmp_path / "data"
    async with Client(command("--data-dir", str(data)), mode="legacy") as c:
        assert c.session.protocol_version == "2025-11-25"
        cid = await create(c, f"{site}/mcp.html")
        assert "button \"Go\"" in text(await ok(c, "snapshot", computer_id=cid))
        # one embedded server per data dir: a second bridge on it says so instead of taking it over
        second = subprocess.run([sys.executable, "-m", "opencone", "mcp", "--data-dir", str(data)], input="",
                                capture_output=True, text=True, timeout=60, env={**os.environ})
        assert second.returncode == 2 and "another embedded opencone server uses" in second.stderr
        assert json.loads(text(await ok(c, "computer_get", computer_id=cid)))["status"] != "terminated"
        assert pids_with(str(data.resolve()))  # its server and browsers run
    # the client hung up: the embedded server and its browsers are gone
    assert wait_until(lambda: not pids_with(str(data.resolve())), timeout=60), pids_with(str(data.resolve()))
    assert (data / "mcp-embedded.key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("args", [["--url", "http://127.0.0.1:9"]])
def test_unreachable_server_said_on_stderr(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "opencone", "mcp", *args, "--key", "k"], input="",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cannot reach the opencone server" in proc.stderr


async def test_server_gone_is_a_tool_error(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    try:
        async with Client(command("--url", srv.base_url, "--key", srv.api_key)) as c:
            await ok(c, "computer_list")
            srv.stop()
            for _ in range(2):  # and the bridge stays up, answering
                gone = await c.call_tool("computer_list", {})
                assert gone.is_error and f"the opencone server at {srv.base_url} did not answer" in text(gone)
    finally:
        srv.stop()
