"""Helpers of the MCP tests (test_mcp.py, test_mcp_stdio.py): the official client, and reading its results."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import numpy
from conftest import Server, jpeg_pixels
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

MODES = {"auto": "2026-07-28", "legacy": "2025-11-25"}  # Client(mode=...) -> the protocol it speaks then
OUT = (slice(125, 215), slice(25, 715))  # rows, columns of #out on the page (its text's pixels)


@asynccontextmanager
async def mcp_client(server: Server, mode: str = "auto", key: str | None = None) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key or server.api_key}"},
                              timeout=httpx2.Timeout(60, read=300))
    async with http, Client(streamable_http_client(f"{server.base_url}/mcp", http_client=http), mode=mode) as c:
        yield c


def text(result: CallToolResult) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def ok(c: Client, tool: str, **args: Any) -> CallToolResult:
    result = await c.call_tool(tool, args)
    assert not result.is_error, f"{tool} {args}: {text(result)}"
    return result


async def create(c: Client, url: str) -> str:
    return json.loads(text(await ok(c, "computer_create", start_url=url)))["computer_id"]  # type: ignore[no-any-return]


def ref_of(snapshot: str, needle: str) -> str:
    """The ref of the first snapshot line containing ``needle``."""
    line = next(ln for ln in snapshot.splitlines() if needle in ln)
    return line.split("[ref=")[1].split("]")[0]


async def shot(c: Client, cid: str) -> tuple[numpy.ndarray, str]:
    result = await ok(c, "screenshot", computer_id=cid)
    image = next(x for x in result.content if x.type == "image")
    assert image.mime_type == "image/jpeg"
    return jpeg_pixels(base64.b64decode(image.data)), text(result)


def differs(a: numpy.ndarray, b: numpy.ndarray) -> float:
    return float(numpy.abs(a.astype(int) - b.astype(int)).mean())


async def round_trip(c: Client, site: str) -> None:
    """Create a computer on tests/pages/mcp.html, snapshot, click refs, type, check the screenshot's
    pixels show the typed text, close; what every transport's test runs."""
    cid = await create(c, f"{site}/mcp.html")
    snap = text(await ok(c, "snapshot", computer_id=cid))
    assert snap.startswith("snapshot snap_") and "mcp.html" in snap.splitlines()[0]
    await ok(c, "click", computer_id=cid, ref=ref_of(snap, 'button "Go"'))
    await ok(c, "click", computer_id=cid, ref=ref_of(snap, 'textbox "Words"'))
    await ok(c, "type", computer_id=cid, text="MCP42")
    # the page saw the click and the typing (its own log, read as markdown through the same tools)
    page = text(await ok(c, "read_page", computer_id=cid))
    assert '"go"' in page
    assert "MCP42" in text(await ok(c, "snapshot", computer_id=cid))
    typed, note = await shot(c, cid)
    assert "scale 1 of the 1024x768 screen" in note and typed.shape == (768, 1024, 3)
    # the pixels: #out as typed matches #out of the page filled with the same text from its URL,
    # and not a page filled with other text of the same length (nor the empty one)
    await ok(c, "navigate", computer_id=cid, url=f"{site}/mcp.html?t=MCP42")
    same, _ = await shot(c, cid)
    await ok(c, "navigate", computer_id=cid, url=f"{site}/mcp.html?t=XYZ99")
    other, _ = await shot(c, cid)
    await ok(c, "navigate", computer_id=cid, url=f"{site}/mcp.html")
    empty, _ = await shot(c, cid)
    near, far = differs(typed[OUT], same[OUT]), differs(typed[OUT], other[OUT])
    assert near < 2.0 and far > 10 * max(near, 0.5), (near, far)
    assert differs(typed[OUT], empty[OUT]) > 10 * max(near, 0.5)
    assert "closed" in text(await ok(c, "computer_close", computer_id=cid))
    view = json.loads(text(await ok(c, "computer_get", computer_id=cid)))
    assert view["status"] == "terminated" and view["termination_reason"] == "deleted"
    after = await c.call_tool("click", {"computer_id": cid, "x": 5, "y": 5})
    assert after.is_error and "terminated" in text(after) and "create a new one" in text(after)
