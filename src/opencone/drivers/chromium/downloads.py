"""A browser's downloads, kept in its computer's downloads directory, and files put into
its file inputs.

Chromium is told once, at launch, to save every download into the computer's own
directory (``Browser.setDownloadBehavior``, ``allowAndName``, ``eventsEnabled``) on a CDP
session of the server's that stays open for the events. The directory is inside the
browser's sandbox (a browser computer's profile; a desktop's ``~/Downloads``), so it is
per computer and removed with it. A CDP client cannot send downloads elsewhere
(core/cdp_policy.py rewrites its ``downloadPath`` to this directory). Files are saved
under the download's guid (``allowAndName``, as Playwright's clients ask too: ``allow``
would overwrite a file of the same name), and a completed download is renamed to the
name the page suggested, ``name (1).ext`` if that is taken, as a desktop browser does. Each completed download is a
``file_downloaded`` event: name, size, path (relative to the downloads dir), url.

Uploads into a page: the file (already opened safely by the services) is copied into a
fresh directory inside the browser's profile, which the browser sees at the same path
in its sandbox, and handed to Playwright's ``set_input_files``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, CDPSession

from opencone.drivers import confined

log = logging.getLogger(__name__)

STAGING = "opencone-uploads"  # in the profile: what file inputs were given
_STAGED_KEPT = 8  # upload_file copies kept per browser (a page reads its File later, at submit)


@dataclass(frozen=True, slots=True)
class DownloadDir:
    """A computer's downloads directory: where the server finds it, and the same directory as
    the browser sees it in its sandbox (the same path for a browser computer's profile;
    ``/home/user/Downloads`` for a desktop's home)."""

    host: Path
    seen_as: str

    def to_host(self, browser_path: str) -> Path | None:
        """A path the browser named, as the server finds it; None if it is not in this directory."""
        rel = os.path.relpath(os.path.normpath(browser_path), self.seen_as)
        if rel == "." or rel.startswith(".."):
            return None
        return self.host / rel


def _owner_of(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


def _ensure(where: DownloadDir) -> None:
    """The directory, made with its parent's owner (the sandbox's user: the browser writes there)."""
    if not where.host.is_dir():
        where.host.mkdir(mode=0o755, exist_ok=True)
        os.chown(where.host, *_owner_of(where.host.parent))


@dataclass(slots=True)
class _Pending:
    url: str
    suggested: str


class Downloads:
    """One browser's downloads: the behaviour set at launch, the events turned into ``file_downloaded``."""

    def __init__(self, where: DownloadDir, emit: Callable[..., None]) -> None:
        self.where = where
        self._emit = emit
        self._session: CDPSession | None = None
        self._pending: dict[str, _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, browser: Browser) -> None:
        await asyncio.to_thread(_ensure, self.where)
        session = await browser.new_browser_cdp_session()
        session.on("Browser.downloadWillBegin", self._began)
        session.on("Browser.downloadProgress", self._progress)
        await session.send("Browser.setDownloadBehavior", {
            "behavior": "allowAndName", "downloadPath": self.where.seen_as, "eventsEnabled": True})
        self._session = session

    def _began(self, params: dict[str, Any]) -> None:
        guid = params.get("guid")
        if isinstance(guid, str):
            self._pending[guid] = _Pending(str(params.get("url", "")), str(params.get("suggestedFilename", "")))

    def _progress(self, params: dict[str, Any]) -> None:
        state, guid = params.get("state"), params.get("guid")
        if state == "inProgress" or not isinstance(guid, str):
            return
        pending = self._pending.pop(guid, None)
        if state != "completed" or pending is None:
            return
        task = asyncio.get_running_loop().create_task(self._completed(guid, pending, params.get("filePath")))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _completed(self, guid: str, pending: _Pending, file_path: Any) -> None:
        host = self.where.to_host(file_path) if isinstance(file_path, str) and file_path else None
        if host is None:
            host = self.where.host / guid  # (allowAndName without a filePath in the event)
        try:
            name, size = await asyncio.to_thread(self._settle, host, guid, pending.suggested)
        except (OSError, confined.PathRefused, confined.NotThere, confined.NotAFile) as exc:
            log.info("download %s finished, but its file is not in the downloads dir: %s", guid, exc)
            return
        self._emit("file_downloaded", name=name.rpartition("/")[2], path=name, size=size, url=pending.url,
                   dir="downloads")

    def _settle(self, host: Path, guid: str, suggested: str) -> tuple[str, int]:
        """The file's path in the downloads dir (renamed from its guid to ``suggested``) and its size."""
        rel = host.relative_to(self.where.host).as_posix()
        parts = confined.split(rel)
        with confined.directory(self.where.host, parts[:-1]) as parent:
            name = parts[-1]
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if confined.kind_of(st.st_mode) != "file":
                raise confined.NotAFile(f"{rel} is not a file", confined.kind_of(st.st_mode))
            wanted = _safe_name(suggested)
            if name == guid and wanted:
                for candidate in confined.unique_names(wanted):
                    try:  # link, then unlink: never over a file already there
                        os.link(name, candidate, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
                    except FileExistsError:
                        continue
                    os.unlink(name, dir_fd=parent)
                    name = candidate
                    break
        return "/".join([*parts[:-1], name]), st.st_size

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._session.detach(), 1)


def _safe_name(suggested: str) -> str:
    """A page's suggested file name as one safe name ('' if none is left)."""
    name = suggested.replace("\x00", "").replace("/", "_").strip()
    if name in ("", ".", ".."):
        return ""
    while len(name.encode()) > confined.MAX_NAME_BYTES:
        name = name[:-1]
    return name


class Staging:
    """Copies of files given to file inputs, in the browser's profile (which its sandbox binds
    at the same path): the newest few kept, older ones removed."""

    def __init__(self, profile: Path) -> None:
        self.root = profile / STAGING
        self._kept: deque[Path] = deque()

    def stage(self, fd: int, name: str) -> Path:
        """Copy the open file ``fd`` as ``name``; the copy's path (blocking: run in a thread)."""
        owner = _owner_of(self.root.parent)
        if not self.root.is_dir():
            self.root.mkdir(mode=0o700, exist_ok=True)
            os.chown(self.root, *owner)
        where = self.root / secrets.token_hex(8)
        where.mkdir(mode=0o700)
        os.chown(where, *owner)
        dest = where / _safe_name(name)
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            offset = 0
            while sent := os.sendfile(out, fd, offset, 1 << 24):
                offset += sent
            os.fchown(out, *owner)
        finally:
            os.close(out)
        self._kept.append(where)
        while len(self._kept) > _STAGED_KEPT:
            shutil.rmtree(self._kept.popleft(), ignore_errors=True)
        return dest
