"""The bubblewrap options of one sandboxed command or program.

What a command sees: the host's system directories read-only, its computer's
own ``/workspace`` writable, a private ``/tmp``, fresh ``/proc`` and ``/dev``,
and nothing else of the host (not the server's data dir, not other
workspaces). It runs in its own user, pid, ipc, uts, net and cgroup
namespaces with no capabilities, as uid/gid 65534.

A shell command (exec, a desktop's terminal) is held tighter than a program
(a browser, whose own sandbox needs user namespaces):

- it may make no user namespace of its own (``--disable-userns``): a nested
  one would give it every capability over a namespace of its own, and the
  kernel's attack surface that comes with them;
- it gets its own environment only (``--clearenv``, then ``--setenv``): the
  request's variables never reach bubblewrap's environment;
- bubblewrap is not its pid 1 (``--as-pid-1``): bubblewrap's memory holds the
  host paths it mounted from, and a process of the sandbox may read the
  memory of its pid 1 (same user, dumpable). pid 1 is a shell exec'd afresh
  (``PID1``), which runs the command in a shell of its own: pid 1 of a
  namespace cannot be killed from inside it, and ``kill -9 $$`` must work.

runner.py hands these options to bubblewrap through a descriptor, the command
among them (``COMMAND_VAR``), so that none of it is on a command line.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path

SANDBOX_UID = SANDBOX_GID = 65534
WORKSPACE = "/workspace"
HOME_DIR = "/home/user"  # a desktop's home, in its sandbox: its terminal's and browser's HOME
# Only these host paths are visible; /run, /var, /home, /root and the data dir are not.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc", "/opt")
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": WORKSPACE,
    "LANG": "C.UTF-8",
    "TERM": "xterm-256color",
}
FONT_CACHE = "/var/cache/fontconfig"
_DISPLAY = re.compile(r"^[\w.-]*:(\d+)(?:\.\d+)?$")


@functools.cache
def system_mounts() -> tuple[str, ...]:
    """Read-only binds of the system dirs; merged-/usr symlinks (``/bin -> usr/bin``) stay symlinks."""
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return tuple(args)


def display_number(x_display: str | None) -> int | None:
    """``":5"`` or ``":5.0"`` -> 5; None when there is no (local) X display."""
    if not x_display:
        return None
    match = _DISPLAY.match(x_display)
    return int(match.group(1)) if match else None


COMMAND_VAR = "OPENCONE_COMMAND"  # how the command reaches pid 1: in its environment, not on a command line
# pid 1 of a command's sandbox: fd 9 carries the command's stderr, its own goes nowhere (a shell
# reports a child killed by a signal: "Killed" is not the command's output); it exits as the
# command did (128 + the signal's number when a signal ended it)
PID1 = (f'exec 9>&2 2>/dev/null; c=${COMMAND_VAR}; unset {COMMAND_VAR}; '
        '/bin/sh -c "$c" 2>&9 9>&-; exit $?')


def command_options(workspace: Path, command: str, cwd: str, env: dict[str, str], *, network: bool,
                    x_display: int | None, binds: Sequence[tuple[Path, str]] = ()) -> list[str]:
    """Every option of a shell command's sandbox, ``command`` and its whole environment ``env``
    among them: what bubblewrap reads from ``--args``. ``binds``: more writable host
    directories, each at its path inside (a desktop's home)."""
    setenv = [arg for key, value in env.items() for arg in ("--setenv", key, value)]
    return [*_sandbox(workspace, network, x_display, binds), "--unshare-user", "--disable-userns", "--as-pid-1",
            "--clearenv", *setenv, "--setenv", COMMAND_VAR, command, "--chdir", cwd]


def pid1(marker: str) -> list[str]:
    """The command bubblewrap runs as pid 1 (``PID1``), named ``marker``: what a later server
    looks for to find sandboxes a crashed one left (it is not a path: it shows inside)."""
    return ["/bin/sh", "-c", PID1, marker]


def command_line(workspace: Path, command: str, cwd: str = WORKSPACE, *, network: bool = False,
                 x_display: int | None = None, bwrap: str = "bwrap", binds: Sequence[tuple[Path, str]] = (),
                 env: dict[str, str] | None = None, marker: str = "opencone-sandbox") -> list[str]:
    """``command`` in the shell, every option on the command line (what bench/ runs raw; the
    server passes the options through a descriptor: runner.py). ``env``: the command's whole
    environment (``environment``)."""
    env = environment({}, x_display) if env is None else env
    return [bwrap, *command_options(workspace, command, cwd, env, network=network, x_display=x_display, binds=binds),
            *pid1(marker)]


def program_line(workspace: Path | None, argv: Sequence[str], cwd: str, *, network: bool, x_display: int | None,
                 bwrap: str = "bwrap", binds: Sequence[tuple[Path, str]] = ()) -> list[str]:
    """``argv`` itself in the same sandbox (a browser), with no /workspace when ``workspace`` is None.
    It keeps user namespaces (Chromium's own sandbox makes them) and the environment it is started with."""
    return [bwrap, *_sandbox(workspace, network, x_display, binds), "--chdir", cwd, *argv]


def _sandbox(workspace: Path | None, network: bool, x_display: int | None,
             binds: Sequence[tuple[Path, str]]) -> list[str]:
    args = [
        "--unshare-all", *(["--share-net"] if network else []),
        "--die-with-parent",  # the sandbox dies with the server
        "--new-session",  # no TIOCSTI into a terminal of ours
        "--cap-drop", "ALL", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID),
        *system_mounts(), "--ro-bind-try", FONT_CACHE, FONT_CACHE,  # (else every program builds its own)
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
        *(["--bind", str(workspace), WORKSPACE] if workspace is not None else []),
    ]
    for host, inside in binds:
        args += ["--bind", str(host), inside]
    if x_display is not None:
        # only this computer's X socket: binding all of /tmp/.X11-unix would open every desktop
        sock = f"/tmp/.X11-unix/X{x_display}"
        args += ["--bind-try", sock, sock]
    return [*args, "--remount-ro", "/"]


def environment(env: dict[str, str], x_display: int | None) -> dict[str, str]:
    """The command's environment: a minimal base, DISPLAY on desktops, the request's env on top."""
    base = dict(BASE_ENV)
    if x_display is not None:
        base["DISPLAY"] = f":{x_display}"
    return {**base, **env}
