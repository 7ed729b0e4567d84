"""Start bubblewrap with nothing of the request outside the sandbox.

setpriv and bubblewrap run on the host as the server's user (root, by
default) until the sandbox is built, so whatever reaches them is input to host
code: a request's ``LD_PRELOAD`` of a library the command had just built in
its workspace ran that library as root. So they get a fixed environment of
their own (``LAUNCH_ENV``), and bubblewrap its options, the command's
environment and the command itself through a memfd (``--args FD``): the
host paths it mounts from, the request's variables and its text are on no
command line and in no environment outside the sandbox (the host's process
list is readable by every user of the host).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from opencone.drivers.sandbox.bwrap import BASE_ENV

# all that setpriv and bubblewrap get: no variable of a request's or of the server's own
LAUNCH_ENV = {"PATH": BASE_ENV["PATH"], "LANG": "C.UTF-8"}


@dataclass(slots=True)
class Launch:
    """What starts one sandbox: ``argv`` run with ``env``, with ``fd`` (bubblewrap's options)
    passed on (``pass_fds``); ``close`` it once the process has started."""

    argv: list[str]
    fd: int
    env: dict[str, str] = field(default_factory=lambda: dict(LAUNCH_ENV))

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self.fd,)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def through_descriptor(prefix: Sequence[str], bwrap: str, options: Sequence[str], command: Sequence[str]) -> Launch:
    """``prefix`` (setpriv…), then ``bwrap --args FD command``, ``options`` in the memfd FD.

    bubblewrap reads the descriptor to its end and closes it before the command runs, so the
    command inherits none of it. A memfd, not a pipe: any size is written at once, without a
    reader on the other end."""
    fd = os.memfd_create("bwrap-args")  # (close-on-exec: only the child given it in pass_fds has it)
    try:
        data = memoryview(b"".join(os.fsencode(arg) + b"\0" for arg in options))
        while data:
            data = data[os.write(fd, data):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return Launch([*prefix, bwrap, "--args", str(fd), *command], fd)
