"""Desktop computers: a real Xvfb, openbox, an xterm and a headful Chromium.

Input goes through XTest to the X server, so the tests check what the programs
on the screen really received: the playground page's event log (read back
through ``html``), and a file a command typed into the xterm wrote.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import simplejpeg
from conftest import Server, desktop_home, hide_all_windows, jpeg_size, page_state, start_server, wait_until
from tzafon import Lightcone


class Desk:
    """A desktop computer with the playground open in its browser."""

    def __init__(self, client: Lightcone, cid: str, site: str) -> None:
        self.client, self.id, self.site = client, cid, site
        self.top = 0  # screen y of the page's top edge: the browser's tab strip and toolbar sit above it

    def open_playground(self) -> None:
        result = self.client.computers.navigate(self.id, url=f"{self.site}/playground.html",
                                                extra_body={"include_context": True})
        assert result.status == "success", result.error_message
        ctx = result.page_context
        assert ctx is not None and ctx.viewport_height
        self.top = self.screen()[1] - int(ctx.viewport_height)
        assert 0 < self.top < 200, self.top

    def screen(self) -> tuple[int, int]:
        d = self.client.computers.retrieve(self.id).model_extra["display"]
        return d["width"], d["height"]

    def state(self) -> dict[str, Any]:
        result = self.client.computers.html(self.id)
        assert result.status == "success", result.error_message
        return page_state(result.result["html_content"])

    def ok(self, result: Any) -> Any:
        assert result.status == "success", result.error_message
        return result


def desktop_processes(server: Server, cid_workdir: Path) -> set[int]:
    """Every live process of one desktop: the pids in its pidfile and their descendants,
    and whatever names its run directory on the command line."""
    pids: set[int] = set()
    pidfile = cid_workdir.with_suffix(".pids")
    if pidfile.exists():
        for line in pidfile.read_text().splitlines():
            pid = int(line.split()[0])
            if psutil.pid_exists(pid):
                pids.add(pid)
                try:
                    pids |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
                except psutil.Error:
                    pass
    pids |= {p for p in server.chromium_pids() if _mentions(p, str(cid_workdir))}
    return {p for p in pids if _alive(p)}


def _mentions(pid: int, needle: str) -> bool:
    try:
        return any(needle in part for part in psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def new_workdir(server: Server, before: set[Path]) -> Path:
    [workdir] = {p for p in (server.data_dir / "run").resolve().glob("desktop-*") if p.is_dir()} - before
    return workdir


def workdirs(server: Server) -> set[Path]:
    return {p for p in (server.data_dir / "run").resolve().glob("desktop-*") if p.is_dir()}


@pytest.fixture(scope="module")
def desk(server: Server, site: str) -> Iterator[Desk]:
    client = server.client()
    comp = client.computers.create(kind="desktop")
    d = Desk(client, comp.id, site)
    d.open_playground()
    yield d
    client.computers.delete(comp.id)


def test_a_desktop_is_a_desktop(desk: Desk) -> None:
    comp = desk.client.computers.retrieve(desk.id)
    assert comp.kind == "desktop"
    assert desk.screen() == (1280, 720)  # the official Lightcone examples' desktop


def test_screenshot_is_a_jpeg_of_the_whole_screen(desk: Desk) -> None:
    result = desk.ok(desk.client.computers.screenshot(desk.id))
    url = result.result["screenshot_url"]
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["content-type"] == "image/jpeg"
        assert jpeg_size(resp.read()) == (1280, 720)
    b64 = desk.ok(desk.client.computers.screenshot(desk.id, base64=True)).result["screenshot_url"]
    assert b64.startswith("data:image/jpeg;base64,")
    assert jpeg_size(base64.b64decode(b64.split(",", 1)[1])) == (1280, 720)


def test_a_screenshot_shows_everything_drawn_before_it(server: Server) -> None:
    # A screen nothing was drawn on gives its last JPEG again (XDAMAGE); it must never hide a
    # change. xsetroot has drawn when it exits (XCloseDisplay syncs), so the very next
    # screenshot must show its colour: no waiting, no retries.
    client = server.client()
    with client.computer.create(kind="desktop") as comp:
        hide_all_windows(client, comp.id)
        seen = []
        for colour, rgb in [("#ff0000", (255, 0, 0)), ("#0000ff", (0, 0, 255)), ("#00ff00", (0, 255, 0))]:
            ran = client.computers.exec.sync(comp.id, command=f"xsetroot -solid '{colour}'")
            assert ran.exit_code == 0, ran.stderr
            for _ in range(2):  # the second look at the same screen, too
                seen.append((rgb, _centre_pixel(client, comp.id)))
    for want, got in seen:
        assert all(abs(a - b) < 40 for a, b in zip(want, got, strict=True)), seen


def test_a_command_sees_the_input_sent_before_it(server: Server) -> None:
    # Input actions return once their events are sent (xinput.py); a command is another X client,
    # so exec must first wait for the X server to have handled them: the pointer is where the
    # action just left it, every time, with no waiting between the two calls.
    client = server.client()
    with client.computer.create(kind="desktop") as comp:
        seen = []
        for x, y in [(11, 700), (1000, 20), (512, 384), (3, 5), (640, 641)]:
            moved = client.computers.execute(comp.id, action={"type": "move", "x": x, "y": y})
            assert moved.status == "success", moved.error_message
            ran = client.computers.exec.sync(comp.id, command="xdotool getmouselocation --shell")
            assert ran.exit_code == 0, ran.stderr
            where = dict(line.split("=", 1) for line in ran.stdout.split())
            seen.append(((x, y), (int(where["X"]), int(where["Y"]))))
    assert all(want == got for want, got in seen), seen


def _open_terminals(client: Lightcone, cid: str, places: dict[str, tuple[int, int]]) -> threading.Thread:
    """One xterm per name at its place, opened in that order (the last on top), each writing the
    first line typed into it to /workspace/<name>.txt and closing; they live while the thread runs."""
    names = list(places)
    opened = " ".join(
        f"xterm -T term-{name} -geometry 24x6+{x}+{y} -e sh -c 'read l; echo \"$l\" > /workspace/{name}.txt' & "
        + (f"xdotool search --sync --onlyvisible --name '^term-{name}$' >/dev/null;" if name != names[-1] else "")
        for name, (x, y) in places.items())
    runner = threading.Thread(target=client.computers.exec.sync, args=(cid,),
                              kwargs={"command": f"{opened} wait", "timeout_seconds": 60}, daemon=True)
    runner.start()
    assert wait_until(lambda: client.computers.exec.sync(
        cid, command=f"xdotool search --onlyvisible --name '^term-{names[-1]}$'").exit_code == 0, 20)
    return runner


def _window_box(client: Lightcone, cid: str, name: str) -> tuple[int, int, int, int]:
    """x, y, width, height of a window on the screen, by its title (xwininfo: xdotool's
    getwindowgeometry counts the window manager's frame twice)."""
    ran = client.computers.exec.sync(cid, command=f"xwininfo -id $(xdotool search --onlyvisible --name '^{name}$')")
    assert ran.exit_code == 0, ran.stderr
    info = dict(line.strip().split(":", 1) for line in ran.stdout.splitlines() if line.count(":") == 1)
    return tuple(int(info[k]) for k in ("Absolute upper-left X", "Absolute upper-left Y",  # type: ignore[return-value]
                                        "Width", "Height"))


def test_keys_go_to_the_window_last_clicked(server: Server) -> None:
    # A click focuses the window it lands on: the topmost at that point, whatever had the focus,
    # however many clicks came before, and not a window that has closed since.
    client = server.client()
    with client.computer.create(kind="desktop") as comp:
        c = client.computers
        runner = _open_terminals(client, comp.id, {"a": (60, 120), "b": (600, 120), "c": (160, 180)})
        ax, ay, aw, ah = _window_box(client, comp.id, "term-a")
        cx, cy, cw, ch = _window_box(client, comp.id, "term-c")
        bx, by, bw, bh = _window_box(client, comp.id, "term-b")
        assert cx < ax + aw - 10 and cy < ay + ah - 10, "the third terminal must cover part of the first"
        overlap = ((cx + ax + aw) // 2, (cy + ay + ah) // 2)  # on both a and c: c is on top

        def typed(name: str) -> str:
            ran = c.exec.sync(comp.id, command=f"cat /workspace/{name}.txt 2>/dev/null")
            return ran.stdout.strip()

        for _ in range(3):  # the same window again and again: it keeps the focus
            assert c.click(comp.id, x=bx + bw // 2, y=by + bh // 2).status == "success"
        assert c.type(comp.id, text="to-b\n").status == "success"
        assert c.click(comp.id, x=overlap[0], y=overlap[1]).status == "success"
        assert c.type(comp.id, text="to-c\n").status == "success"
        assert wait_until(lambda: typed("c") == "to-c", 10), (typed("a"), typed("c"))
        # c has read its line and closed: the same point is now on a
        assert c.click(comp.id, x=overlap[0], y=overlap[1]).status == "success"
        assert c.type(comp.id, text="to-a\n").status == "success"
        assert wait_until(lambda: typed("a") == "to-a", 10), typed("a")
        assert typed("b") == "to-b"
        runner.join(20)
        assert not runner.is_alive()


def test_every_button_press_gets_its_own_time(server: Server) -> None:
    # Chromium takes a press with the same X timestamp as the last press for that press again,
    # with its click count. Clicks sent back to back reach the X server together, so it must be
    # asked to space them: xev prints the time the X server gave each press.
    client = server.client()
    with client.computer.create(kind="desktop") as comp:
        c = client.computers
        out: list[str] = []
        xev = threading.Thread(target=lambda: out.append(c.exec.sync(
            comp.id, command="timeout 8 stdbuf -oL xev -geometry 300x300+0+0 -event button; true").stdout))
        xev.start()
        assert wait_until(lambda: c.exec.sync(
            comp.id, command="xdotool search --onlyvisible --name '^Event Tester$'").exit_code == 0, 10)
        for act in (lambda: c.double_click(comp.id, x=150, y=150), lambda: c.right_click(comp.id, x=150, y=150),
                    lambda: c.click(comp.id, x=150, y=150), lambda: c.execute(
                        comp.id, action={"type": "double_click", "x": 150, "y": 150})):
            assert act().status == "success"
        xev.join(15)
        times = [int(t) for t in re.findall(r"ButtonPress event.*?time (\d+)", out[0], re.S)]
    assert len(times) == 6, out
    assert all(b > a for a, b in itertools.pairwise(times)), times


def _centre_pixel(client: Lightcone, cid: str) -> tuple[int, ...]:
    shot = client.computers.screenshot(cid, base64=True)
    assert shot.status == "success", shot.error_message
    pixels = simplejpeg.decode_jpeg(base64.b64decode(shot.result["screenshot_url"].split(",", 1)[1]))
    h, w = pixels.shape[:2]
    return tuple(int(v) for v in pixels[h // 2, w // 2])


def test_click_and_unicode_typing_reach_the_page(desk: Desk) -> None:
    desk.open_playground()
    desk.ok(desk.client.computers.click(desk.id, x=110, y=desk.top + 70))
    desk.ok(desk.client.computers.click(desk.id, x=200, y=desk.top + 135))
    text = "Hé жЖ A+b!"  # é has no key on a US map and ж no Latin-1 keysym: both need a spare keycode
    desk.ok(desk.client.computers.type(desk.id, text=text))
    s = desk.state()
    assert s["clicks"] == 1, (desk.top, json.dumps(s))
    assert s["input"] == text
    assert s["downs"][:3] == ["Shift+shift", "H+shift", "é"]  # real key events, Shift for the capital


def test_double_right_and_drag(desk: Desk) -> None:
    desk.open_playground()
    c = desk.client.computers
    desk.ok(c.double_click(desk.id, x=600, y=desk.top + 500))
    desk.ok(c.right_click(desk.id, x=600, y=desk.top + 500))
    desk.ok(c.drag(desk.id, x1=80, y1=desk.top + 330, x2=300, y2=desk.top + 450))
    s = desk.state()
    assert s["dblclicks"] == 1, (desk.top, json.dumps({k: s[k] for k in ("mousedowns", "mouseups")}))
    assert s["contextmenus"] == 1
    assert s["drag"] == [300, 450]


def test_hotkey_and_held_keys(desk: Desk) -> None:
    desk.open_playground()
    c = desk.client.computers
    desk.ok(c.click(desk.id, x=200, y=desk.top + 135))
    desk.ok(c.type(desk.id, text="abc"))
    desk.ok(c.hotkey(desk.id, keys=["ctrl", "a"]))
    desk.ok(c.type(desk.id, text="X"))
    desk.ok(c.key_down(desk.id, key="Shift"))
    desk.ok(c.type(desk.id, text="y"))
    desk.ok(c.key_up(desk.id, key="Shift"))
    desk.ok(c.hotkey(desk.id, keys=["F13"]))  # not on the keyboard map: a spare keycode carries it
    s = desk.state()
    assert s["input"] == "XY"
    assert "a+ctrl" in s["downs"]
    assert "F13" in s["downs"], json.dumps(s["downs"])


def test_scroll_moves_the_page(desk: Desk) -> None:
    desk.open_playground()
    desk.ok(desk.client.computers.scroll(desk.id, x=500, y=desk.top + 300, dx=0, dy=300))
    assert wait_until(lambda: desk.state()["scrollY"] > 100, 5)
    desk.ok(desk.client.computers.scroll(desk.id, x=500, y=desk.top + 300, dx=200, dy=0))
    assert wait_until(lambda: desk.state()["scrollX"] > 50, 5)


def test_typing_into_the_terminal_runs_a_command(desk: Desk, server: Server) -> None:
    home = desktop_home(server, new_workdir_of(desk, server))
    c = desk.client.computers
    desk.ok(c.hotkey(desk.id, keys=["alt", "tab"]))  # openbox: focus the xterm behind the browser
    time.sleep(0.3)
    desk.ok(c.type(desk.id, text="echo désktop-ok > typed.txt\n"))
    assert wait_until(lambda: (home / "typed.txt").exists() and (home / "typed.txt").read_text().strip(), 10)
    assert (home / "typed.txt").read_text().strip() == "désktop-ok"
    desk.ok(c.hotkey(desk.id, keys=["alt", "tab"]))


def test_the_terminal_is_as_confined_as_exec(desk: Desk, server: Server) -> None:
    """The desktop's terminal runs in the computer's sandbox: it shares /workspace with exec, and
    it can neither read another computer's workspace, nor reach the server's port, nor signal a
    host process, nor list the data dir."""
    c = desk.client.computers
    home = desktop_home(server, new_workdir_of(desk, server))
    other = c.create()
    victim = subprocess.Popen(["sleep", "1000"])
    try:
        tag = secrets.token_hex(4)
        assert c.exec.sync(other.id, command=f"echo other-{tag} > secret.txt").exit_code == 0
        other_ws = server.sandbox_root / other.id
        assert (other_ws / "secret.txt").read_text() == f"other-{tag}\n"
        assert c.exec.sync(desk.id, command=f"echo exec-{tag} > from-exec.txt").exit_code == 0
        probe = (f"{{ cat /workspace/from-exec.txt; id -u; cat {other_ws}/secret.txt && echo READ-OTHER; "
                 f"curl -sS -m 3 {server.base_url}/health && echo NET-OK; kill -9 {victim.pid} && echo KILLED; "
                 f"ls {server.data_dir.resolve()} && echo DATA-OK; echo term-{tag} > /workspace/from-term.txt; "
                 f"}} > ~/escape.txt 2>&1; echo done > ~/escape.done\n")
        desk.ok(c.hotkey(desk.id, keys=["alt", "tab"]))  # openbox: focus the xterm behind the browser
        time.sleep(0.3)
        desk.ok(c.type(desk.id, text=probe))
        assert wait_until(lambda: (home / "escape.done").exists(), 15), "the terminal did not run the probe"
        out = (home / "escape.txt").read_text()
        assert out.splitlines()[:2] == [f"exec-{tag}", "65534"], out
        for escaped in ("READ-OTHER", "NET-OK", "KILLED", "DATA-OK", f"other-{tag}"):
            assert escaped not in out, out
        assert victim.poll() is None
        assert c.exec.sync(desk.id, command="cat from-term.txt").stdout == f"term-{tag}\n"
    finally:
        victim.kill()
        victim.wait()
        c.delete(other.id)
        desk.ok(c.hotkey(desk.id, keys=["alt", "tab"]))


def test_the_browser_opens_no_host_file(desk: Desk, server: Server) -> None:
    """The desktop's browser runs in the computer's sandbox: its address bar opens the computer's
    own /workspace, not the server's data dir nor a root-only file."""
    c = desk.client.computers
    tag = secrets.token_hex(4)
    assert c.exec.sync(desk.id, command=f"echo hi > ws-{tag}.txt").exit_code == 0

    def page_at(url: str, expect: str) -> str:
        html = ""

        def shown() -> bool:
            nonlocal html
            result = c.html(desk.id)
            html = (result.result or {}).get("html_content", "") or str(result.error_message)
            return expect in html

        for _attempt in range(3):  # (keys typed while the address bar is still taking the focus are lost)
            desk.open_playground()
            desk.ok(c.click(desk.id, x=900, y=desk.top + 400))  # the browser's window focused (not the terminal)
            desk.ok(c.hotkey(desk.id, keys=["ctrl", "l"]))  # its address bar
            time.sleep(0.3)
            desk.ok(c.type(desk.id, text=url + "\n"))
            if wait_until(shown, 5):
                return html
        raise AssertionError(html[-2000:])

    assert f"ws-{tag}.txt" in page_at("file:///workspace/", "addRow(")
    data = server.data_dir.resolve()
    assert (data / "opencone.db").exists()
    html = page_at(f"file://{data}/", "ERR_")
    assert "opencone.db" not in html and "ERR_FILE_NOT_FOUND" in html
    html = page_at("file:///etc/shadow", "ERR_")
    assert "root:" not in html and "ERR_ACCESS_DENIED" in html
    desk.open_playground()


def test_a_browser_download_lands_in_the_home(desk: Desk) -> None:
    """The desktop's browser saves to ~/Downloads, which its terminal and commands see."""
    c = desk.client.computers
    c.exec.sync(desk.id, command="rm -f /home/user/Downloads/saved-page.html")
    result = desk.ok(c.navigate(desk.id, url=f"{desk.site}/download.html", extra_body={"include_context": True}))
    top = desk.screen()[1] - int(result.page_context.viewport_height)
    desk.ok(c.click(desk.id, x=300, y=top + 100))
    assert wait_until(lambda: "Second page" in c.exec.sync(
        desk.id, command="cat /home/user/Downloads/saved-page.html 2>/dev/null").stdout, 10)
    desk.open_playground()


def new_workdir_of(desk: Desk, server: Server) -> Path:
    """The run directory of the module's desktop (the only one alive while it runs)."""
    dirs = workdirs(server)
    assert len(dirs) == 1, dirs
    return next(iter(dirs))


def test_set_viewport_resizes_the_screen(desk: Desk) -> None:
    c = desk.client.computers
    try:
        result = desk.ok(c.viewport(desk.id, width=1024, height=768))
        assert desk.screen() == (1024, 768)
        shot = desk.ok(c.screenshot(desk.id, base64=True)).result["screenshot_url"]
        assert jpeg_size(base64.b64decode(shot.split(",", 1)[1])) == (1024, 768)
        # the maximized browser follows the screen
        assert wait_until(lambda: c.navigate(desk.id, url=f"{desk.site}/playground.html",
                                             extra_body={"include_context": True}).page_context.viewport_width
                          == 1024, 5)
        too_big = c.viewport(desk.id, width=3000, height=2000)
        assert too_big.status == "error" and "at most" in too_big.error_message
        scaled = c.viewport(desk.id, width=800, height=600, scale_factor=2)
        assert scaled.status == "error" and "scale" in scaled.error_message
        assert result.status == "success"
    finally:
        desk.ok(c.viewport(desk.id, width=1280, height=720))  # back to the default
        desk.open_playground()


def test_closed_browser_comes_back_and_delete_ends_every_process(server: Server, site: str) -> None:
    client = server.client()
    before = workdirs(server)
    comp = client.computers.create(kind="desktop", display={"width": 800, "height": 600})
    workdir = new_workdir(server, before)
    xvfb = [int(line.split()[0]) for line in workdir.with_suffix(".pids").read_text().splitlines()
            if "Xvfb" in line]
    assert len(xvfb) == 1
    procs = desktop_processes(server, workdir)
    assert len(procs) >= 5, procs  # Xvfb, openbox, xterm, its shell, Chromium and its helpers

    # closing the last tab closes the browser; the desktop stays, and navigate opens a new one
    assert client.computers.hotkey(comp.id, keys=["ctrl", "w"]).status == "success"
    assert wait_until(lambda: client.computers.html(comp.id).status == "error", 10)
    assert "no browser window" in client.computers.html(comp.id).error_message
    assert client.computers.retrieve(comp.id).status != "terminated"
    assert client.computers.navigate(comp.id, url=f"{site}/page2.html").status == "success"
    assert "Second page" in client.computers.html(comp.id).result["html_content"]

    procs = desktop_processes(server, workdir)
    client.computers.delete(comp.id)
    assert wait_until(lambda: not any(_alive(p) for p in procs), 5), [p for p in procs if _alive(p)]
    assert not psutil.pid_exists(xvfb[0]) or not _alive(xvfb[0])
    assert wait_until(lambda: not workdir.exists() and not workdir.with_suffix(".pids").exists(), 5)


def test_a_dead_x_server_ends_the_desktop(server: Server) -> None:
    client = server.client()
    before = workdirs(server)
    comp = client.computers.create(kind="desktop")
    workdir = new_workdir(server, before)
    procs = desktop_processes(server, workdir)
    [xvfb] = [int(line.split()[0]) for line in workdir.with_suffix(".pids").read_text().splitlines()
              if "Xvfb" in line]
    os.kill(xvfb, signal.SIGKILL)
    assert wait_until(lambda: client.computers.retrieve(comp.id).status == "terminated", 5)
    assert client.computers.retrieve(comp.id).model_extra["termination_reason"] == "desktop_crashed"
    assert wait_until(lambda: not any(_alive(p) for p in procs), 5)


def test_a_frozen_x_server_holds_up_only_its_desktop(tmp_path: Path) -> None:
    # Input that only sends runs on the event loop (xthread.py): an X server that stopped reading
    # must not stop the server with it. Each scroll below is 400 XTest events (14 KiB), far more
    # than the X connection's socket takes; a screenshot needs the X server's answer, so it
    # times out, while every other request is answered. When the X server goes on, so does the desktop.
    srv = start_server(tmp_path, env={"OPENCONE_ACTION_TIMEOUT_SECONDS": "2"})
    try:
        client = srv.client()
        cid = client.computers.create(kind="desktop").id
        [xvfb] = [p for p in psutil.Process(srv.process.pid).children(recursive=True) if p.name() == "Xvfb"]
        xvfb.suspend()
        try:
            with srv.http() as http:
                for _ in range(40):
                    r = http.post(f"/computers/{cid}/scroll", json={"x": 500, "y": 400, "dx": 0, "dy": 20000})
                    assert (r.status_code, r.json()["status"]) == (200, "success"), r.text
                    assert http.get(f"/computers/{cid}").status_code == 200  # the server still answers
                shot = http.post(f"/computers/{cid}/screenshot", json={})
                assert (shot.status_code, shot.json()["status"]) == (200, "error"), shot.text
                assert "timed out" in shot.json()["error_message"]
                assert http.get(f"/computers/{cid}").status_code == 200
        finally:
            xvfb.resume()
        assert wait_until(lambda: client.computers.screenshot(cid).status == "success", 30)
        assert client.computers.click(cid, x=10, y=10).status == "success"
        client.computers.delete(cid)
    finally:
        srv.stop()


def test_pidfile_leftovers_are_killed_at_start(tmp_path: Path) -> None:
    """Xvfb cannot carry a run-dir marker: a pidfile in the run dir names it instead."""
    import subprocess

    sleep = subprocess.Popen(["sleep", "300"], start_new_session=True)
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    data = tmp_path / "data"
    run = data / "run"
    run.mkdir(parents=True)
    # a recorded executable that does not match: the pid was reused by another program
    (run / "desktop-old.pids").write_text(f"{sleep.pid} sleep\n{other.pid} /usr/bin/Xvfb\n")
    srv = start_server(tmp_path, data_dir=data, env={"OPENCONE_POOL_SIZE": "0"})
    try:
        assert wait_until(lambda: sleep.poll() is not None, 5)
        assert other.poll() is None
    finally:
        other.kill()
        srv.stop()


def test_a_warm_desktop_pool(tmp_path: Path, site: str) -> None:
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "0", "OPENCONE_DESKTOP_POOL_SIZE": "1"})
    try:
        def warm() -> int:
            return int(httpx.get(f"{srv.base_url}/health").json()["warm_desktops"])

        assert wait_until(lambda: warm() == 1, 30), "the pool launches a desktop"
        [pooled] = workdirs(srv)
        client = srv.client()
        comp = client.computers.create(kind="desktop", display={"width": 1024, "height": 768})  # not the default
        assert client.computers.retrieve(comp.id).model_extra["display"]["width"] == 1024
        shot = client.computers.screenshot(comp.id, base64=True).result["screenshot_url"]
        assert jpeg_size(base64.b64decode(shot.split(",", 1)[1])) == (1024, 768)
        # the computer is the pooled desktop (resized): deleting it removes that desktop's
        # directory, which a cold launch would have left waiting in the pool
        client.computers.delete(comp.id)
        assert wait_until(lambda: not pooled.exists(), 10), "the created desktop was not the pooled one"
    finally:
        srv.stop()
    assert wait_until(lambda: not workdirs(srv), 5)


def test_a_killed_server_leaves_no_desktop_behind(tmp_path: Path) -> None:
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "0"})
    srv.client().computers.create(kind="desktop")
    [workdir] = workdirs(srv)
    procs = desktop_processes(srv, workdir)
    assert len(procs) >= 5, procs
    srv.stop(signal.SIGKILL)
    # the parent-death signal ends Xvfb, openbox and Chromium; the terminal dies with its display
    assert wait_until(lambda: not any(_alive(p) for p in procs), 10), [p for p in procs if _alive(p)]
    # what it leaves on disk (its run dir, its sandbox's workspace, home and profile, the workspace's
    # mount) goes at the next start
    sandbox = srv.sandbox_root / workdir.name
    again = start_server(tmp_path, data_dir=srv.data_dir, api_key=srv.api_key, env={"OPENCONE_POOL_SIZE": "0"})
    try:
        assert not workdir.exists() and not list(srv.sandbox_root.glob(workdir.name + "*"))
        assert str(sandbox) not in Path("/proc/self/mountinfo").read_text()
    finally:
        again.stop()
