"""Start one Xvfb and make sure its display really answers.

``-displayfd`` lets Xvfb pick a free display number and write it once it
accepts connections. The raw-cost notes saw one start in 24 whose display
could not be opened, so each start is checked with an Xlib connect and
retried.

Xvfb parses whatever the desktop's programs send it (a tenant's), so it does
not run as root: as the sandbox user when the server is root
(``sandbox_ids``), else as the server's user, with an environment of its own.
Nothing the server does with it needs more: its socket takes any local client,
MIT-SHM segments for screenshots are made by Xvfb and passed to the server as
a descriptor (mss), and the server, root, may signal it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from pathlib import Path

from Xlib.display import Display as XDisplay

from opencone.drivers.pipes import FdReader
from opencone.drivers.processes import kill_group
from opencone.drivers.sandbox.bwrap import BASE_ENV
from opencone.drivers.sandbox.workspaces import sandbox_ids
from opencone.drivers.spawn import Spawned, spawn

log = logging.getLogger(__name__)

ATTEMPTS = 3
SOCKET_DIR = "/tmp/.X11-unix"


class XServerError(RuntimeError):
    pass


class XServer:
    def __init__(self, process: Spawned, number: int, executable: str) -> None:
        self.process = process
        self.number = number
        self.executable = executable
        self._socket_id: tuple[int, int, int] | None = None

    @property
    def name(self) -> str:
        return f":{self.number}"

    @property
    def pid(self) -> int:
        return self.process.pid

    async def terminate(self) -> None:
        # SIGTERM (about 20 ms) lets Xvfb remove its lock file and socket in /tmp
        await kill_group(self.process.pid, grace=1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.process.wait(), 2)
        if self.process.returncode is not None:
            self._remove_socket()

    @property
    def socket(self) -> Path:
        return Path(SOCKET_DIR) / f"X{self.number}"

    def note_socket(self) -> None:
        """Remember which file the socket is, for ``_remove_socket``."""
        with contextlib.suppress(OSError):
            st = self.socket.stat()
            self._socket_id = (st.st_dev, st.st_ino, st.st_ctime_ns)

    def _remove_socket(self) -> None:
        """The socket file of a killed Xvfb (it had no time to remove it, and a later Xvfb of
        another user may not: /tmp/.X11-unix is sticky), unless it is already another's: a later
        Xvfb of the same display removes a dead one's and makes its own."""
        with contextlib.suppress(OSError):
            st = self.socket.stat()
            if (st.st_dev, st.st_ino, st.st_ctime_ns) == self._socket_id:
                self.socket.unlink()


def _check(name: str) -> None:
    XDisplay(name).close()


def _socket_dir() -> None:
    """The X sockets' directory, root's and 1777 as the X servers expect: one that is not root
    cannot make it so (and an X server of another user's must not own it)."""
    if os.geteuid() == 0 and not os.path.isdir(SOCKET_DIR):
        with contextlib.suppress(FileExistsError):
            os.mkdir(SOCKET_DIR)
        os.chmod(SOCKET_DIR, 0o1777)


async def _start_once(executable: str, width: int, height: int, timeout: float) -> XServer:
    read_fd, write_fd = os.pipe()
    try:
        proc = await spawn(
            [executable, "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x24",
             "-nolisten", "tcp", "-noreset"],  # -noreset: no server reset when the last client leaves
            pass_fds=(write_fd,), env={"PATH": BASE_ENV["PATH"]}, ids=sandbox_ids(),
        )
    except BaseException as exc:
        os.close(read_fd)
        if isinstance(exc, OSError):
            raise XServerError(f"cannot start Xvfb at {executable!r}: {exc}") from exc
        raise
    finally:
        os.close(write_fd)
    try:
        async with asyncio.timeout(timeout):
            number = await _read_number(read_fd)
            server = XServer(proc, number, executable)
            server.note_socket()
            await asyncio.to_thread(_check, server.name)
        return server
    except BaseException:
        await kill_group(proc.pid, grace=0)
        raise


async def _read_number(fd: int) -> int:
    """The display number Xvfb writes to ``fd`` (which this owns and closes). Read on the loop,
    not in a thread: a thread still blocked in ``read`` when a timeout closes the descriptor
    would read whatever file is next given that number."""
    reader = asyncio.StreamReader(limit=64)
    transport = FdReader(asyncio.get_running_loop(), fd, asyncio.StreamReaderProtocol(reader))
    try:
        line = await reader.readline()
    finally:
        transport.close()
    if not line.endswith(b"\n"):
        raise XServerError("Xvfb exited before it reported a display number")
    return int(line)


async def start_xvfb(width: int, height: int, executable: str | None = None, timeout: float = 10.0) -> XServer:
    exe = executable or shutil.which("Xvfb")
    if not exe:
        raise XServerError("Xvfb is not installed (Debian: apt-get install xvfb)")
    _socket_dir()
    error: BaseException | None = None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await _start_once(exe, width, height, timeout)
        except (XServerError, OSError, TimeoutError, ValueError) as exc:
            error = exc
            log.warning("Xvfb start %d/%d failed: %s", attempt, ATTEMPTS, exc)
        except Exception as exc:  # Xlib's connect errors are plain Exceptions
            error = exc
            log.warning("Xvfb display %d/%d did not answer: %s", attempt, ATTEMPTS, exc)
    raise XServerError(f"could not start Xvfb after {ATTEMPTS} attempts: {error}")
