"""The bubblewrap command line of one sandboxed command.

What a command sees: the host's system directories read-only, its computer's
own ``/workspace`` writable, a private ``/tmp``, fresh ``/proc`` and ``/dev``,
and nothing else of the host (not the server's data dir, not other
workspaces). It runs in its own user, pid, ipc, uts, net and cgroup
namespaces with no capabilities, as uid/gid 65534.
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


def command_line(workspace: Path, command: str, cwd: str = WORKSPACE, *, network: bool = False,
                 x_display: int | None = None, bwrap: str = "bwrap",
                 binds: Sequence[tuple[Path, str]] = ()) -> list[str]:
    """``command`` in the shell. ``binds``: more writable host directories, each at its path
    inside (a desktop's home)."""
    return [*_sandbox(bwrap, workspace, network, x_display, binds), "--chdir", cwd, "/bin/sh", "-c", command]


def program_line(workspace: Path | None, argv: Sequence[str], cwd: str, *, network: bool, x_display: int | None,
                 bwrap: str = "bwrap", binds: Sequence[tuple[Path, str]] = ()) -> list[str]:
    """``argv`` itself in the same sandbox (a browser), with no /workspace when ``workspace`` is None."""
    return [*_sandbox(bwrap, workspace, network, x_display, binds), "--chdir", cwd, *argv]


def _sandbox(bwrap: str, workspace: Path | None, network: bool, x_display: int | None,
             binds: Sequence[tuple[Path, str]]) -> list[str]:
    args = [
        bwrap, "--unshare-all", *(["--share-net"] if network else []),
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
