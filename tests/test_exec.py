"""Shell commands on a computer: /exec (NDJSON), /exec/sync, /debug, and the sandbox around them.

Exec works the same on browser and desktop computers, so these tests use
browser computers. Every command really runs under bubblewrap; the escape
tests try to break out of it and must fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import tzafon
from conftest import Server, start_server, wait_until
from tzafon import Lightcone


def workspace_of(server: Server, computer_id: str) -> Path:
    """Where the server keeps a computer's /workspace on the host (same rule as the server)."""
    return server.sandbox_root / computer_id


def procs_with(args: list[str]) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["cmdline"] == args and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def stream(client: Lightcone, cid: str, **kw: Any) -> list[dict[str, Any]]:
    # error lines carry a string ``code`` where the SDK model says int; keep it, quietly
    events = client.computers.exec.create(cid, **kw)
    return [{k: v for k, v in ev.to_dict(warnings=False).items() if v is not None} for ev in events]


def sync(client: Lightcone, cid: str, command: str, **kw: Any) -> Any:
    return client.computers.exec.sync(cid, command=command, **kw)


def ndjson(server: Server, cid: str, body: Any, key: str | None = None) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """POST /exec with raw httpx; checks the framing and returns the parsed lines."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with server.http(key) as http:
        with http.stream("POST", f"/computers/{cid}/exec", content=content,
                         headers={"accept": "application/x-ndjson", "content-type": "application/json"}) as r:
            raw = r.read()
    if r.status_code != 200:
        return r, []
    assert r.headers["content-type"] == "application/x-ndjson"
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    assert all(line.strip() for line in lines), f"blank line in {raw!r}"
    return r, [json.loads(line) for line in lines]


# -- streaming -------------------------------------------------------------------------------


def test_output_streams_as_produced_in_order(client: Lightcone, cid: str) -> None:
    start = time.monotonic()
    seen = []
    for ev in client.computers.exec.create(cid, command="echo one; sleep 1.5; echo two"):
        seen.append((time.monotonic() - start, ev.type, ev.data, ev.code))
    assert [(t, d, c) for _, t, d, c in seen] == [("stdout", "one\n", None), ("stdout", "two\n", None),
                                                  ("exit", None, 0)]
    first, second = seen[0][0], seen[1][0]
    assert first < 1.2, f"the first line came only after {first:.2f} s: output is buffered"
    assert second - first > 1.0


def test_stdout_stderr_and_exit_codes(client: Lightcone, cid: str) -> None:
    events = stream(client, cid, command="echo out; echo err >&2; exit 7")
    assert {"type": "stdout", "data": "out\n"} in events
    assert {"type": "stderr", "data": "err\n"} in events
    assert events[-1] == {"type": "exit", "code": 7}
    assert sum(ev["type"] == "exit" for ev in events) == 1
    assert stream(client, cid, command="false")[-1] == {"type": "exit", "code": 1}
    assert stream(client, cid, command="kill -9 $$")[-1]["code"] != 0


def test_sync(client: Lightcone, cid: str) -> None:
    res = sync(client, cid, "echo out; echo err >&2; exit 3")
    assert (res.exit_code, res.stdout, res.stderr) == (3, "out\n", "err\n")
    assert res.to_dict()["truncated"] is False and res.to_dict()["timed_out"] is False
    res = sync(client, cid, "printf 'h\\303\\251llo'")
    assert res.stdout == "héllo"


def test_env_cwd_and_a_workspace_that_persists(client: Lightcone, cid: str) -> None:
    res = sync(client, cid, 'echo "$GREETING|$HOME|$(pwd)|$(id -u)|$LANG"', env={"GREETING": "hi there"})
    assert res.stdout == "hi there|/workspace|/workspace|65534|C.UTF-8\n"
    assert sync(client, cid, "mkdir -p sub/deeper && echo kept > sub/file").exit_code == 0
    assert sync(client, cid, "cat file", cwd="/workspace/sub").stdout == "kept\n"
    assert sync(client, cid, "pwd", cwd="sub/deeper").stdout == "/workspace/sub/deeper\n"
    assert sync(client, cid, "pwd", cwd="/workspace/sub/../sub").stdout == "/workspace/sub\n"
    assert sync(client, cid, "echo $PATH", env={"PATH": "/usr/bin"}).stdout == "/usr/bin\n"


def test_timeout_kills_the_whole_process_group(client: Lightcone, cid: str) -> None:
    start = time.monotonic()
    events = stream(client, cid, command="echo started; sleep 1234.5 & sleep 1234.5", timeout_seconds=1)
    assert time.monotonic() - start < 5
    assert events[0] == {"type": "stdout", "data": "started\n"}
    assert events[-1] == {"type": "exit", "code": -1}
    assert wait_until(lambda: not procs_with(["sleep", "1234.5"]), 3), "a sleep survived the timeout"

    res = sync(client, cid, "sleep 1234.5 & sleep 1234.5", timeout_seconds=1)
    assert res.exit_code == -1 and res.to_dict()["timed_out"] is True
    assert wait_until(lambda: not procs_with(["sleep", "1234.5"]), 3)


def test_ndjson_framing_and_utf8_across_chunks(server: Server, cid: str) -> None:
    # 'é\n' is 3 bytes and the server reads 64 KiB at a time, so reads end inside a character
    r, lines = ndjson(server, cid, {"command": "yes é | head -c 300000; echo done >&2"})
    assert r.status_code == 200
    assert [line["type"] for line in lines][-1] == "exit" and lines[-1]["code"] == 0
    out = "".join(line["data"] for line in lines if line["type"] == "stdout")
    assert out == "é\n" * 100000
    assert "\ufffd" not in out
    assert all(line["data"] for line in lines if line["type"] in ("stdout", "stderr"))


def test_concurrent_execs_run_side_by_side_and_never_mix(server: Server, cid: str) -> None:
    client = server.client()
    results: dict[str, list[dict[str, Any]]] = {}

    def run(tag: str) -> None:
        results[tag] = stream(client, cid, command=f"for i in 1 2 3 4 5; do echo {tag}$i; sleep 0.2; done")

    start = time.monotonic()
    threads = [threading.Thread(target=run, args=(tag,)) for tag in ("A", "B", "C")]
    for t in threads:
        t.start()
    # an exec does not hold the computer's action lock: actions still answer
    shot = client.computers.screenshot(cid)
    assert shot.status == "success"
    for t in threads:
        t.join(30)
    assert time.monotonic() - start < 2.5, "execs ran one after another"
    for tag, events in results.items():
        out = "".join(ev.get("data", "") for ev in events if ev["type"] == "stdout")
        assert out == "".join(f"{tag}{i}\n" for i in range(1, 6))
        assert events[-1] == {"type": "exit", "code": 0}


def test_a_client_that_goes_away_ends_its_command(server: Server, cid: str) -> None:
    with server.http() as http:
        with http.stream("POST", f"/computers/{cid}/exec", json={"command": "echo go; sleep 1234.9"}) as r:
            lines = r.iter_lines()  # keep it: a dropped iterator already closes the connection
            first = next(lines)
            assert wait_until(lambda: bool(procs_with(["sleep", "1234.9"])), 5)
    assert json.loads(first) == {"type": "stdout", "data": "go\n"}
    assert wait_until(lambda: not procs_with(["sleep", "1234.9"]), 5), "the command outlived its client"


def test_exec_counts_as_activity(server: Server) -> None:
    client = server.client()
    comp = client.computers.create(inactivity_timeout_seconds=2)
    try:
        res = sync(client, comp.id, "sleep 3.5; echo alive")
        assert (res.exit_code, res.stdout) == (0, "alive\n")
        assert client.computers.retrieve(comp.id).status != "terminated"
    finally:
        client.computers.delete(comp.id)


def test_sync_outlives_the_client_read_timeout(server: Server, cid: str) -> None:
    """/exec/sync sends whitespace while a command runs, so a 20 s command beats a 16.5 s read timeout."""
    client = server.client(timeout=httpx.Timeout(16.5, connect=5))
    res = sync(client, cid, "sleep 20; echo finished", timeout_seconds=60)
    assert (res.exit_code, res.stdout) == (0, "finished\n")


# -- /debug, execute and batch -----------------------------------------------------------------


def test_debug_endpoint(client: Lightcone, cid: str) -> None:
    res = client.computers.debug(cid, command="echo hello; echo oops >&2; exit 3")
    assert res.status == "success"
    assert res.result["exit_code"] == 3
    assert res.result["stdout"] == "hello\n" and res.result["stderr"] == "oops\n"
    assert "hello" in res.result["debug_response"] and "oops" in res.result["debug_response"]

    res = client.computers.debug(cid, command="yes | head -c 100000", max_output_length=1000)
    assert res.status == "success" and res.result["truncated"] is True
    assert len(res.result["stdout"]) == 1000
    assert "truncated" in res.result["debug_response"] and len(res.result["debug_response"]) < 1100

    start = time.monotonic()
    res = client.computers.debug(cid, command="echo partial; sleep 30", timeout_seconds=1)
    assert time.monotonic() - start < 5
    assert res.status == "error"
    assert "timed out" in res.error_message and "partial" in res.error_message


def test_debug_through_the_high_level_session(client: Lightcone) -> None:
    with client.computer.create(kind="browser") as computer:
        result = computer.debug("echo via-session; ls -d /workspace")
        assert computer.get_debug_response(result) == "via-session\n/workspace\n"


def test_debug_in_execute_and_batch(client: Lightcone, cid: str) -> None:
    res = client.computers.execute(cid, action={"type": "debug", "debug": {
        "command": "pwd; echo $X", "cwd": "/workspace", "env": {"X": "from-env"}}})
    assert res.status == "success"
    assert res.result["stdout"] == "/workspace\nfrom-env\n"

    out = client.computers.batch(cid, actions=[
        {"type": "debug", "debug": {"command": "echo a > batch.txt"}},
        {"type": "debug", "command": "cat batch.txt"},
        {"type": "debug", "debug": {"command": "echo never", "cwd": "/etc"}},
        {"type": "debug", "debug": {"command": "echo not reached"}},
    ])
    results = out["results"]
    assert [r["status"] for r in results] == ["success", "success", "error"]
    assert results[1]["result"]["debug_response"] == "a\n"
    assert "/workspace" in results[2]["error_message"]


# -- the sandbox -------------------------------------------------------------------------------


def test_runs_unprivileged_without_capabilities(client: Lightcone, cid: str) -> None:
    res = sync(client, cid, "id -u; id -g; grep CapEff /proc/self/status; cat /etc/shadow")
    lines = res.stdout.splitlines()
    assert lines[:2] == ["65534", "65534"]
    assert lines[2].split()[1] == "0000000000000000"
    assert res.exit_code != 0 and "root:" not in res.stdout
    ps = sync(client, cid, "ps -e -o pid= | wc -l").stdout.strip()
    assert int(ps) <= 5, "the sandbox sees host processes"


def test_cannot_read_the_server_data_dir(server: Server, cid: str, client: Lightcone) -> None:
    data = server.data_dir.resolve()
    assert (data / "opencone.db").exists()
    res = sync(client, cid, f"ls {data}; cat {data}/opencone.db | head -c 100; ls /proc/1/root{data}")
    assert res.stdout == ""
    assert "No such file" in res.stderr or "Permission denied" in res.stderr
    assert set(sync(client, cid, "ls /").stdout.split()) <= {
        "bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "opt", "proc", "sbin", "tmp", "usr", "var", "workspace"}
    assert sync(client, cid, "find /var -maxdepth 2").stdout.split() in (
        [], ["/var", "/var/cache", "/var/cache/fontconfig"])  # (read-only: programs need no font cache of their own)
    res = sync(client, cid, "ls /root /home /run /sys")
    assert res.exit_code != 0 and res.stdout == ""


def test_cannot_write_outside_workspace(client: Lightcone, cid: str) -> None:
    tag = secrets.token_hex(4)
    for path in (f"/etc/x-{tag}", f"/usr/x-{tag}", f"/usr/local/x-{tag}", f"/opt/x-{tag}", f"/x-{tag}"):
        res = sync(client, cid, f"echo pwned > {path}")
        assert res.exit_code != 0, f"{path} was writable"
        assert not Path(path).exists()
    # /tmp is writable but private to the command
    assert sync(client, cid, f"echo private > /tmp/x-{tag} && cat /tmp/x-{tag}").stdout == "private\n"
    assert not Path(f"/tmp/x-{tag}").exists()


def test_computers_cannot_see_each_others_workspace(server: Server, client: Lightcone, cid: str) -> None:
    other = client.computers.create()
    try:
        secret = f"secret-{secrets.token_hex(6)}"
        assert sync(client, cid, f"echo {secret} > {secret}.txt").exit_code == 0
        host = workspace_of(server, cid)
        assert (host / f"{secret}.txt").read_text() == f"{secret}\n"
        res = sync(client, other.id, f"ls -a /workspace; cat {host}/{secret}.txt; ls {host.parent}; "
                                     f"find / -name '{secret}*' -not -path '/proc/*' 2>/dev/null")
        assert secret not in res.stdout
    finally:
        client.computers.delete(other.id)


def test_cannot_kill_a_host_process(client: Lightcone, cid: str) -> None:
    victim = subprocess.Popen(["sleep", "1000"])
    try:
        sync(client, cid, f"kill -9 {victim.pid}; kill -9 -1")
        time.sleep(0.2)
        assert victim.poll() is None, "a sandboxed command killed a host process"
    finally:
        victim.kill()
        victim.wait()


def test_browsers_run_in_the_sandbox_too(server: Server, client: Lightcone, site: str) -> None:
    """Every Chromium the server starts (a browser computer's, a desktop's) runs as the sandbox
    user in a mount namespace of its own, with Chromium's own sandbox on as well (its renderers
    in yet another user namespace): a page that breaks out of a renderer holds no root process
    and sees none of the host's files."""
    host_mnt = os.readlink("/proc/self/ns/mnt")
    comps = [client.computers.create(), client.computers.create(kind="desktop")]
    try:
        for c in comps:  # (a page: a renderer)
            assert client.computers.navigate(c.id, url=f"{site}/page2.html").status == "success"
        def cmd(p: psutil.Process) -> list[str]:
            with contextlib.suppress(psutil.Error):
                return p.cmdline()
            return []  # (one that just ended: a pool browser replaced meanwhile)

        def is_main(p: psutil.Process) -> bool:
            line = cmd(p)
            return bool(line) and line[0].endswith("/chromium") and not any(a.startswith("--type=") for a in line)

        browsers = [p for p in psutil.Process(server.process.pid).children(recursive=True) if is_main(p)]
        assert len(browsers) >= 2, browsers  # (warm pool browsers too)
        renderers: list[tuple[psutil.Process, psutil.Process]] = []
        for main in browsers:
            assert main.uids().real == 65534, cmd(main)
            assert os.readlink(f"/proc/{main.pid}/ns/mnt") != host_mnt
            renderers += [(p, main) for p in main.children(recursive=True) if "--type=renderer" in cmd(p)]
        assert len(renderers) >= 2, renderers
        for renderer, main in renderers:
            own = os.readlink(f"/proc/{main.pid}/ns/user")
            assert os.readlink(f"/proc/{renderer.pid}/ns/user") != own, "Chromium's own sandbox is off"
    finally:
        for c in comps:
            client.computers.delete(c.id)


def test_no_network_by_default(client: Lightcone, cid: str, site: str, server: Server) -> None:
    for url in (site, server.base_url + "/health"):
        res = sync(client, cid, f"curl -sS -m 3 {url}")
        assert res.exit_code != 0
        assert "refused" in res.stderr.lower() or "resolve" in res.stderr.lower() or "connect" in res.stderr.lower()
    assert "lo" in sync(client, cid, "ls /sys/class/net 2>/dev/null || cat /proc/net/dev").stdout


def test_a_deleted_computer_leaves_no_process_and_no_workspace(server: Server) -> None:
    client = server.client()
    comp = client.computers.create()
    assert sync(client, comp.id, "echo x > f").exit_code == 0
    host = workspace_of(server, comp.id)
    assert host.is_dir()
    events: list[dict[str, Any]] = []
    runner = threading.Thread(target=lambda: events.extend(stream(client, comp.id, command="sleep 1234.6")))
    runner.start()
    assert wait_until(lambda: bool(procs_with(["sleep", "1234.6"])), 10)
    client.computers.delete(comp.id)
    runner.join(10)
    assert not runner.is_alive()
    assert events[-1] == {"type": "exit", "code": -1}
    assert wait_until(lambda: not procs_with(["sleep", "1234.6"]), 3)
    assert not host.exists()
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(host) in " ".join(p.info["cmdline"] or [])]


def test_a_killed_server_takes_its_commands_along(tmp_path: Path) -> None:
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "0"})
    try:
        client = srv.client()
        comp = client.computers.create()
        assert sync(client, comp.id, "echo x > f").exit_code == 0
        host = workspace_of(srv, comp.id)
        assert os.path.ismount(host) == ("workspaces have no size cap" not in srv.log())  # (its own filesystem)

        def run() -> None:
            with contextlib.suppress(Exception):  # the server dies under it
                stream(client, comp.id, command="sleep 1234.8")

        threading.Thread(target=run, daemon=True).start()
        assert wait_until(lambda: bool(procs_with(["sleep", "1234.8"])), 10)
        capped = "without process and memory caps" not in srv.log()
        groups = control_groups(srv.process.pid)
        assert bool(groups) == capped, groups
        srv.stop(signal.SIGKILL)
        assert wait_until(lambda: not procs_with(["sleep", "1234.8"]), 5), "a command outlived its server"
        assert host.exists()
    finally:
        srv.stop()
    again = start_server(tmp_path, data_dir=srv.data_dir, api_key=srv.api_key, env={"OPENCONE_POOL_SIZE": "0"})
    try:
        assert not host.exists(), "the next start wipes workspaces left by a crash"
        assert str(host) not in Path("/proc/self/mountinfo").read_text(), "and unmounts them"
        assert not control_groups(srv.process.pid), "the next start removes a dead server's control groups"
        assert bool(control_groups(again.process.pid)) == capped
    finally:
        again.stop()
    assert not host.parent.exists(), "a clean stop removes the workspace root"
    assert not control_groups(again.process.pid), "a clean stop removes its control groups"


def control_groups(server_pid: int) -> list[Path]:
    """A server's exec control groups, in either cgroup layout."""
    root = Path("/sys/fs/cgroup")
    return [p for p in [root / f"opencone-{server_pid}", *root.glob(f"*/opencone-{server_pid}")] if p.is_dir()]


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("body, fragment", [
    ({"command": ""}, "command"),
    ({"command": "   "}, "command"),
    ({}, "command"),
    ({"command": "true", "timeout_seconds": -1}, "timeout_seconds"),
    ({"command": "true", "timeout_seconds": 0}, "timeout_seconds"),
    ({"command": "true", "timeout_seconds": 99999}, "timeout_seconds"),
    ({"command": "true", "cwd": "/etc"}, "cwd"),
    ({"command": "true", "cwd": "../.."}, "cwd"),
    ({"command": "true", "cwd": "/workspace/../etc"}, "cwd"),
    ({"command": "true", "cwd": "/workspace/missing"}, "cwd"),
    ({"command": "true", "env": {"A": 1}}, "env"),
    ({"command": "true", "env": {"A=B": "c"}}, "env"),
    ({"command": ["ls"]}, "command"),
    ([1, 2], "JSON object"),
])
def test_bad_input(server: Server, cid: str, body: Any, fragment: str) -> None:
    r, lines = ndjson(server, cid, body)
    assert r.status_code == 200
    assert len(lines) == 1 and lines[0]["type"] == "error" and lines[0]["code"] == "INVALID_REQUEST"
    assert fragment in lines[0]["message"]
    with server.http() as http:
        r = http.post(f"/computers/{cid}/exec/sync", json=body)
    assert r.status_code == 422 and fragment in r.json()["detail"]


def test_bad_json_and_sdk_errors(server: Server, client: Lightcone, cid: str) -> None:
    r, lines = ndjson(server, cid, b"{not json")
    assert lines == [{"type": "error", "code": "INVALID_REQUEST", "status": 422,
                      "message": 'the body is not valid JSON; send {"command": "..."}'}]
    events = stream(client, cid, command="")
    assert events[0]["type"] == "error" and events[0]["code"] == "INVALID_REQUEST"
    with pytest.raises(tzafon.UnprocessableEntityError):
        sync(client, cid, "true", cwd="/etc")
    with pytest.raises(tzafon.UnprocessableEntityError):
        sync(client, cid, "true", timeout_seconds=-5)


def test_unknown_terminated_and_unauthorised(server: Server, client: Lightcone) -> None:
    _, lines = ndjson(server, "comp_missing", {"command": "true"})
    assert lines[0]["type"] == "error" and lines[0]["code"] == "NOT_FOUND" and len(lines) == 1
    with pytest.raises(tzafon.NotFoundError):
        sync(client, "comp_missing", "true")

    comp = client.computers.create()
    client.computers.delete(comp.id)
    events = stream(client, comp.id, command="true")
    assert len(events) == 1 and events[0]["type"] == "error" and events[0]["code"] == "CONFLICT"
    with pytest.raises(tzafon.ConflictError):
        sync(client, comp.id, "true")

    r, _ = ndjson(server, comp.id, {"command": "true"}, key="wrong-key")
    assert r.status_code == 401
    with httpx.Client(base_url=server.base_url) as http:
        assert http.post(f"/computers/{comp.id}/exec/sync", json={"command": "true"}).status_code == 401


def test_huge_output_is_bounded_and_quick(client: Lightcone, cid: str) -> None:
    start = time.monotonic()
    res = client.computers.debug(cid, command="yes | head -c 50000000; echo end", max_output_length=65536)
    assert time.monotonic() - start < 15
    assert res.status == "success" and res.result["exit_code"] == 0 and res.result["truncated"] is True
    assert len(res.result["stdout"]) == 65536
    # the command ran to its end: output past the cap is drained, not a reason to kill
    assert sync(client, cid, "echo still fine").stdout == "still fine\n"


# -- settings: network on, small output cap, explicit workspace dir ----------------------------------


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("exec-open")
    ws = Path("/tmp") / f"opencone-test-ws-{secrets.token_hex(4)}"
    srv = start_server(tmp, env={"OPENCONE_POOL_SIZE": "0", "OPENCONE_EXEC_NETWORK": "true",
                                 "OPENCONE_EXEC_MAX_OUTPUT_BYTES": "100000", "OPENCONE_EXEC_WORKSPACE_DIR": str(ws)})
    srv.ws_root = ws  # type: ignore[attr-defined]
    yield srv
    srv.stop()
    assert not ws.exists(), "the workspace dir outlived the server"


def test_network_setting_cap_and_workspace_dir(open_server: Server, site: str) -> None:
    client = open_server.client()
    comp = client.computers.create()
    try:
        res = sync(client, comp.id, f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' {site}/")
        assert (res.exit_code, res.stdout) == (0, "200")
        start = time.monotonic()
        res = sync(client, comp.id, "yes | head -c 50000000")
        assert time.monotonic() - start < 15
        assert res.to_dict()["truncated"] is True and len(res.stdout) == 100000 and res.exit_code == 0
        assert (open_server.ws_root / comp.id).is_dir()  # type: ignore[attr-defined]
    finally:
        client.computers.delete(comp.id)
    # DELETE answers before the teardown (kill, sandbox clean-up), which runs in the background
    workspace, deadline = open_server.ws_root / comp.id, time.monotonic() + 15  # type: ignore[attr-defined]
    while workspace.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not workspace.exists()


def test_a_command_opens_a_window_on_its_desktop(server: Server) -> None:
    client = server.client()
    try:
        comp = client.computers.create(kind="desktop")
    except tzafon.APIStatusError as exc:
        pytest.skip(f"no desktop computers on this server: {exc}")
    try:
        res = sync(client, comp.id, "xmessage -name exec-window hello & xdotool search --sync --name '^exec-window$'; "
                                    "kill %1; echo $DISPLAY", timeout_seconds=20)
        window, display = res.stdout.split()
        assert res.exit_code == 0 and window.isdigit() and display.startswith(":")
    finally:
        client.computers.delete(comp.id)


def test_x_display_is_reachable_only_when_given(tmp_path: Path) -> None:
    """Driver level, with a real Xvfb: DISPLAY and the computer's own X socket, nothing more."""
    import asyncio

    from opencone.drivers.sandbox import Sandbox, Workspaces

    xvfb = subprocess.Popen(["Xvfb", ":97", "-nolisten", "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: Path("/tmp/.X11-unix/X97").exists(), 10)

        async def run(display: int | None) -> tuple[int, str]:
            sandbox = Sandbox(Workspaces(tmp_path / "run", Path("/tmp") / f"opencone-test-x-{secrets.token_hex(4)}"))
            sandbox.start()
            execution = await sandbox.spawn("comp_x", "echo $DISPLAY; xdpyinfo | head -1; ls /tmp/.X11-unix",
                                            x_display=display, timeout=10)
            out, code = b"", -2
            async for ev in execution.events():
                if hasattr(ev, "data"):
                    out += ev.data
                else:
                    code = ev.code
            await sandbox.remove("comp_x")
            sandbox.stop()  # (the workspace root, and this process's control group)
            assert not sandbox.workspaces.root.exists()
            return code, out.decode()

        code, out = asyncio.run(run(97))
        assert code == 0 and out.startswith(":97\nname of display:    :97\nX97\n")
        code, out = asyncio.run(run(None))
        assert "name of display" not in out
    finally:
        xvfb.kill()
        xvfb.wait()


# -- caps: processes and memory per computer (cgroups) ---------------------------------------
@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("capped"),
                          env={"OPENCONE_EXEC_MAX_PROCESSES": "40", "OPENCONE_EXEC_MAX_MEMORY_MB": "128",
                               "OPENCONE_EXEC_WORKSPACE_MAX_MB": "64"})
    try:
        if "without process and memory caps" in server.log():
            pytest.skip("this server may not create control groups: " + server.log()[-300:])
        yield server
    finally:
        server.stop()


FORK_100 = """
import os, time
made, failure = 0, "none"
for _ in range(100):
    try:
        pid = os.fork()
    except OSError as exc:
        failure = str(exc)
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    made += 1
print(made)
print(failure)
"""


def test_a_fork_bomb_stops_at_the_process_cap(capped: Server) -> None:
    client = capped.client()
    with client.computer.create(kind="browser") as comp:
        # up to 100 sleeping children (they all end with the command's pid namespace)
        bomb = sync(client, comp.id, f"python3 -c '{FORK_100}'", timeout_seconds=20)
        assert bomb.exit_code == 0, bomb.stderr
        made, failure = bomb.stdout.splitlines()
        assert 20 < int(made) < 40 and "Resource temporarily unavailable" in failure, bomb.stdout
        # the computer, and the server, carry on
        after = sync(client, comp.id, "echo still here")
        assert (after.exit_code, after.stdout) == (0, "still here\n")
    assert capped.health()["status"] == "ok"


def test_memory_over_the_cap_kills_the_command_not_the_server(capped: Server) -> None:
    client = capped.client()
    with client.computer.create(kind="browser") as comp:
        hog = sync(client, comp.id, "python3 -c 'b = bytearray(512 << 20); print(len(b))'", timeout_seconds=30)
        assert hog.exit_code != 0 and "536870912" not in hog.stdout, (hog.exit_code, hog.stdout, hog.stderr)
        fits = sync(client, comp.id, "python3 -c 'b = bytearray(16 << 20); print(len(b))'", timeout_seconds=30)
        assert (fits.exit_code, fits.stdout) == (0, f"{16 << 20}\n"), fits.stderr
    assert capped.health()["status"] == "ok"


def test_a_full_workspace_stops_at_its_cap_and_only_there(capped: Server) -> None:
    """Each /workspace is a filesystem of its own of the capped size: writing past it fails in that
    computer only, the file behind it takes on the host only what was written, and it goes with
    its computer."""
    if "workspaces have no size cap" in capped.log():
        pytest.skip("this server may not mount: " + capped.log()[-300:])
    client = capped.client()
    other = client.computers.create()
    try:
        with client.computer.create(kind="browser") as comp:
            size = sync(client, comp.id, "df -m --output=size /workspace | tail -1")
            assert 50 <= int(size.stdout) <= 64, size.stdout
            full = sync(client, comp.id, "dd if=/dev/zero of=big bs=1M count=100", timeout_seconds=30)
            assert full.exit_code != 0 and "No space left on device" in full.stderr, full.stderr
            host = workspace_of(capped, comp.id)
            image = host.with_name(host.name + ".img")
            assert image.stat().st_blocks * 512 <= 70 << 20  # (sparse: about what was written)
            assert sync(client, other.id, "dd if=/dev/zero of=f bs=1M count=8 && echo fine").stdout == "fine\n"
            again = sync(client, comp.id, "rm big && echo ok > f && cat f")
            assert (again.exit_code, again.stdout) == (0, "ok\n"), again.stderr
            assert os.path.ismount(host)
        assert wait_until(lambda: not image.exists() and not host.exists(), 5)
        assert str(host) not in Path("/proc/self/mountinfo").read_text()
    finally:
        client.computers.delete(other.id)
    assert capped.health()["status"] == "ok"


def test_first_commands_at_once_all_land_on_the_capped_workspace(capped: Server) -> None:
    """Concurrent first commands of a computer wait for its one workspace filesystem to be made:
    none writes into the bare directory underneath it."""
    if "workspaces have no size cap" in capped.log():
        pytest.skip("this server may not mount: " + capped.log()[-300:])
    client = capped.client()
    with client.computer.create(kind="browser") as comp:
        results: list[Any] = [None] * 4

        def run(i: int) -> None:
            results[i] = sync(client, comp.id, f"echo {i} > c{i}; df --output=source /workspace | tail -1")

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(r is not None and r.exit_code == 0 and r.stdout.startswith("/dev/loop") for r in results), results
        assert sync(client, comp.id, "cat c0 c1 c2 c3").stdout.split() == ["0", "1", "2", "3"]
