"""The async SDK client against the same server (a representative set of calls)."""

from __future__ import annotations

import asyncio

import pytest
import tzafon
from conftest import Server, page_state

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_async_client_drives_a_browser(server: Server, site: str) -> None:
    client = server.async_client()
    comp = await client.computers.create(kind="browser")
    try:
        assert (await client.computers.navigate(comp.id, url=f"{site}/playground.html")).status == "success"
        assert (await client.computers.click(comp.id, x=110, y=70)).status == "success"
        await client.computers.click(comp.id, x=200, y=135)
        assert (await client.computers.type(comp.id, text="async")).status == "success"
        shot = await client.computers.screenshot(comp.id)
        assert shot.result["screenshot_url"].startswith("http")
        html = (await client.computers.html(comp.id)).result["html_content"]
        state = page_state(html)
        assert state["clicks"] == 1 and state["input"] == "async"
        tabs = await client.computers.tabs.list(comp.id)
        assert len(tabs.result["tabs"]) == 1
        out = await client.computers.batch(comp.id, actions=[{"type": "wait", "ms": 1}, {"type": "screenshot"}])
        assert out["status"] == "success"
        assert (await client.computers.keepalive(comp.id))["status"] == "ready"
        assert any(c.id == comp.id for c in await client.computers.list())
    finally:
        await client.computers.delete(comp.id)
    with pytest.raises(tzafon.ConflictError):
        await client.computers.click(comp.id, x=1, y=1)
    await client.close()


async def test_different_computers_run_in_parallel(server: Server) -> None:
    client = server.async_client()
    a, b = await asyncio.gather(client.computers.create(), client.computers.create())
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        results = await asyncio.gather(
            client.computers.execute(a.id, action={"type": "wait", "ms": 700}),
            client.computers.execute(b.id, action={"type": "wait", "ms": 700}),
        )
        assert all(r.status == "success" for r in results)
        assert loop.time() - start < 1.3  # not 1.4 s: the two computers did not wait for each other
    finally:
        await asyncio.gather(client.computers.delete(a.id), client.computers.delete(b.id))
        await client.close()
