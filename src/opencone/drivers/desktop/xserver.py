"""Start one Xvfb and make sure its display really answers.

``-displayfd`` lets Xvfb pick a free display number and write it once it
accepts connections. The raw-cost notes saw one start in 24 whose display
could not be opened, so each start is checked with an Xlib connect and
retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil

from Xlib.display import Display as XDisplay

from opencone.drivers.processes import die_with_parent, kill_group

log = logging.getLogger(__name__)

ATTEMPTS = 3


class XServerError(RuntimeError):
    pass


class XServer:
    def __init__(self, process: asyncio.subprocess.Process, number: int, executable: str) -> None:
        self.process = process
        self.number = number
        self.executable = executable

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


def _check(name: str) -> None:
    XDisplay(name).close()


async def _start_once(executable: str, width: int, height: int, timeout: float) -> XServer:
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            executable, "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x24",
            "-nolisten", "tcp", "-noreset",  # -noreset: no server reset when the last client leaves
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, pass_fds=(write_fd,),
            start_new_session=True, preexec_fn=die_with_parent,
        )
    except OSError as exc:
        os.close(read_fd)
        raise XServerError(f"cannot start Xvfb at {executable!r}: {exc}") from exc
    finally:
        os.close(write_fd)
    try:
        async with asyncio.timeout(timeout):
            number = await asyncio.to_thread(_read_number, read_fd)
            server = XServer(proc, number, executable)
            await asyncio.to_thread(_check, server.name)
        return server
    except BaseException:
        await kill_group(proc.pid, grace=0)
        raise
    finally:
        os.close(read_fd)


def _read_number(fd: int) -> int:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 64)
        if not chunk:
            raise XServerError("Xvfb exited before it reported a display number")
        data += chunk
    return int(data)


async def start_xvfb(width: int, height: int, executable: str | None = None, timeout: float = 10.0) -> XServer:
    exe = executable or shutil.which("Xvfb")
    if not exe:
        raise XServerError("Xvfb is not installed (Debian: apt-get install xvfb)")
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
