"""/mcp driven by the official ``mcp`` client over Streamable HTTP, in both protocol eras.

Real server processes (opencone.testing), real Chromium, the SDK's own client; the page is
tests/pages/mcp.html, whose #out mirrors the text field so a screenshot shows what was typed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, jpeg_pixels, start_server
from mcp_helpers import MODES, create, mcp_client, ok, ref_of, round_trip, shot, text


@pytest.mark.parametrize("mode", list(MODES))
async def test_create_snapshot_click_type_screenshot_close(server: Server, site: str, mode: str) -> None:
    async with mcp_client(server, mode) as c:
        assert c.session.protocol_version == MODES[mode]
        await round_trip(c, site)


async def test_tools_and_annotations(server: Server) -> None:
    async with mcp_client(server) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    expected = {"computer_create", "computer_list", "computer_get", "computer_close", "environment_list",
                "screenshot", "snapshot", "click", "move", "mouse_down", "mouse_up", "drag", "scroll", "type",
                "key", "key_down", "key_up", "fill", "select_option", "navigate", "tabs", "wait", "read_page"}
    assert expected <= set(tools)
    assert "exec" not in tools  # an opt-in group, off unless OPENCONE_MCP_GROUPS names it
    for name in ("screenshot", "snapshot", "read_page", "computer_list", "computer_get", "environment_list"):
        assert tools[name].annotations is not None and tools[name].annotations.read_only_hint is True, name
    for name in ("click", "type", "navigate", "computer_close"):
        assert tools[name].annotations is not None and not tools[name].annotations.read_only_hint, name
    assert tools["computer_close"].annotations.destructive_hint is True
    for name, tool in tools.items():
        if name not in ("computer_create", "computer_list", "environment_list"):
            assert "computer_id" in tool.input_schema["required"], name
    click = tools["click"].input_schema["properties"]
    assert {"ref", "x", "y", "button", "count", "snapshot_id"} <= set(click)


async def test_unauthenticated_refused(server: Server) -> None:
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    for headers in ({}, {"authorization": "Bearer not-a-key"}, {"authorization": "Basic abc"},
                    {"authorization": "Bearer " + "k" * 5000}):
        r = httpx.post(f"{server.base_url}/mcp", json=hello, headers={**headers, "accept": "application/json, "
                                                                                           "text/event-stream"})
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert r.json()["error"] == "invalid_token"
        assert r.headers["www-authenticate"].startswith("Bearer")
    # static keys: no OAuth metadata sends a client looking for an authorization server there is not
    assert httpx.get(f"{server.base_url}/.well-known/oauth-protected-resource/mcp").status_code == 404
    with pytest.raises(Exception):  # noqa: B017 (the SDK's client surfaces the 401 as its own error types)
        async with mcp_client(server, key="not-a-key") as c:
            await c.list_tools()
    # the rest of the server is untouched by the mount
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    assert httpx.get(f"{server.base_url}/nope").status_code == 404


async def test_stale_ref_refused_with_actionable_message(server: Server, site: str) -> None:
    async with mcp_client(server) as c:
        cid = await create(c, f"{site}/mcp.html")
        try:
            first = text(await ok(c, "snapshot", computer_id=cid))
            go, old_id = ref_of(first, 'button "Go"'), first.split()[1]
            # a new document since the snapshot: its refs are refused, whatever is there now
            await ok(c, "navigate", computer_id=cid, url=f"{site}/mcp.html?t=again")
            gone = await c.call_tool("click", {"computer_id": cid, "ref": go})
            assert gone.is_error and go in text(gone) and "take a new snapshot" in text(gone)
            await ok(c, "snapshot", computer_id=cid)
            stale = await c.call_tool("click", {"computer_id": cid, "ref": go, "snapshot_id": old_id})
            assert stale.is_error and f"ref {go}" in text(stale) and "stale" in text(stale)
            assert "take a new snapshot" in text(stale)
            unknown = await c.call_tool("click", {"computer_id": cid, "ref": "e999"})
            assert unknown.is_error and "e999" in text(unknown) and "snapshot" in text(unknown)
            # and nothing was clicked
            assert '"go"' not in text(await ok(c, "read_page", computer_id=cid))
        finally:
            await c.call_tool("computer_close", {"computer_id": cid})


async def test_two_computers_in_one_session(server: Server, site: str) -> None:
    async with mcp_client(server, "legacy") as c:  # one MCP session (Mcp-Session-Id) for both
        a, b = await create(c, f"{site}/mcp.html"), await create(c, f"{site}/mcp.html")
        try:
            assert a != b
            listed = {v["computer_id"] for v in json.loads(text(await ok(c, "computer_list")))}
            assert {a, b} <= listed
            refs = {cid: ref_of(text(await ok(c, "snapshot", computer_id=cid)), 'textbox "Words"') for cid in (a, b)}
            for i in range(3):  # interleaved
                for cid, word in ((a, "left"), (b, "right")):
                    await ok(c, "click", computer_id=cid, ref=refs[cid])
                    await ok(c, "key", computer_id=cid, keys="End")
                    await ok(c, "type", computer_id=cid, text=f"{word}{i}")
            # and at once: calls on two computers in flight together on the one session (each
            # computer's own two in order: two calls in flight on one computer may arrive either way)
            async def type_in_turn(cid: str, *words: str) -> None:
                for word in words:
                    await ok(c, "type", computer_id=cid, text=word)

            await asyncio.gather(type_in_turn(a, "-L", "!"), type_in_turn(b, "-R", "?"))
            snap_a, snap_b = [text(await ok(c, "snapshot", computer_id=cid)) for cid in (a, b)]
            assert "left0left1left2-L!" in snap_a and "right" not in snap_a and "-R" not in snap_a
            assert "right0right1right2-R?" in snap_b and "left" not in snap_b and "-L" not in snap_b
        finally:
            for cid in (a, b):
                await c.call_tool("computer_close", {"computer_id": cid})


async def test_bad_arguments_are_tool_errors(server: Server, site: str) -> None:
    async with mcp_client(server) as c:
        missing = await c.call_tool("snapshot", {"computer_id": "comp_nope"})
        assert missing.is_error and "no computer 'comp_nope'" in text(missing)
        cid = await create(c, f"{site}/mcp.html")
        try:
            cases = [
                ("click", {"x": 10}, "x and y go together"),
                ("click", {"ref": "e1", "x": 1, "y": 2}, "not both"),
                ("click", {}, "target is required"),
                ("click", {"x": 5000, "y": 10}, "outside the screen"),
                ("click", {"x": "abc", "y": 1}, "valid number"),
                ("click", {"ref": "e1; drop"}, "ref"),
                ("key", {"keys": "ctrl+nosuchkey"}, "nosuchkey"),
                ("navigate", {"url": "file:///etc/passwd"}, "URL scheme must be one of"),
                ("navigate", {}, "url or direction"),
                ("tabs", {"op": "switch"}, "needs tab_id"),
                ("wait", {"ms": 10**9}, "less than or equal"),
                ("drag", {"ref": "e1"}, "ref and to_ref"),
                ("type", {"text": "x" * 200_000}, "at most"),
                ("mouse_down", {"y": 3}, "x and y go together"),
                ("move", {}, "target is required"),
                ("move", {"ref": "e1", "x": 1, "y": 2}, "not both"),
            ]
            for tool, args, needle in cases:
                result = await c.call_tool(tool, {"computer_id": cid, **args})
                assert result.is_error and needle in text(result), (tool, args, text(result))
            bad = await c.call_tool("computer_create", {"kind": "mainframe"})
            assert bad.is_error and "browser" in text(bad)
            refused = await c.call_tool("computer_create", {"start_url": "javascript:alert(1)"})
            assert refused.is_error and "URL scheme" in text(refused)
            too_long = await c.call_tool("computer_create", {"max_lifetime_seconds": 10**9})
            assert too_long.is_error and "max_lifetime_seconds" in text(too_long), text(too_long)
            gone_env = await c.call_tool("computer_create", {"environment_id": "env_nope"})
            assert gone_env.is_error and "env_nope" in text(gone_env), text(gone_env)
        finally:
            await c.call_tool("computer_close", {"computer_id": cid})


async def test_keys_scroll_tabs_fill_and_history(server: Server, site: str) -> None:
    async with mcp_client(server) as c:
        cid = await create(c, f"{site}/mcp.html")
        try:
            snap = text(await ok(c, "snapshot", computer_id=cid))
            field = ref_of(snap, 'textbox "Words"')
            await ok(c, "fill", computer_id=cid, ref=field, text="abc")
            await ok(c, "key", computer_id=cid, keys="ctrl+a")
            await ok(c, "type", computer_id=cid, text="z")  # replaces the selection ctrl+a made
            await ok(c, "key_down", computer_id=cid, key="shift")
            await ok(c, "key", computer_id=cid, keys="Home")  # shift+Home: "z" selected
            await ok(c, "key_up", computer_id=cid, key="Shift")
            await ok(c, "type", computer_id=cid, text="y")
            snap = text(await ok(c, "snapshot", computer_id=cid))
            field_line = next(ln for ln in snap.splitlines() if 'textbox "Words"' in ln)
            assert field_line.rstrip().endswith(': "y"') or field_line.rstrip().endswith(": y"), snap
            await ok(c, "scroll", computer_id=cid, dy=200)
            await ok(c, "move", computer_id=cid, x=700, y=550)
            await ok(c, "mouse_down", computer_id=cid)
            await ok(c, "mouse_up", computer_id=cid)  # a click on #far, by hand
            await ok(c, "wait", computer_id=cid, ms=10)
            assert '"far"' in text(await ok(c, "read_page", computer_id=cid))
            tabs = json.loads(text(await ok(c, "tabs", computer_id=cid)))["tabs"]
            new = json.loads(text(await ok(c, "tabs", computer_id=cid, op="new", url=f"{site}/mcp.html?t=tab2")))
            assert "?t=tab2" in new["tab"]["url"] and len(tabs) == 1
            await ok(c, "tabs", computer_id=cid, op="close", tab_id=new["tab_id"])
            await ok(c, "navigate", computer_id=cid, url=f"{site}/mcp.html?t=two")
            await ok(c, "navigate", computer_id=cid, direction="back")
            assert "?t=two" not in text(await ok(c, "snapshot", computer_id=cid)).splitlines()[0]
        finally:
            await c.call_tool("computer_close", {"computer_id": cid})


async def test_pointer_by_ref_hovers_presses_and_releases(server: Server, site: str) -> None:
    """move, mouse_down and mouse_up on a ref: the element's centre, as a hand would."""
    async with mcp_client(server) as c:
        cid = await create(c, f"{site}/mcp.html")
        try:
            snap = text(await ok(c, "snapshot", computer_id=cid))
            await ok(c, "move", computer_id=cid, ref=ref_of(snap, 'button "Hover me"'))
            press = ref_of(snap, 'button "Press me"')
            await ok(c, "mouse_down", computer_id=cid, ref=press)
            await ok(c, "mouse_up", computer_id=cid, ref=press)
            page = text(await ok(c, "read_page", computer_id=cid))
            assert 'LOG["hover","press down","press up","press"]END' in page.replace("\\", ""), page
        finally:
            await c.call_tool("computer_close", {"computer_id": cid})


async def test_other_organisation_sees_nothing(server: Server, site: str) -> None:
    other = subprocess.run([sys.executable, "-m", "opencone", "keys", "create", "--new-org", "mcp-other",
                            "--data-dir", str(server.data_dir)], capture_output=True, text=True, check=True)
    key = other.stdout.strip().splitlines()[-1]
    async with mcp_client(server) as mine, mcp_client(server, key=key) as theirs:
        cid = await create(mine, f"{site}/mcp.html")
        try:
            assert cid not in text(await ok(theirs, "computer_list"))
            for tool in ("screenshot", "computer_close"):
                result = await theirs.call_tool(tool, {"computer_id": cid})
                assert result.is_error and "no computer" in text(result), tool
            await ok(mine, "computer_get", computer_id=cid)  # still there
        finally:
            await mine.call_tool("computer_close", {"computer_id": cid})


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """exec and evaluate on, and screenshots scaled to 512 px: the opt-in groups and the pixel mapping."""
    srv = start_server(tmp_path_factory.mktemp("mcp-small"),
                       env={"OPENCONE_MCP_GROUPS": "exec,evaluate", "OPENCONE_MCP_SCREENSHOT_MAX_SIDE": "512"})
    yield srv
    srv.stop()


async def test_scaled_screenshot_pixels_and_opt_in_groups(small_server: Server, site: str) -> None:
    async with mcp_client(small_server) as c:
        assert {"exec", "evaluate"} <= {t.name for t in (await c.list_tools()).tools}
        cid = await create(c, f"{site}/mcp.html")
        try:
            image, note = await shot(c, cid)
            assert image.shape == (384, 512, 3) and "scale 0.5 of the 1024x768 screen" in note
            # #far is at 600..800 x 500..600 on the screen: 300..400 x 250..300 in this image
            await ok(c, "click", computer_id=cid, x=350, y=275)
            assert '"far"' in text(await ok(c, "read_page", computer_id=cid))
            outside = await c.call_tool("click", {"computer_id": cid, "x": 600, "y": 10})  # 1200 on the screen
            assert outside.is_error and "outside the screen" in text(outside)
            ran = json.loads(text(await ok(c, "exec", computer_id=cid, command="echo hi-from-mcp; exit 3")))
            assert ran["exit_code"] == 3 and ran["stdout"].strip() == "hi-from-mcp"
            js = "() => ({title: document.title, log: document.getElementById('log').textContent})"
            value = text(await ok(c, "evaluate", computer_id=cid, expression=js))
            assert json.loads(value) == {"title": "MCP page", "log": 'LOG["far"]END'}
            thrown = await c.call_tool("evaluate", {"computer_id": cid, "expression": "nosuchname.x"})
            assert thrown.is_error and "nosuchname is not defined" in text(thrown)
            long = text(await ok(c, "evaluate", computer_id=cid, expression="'x'.repeat(5000)", max_chars=100))
            assert long.endswith("[truncated]") and len(long) < 200
        finally:
            await c.call_tool("computer_close", {"computer_id": cid})


async def test_desktop_screenshot_scaled(small_server: Server) -> None:
    async with mcp_client(small_server) as c:
        made = json.loads(text(await ok(c, "computer_create", kind="desktop")))
        cid = made["computer_id"]
        try:
            assert made["kind"] == "desktop" and made["screenshot_size"] == {"width": 512, "height": 288,
                                                                              "scale": 0.4}
            image, note = await shot(c, cid)
            assert image.shape == (288, 512, 3) and "scale 0.4 of the 1280x720 screen" in note
            await ok(c, "click", computer_id=cid, x=511, y=287)  # the image's last pixel: on the screen
            # evaluate on a desktop runs in its browser's page
            await ok(c, "navigate", computer_id=cid, url="data:text/html,<title>desk-js</title>")
            assert json.loads(text(await ok(c, "evaluate", computer_id=cid, expression="document.title"))) == "desk-js"
        finally:
            await c.call_tool("computer_close", {"computer_id": cid})


async def test_large_screen_scaled_to_the_default_side(server: Server, site: str) -> None:
    async with mcp_client(server) as c:
        made = json.loads(text(await ok(c, "computer_create", width=1920, height=1080, start_url=f"{site}/mcp.html")))
        cid = made["computer_id"]
        try:
            assert made["display"] == {"width": 1920, "height": 1080}
            image, note = await shot(c, cid)
            assert image.shape == (720, 1280, 3) and "(scale 0.6667 of the 1920x1080 screen)" in note
            # #far (600..800 x 500..600 on the screen) is at 400..533 x 333..400 in this image
            await ok(c, "click", computer_id=cid, x=466, y=366)
            assert '"far"' in text(await ok(c, "read_page", computer_id=cid))
        finally:
            await c.call_tool("computer_close", {"computer_id": cid})


NOISE = ("data:text/html,<body style='margin:0'><canvas id=c width=1280 height=1000></canvas><script>"
         "const x=document.getElementById('c').getContext('2d'),d=x.createImageData(1280,1000);"
         "for(let i=0;i<d.data.length;i++)d.data[i]=Math.random()*256|0;x.putImageData(d,0,0)</script>")


async def test_screenshot_kept_within_client_limits(server: Server) -> None:
    """A screen of noise is the worst case for JPEG: the image still fits Claude Desktop's 1 MiB per result."""
    async with mcp_client(server) as c:
        made = json.loads(text(await ok(c, "computer_create", width=1280, height=1000, start_url=NOISE)))
        cid = made["computer_id"]
        try:
            with server.http() as h:  # the REST screenshot of the same screen, at the server's quality
                full = h.post(f"/computers/{cid}/screenshot", json={"base64": True}).json()["result"]
            raw = base64.b64decode(full["screenshot_url"].split(",", 1)[1])
            result = await ok(c, "screenshot", computer_id=cid)
            image = next(x for x in result.content if x.type == "image")
            assert len(raw) > 700 * 1024  # (else this page tests nothing)
            assert len(image.data) < 1024 * 1024 and len(base64.b64decode(image.data)) <= 700 * 1024
            assert jpeg_pixels(base64.b64decode(image.data)).shape == (1000, 1280, 3)
        finally:
            await c.call_tool("computer_close", {"computer_id": cid})


async def test_persistent_computer_restored_from_its_environment(small_server: Server, site: str) -> None:
    async with mcp_client(small_server) as c:
        made = json.loads(text(await ok(c, "computer_create", persistent=True, start_url=f"{site}/mcp.html")))
        cid = made["computer_id"]
        assert made["persistent"] is True
        await ok(c, "evaluate", computer_id=cid, expression="document.cookie = 'mcp=42; max-age=3600'")
        await ok(c, "computer_close", computer_id=cid)  # saved as the environment named by its id
        for _ in range(600):
            saved = [e for e in json.loads(text(await ok(c, "environment_list"))) if e["environment_id"] == cid]
            if saved and saved[0]["status"] == "saved":
                break
            await asyncio.sleep(0.1)
        assert saved and saved[0]["status"] == "saved" and saved[0]["kind"] == "browser", saved
        back = json.loads(text(await ok(c, "computer_create", environment_id=cid, start_url=f"{site}/mcp.html")))
        try:
            assert back["environment_id"] == cid and back["computer_id"] != cid
            cookie = text(await ok(c, "evaluate", computer_id=back["computer_id"], expression="document.cookie"))
            assert "mcp=42" in cookie
        finally:
            await c.call_tool("computer_close", {"computer_id": back["computer_id"]})


async def test_proxy_at_create(small_server: Server, site: str) -> None:
    async with mcp_client(small_server) as c:
        before = {v["computer_id"] for v in json.loads(text(await ok(c, "computer_list")))}
        bad = await c.call_tool("computer_create", {"proxy": "ftp://127.0.0.1:21"})
        assert bad.is_error and "ftp" in text(bad), text(bad)
        # a proxy that is not there: the start URL cannot load through it, and the computer is closed again
        dead = await c.call_tool("computer_create", {"proxy": "http://127.0.0.1:9", "start_url": f"{site}/mcp.html"})
        assert dead.is_error and "the computer was closed again" in text(dead), text(dead)
        after = {v["computer_id"] for v in json.loads(text(await ok(c, "computer_list")))}
        assert after == before


def test_without_the_extra_mcp_answers_json(tmp_path: Path) -> None:
    # the SDK made unimportable for this server only: a package named mcp first on its path that
    # fails as a missing one does
    shadow = tmp_path / "shadow" / "mcp"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'mcp'\")\n")
    srv = start_server(tmp_path / "srv", env={"PYTHONPATH": str(shadow.parent)})
    try:
        r = httpx.post(f"{srv.base_url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert r.status_code == 501 and r.headers["content-type"].startswith("application/problem+json")
        assert "opencone[mcp]" in r.json()["detail"]
        with srv.http() as h:  # the rest of the server works
            assert h.get("/computers").status_code == 200
    finally:
        srv.stop()


async def test_mcp_actions_go_through_the_services_as_rest(server: Server, site: str) -> None:
    """Events, idle timer and the REST view see an MCP action as they see a REST one."""
    events: list[dict[str, Any]] = []
    async with mcp_client(server) as c, httpx.AsyncClient(
            base_url=server.base_url, headers={"authorization": f"Bearer {server.api_key}"}, timeout=60) as rest:
        cid = await create(c, f"{site}/mcp.html")

        async def read() -> None:
            async with rest.stream("GET", f"/computers/{cid}/events") as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        events.append(json.loads(line[5:]))

        reader = asyncio.create_task(read())
        try:
            async def seen(pred: Any) -> dict[str, Any]:
                for _ in range(400):
                    found = next((e for e in events if pred(e)), None)
                    if found is not None:
                        return found
                    await asyncio.sleep(0.05)
                raise AssertionError([e["type"] for e in events])

            await seen(lambda e: e["type"] == "subscribed")
            before = (await rest.get(f"/computers/{cid}")).json()["idle_expires_at"]
            snap = text(await ok(c, "snapshot", computer_id=cid))
            go = ref_of(snap, 'button "Go"')
            await ok(c, "click", computer_id=cid, ref=go)
            requested = await seen(lambda e: e["type"] == "action_requested" and e.get("kind") == "click")
            assert requested["action"]["element"]["ref"] == go
            await seen(lambda e: e["type"] == "action_completed" and e.get("request_id") == requested["request_id"]
                       and e["status"] == "success")
            after = (await rest.get(f"/computers/{cid}")).json()["idle_expires_at"]
            assert after > before  # the idle timer was reset by the MCP actions
            # a REST action on the same computer meanwhile: both kept apart by the computer's lock
            await ok(c, "click", computer_id=cid, ref=ref_of(snap, 'textbox "Words"'))
            r1, r2 = await asyncio.gather(rest.post(f"/computers/{cid}/type", json={"text": "rest"}),
                                          c.call_tool("type", {"computer_id": cid, "text": "mcp"}))
            assert r1.json()["status"] == "success" and not r2.is_error
            value = text(await ok(c, "snapshot", computer_id=cid))
            assert "restmcp" in value or "mcprest" in value  # whole, one after the other, never interleaved
        finally:
            reader.cancel()
            await c.call_tool("computer_close", {"computer_id": cid})


def test_unknown_tool_group_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="unknown MCP tool group"):
        start_server(tmp_path, env={"OPENCONE_MCP_GROUPS": "exec,shell"})
