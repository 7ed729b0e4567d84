"""The programs of a desktop session: the window manager and a terminal (in the sandbox).

Each runs in its own session (so its whole group can be killed) with a
parent-death signal. openbox runs unprivileged, as the X server does
(xserver.py): as the sandbox user when the server is root. It reads its config
from a memfd, as no file the server could write is sure to be reachable by
that user (a 0700 data dir), and as the file's name is published to every X
client (``_OB_CONFIG_FILE`` on the root window): no path of the host's there.
The desktop's pidfile names it for clean-up after a crash.

The config has one workspace (a wheel click on the background never switches
desktops) and no mouse bindings on application windows: such a
binding makes openbox grab every click and freeze the pointer until it has
looked at it, so clicks would reach applications late, after the action
returned. XInput focuses the clicked window itself instead. Every key binding
holds Alt, so XInput waits for openbox after a chord only when it holds Alt
(WM_CHORD_MODIFIERS is read from the config below).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from opencone.drivers.netns import NetNamespace
from opencone.drivers.sandbox import Sandbox, display_number
from opencone.drivers.sandbox.bwrap import BASE_ENV, HOME_DIR, environment
from opencone.drivers.sandbox.workspaces import sandbox_ids
from opencone.drivers.spawn import Spawned, spawn

OPENBOX_RC = """<?xml version="1.0" encoding="UTF-8"?>
<openbox_config xmlns="http://openbox.org/3.4/rc">
  <focus><focusNew>yes</focusNew><followMouse>no</followMouse></focus>
  <placement><policy>Smart</policy></placement>
  <desktops><number>1</number><firstdesk>1</firstdesk></desktops>
  <keyboard>
    <keybind key="A-F4"><action name="Close"/></keybind>
    <keybind key="A-Tab"><action name="NextWindow"><finalactions>
      <action name="Focus"/><action name="Raise"/><action name="Unshade"/></finalactions></action></keybind>
  </keyboard>
  <mouse>
    <dragThreshold>1</dragThreshold>
    <doubleClickTime>500</doubleClickTime>
    <context name="Frame">
      <mousebind button="A-Left" action="Press"><action name="Focus"/><action name="Raise"/></mousebind>
      <mousebind button="A-Left" action="Drag"><action name="Move"/></mousebind>
      <mousebind button="A-Right" action="Drag"><action name="Resize"/></mousebind>
    </context>
    <context name="Titlebar">
      <mousebind button="Left" action="Drag"><action name="Move"/></mousebind>
      <mousebind button="Left" action="DoubleClick"><action name="ToggleMaximize"/></mousebind>
    </context>
    <context name="Titlebar Top Right Bottom Left TLCorner TRCorner BRCorner BLCorner">
      <mousebind button="Left" action="Press"><action name="Focus"/><action name="Raise"/></mousebind>
    </context>
    <context name="Top"><mousebind button="Left" action="Drag"><action name="Resize"><edge>top</edge></action>
      </mousebind></context>
    <context name="Left"><mousebind button="Left" action="Drag"><action name="Resize"><edge>left</edge></action>
      </mousebind></context>
    <context name="Right"><mousebind button="Left" action="Drag"><action name="Resize"><edge>right</edge></action>
      </mousebind></context>
    <context name="Bottom"><mousebind button="Left" action="Drag"><action name="Resize"><edge>bottom</edge>
      </action></mousebind></context>
    <context name="BRCorner"><mousebind button="Left" action="Drag"><action name="Resize"/></mousebind></context>
    <context name="Close"><mousebind button="Left" action="Click"><action name="Close"/></mousebind></context>
    <context name="Maximize"><mousebind button="Left" action="Click"><action name="ToggleMaximize"/></mousebind>
    </context>
    <context name="Iconify"><mousebind button="Left" action="Click"><action name="Iconify"/></mousebind></context>
  </mouse>
  <applications>
    <!-- the desktop's browser fills the screen and follows it when the screen is resized -->
    <application class="Chromium*" type="normal"><decor>no</decor><maximized>yes</maximized></application>
  </applications>
</openbox_config>
"""


_MODIFIER_NAMES = {"A": "Alt", "M": "Alt", "C": "Control", "S": "Shift", "W": "Meta"}


def _wm_chord_modifiers(rc: str) -> frozenset[str] | None:
    """The modifiers every key binding of ``rc`` holds (canonical names), or None when one holds none."""
    found: set[str] = set()
    for key in re.findall(r'<keybind key="([^"]+)"', rc):
        mods = key.split("-")[:-1]
        if not mods:
            return None
        found.update(_MODIFIER_NAMES.get(m, m) for m in mods)
    return frozenset(found)


# Only a chord holding one of these can be a window manager shortcut (XInput waits for openbox
# on those alone); None: any chord can
WM_CHORD_MODIFIERS = _wm_chord_modifiers(OPENBOX_RC)


class AppError(RuntimeError):
    pass


def x_env(display: str, home: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY", "XAUTHORITY")}
    env["DISPLAY"] = display
    if "UTF-8" not in env.get("LC_ALL", env.get("LANG", "")).upper().replace("UTF8", "UTF-8"):
        env["LANG"] = "C.UTF-8"  # a terminal must take é and ж as the characters they are
        env.pop("LC_ALL", None)
    if home is not None:
        env["HOME"] = str(home)
    return env


async def _spawn(cmd: list[str], env: dict[str, str], cwd: Path | None = None, *, pass_fds: tuple[int, ...] = (),
                 ids: tuple[int, int] | None = None) -> Spawned:
    """``cmd`` in a session of its own that dies with the server; as ``ids`` (uid, gid, and no
    other group) when given."""
    try:
        return await spawn(cmd, env=env, cwd=cwd, pass_fds=pass_fds, ids=ids)
    except OSError as exc:
        raise AppError(f"cannot start {cmd[0]}: {exc}") from exc


def _which(name: str, package: str) -> str:
    exe = shutil.which(name)
    if not exe:
        raise AppError(f"{name} is not installed (Debian: apt-get install {package})")
    return exe


async def start_openbox(display: str, workdir: Path) -> tuple[Spawned, str]:
    """openbox on ``display``, unprivileged; ``workdir`` (the desktop's run dir) is its home only
    when it runs as the server's own user (a server that is not root)."""
    exe = _which("openbox", "openbox")
    ids = sandbox_ids()
    env = {"PATH": BASE_ENV["PATH"], "LANG": "C.UTF-8", "DISPLAY": display,
           "HOME": "/nonexistent" if ids is not None else str(workdir)}  # (as nobody's: it keeps no state)
    rc = os.memfd_create("openbox-rc")  # (openbox's copy is not close-on-exec: it reads it again on a restart)
    try:
        os.write(rc, OPENBOX_RC.encode())
        os.lseek(rc, 0, os.SEEK_SET)
        proc = await _spawn([exe, "--config-file", f"/proc/self/fd/{rc}"], env, pass_fds=(rc,), ids=ids)
    finally:
        os.close(rc)
    return proc, exe


async def start_terminal(sandbox: Sandbox, sandbox_id: str, display: str, env: dict[str, str] | None = None,
                         netns: NetNamespace | None = None) -> tuple[Spawned, str]:
    """A terminal on the desktop, inside the computer's sandbox (drivers/sandbox): its shell and
    everything started from it see and may do exactly what an exec command may (the same
    ``/workspace``, caps and network), plus the desktop's home at ``/home/user``. A terminal on
    the host, even as an unprivileged user, could read every computer's workspace (they all
    belong to the sandbox uid) and reach the server's loopback ports."""
    exe = _which("xterm", "xterm")
    await sandbox.prepare(sandbox_id, "home")  # (bound at /home/user wherever the sandbox runs)
    await sandbox.prepare(sandbox_id)
    x_display = display_number(display)
    env = environment({**(env or {}), "HOME": HOME_DIR, "SHELL": shutil.which("bash") or "/bin/sh",
                       "USER": "nobody", "LOGNAME": "nobody"}, x_display)
    launch = sandbox.launch(sandbox_id, f"exec {exe} -geometry 100x30+40+40", cwd=HOME_DIR, env=env,
                            x_display=x_display, netns=netns)
    try:
        proc = await _spawn(launch.argv, launch.env, cwd=Path("/"), pass_fds=launch.pass_fds)
    finally:
        launch.close()
    try:
        sandbox.cap(sandbox_id, proc.pid)
    except BaseException:
        await proc.wait()  # (cap killed it)
        raise
    return proc, sandbox.executable
