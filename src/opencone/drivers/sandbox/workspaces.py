"""The host directories behind each computer's ``/workspace``.

bubblewrap runs as the sandbox uid (running it as root would map the sandbox
user to host root, which can read root-only files such as /etc/shadow), so
that uid must be able to walk down to the workspace. The default place is
``<run_dir>/ws``; when a parent of the run dir is closed to other users (a
0700 home or pytest's tmp dir), workspaces go to a private directory in the
system temp dir instead, named after the run dir so a restarted server finds
its leftovers.

Where the server may mount, a workspace and a desktop's home are each a
filesystem of their own (disk.py): besides the size cap, what a sandbox
sees of such a bind in /proc/self/mountinfo is a loop device and ``/``, not
the host path behind it (a plain directory shows its path within the host's
filesystem there).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

import psutil

from opencone.drivers.processes import processes_mentioning, processes_under
from opencone.drivers.sandbox.bwrap import SANDBOX_GID, SANDBOX_UID
from opencone.drivers.sandbox.disk import WorkspaceDisks, unmount_all_under

log = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
OWN_FILESYSTEM = ("home",)  # the parts bound into every sandbox of theirs besides /workspace


def _walkable(path: Path, uid: int, gid: int) -> bool:
    """Whether ``uid`` may traverse every existing directory from / down to ``path``."""
    for d in [*reversed(path.parents), path]:
        try:
            st = d.stat()
        except FileNotFoundError:
            return True  # we create the rest, 0711
        if st.st_uid == uid:
            bit = 0o100
        elif st.st_gid == gid:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return False
    return True


def sandbox_ids() -> tuple[int, int] | None:
    """The host uid/gid bwrap runs as: the sandbox user when we are root, else ourselves (None)."""
    return (SANDBOX_UID, SANDBOX_GID) if os.geteuid() == 0 else None


def choose_root(run_dir: Path, override: Path | None = None) -> Path:
    if override is not None:
        return override.resolve()
    ids = sandbox_ids()
    preferred = run_dir.resolve() / "ws"
    if ids is None or _walkable(preferred, *ids):
        return preferred
    tag = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"opencone-ws-{tag}"


class Workspaces:
    def __init__(self, run_dir: Path, override: Path | None = None, disks: WorkspaceDisks | None = None) -> None:
        self._run_dir = run_dir
        self._override = override
        self.root = choose_root(run_dir, override)
        self.disks = disks  # each workspace its own capped filesystem (disk.py), where the server may mount

    def reset(self) -> int:
        """Kill sandboxes a crashed server left under the root and wipe it; return the kill count."""
        self.root = choose_root(self._run_dir, self._override)  # again: the run dir exists by now
        victims = processes_under(self.root)  # (browsers: their profile is here)
        known = {proc.pid for proc in victims}
        victims += [p for p in processes_mentioning(self.marker) if p.pid not in known]  # (commands)
        for proc in victims:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(victims, timeout=3)
        if os.path.lexists(self.root):
            self._check_root()
            unmount_all_under(self.root)
            shutil.rmtree(self.root, ignore_errors=True)
        if self.disks is not None:
            self._make_root()
            self.disks.check(self.root)
            if self.disks.problem:
                log.warning("workspaces have no size cap: %s", self.disks.problem)
                self.disks = None
        return len(victims)

    def _check_root(self) -> None:
        # in a shared temp dir: never follow or trust a path someone else made
        st = self.root.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise PermissionError(f"{self.root} is not a directory of ours; remove it or set "
                                  "OPENCONE_EXEC_WORKSPACE_DIR")

    def _make_root(self) -> None:
        with contextlib.suppress(FileExistsError):
            self.root.mkdir(parents=True)
        self._check_root()
        self.root.chmod(0o711)  # walkable by the sandbox uid, not listable; /tmp's sticky bit keeps it ours

    def close(self) -> None:
        """At shutdown, every computer has ended: what is left under the root is what a background
        clean-up had no time for (a browser's profile, removed after its processes are reaped).
        Remove it all, mounts first; a root in the shared temp dir must not pile up."""
        if not self.root.is_dir():
            return
        with contextlib.suppress(OSError):
            self._check_root()
            unmount_all_under(self.root)  # (none, unless a computer's end failed)
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def marker(self) -> str:
        """What names this server's sandboxed commands on their command line (their pid 1's name),
        in place of a path: it shows inside. The same for a server restarted on the same run dir."""
        return "opencone-sandbox-" + hashlib.sha256(str(self.root).encode()).hexdigest()[:12]

    def path(self, computer_id: str) -> Path:
        if not _SAFE_ID.match(computer_id):
            raise ValueError(f"unsafe computer id {computer_id!r}")
        return self.root / computer_id

    def part(self, computer_id: str, name: str) -> Path:
        """Another directory of the sandbox beside its workspace (a desktop's home, its browser's
        profile): here, where the sandbox uid can reach it, not in the run dir. (A ``.`` is in
        no id: no clash with another computer's.)"""
        return self.path(computer_id).with_suffix(f".{name}")

    def home(self, computer_id: str) -> Path:
        """A desktop's home: its terminal's and its browser's ``/home/user``."""
        return self.part(computer_id, "home")

    def ensure(self, computer_id: str, name: str | None = None) -> Path:
        """The workspace (or the part ``name``), made if missing: 0700, the sandbox uid's; the
        workspace and a home each on a filesystem of its own, of the capped size, where the
        server may mount."""
        path = self.part(computer_id, name) if name else self.path(computer_id)
        if not path.is_dir():
            if not self.root.is_dir():
                self._make_root()
            path.mkdir(mode=0o700, exist_ok=True)
            ids = sandbox_ids()
            if ids is not None:
                os.chown(path, *ids)
            if (name is None or name in OWN_FILESYSTEM) and self.disks is not None:
                try:
                    self.disks.make(path)
                except OSError:
                    path.rmdir()
                    raise
        return path

    def remove(self, computer_id: str) -> None:
        workspace = self.path(computer_id)
        if self.disks is not None:
            for mounted in (workspace, *(self.part(computer_id, name) for name in OWN_FILESYSTEM)):
                self.disks.remove(mounted)
        for path in [workspace, *self.root.glob(f"{workspace.name}.*")]:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
