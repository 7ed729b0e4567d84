"""Exec and desktop isolation, attacked from outside as a tenant with an ordinary key would.

A command's ``env``, ``cwd`` and text must reach only the sandboxed process,
never the programs that build the sandbox (setpriv, bubblewrap), which run on
the host as the server's user before any confinement: a dynamic-loader
variable there is host code run as that user (root, by default). Nothing of
the server's own paths (data dir, run dir, workspace root) may be visible
inside, nested user namespaces are off, and a desktop's X server and window
manager run unprivileged. A server that is not root gets the same, as its own
user (the last test starts one).
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import Server, desktop_home, start_server, wait_until
from tzafon import Lightcone

import opencone
from opencone.testing import free_port

# The constructor appends the uid that loaded it to each of its paths it can open: a host path
# (only the host can open it: inside the sandbox neither /tmp nor the workspace's host path is
# the host's) and /workspace (only the sandbox can).
EVIL_C = r"""
#include <stdio.h>
#include <unistd.h>
unsigned int la_version(unsigned int v) { return v; }  /* what LD_AUDIT needs to keep it */
__attribute__((constructor)) static void ran(void) {
    static const char *const paths[] = {%s};
    for (unsigned i = 0; i < sizeof paths / sizeof *paths; i++) {
        FILE *f = fopen(paths[i], "a");
        if (f) { fprintf(f, "%%d\n", (int)getuid()); fclose(f); }
    }
}
"""


def sync(client: Lightcone, cid: str, command: str, **kw: Any) -> Any:
    return client.computers.exec.sync(cid, command=command, **kw)


class Attack:
    """Libraries built by a command in its own /workspace, and the host files that would show
    that host code ran them: a marker in the host's /tmp, and one in the workspace's host path."""

    def __init__(self, client: Lightcone, cid: str, host_ws: Path) -> None:
        self.client, self.cid, self.host_ws = client, cid, host_ws
        self.tag = secrets.token_hex(6)
        self.host_marker = Path(tempfile.gettempdir()) / f"opencone-attack-{self.tag}"
        paths = ", ".join(f'"{p}"' for p in (self.host_marker, host_ws / f"ran-outside-{self.tag}",
                                              f"/workspace/ran-inside-{self.tag}"))
        source = EVIL_C % paths
        # a library named as setpriv's and bwrap's own dependencies, which passes every symbol on
        # to the real one (a filter): what LD_LIBRARY_PATH would load into them
        build = (f"mkdir -p lib-{self.tag} && cat > evil.c <<'EOF'\n{source}\nEOF\n"
                 f"gcc -shared -fPIC -o evil-{self.tag}.so evil.c && "
                 f"for lib in libcap-ng.so.0 libselinux.so.1; do "
                 f"real=$(ldconfig -p | awk -v l=$lib '$1 == l {{print $NF; exit}}'); [ -n \"$real\" ] || continue; "
                 f"gcc -shared -fPIC -o lib-{self.tag}/$lib evil.c -Wl,-soname,$lib -Wl,-F,$real || exit 1; done")
        res = sync(client, cid, build, timeout_seconds=60)
        assert res.exit_code == 0, res.stderr

    @property
    def library(self) -> str:
        """The library as the host sees it (the path an attacker reads off the sandbox today)."""
        return str(self.host_ws / f"evil-{self.tag}.so")

    @property
    def inside_library(self) -> str:
        return f"/workspace/evil-{self.tag}.so"

    @property
    def library_dir(self) -> str:
        return str(self.host_ws / f"lib-{self.tag}")

    def ran_outside(self) -> list[str]:
        """What the host-side markers say: the uids host code loaded the library as."""
        found = []
        for marker in (self.host_marker, self.host_ws / f"ran-outside-{self.tag}",
                       *Path(tempfile.gettempdir()).glob(f"opencone-attack-{self.tag}*")):
            if marker.exists():
                found.append(f"{marker}: {marker.read_text(errors='replace').split()}")
        return sorted(set(found))

    def ran_inside(self) -> list[str]:
        return sync(self.client, self.cid, f"cat ran-inside-{self.tag} 2>/dev/null; true").stdout.split()

    def close(self) -> None:
        for marker in Path(tempfile.gettempdir()).glob(f"opencone-attack-{self.tag}*"):
            marker.unlink()
        sync(self.client, self.cid, f"rm -rf evil.c evil-{self.tag}.so lib-{self.tag} ran-*-{self.tag}*")


@pytest.fixture
def attack(server: Server, client: Lightcone, cid: str) -> Iterator[Attack]:
    one = Attack(client, cid, server.sandbox_root / cid)
    yield one
    one.close()


def test_ld_preload_of_a_library_built_inside_loads_only_inside(attack: Attack) -> None:
    """The library is preloaded by the host path an attacker would read off the sandbox and by
    its /workspace path: only the sandboxed command may load it, as the sandbox user."""
    res = sync(attack.client, attack.cid, "true", env={"LD_PRELOAD": f"{attack.library} {attack.inside_library}"})
    assert res.exit_code == 0, res.stderr
    assert attack.ran_outside() == [], "a library the command built ran on the host, outside the sandbox"
    inside = attack.ran_inside()
    assert inside and set(inside) == {"65534"}, inside  # the env did reach the command


@pytest.mark.parametrize("variables", [
    pytest.param(lambda a: {"LD_AUDIT": a.library}, id="LD_AUDIT"),
    pytest.param(lambda a: {"LD_LIBRARY_PATH": a.library_dir}, id="LD_LIBRARY_PATH"),
    pytest.param(lambda a: {"LD_DEBUG": "all", "LD_DEBUG_OUTPUT": str(a.host_marker) + "-debug"},
                 id="LD_DEBUG_OUTPUT"),
])
def test_loader_variables_do_nothing_outside(attack: Attack, variables: Any) -> None:
    res = sync(attack.client, attack.cid, "/bin/true", env=variables(attack))
    assert res.exit_code == 0, res.stderr
    assert attack.ran_outside() == [], "the request's loader variables acted on the host"


def processes_holding(needle: str) -> list[tuple[psutil.Process, str]]:
    """Every process on the host whose command line or environment holds ``needle``, with its pid namespace."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            text = "\0".join(proc.cmdline()) + "\0" + "\0".join(f"{k}={v}" for k, v in proc.environ().items())
            if needle in text:
                found.append((proc, os.readlink(f"/proc/{proc.pid}/ns/pid")))
    return found


def test_the_request_reaches_no_process_outside_the_sandbox(server: Server, client: Lightcone, cid: str) -> None:
    """While a command runs, its env and its text are held by processes inside its sandbox only:
    not by the host processes that started it (where a loader would act on them, and where
    every user of the host can read them)."""
    tag = secrets.token_hex(8)
    stop = server.sandbox_root / cid / f"stop-{tag}"
    host_ns = os.readlink("/proc/self/ns/pid")
    runner = threading.Thread(target=lambda: sync(
        client, cid, f"while [ ! -e stop-{tag} ]; do sleep 0.05; done; rm stop-{tag} # cmd-{tag}",
        env={"PROBE": f"env-{tag}"}, timeout_seconds=30), daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: any(ns != host_ns for _, ns in processes_holding(f"cmd-{tag}")), 10)
        for needle in (f"cmd-{tag}", f"env-{tag}"):
            outside = [(p.pid, p.name()) for p, ns in processes_holding(needle) if ns == host_ns]
            assert outside == [], f"{needle} is held by host processes {outside}"
    finally:
        stop.touch()
        runner.join(30)


# what a command runs to look for the server's paths: /proc's view of itself and of pid 1, and the
# memory of every other process of its sandbox (pid 1 is the first thing bubblewrap starts)
PROBE = r"""
for f in /proc/1/cmdline /proc/self/cmdline /proc/1/environ /proc/self/environ; do
  echo "== $f"; tr '\0' '\n' < $f; echo
done
echo "== mountinfo"; cat /proc/self/mountinfo /proc/1/mountinfo
echo "== env"; env
echo "== links"; readlink /proc/1/cwd /proc/1/root /proc/1/exe; ls -l /proc/1/fd/ /proc/self/fd/
echo "== maps"; cat /proc/1/maps
echo "== memory"; python3 - <<'EOF'
import base64, os
needles = [base64.b64decode(n) for n in os.environ["NEEDLES"].split()]
for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()):
    try:
        with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
            for line in maps:
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                try:
                    mem.seek(start)
                    data = mem.read(end - start)
                except (OSError, OverflowError, ValueError):
                    continue
                for i, needle in enumerate(needles):
                    if needle in data:
                        print(f"MEMORY-HOLDS {i} pid {pid} {line.split()[-1]}")
    except OSError as exc:
        print(f"pid {pid}: {exc.strerror}")
EOF
"""


def server_paths(server: Server, root: Path | None = None) -> list[str]:
    """What of the host must not show inside: the server's data dir, run dir and workspace root
    (``root``, else where a server running as this test does keeps it), as given and resolved,
    and the workspace root's own name."""
    root = root or server.sandbox_root
    paths = {str(server.data_dir), str(server.data_dir.resolve()), server.run_dir, str(root)}
    if root.name.startswith("opencone-ws-"):
        paths.add(root.name)
    return sorted(paths)


def probe(client: Lightcone, cid: str, needles: list[str]) -> str:
    env = {"NEEDLES": " ".join(base64.b64encode(n.encode()).decode() for n in needles)}  # (not the text itself)
    res = sync(client, cid, PROBE, env=env, timeout_seconds=60)
    assert res.exit_code == 0, res.stderr
    assert "== memory" in res.stdout
    return res.stdout + res.stderr


def assert_nothing_of(out: str, needles: list[str]) -> None:
    for i, needle in enumerate(needles):
        lines = [line for line in out.splitlines() if needle in line or line.startswith(f"MEMORY-HOLDS {i} ")]
        assert lines == [], f"{needle} shows inside the sandbox: {lines[:5]}"


def test_no_path_of_the_server_shows_inside(server: Server, client: Lightcone, cid: str) -> None:
    needles = [*server_paths(server), str(server.sandbox_root / cid)]
    out = probe(client, cid, needles)
    assert "/workspace" in out and "mountinfo" in out
    assert_nothing_of(out, needles)


def test_nested_user_namespaces_are_off(client: Lightcone, cid: str) -> None:
    for cmd in ("unshare -U true", "unshare -r true", "unshare -r -n true"):
        res = sync(client, cid, cmd)
        assert res.exit_code != 0, f"{cmd} made a user namespace inside the sandbox"


def test_a_command_left_by_a_crashed_server_is_found_by_its_marker(tmp_path: Path) -> None:
    """A command's command line holds no path any more: the next start finds what escaped the
    parent-death signal by the name its pid 1 carries (the workspace root's marker)."""
    from opencone.drivers.sandbox import Workspaces

    data = tmp_path / "data"
    (data / "run").mkdir(parents=True)
    workspaces = Workspaces((data / "run").resolve())
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", workspaces.marker],
                             start_new_session=True)
    try:
        srv = start_server(tmp_path, data_dir=data, env={"OPENCONE_POOL_SIZE": "0"})
        try:
            assert wait_until(lambda: stray.poll() is not None, 5), "a marked command survived the next start"
        finally:
            srv.stop()
    finally:
        stray.kill()
        stray.wait()


# -- a desktop: its home, its X socket, its terminal, its X server and window manager -------------------


def desktop_workdir(server: Server, before: set[Path]) -> Path:
    [workdir] = {p for p in (server.data_dir / "run").resolve().glob("desktop-*") if p.is_dir()} - before
    return workdir


def desktop_pids(workdir: Path) -> dict[str, int]:
    """The desktop's own processes by program name, from the pidfile the crash sweep reads."""
    out = {}
    for line in workdir.with_suffix(".pids").read_text().splitlines():
        pid, exe = line.split(" ", 1)
        out[Path(exe).name] = int(pid)
    return out


def credentials(pid: int) -> tuple[set[int], set[int]]:
    """Every uid (real, effective, saved, fs) and every gid (the same, and supplementary) of ``pid``."""
    uids: set[int] = set()
    gids: set[int] = set()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "Uid":
            uids |= {int(v) for v in value.split()}
        elif key in ("Gid", "Groups"):
            gids |= {int(v) for v in value.split()}
    return uids, gids


@pytest.fixture(scope="module")
def desktop(server: Server) -> Iterator[tuple[str, Path]]:
    client = server.client()
    before = {p for p in (server.data_dir / "run").resolve().glob("desktop-*")}
    comp = client.computers.create(kind="desktop")
    yield comp.id, desktop_workdir(server, before)
    client.computers.delete(comp.id)


def test_xvfb_and_openbox_run_unprivileged(server: Server, desktop: tuple[str, Path]) -> None:
    _cid, workdir = desktop
    pids = desktop_pids(workdir)
    assert {"Xvfb", "openbox"} <= set(pids), pids
    for name in ("Xvfb", "openbox"):
        uids, gids = credentials(pids[name])
        assert 0 not in uids and 0 not in gids, f"{name} runs with uids {uids} and gids {gids}"
        if os.geteuid() == 0:
            assert uids == {65534}, (name, uids)


def test_no_path_of_the_server_shows_inside_a_desktop(server: Server, desktop: tuple[str, Path]) -> None:
    """On a desktop a command also has the desktop's home (at /home/user) and its X socket."""
    cid, workdir = desktop
    client = server.client()
    needles = [*server_paths(server), str(desktop_home(server, workdir)), str(workdir)]
    out = probe(client, cid, needles)
    assert "/home/user" in out and "/tmp/.X11-unix/X" in out
    assert_nothing_of(out, needles)
    # what every X client of the desktop may read off its root window (the window manager's config file)
    props = sync(client, cid, "xprop -root")
    assert props.exit_code == 0 and "_OB_CONFIG_FILE" in props.stdout, props.stderr
    assert_nothing_of(props.stdout, needles)
    assert sync(client, cid, "unshare -U true").exit_code != 0


def test_the_terminal_is_held_the_same(server: Server, desktop: tuple[str, Path]) -> None:
    """The desktop's terminal (typed into, as a user would) sees no path of the server and may
    not make a user namespace either."""
    cid, workdir = desktop
    client = server.client()
    home = desktop_home(server, workdir)
    tag = secrets.token_hex(4)
    script = (f"{{ unshare -U true && echo NESTED-{tag}; tr '\\0' '\\n' </proc/1/cmdline; "
              f"cat /proc/self/mountinfo; env; }} > ~/iso-{tag}.txt 2>&1; echo done > ~/iso-{tag}.done\n")
    needles = [*server_paths(server), str(home), str(workdir)]
    c = client.computers
    assert c.hotkey(cid, keys=["alt", "tab"]).status == "success"  # openbox: the xterm behind the browser
    time.sleep(0.3)
    assert c.type(cid, text=script).status == "success"
    try:
        assert wait_until(lambda: (home / f"iso-{tag}.done").exists(), 15), "the terminal did not run the probe"
        out = (home / f"iso-{tag}.txt").read_text()
        assert "/home/user" in out and f"NESTED-{tag}" not in out, out
        assert_nothing_of(out, needles)
    finally:
        c.hotkey(cid, keys=["alt", "tab"])


def test_a_killed_x_server_leaves_nothing_in_tmp(server: Server) -> None:
    """An unprivileged Xvfb killed outright cannot remove its socket (nor may a later one of
    another user's: the directory is sticky): the desktop's end removes it."""
    client = server.client()
    before = {p for p in (server.data_dir / "run").resolve().glob("desktop-*")}
    comp = client.computers.create(kind="desktop")
    workdir = desktop_workdir(server, before)
    xvfb = desktop_pids(workdir)["Xvfb"]
    number = int(client.computers.exec.sync(comp.id, command="echo ${DISPLAY#:}").stdout)
    sock = Path(f"/tmp/.X11-unix/X{number}")  # (with -displayfd, Xvfb writes no lock file)
    assert sock.exists()
    os.kill(xvfb, signal.SIGKILL)
    assert wait_until(lambda: client.computers.retrieve(comp.id).status == "terminated", 10)
    assert wait_until(lambda: not sock.exists(), 5), f"{sock} outlived its X server"


def test_an_unprivileged_x_server_still_serves_root_shared_memory(x_server_owner: tuple[int, int]) -> None:
    """Driver level: the server's own XShm screenshots and XTest input work against an X server
    that is not root (MIT-SHM segments are made by the X server and passed as a descriptor)."""
    import asyncio

    from mss.linux.xshmgetimage import ShmStatus
    from Xlib.display import Display

    from opencone.drivers.desktop.screen import Screen
    from opencone.drivers.desktop.xinput import XInput
    from opencone.drivers.desktop.xserver import start_xvfb

    async def run() -> None:
        xserver = await start_xvfb(320, 240)
        try:
            uids, _gids = credentials(xserver.pid)
            assert uids == {x_server_owner[0]}, uids
            display = Display(xserver.name)
            try:
                screen = Screen(display, xserver.name)
                jpeg = screen.jpeg(80)
                assert jpeg.startswith(b"\xff\xd8")
                impl: Any = getattr(screen._grabber(), "_impl", None)
                assert impl is not None and impl.shm_status is ShmStatus.AVAILABLE, impl
                XInput(display).click(10, 10, "left", 1)
                screen.close()
            finally:
                display.close()
        finally:
            await xserver.terminate()

    asyncio.run(run())


@pytest.fixture
def x_server_owner() -> tuple[int, int]:
    """Who the desktop's X server runs as: the sandbox user when the server is root."""
    return (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())


# -- a server that is not root ------------------------------------------------------------------------

UNPRIVILEGED = 60123  # a uid and gid no one uses: the server runs as this, with no groups


@pytest.fixture(scope="module")
def unprivileged_server() -> Iterator[Server]:
    """A server started as an ordinary user: its sandbox runs as that user, not as 65534."""
    if os.geteuid() != 0:
        pytest.skip("starting a server as another user needs root")
    python = _interpreter_for_others()
    data = Path(tempfile.mkdtemp(prefix="opencone-unprivileged-"))
    try:
        os.chown(data, UNPRIVILEGED, UNPRIVILEGED)
        port, key = free_port(), f"test-{secrets.token_hex(8)}"
        log_path = data / "server.log"
        path = [str(Path(opencone.__file__).parents[1]), *site.getsitepackages()]  # this checkout, these packages
        env = {**os.environ, "HOME": str(data), "PYTHONPATH": os.pathsep.join(path), "OPENCONE_API_KEY": key,
               "OPENCONE_POOL_SIZE": "0", "OPENCONE_EGRESS_ALLOW": "127.0.0.1"}
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(
                [python, "-m", "opencone", "serve", "--port", str(port), "--data-dir", str(data / "data")],
                env=env, cwd=data, stdout=log_file, stderr=subprocess.STDOUT,
                user=UNPRIVILEGED, group=UNPRIVILEGED, extra_groups=[],
            )
        server = Server(f"http://127.0.0.1:{port}", key, data / "data", proc, log_path)
        try:
            deadline = time.monotonic() + 60
            while not _healthy(server):
                assert proc.poll() is None and time.monotonic() < deadline, server.log()
                time.sleep(0.1)
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _interpreter_for_others() -> str:
    """This Python, or the system's of the same version when this one is where another user may
    not go (a pyenv under /root)."""
    for candidate in (sys.executable, f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"):
        real = Path(os.path.realpath(candidate))
        if real.exists() and all(d.stat().st_mode & 0o001 for d in real.parents) and real.stat().st_mode & 0o001:
            return candidate
    pytest.skip("no Python that another user may run")


def _healthy(server: Server) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200
    return False


def test_a_server_that_is_not_root_holds_the_same(unprivileged_server: Server) -> None:
    """The sandbox's launcher runs as the server's own user there: the request's loader variables
    must not act on it, and its paths must not show inside, as for root."""
    server = unprivileged_server
    root = Path(server.run_dir) / "ws"  # (the sandbox runs as the server's user: no need to go elsewhere)
    client = server.client()
    comp = client.computers.create(kind="browser")
    try:
        assert sync(client, comp.id, "id -u").stdout == "65534\n"  # (mapped to the server's uid on the host)
        assert (root / comp.id).is_dir() and (root / comp.id).stat().st_uid == UNPRIVILEGED
        attack = Attack(client, comp.id, root / comp.id)
        try:
            for env in ({"LD_PRELOAD": f"{attack.library} {attack.inside_library}"}, {"LD_AUDIT": attack.library},
                        {"LD_LIBRARY_PATH": attack.library_dir},
                        {"LD_DEBUG": "all", "LD_DEBUG_OUTPUT": str(attack.host_marker) + "-debug"}):
                assert sync(client, comp.id, "/bin/true", env=env).exit_code == 0
                assert attack.ran_outside() == [], env
            assert set(attack.ran_inside()) == {"65534"}
        finally:
            attack.close()
        needles = [*server_paths(server, root), str(root / comp.id)]
        out = probe(client, comp.id, needles)
        # without mounting (root), a workspace is a plain directory: its path within its filesystem
        # is the root field of its mount; everything else must hold
        out = "\n".join(line for line in out.splitlines() if " /workspace " not in line)
        assert_nothing_of(out, needles)
        assert sync(client, comp.id, "unshare -U true").exit_code != 0
    finally:
        client.computers.delete(comp.id)
