"""A size cap on each computer's ``/workspace``: its own small filesystem.

A workspace is a directory on the server's disk; without a cap, one computer's
``yes > file`` fills that disk for every computer and for the server's own
database. So, where the server may mount (root, loop devices), a workspace is a
sparse file holding an ext4 filesystem of the configured size, loop-mounted on
the workspace directory: writing past it fails with "No space left on device"
inside that computer only, and the file takes on the disk only what is written.
Making one costs about 25 ms (mkfs, mount), paid once per computer.

The filesystem is made with the sandbox user as the owner of its root and no
reserved blocks, and mounted ``nosuid,nodev``. A server that may not mount logs
it at start and keeps plain directories, as for the cgroup caps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

IMAGE_SUFFIX = ".img"


class DiskError(OSError):
    pass


class WorkspaceDisks:
    """Makes and removes capped filesystems for workspace directories."""

    def __init__(self, size_mb: int, owner: tuple[int, int] | None) -> None:
        self.size_mb = size_mb
        self._owner = owner
        self._mkfs = shutil.which("mkfs.ext4")
        self.problem: str | None = None if self._mkfs else "mkfs.ext4 (e2fsprogs) is not installed"

    def check(self, root: Path) -> None:
        """Make and remove a tiny one in ``root``: sets ``problem`` when this server cannot."""
        if self.problem is not None:
            return
        probe = root / ".probe"
        try:
            probe.mkdir(parents=True, exist_ok=True)
            self.make(probe, size_mb=8)
        except OSError as exc:
            self.problem = str(exc)
        finally:
            self.remove(probe)

    def make(self, mountpoint: Path, size_mb: int | None = None) -> None:
        """A fresh filesystem of ``size_mb`` (default: the cap) mounted on the empty ``mountpoint``."""
        assert self._mkfs is not None
        image = mountpoint.with_name(mountpoint.name + IMAGE_SUFFIX)
        with open(image, "wb") as f:
            f.truncate((size_mb or self.size_mb) * 1024 * 1024)
        options = "lazy_itable_init=1,lazy_journal_init=1"
        if self._owner is not None:
            options += f",root_owner={self._owner[0]}:{self._owner[1]}"
        try:
            _run([self._mkfs, "-q", "-F", "-m", "0", "-O", "^has_journal", "-E", options, str(image)])
            _run(["mount", "-o", "loop,nosuid,nodev", str(image), str(mountpoint)])
        except BaseException:
            image.unlink(missing_ok=True)
            raise
        with contextlib.suppress(OSError):
            (mountpoint / "lost+found").rmdir()
        mountpoint.chmod(0o700)

    def remove(self, mountpoint: Path) -> None:
        """Unmount (lazily if something still holds it) and delete the file behind it."""
        if os.path.ismount(mountpoint):
            try:
                _run(["umount", str(mountpoint)])
            except OSError:
                with contextlib.suppress(OSError):
                    _run(["umount", "-l", str(mountpoint)])
        mountpoint.with_name(mountpoint.name + IMAGE_SUFFIX).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


def unmount_all_under(root: Path) -> None:
    """Lazily unmount whatever is mounted below ``root`` (a crashed server's workspaces), deepest first."""
    prefix = str(root).rstrip("/") + "/"
    points = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")  # (spaces come as \040)
            if point.startswith(prefix):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        with contextlib.suppress(OSError):
            _run(["umount", "-l", point])


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DiskError(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        raise DiskError(f"{' '.join(argv[:2])}: {done.stderr.decode(errors='replace').strip() or done.returncode}")
