"""/mcp through any fleet replica, in both protocol eras, with no sticky route (fleet/replica_mcp.py).

A replica serves the 2025-11-25 handshake era statelessly: it issues no ``Mcp-Session-Id``, so the
official client sends none, and a client that initialised through replica A calls tools through
replica B. Two replicas over one node server started without Ray (tests/fleet_direct.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import pytest
from fleet_direct import DirectFleet, start_direct_fleet
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_helpers import MODES, create, ok, shot, text

pytestmark = pytest.mark.timeout(300)

ACCEPT = "application/json, text/event-stream"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[DirectFleet]:
    fleet = start_direct_fleet(tmp_path_factory.mktemp("fleet-mcp"), postgres, nodes=1, replicas=2,
                               browser_slots=2, desktop_slots=0)
    yield fleet
    fleet.stop()


class Switch(httpx2.AsyncBaseTransport):
    """Sends every request to replica A until ``to_b()``, then to replica B (a load balancer that
    moved the client), and notes what each request carried."""

    def __init__(self, a: str, b: str) -> None:
        self.inner, self.a, self.b, self.target = httpx2.AsyncHTTPTransport(), a, b, a
        self.seen: list[tuple[str, str, str | None]] = []  # (replica, method, Mcp-Session-Id sent)

    def to_b(self) -> None:
        self.target = self.b

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        host, port = self.target.removeprefix("http://").split(":")
        request.url = request.url.copy_with(host=host, port=int(port))
        request.headers["host"] = self.target.removeprefix("http://")
        self.seen.append((self.target, request.method, request.headers.get("mcp-session-id")))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def moved_client(fleet: DirectFleet) -> AsyncIterator[tuple[Client, Switch]]:
    """The official client in the 2025-11-25 era, initialised through replica A, its transport then
    ready to be moved to replica B."""
    a, b = (r.base_url for r in fleet.replicas)
    switch = Switch(a, b)
    http = httpx2.AsyncClient(transport=switch, headers={"Authorization": f"Bearer {fleet.key}"},
                              timeout=httpx2.Timeout(60, read=300))
    async with http, Client(streamable_http_client(f"{a}/mcp", http_client=http), mode="legacy") as c:
        yield c, switch


async def test_a_handshake_session_opened_on_one_replica_calls_tools_on_another(fleet: DirectFleet,
                                                                                 site: str) -> None:
    a, b = (r.base_url for r in fleet.replicas)
    async with moved_client(fleet) as (c, switch):
        assert c.session.protocol_version == MODES["legacy"]
        assert {r for r, _, _ in switch.seen} == {a}  # the handshake went to A
        switch.to_b()
        cid = await create(c, f"{site}/mcp.html")
        pixels, note = await shot(c, cid)
        assert pixels.shape == (768, 1024, 3) and "1024x768 screen" in note
        assert "closed" in text(await ok(c, "computer_close", computer_id=cid))
        calls = [r for r, method, _ in switch.seen if method == "POST"]
        assert calls[-3:] == [b, b, b]  # the three tool calls were served by B
    # no session was issued, so none was ever sent (nor a GET stream or a DELETE opened for one)
    assert all(sid is None for _, _, sid in switch.seen), switch.seen
    assert {method for _, method, _ in switch.seen} == {"POST"}, switch.seen
    with fleet.http(replica=0) as h:
        ended = h.get(f"/computers/{cid}").json()
    assert ended["status"] == "terminated" and ended["termination_reason"] == "deleted"


def test_raw_handshake_on_a_then_tool_calls_on_b(fleet: DirectFleet) -> None:
    """What the wire shows: A's answer to ``initialize`` names no session, and B answers a 2025-11-25
    ``tools/call`` that carries none."""
    a, b = (r.base_url for r in fleet.replicas)
    headers = {"authorization": f"Bearer {fleet.key}", "accept": ACCEPT}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "raw", "version": "1"}}}
    r = httpx.post(f"{a}/mcp", json=init, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert "mcp-session-id" not in r.headers
    assert r.json()["result"]["protocolVersion"] == "2025-11-25"
    legacy = {**headers, "mcp-protocol-version": "2025-11-25"}
    r = httpx.post(f"{b}/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=legacy,
                   timeout=30)
    assert r.status_code == 202, r.text
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "computer_list", "arguments": {}}}
    # and a session id a replica of an older release handed out (a rolling upgrade) is no 404: ignored
    for sent in (legacy, {**legacy, "mcp-session-id": "0123456789abcdef0123456789abcdef"}):
        r = httpx.post(f"{b}/mcp", json=call, headers=sent, timeout=30)
        assert r.status_code == 200, (sent, r.text)
        result = r.json()["result"]
        assert not result.get("isError"), result
        assert isinstance(json.loads(result["content"][0]["text"]), list)


async def test_the_sessionless_era_through_b_sees_a_computer_made_through_a(fleet: DirectFleet) -> None:
    a, b = fleet.replicas
    mine = fleet.client().computers.create(kind="browser")  # REST through A
    try:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {fleet.key}"},
                                  timeout=httpx2.Timeout(60, read=300))
        async with http, Client(streamable_http_client(f"{b.base_url}/mcp", http_client=http), mode="auto") as c:
            assert c.session.protocol_version == MODES["auto"]
            view = json.loads(text(await ok(c, "computer_get", computer_id=mine.id)))
            assert view["status"] == "ready"
            _, note = await shot(c, mine.id)
            assert "1024x768 screen" in note
    finally:
        fleet.client().computers.delete(mine.id)
