"""Recordings of a computer's screen: the MP4 (decoded with PyAV), its timeline, start/stop, the
replay page in a real Chromium, the storage cap, tenancy, bad ids, deletion with the computer,
the encoder threads' end, and a recording cut short by a server kill.

Pages are data: URLs whose whole screen is one colour, so a decoded frame says which page it shows
and when, to compare with the timeline's offsets.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from conftest import Server, start_server, wait_until
from playwright.sync_api import sync_playwright
from test_events import Subscriber
from tzafon import Lightcone

CHROMIUM = "/usr/lib/chromium/chromium"
THREAD = "opencone-rec"


def page(colour: str) -> str:
    return (f"data:text/html,<style>html,body{{margin:0;height:100%;background:{colour}}}</style>"
            "<input id=q style='margin:40px;font-size:30px'><div style='height:3000px'></div>")


RED, BLUE = page("rgb(255,0,0)"), page("rgb(0,0,255)")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("recording"), env={"OPENCONE_POOL_SIZE": "1"})
    yield server
    server.stop()


def decode(mp4: bytes) -> tuple[dict[str, Any], list[tuple[float, tuple[int, int, int]]]]:
    """The stream's facts and, per frame, (seconds, RGB at the screen's centre-right)."""
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        facts = {"codec": stream.codec_context.name, "width": stream.width, "height": stream.height,
                 "pix_fmt": stream.codec_context.pix_fmt}
        frames = []
        for frame in container.decode(stream):
            rgb = frame.to_ndarray(format="rgb24")
            r, g, b = (int(v) for v in rgb[rgb.shape[0] // 2, rgb.shape[1] * 3 // 4])
            frames.append((float(frame.pts * frame.time_base), (r, g, b)))
        facts["duration"] = float(container.duration or 0) / 1e6
    return facts, frames


def is_colour(rgb: tuple[int, int, int], which: str) -> bool:
    r, g, b = rgb
    return (r > 200 and g < 60 and b < 60) if which == "red" else (b > 200 and r < 60 and g < 60)


def rec_threads(server: Server, nice: bool = False) -> list[Any]:
    """The server's encoder threads, by their kernel names (with ``nice``: their nice values)."""
    found: list[Any] = []
    for task in Path(f"/proc/{server.process.pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            if name.startswith(THREAD):
                found.append(int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]) if nice else name)
        except (OSError, IndexError, ValueError):
            continue
    return found


def finished(http: httpx.Client, rec_id: str) -> dict[str, Any]:
    """The recording once it is no longer in progress (a computer's end, DELETE's included, runs in the
    background: the recording is finished just after)."""
    def row() -> dict[str, Any]:
        return http.get(f"/recordings/{rec_id}/timeline").json()["recording"]  # type: ignore[no-any-return]
    assert wait_until(lambda: row()["status"] != "recording", 10)
    return row()


def gone(http: httpx.Client, rec_id: str) -> bool:
    return wait_until(lambda: http.get(f"/recordings/{rec_id}").status_code == 404, 10)


def other_org(server: Server) -> httpx.Client:
    out = subprocess.run([sys.executable, "-m", "opencone", "keys", "create", "--new-org", "tenant-b",
                          "--data-dir", str(server.data_dir)], capture_output=True, text=True, timeout=60, check=True)
    return server.http(out.stdout.strip())


def test_a_recorded_browser_session_through_the_sdk(srv: Server) -> None:
    client, http = srv.client(), srv.http()
    t0 = time.time()
    comp = client.computers.create(kind="browser", extra_body={"recording": True})
    rec = comp.model_extra["recording"]
    assert rec["status"] == "recording" and rec["id"].startswith("rec_") and not rec["keep"]
    assert comp.to_dict()["endpoints"]["recording"].endswith(f"/computers/{comp.id}/recording")
    try:
        assert client.computers.navigate(comp.id, url=RED).status == "success"
        assert client.computers.click(comp.id, x=120, y=70).status == "success"
        assert client.computers.type(comp.id, text="recorded").status == "success"
        assert client.computers.scroll(comp.id, x=500, y=400, dx=0, dy=300).status == "success"

        # during the session: what is encoded so far, a playable MP4
        during = http.get(f"/computers/{comp.id}/recording")
        assert during.status_code == 200 and during.headers["content-type"] == "video/mp4"
        assert during.headers["x-recording-id"] == rec["id"]
        facts, frames = decode(during.content)
        assert facts["codec"] == "h264" and facts["pix_fmt"] == "yuv420p"
        assert (facts["width"], facts["height"]) == (1024, 768)
        assert any(is_colour(c, "red") for _, c in frames), "the red page is in the video already"
        # a browser's <video> seeks with ranges
        part = http.get(f"/recordings/{rec['id']}", headers={"range": "bytes=0-99"})
        assert part.status_code == 206 and len(part.content) == 100
        assert part.headers["content-range"].startswith("bytes 0-99/")

        time.sleep(0.3)
        assert client.computers.navigate(comp.id, url=BLUE).status == "success"
        time.sleep(0.5)
        stopped = http.post(f"/computers/{comp.id}/recording/stop")
        elapsed = time.time() - t0
        assert stopped.status_code == 200, stopped.text
        done = stopped.json()
        assert done["status"] == "ready" and done["stop_reason"] == "stopped"
        assert done["frames"] >= 3 and (done["width"], done["height"]) == (1024, 768)
        assert 1.0 < done["duration_seconds"] <= elapsed + 0.5

        full = http.get(f"/computers/{comp.id}/recording")
        assert full.status_code == 200 and full.content[:100] == part.content
        facts, frames = decode(full.content)
        assert len(frames) >= 3
        # the last picture is repeated at the stop, so the video ends when the recording did
        assert facts["duration"] > 0 and abs(frames[-1][0] - done["duration_seconds"]) < 0.01
        assert [t for t, _ in frames] == sorted(t for t, _ in frames)

        timeline = http.get(f"/computers/{comp.id}/recording/timeline").json()
        assert timeline["recording"]["id"] == rec["id"]
        actions = timeline["actions"]
        assert [a["kind"] for a in actions] == ["navigate", "click", "type", "scroll", "navigate"]
        offsets = [a["offset_seconds"] for a in actions]
        assert offsets == sorted(offsets) and 0 <= offsets[0] and offsets[-1] <= done["duration_seconds"]
        assert all(a["status"] == "success" and a["end_offset_seconds"] >= a["offset_seconds"] for a in actions)
        assert actions[2]["action"]["text"] == "recorded"
        assert any(e["type"] == "navigated" for e in timeline["events"])
        # the video's clock and the timeline's agree: red only after the first navigate was asked for,
        # blue only after the second, and blue by the end
        blue_from = actions[-1]["offset_seconds"]
        seen = ([(round(t, 3), c) for t, c in frames], [(a["kind"], a["offset_seconds"]) for a in actions])
        assert all(t >= actions[0]["offset_seconds"] - 0.1 for t, c in frames if is_colour(c, "red")), seen
        assert all(t >= blue_from - 0.1 for t, c in frames if is_colour(c, "blue")), seen
        assert is_colour(frames[-1][1], "blue")
    finally:
        client.computers.delete(comp.id)
    # not kept: deleted with its computer
    assert gone(http, rec["id"])
    assert not list((srv.data_dir / "recordings").glob(f"{rec['id']}*"))


def test_start_stop_keep_delete_and_the_encoder_threads_end(srv: Server) -> None:
    client, http = srv.client(), srv.http()
    comp = client.computers.create()
    try:
        assert http.get(f"/computers/{comp.id}/recording").status_code == 404
        assert http.post(f"/computers/{comp.id}/recording/stop").status_code == 409
        first = http.post(f"/computers/{comp.id}/recording/start")
        assert first.status_code == 200 and first.json()["status"] == "recording"
        assert wait_until(lambda: len(rec_threads(srv)) == 1, 5), rec_threads(srv)
        assert rec_threads(srv, nice=True) == [10], "the encoder yields to the event loop and the browsers"
        again = http.post(f"/computers/{comp.id}/recording/start")
        assert again.status_code == 409 and first.json()["id"] in again.json()["detail"]
        client.computers.navigate(comp.id, url=RED)
        assert http.post(f"/computers/{comp.id}/recording/stop").json()["status"] == "ready"
        assert wait_until(lambda: rec_threads(srv) == [], 5), "the encoder thread ends with its recording"

        kept = http.post(f"/computers/{comp.id}/recording/start", json={"keep": True}).json()
        assert kept["keep"] and kept["id"] != first.json()["id"]
        client.computers.navigate(comp.id, url=BLUE)
        # the blue page's frame in the recording before the computer ends (an end takes no more frames)
        assert wait_until(lambda: http.get(f"/recordings/{kept['id']}/timeline").json()["recording"]["frames"] >= 2)
        latest = http.get(f"/computers/{comp.id}/recording")
        assert latest.headers["x-recording-id"] == kept["id"]
        listed = http.get("/recordings", params={"computer_id": comp.id}).json()
        assert [r["id"] for r in listed] == [first.json()["id"], kept["id"]]
        assert [r["status"] for r in listed] == ["ready", "recording"]
    finally:
        client.computers.delete(comp.id)  # stops the kept one; deletes the other
    assert finished(http, kept["id"])["stop_reason"] == "computer_ended"
    assert wait_until(lambda: rec_threads(srv) == [], 5)
    assert gone(http, first.json()["id"])
    after = http.get(f"/recordings/{kept['id']}/timeline").json()
    assert after["recording"]["status"] == "ready"
    assert [a["kind"] for a in after["actions"]] == ["navigate"]
    facts, frames = decode(http.get(f"/recordings/{kept['id']}").content)
    assert facts["codec"] == "h264" and is_colour(frames[-1][1], "blue")
    # by the computer's id too, after it ended
    assert http.get(f"/computers/{comp.id}/recording").headers["x-recording-id"] == kept["id"]
    files = list((srv.data_dir / "recordings").glob(f"{kept['id']}*"))
    assert {f.name for f in files} == {f"{kept['id']}.mp4", f"{kept['id']}.timeline.jsonl"}
    assert http.delete(f"/recordings/{kept['id']}").status_code == 204
    assert http.get(f"/recordings/{kept['id']}").status_code == 404
    assert not any(f.exists() for f in files)


def test_a_recorded_desktop(srv: Server) -> None:
    client, http = srv.client(), srv.http()
    comp = client.computers.create(kind="desktop", extra_body={"recording": {"keep": False}})
    try:
        w, h = comp.display["width"], comp.display["height"]
        assert client.computers.click(comp.id, x=w // 2, y=h // 2).status == "success"
        assert client.computers.navigate(comp.id, url=RED).status == "success"
        assert client.computers.type(comp.id, text="desk").status == "success"
        time.sleep(0.5)
        done = http.post(f"/computers/{comp.id}/recording/stop").json()
        assert done["status"] == "ready" and done["frames"] >= 2
        facts, frames = decode(http.get(f"/computers/{comp.id}/recording").content)
        assert facts["codec"] == "h264" and (facts["width"], facts["height"]) == (w - w % 2, h - h % 2)
        assert len(frames) >= 2
        kinds = [a["kind"] for a in http.get(f"/computers/{comp.id}/recording/timeline").json()["actions"]]
        assert kinds == ["click", "navigate", "type"]
    finally:
        client.computers.delete(comp.id)


def last_picture(mp4: bytes) -> Any:
    """The video's last picture, RGB (height × width × 3)."""
    with av.open(io.BytesIO(mp4)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])][-1]


def test_a_desktop_video_shows_the_pointer(srv: Server) -> None:
    """An X grab has no pointer in it: the recording draws it where the screencast saw it."""
    client, http = srv.client(), srv.http()
    comp = client.computers.create(kind="desktop", extra_body={"recording": {"keep": False}})
    try:
        assert client.computers.navigate(comp.id, url=RED).status == "success"
        x, y = 300, 300
        assert client.computers.click(comp.id, x=x, y=y).status == "success"  # on the page: the pointer stays
        time.sleep(0.5)
        assert http.post(f"/computers/{comp.id}/recording/stop").json()["status"] == "ready"
        rgb = last_picture(http.get(f"/computers/{comp.id}/recording").content)
        fill = tuple(int(v) for v in rgb[y + 9, x + 3])  # inside the arrow's white body
        assert min(fill) > 180, f"no pointer at {x},{y}: {fill}"
        assert is_colour(tuple(int(v) for v in rgb[y + 9, x + 60]), "red")  # the page beside it
    finally:
        client.computers.delete(comp.id)


def test_the_replay_page_plays_a_recording_and_seeks_to_an_action(srv: Server) -> None:
    client, http = srv.client(), srv.http()
    comp = client.computers.create(extra_body={"recording": {"keep": True}})
    rec_id = comp.model_extra["recording"]["id"]
    try:
        client.computers.navigate(comp.id, url=RED)
        time.sleep(0.6)
        client.computers.navigate(comp.id, url=BLUE)
        time.sleep(0.4)
    finally:
        client.computers.delete(comp.id)
    assert finished(http, rec_id)["status"] == "ready"
    actions = http.get(f"/recordings/{rec_id}/timeline").json()["actions"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            view = browser.new_page()
            errors: list[str] = []  # answers that failed, but the favicon this server has none of
            view.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                    if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
            view.on("pageerror", lambda e: errors.append(str(e)))
            view.goto(f"{srv.base_url}/live/replay#{rec_id}")
            view.fill("#key", srv.api_key)
            view.click("#connect")
            view.wait_for_selector(f"#recordings tr[data-id='{rec_id}']")
            view.wait_for_selector("#timeline li")
            assert view.locator("#timeline li").count() == len(actions) == 2
            view.wait_for_function("() => document.getElementById('video').readyState >= 1", timeout=15000)
            duration = view.evaluate("() => document.getElementById('video').duration")
            assert 0.5 < duration < 30
            view.locator("#timeline li").nth(1).click()
            view.wait_for_function(
                f"() => Math.abs(document.getElementById('video').currentTime - {actions[1]['offset_seconds']}) < 0.05")
            view.wait_for_function("() => document.getElementById('video').readyState >= 2", timeout=15000)
            assert "current" in (view.locator("#timeline li").nth(1).get_attribute("class") or "")
            assert not errors, errors
        finally:
            browser.close()
    assert http.delete(f"/recordings/{rec_id}").status_code == 204


def test_another_organisation_bad_ids_and_bad_bodies(srv: Server) -> None:
    client, http = srv.client(), srv.http()
    comp = client.computers.create(extra_body={"recording": {"keep": True}})
    rec_id = comp.model_extra["recording"]["id"]
    try:
        other = other_org(srv)
        for path in (f"/recordings/{rec_id}", f"/recordings/{rec_id}/timeline", f"/computers/{comp.id}/recording",
                     f"/computers/{comp.id}/recording/timeline"):
            r = other.get(path)
            assert r.status_code == 404 and r.json()["detail"], (path, r.text)
        assert other.delete(f"/recordings/{rec_id}").status_code == 404
        assert other.post(f"/computers/{comp.id}/recording/stop").status_code == 404
        assert other.post(f"/computers/{comp.id}/recording/start").status_code == 404
        assert other.get("/recordings").json() == []
        # the key as ?token= (for a <video>), and none at all
        assert httpx.get(f"{srv.base_url}/recordings/{rec_id}?token={srv.api_key}").status_code == 200
        assert httpx.get(f"{srv.base_url}/recordings/{rec_id}").status_code == 401
        for bad in ("rec_zz", "rec_" + "a" * 70, "..%2F..%2Fopencone.db", "rec_%00", "rec_abc%2F..%2F..",
                    "%2e%2e", "comp_" + comp.id[5:]):
            r = http.get(f"/recordings/{bad}")
            assert r.status_code in (404, 422) and r.headers["content-type"].startswith("application/problem+json")
            assert http.get(f"/recordings/{bad}/timeline").status_code in (404, 422)
            assert http.delete(f"/recordings/{bad}").status_code in (404, 422)
        assert http.get("/recordings/rec_0123456789abcdef").status_code == 404
        assert http.get(f"/computers/{'x' * 200}/recording").status_code == 422
        assert http.get("/computers/comp_nope/recording").status_code == 404
        for body in ({"keep": "yes"}, {"keep": True, "extra": 1}, [1]):
            r = http.post(f"/computers/{comp.id}/recording/start", json=body)
            assert r.status_code == 422, (body, r.text)
        for recording in ("yes", 1, {"keep": True, "other": 1}, {"keep": "no"}):
            r = http.post("/computers", json={"recording": recording})
            assert r.status_code == 422 and "recording" in r.text, (recording, r.text)
        assert (srv.data_dir / "opencone.db").is_file()
        assert http.get(f"/recordings/{rec_id}/timeline").json()["recording"]["status"] == "recording"
    finally:
        client.computers.delete(comp.id)
    assert http.delete(f"/recordings/{rec_id}").status_code == 204


def test_the_storage_cap(tmp_path: Path) -> None:
    cap = 60_000
    server = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "1", "OPENCONE_STORAGE_CAP_BYTES": str(cap)})
    try:
        client, http = server.client(), server.http()
        comp = client.computers.create(extra_body={"recording": {"keep": True}})
        rec_id = comp.model_extra["recording"]["id"]
        events = Subscriber(client, comp.id)
        # pictures that do not compress well, until the recording passes the cap
        for i in range(40):
            noise = ("data:text/html,<canvas id=c width=1024 height=768></canvas><script>"  # (no % nor #: a URL)
                     f"const x=document.getElementById('c').getContext('2d');const r=()=>Math.random()*256|0;"
                     f"for(let y=0;y<768;y+=8)for(let k=0;k<1024;k+=8){{x.fillStyle='rgb('+r()+','+r()+','+r()+')';"
                     f"x.fillRect(k,y,8,8)}}</script><!--{i}-->")
            client.computers.navigate(comp.id, url=noise)
            if any(e["type"] == "recording_stopped" for e in events.events):
                break
            time.sleep(0.1)
        stopped = events.wait_for(lambda e: e["type"] == "recording_stopped", 10)
        assert stopped["recording_id"] == rec_id and stopped["reason"] == "storage_cap"
        row = http.get(f"/recordings/{rec_id}/timeline").json()["recording"]
        assert row["status"] == "ready" and row["stop_reason"] == "storage_cap" and row["size_bytes"] >= cap
        assert decode(http.get(f"/recordings/{rec_id}").content)[0]["codec"] == "h264"
        # at the cap: no new recording, and no persistent computer either (one cap for both)
        refused = http.post(f"/computers/{comp.id}/recording/start")
        assert refused.status_code == 409 and "OPENCONE_STORAGE_CAP_BYTES" in refused.json()["detail"]
        create = http.post("/computers", json={"recording": True})
        assert create.status_code == 422 and create.json()["cap_bytes"] == cap
        assert http.post("/computers", json={"persistent": True}).status_code == 422
        assert client.computers.list() and len(client.computers.list()) == 1  # the refused create made nothing
        assert http.delete(f"/recordings/{rec_id}").status_code == 204
        assert http.post(f"/computers/{comp.id}/recording/start").status_code == 200
        client.computers.delete(comp.id)
    finally:
        server.stop()


def test_a_recording_cut_short_by_a_server_kill_is_finalised_at_the_next_start(tmp_path: Path) -> None:
    server = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "1"})
    http = server.http()
    client: Lightcone = server.client()
    kept = client.computers.create(extra_body={"recording": {"keep": True}})
    dropped = client.computers.create(extra_body={"recording": True})
    for comp in (kept, dropped):
        client.computers.navigate(comp.id, url=RED)
        client.computers.click(comp.id, x=100, y=60)
    client.computers.navigate(kept.id, url=BLUE)
    time.sleep(0.5)
    assert len(rec_threads(server)) == 2
    server.stop(signal.SIGKILL)
    again = start_server(tmp_path, data_dir=server.data_dir, api_key=server.api_key, env={"OPENCONE_POOL_SIZE": "0"})
    try:
        http = again.http()
        [row] = http.get("/recordings").json()
        assert row["id"] == kept.model_extra["recording"]["id"]
        assert row["status"] == "ready" and row["stop_reason"] == "server_restarted" and row["frames"] >= 2
        facts, frames = decode(http.get(f"/recordings/{row['id']}").content)
        assert facts["codec"] == "h264" and len(frames) == row["frames"]
        assert any(is_colour(c, "red") for _, c in frames)
        kinds = [a["kind"] for a in http.get(f"/recordings/{row['id']}/timeline").json()["actions"]]
        assert kinds == ["navigate", "click", "navigate"]
        names = {p.name for p in (again.data_dir / "recordings").iterdir()}
        assert not any(dropped.model_extra["recording"]["id"] in n for n in names), "not kept: gone with its computer"
    finally:
        again.stop()


def test_a_persistent_computers_recording_is_kept_and_counts_with_its_environment(srv: Server) -> None:
    client, http = srv.client(), srv.http()
    comp = client.computers.create(persistent=True, extra_body={"recording": True})
    rec = comp.model_extra["recording"]
    assert rec["keep"], "a persistent computer's recordings outlive it"
    client.computers.navigate(comp.id, url=RED)
    assert wait_until(lambda: http.get(f"/recordings/{rec['id']}/timeline").json()["recording"]["frames"] >= 1)
    client.computers.delete(comp.id)
    row = finished(http, rec["id"])
    assert row["status"] == "ready" and row["stop_reason"] == "computer_ended" and row["size_bytes"] > 0
    assert http.delete(f"/recordings/{rec['id']}").status_code == 204
    assert wait_until(lambda: http.delete(f"/environments/{comp.id}").status_code == 204, 10)


def test_a_delete_right_after_an_action_keeps_that_actions_frame(srv: Server) -> None:
    client, http = srv.client(), srv.http()
    comp = client.computers.create(extra_body={"recording": {"keep": True}})
    rec_id = comp.model_extra["recording"]["id"]
    client.computers.navigate(comp.id, url=RED)
    assert wait_until(lambda: http.get(f"/recordings/{rec_id}/timeline").json()["recording"]["frames"] >= 1)
    client.computers.navigate(comp.id, url=BLUE)
    client.computers.delete(comp.id)  # at once: the blue page's frame is drawn after the answer
    row = finished(http, rec_id)
    assert row["status"] == "ready" and row["stop_reason"] == "computer_ended", row
    _facts, frames = decode(http.get(f"/recordings/{rec_id}").content)
    assert is_colour(frames[-1][1], "blue"), frames
    assert http.delete(f"/recordings/{rec_id}").status_code == 204
