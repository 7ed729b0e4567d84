"""A computer's files: its downloads and its ``/workspace``, listed, read, written and deleted
for its organisation's API keys (``/computers/{id}/files``), and opened for ``upload_file``.

Two roots per computer, both its own and removed with it:

- ``downloads``: what its browser saved (drivers/chromium/downloads.py): a browser
  computer's profile's ``Downloads``, a desktop's ``~/Downloads``;
- ``workspace``: the host directory behind its commands' ``/workspace`` (drivers/sandbox);
  a browser computer has one once exec or an upload made it (listing one that does not
  exist yet is an empty list).

A browser's default is ``downloads``, a desktop's ``workspace``. Paths are hostile: every
access goes through drivers/confined.py (one component at a time, never through a link).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opencone.core.clock import iso
from opencone.core.computers import ComputerService, LiveComputer
from opencone.core.errors import Conflict, InvalidInput, NotFound, ServiceError
from opencone.drivers import confined
from opencone.drivers.base import DriverError, UploadSource
from opencone.drivers.sandbox import Sandbox

DIRS = ("downloads", "workspace")


class Refused(ServiceError):
    """The path leads through a link (never followed)."""

    status = 403


class TooLarge(ServiceError):
    status = 413


def default_dir(kind: str) -> str:
    return "workspace" if kind == "desktop" else "downloads"


def _service_error(exc: Exception, dir: str) -> ServiceError:
    """What a confined.py refusal (or an OS error) is said as to the client."""
    if isinstance(exc, confined.LinkRefused):
        return Refused(str(exc))
    if isinstance(exc, confined.PathRefused):
        return InvalidInput(f"path: {exc}", field="path")
    if isinstance(exc, confined.NotThere):
        return NotFound(f"{exc} in the computer's {dir}")
    if isinstance(exc, confined.NotAFile):
        return ServiceError(str(exc), kind=exc.kind)
    if isinstance(exc, confined.TooLarge):
        return TooLarge(str(exc))
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return TooLarge(f"no space left in the computer's {dir} (OPENCONE_EXEC_WORKSPACE_MAX_MB caps a workspace)")
        if exc.errno == errno.ENAMETOOLONG:
            return InvalidInput("path: a name in it is too long", field="path")
        return Conflict(f"the computer's {dir} refused that: {exc.strerror or exc}")
    raise exc


class ComputerFiles:
    def __init__(self, computers: ComputerService, sandbox: Sandbox, max_upload_bytes: int) -> None:
        self._computers = computers
        self._sandbox = sandbox
        self.max_upload_bytes = max_upload_bytes
        computers.open_file = self._open_for_action

    # -- roots ------------------------------------------------------------------------------
    def _dir(self, comp: LiveComputer, dir: str | None) -> str:
        if dir is None:
            return default_dir(comp.kind)
        if dir not in DIRS:
            raise InvalidInput(f"dir: {dir[:40]!r} is not a files directory; allowed: {', '.join(DIRS)}", field="dir")
        return dir

    async def _root(self, comp: LiveComputer, dir: str, *, create: bool = False) -> Path | None:
        """The host directory behind ``dir``; None when it does not exist (and ``create`` is false)."""
        if dir == "downloads":
            where = getattr(comp.driver, "downloads_dir", None)
            if where is None:
                raise Conflict(f"a {comp.kind} computer has no downloads directory")
            path: Path = where()
            if create and not path.is_dir():
                await asyncio.to_thread(_make_like_parent, path)
            return path if path.is_dir() else None
        if not self._sandbox.available:
            raise Conflict("this server has no workspaces: shell commands are off (bubblewrap is missing "
                           "or unusable); use dir=downloads")
        if create:
            return await self._sandbox.prepare(comp.sandbox_id)
        path = self._sandbox.workspaces.path(comp.sandbox_id)
        return path if path.is_dir() else None

    async def _live(self, org: str, computer_id: str) -> LiveComputer:
        comp = await self._computers.require_live(org, computer_id)
        self._computers.touch(comp)
        return comp

    # -- the API ----------------------------------------------------------------------------
    async def list(self, org: str, computer_id: str, dir: str | None, path: str | None) -> dict[str, Any]:
        comp = await self._live(org, computer_id)
        dir = self._dir(comp, dir)
        parts = _parts(path) if path else []
        root = await self._root(comp, dir)
        entries: list[confined.Entry] = []
        truncated = False
        if root is not None:
            try:
                entries, truncated = await asyncio.to_thread(confined.listing, root, parts)
            except confined.NotThere:
                if parts:
                    raise _service_error(confined.NotThere(f"{path} does not exist"), dir) from None
            except (confined.PathRefused, confined.NotAFile, OSError) as exc:
                raise _service_error(exc, dir) from None
        files = [{**asdict(e), "modified": iso_ts(e.modified)} for e in entries]
        return {"computer_id": comp.id, "dir": dir, "path": "/".join(parts), "files": files,
                "truncated": truncated}

    @contextlib.asynccontextmanager
    async def opened(self, org: str, computer_id: str, dir: str | None,
                     path: str) -> AsyncIterator[tuple[str, confined.Opened]]:
        """The file, open for reading (closed after the block): its dir and the open file."""
        comp = await self._live(org, computer_id)
        dir = self._dir(comp, dir)
        parts = _parts(path)
        opened = await self._open(comp, dir, parts)
        try:
            yield dir, opened
        finally:
            os.close(opened.fd)

    async def _open(self, comp: LiveComputer, dir: str, parts: list[str]) -> confined.Opened:
        root = await self._root(comp, dir)
        if root is None:
            raise NotFound(f"{'/'.join(parts)} does not exist: the computer's {dir} is empty")
        try:
            return await asyncio.to_thread(confined.open_file, root, parts)
        except (confined.PathRefused, confined.NotThere, confined.NotAFile, OSError) as exc:
            raise _service_error(exc, dir) from None

    async def put(self, org: str, computer_id: str, dir: str | None, path: str,
                  chunks: AsyncIterator[bytes]) -> dict[str, Any]:
        """Write the body's ``chunks`` to ``path`` (directories made as needed), at most
        ``max_upload_bytes``; an existing file is replaced once the whole body has arrived."""
        comp = await self._live(org, computer_id)
        dir = self._dir(comp, dir)
        parts = _parts(path)
        root = await self._root(comp, dir, create=True)
        assert root is not None
        owner = (root.stat().st_uid, root.stat().st_gid)  # the sandbox's user: its commands may change it
        try:
            upload = await asyncio.to_thread(confined.Upload, root, parts, self.max_upload_bytes, owner)
        except (confined.PathRefused, confined.NotThere, confined.NotAFile, OSError) as exc:
            raise _service_error(exc, dir) from None
        try:
            async for chunk in chunks:
                if chunk:
                    await asyncio.to_thread(upload.write, chunk)
            written = await asyncio.to_thread(upload.commit)
        except (confined.TooLarge, OSError) as exc:
            raise _service_error(_limit_said(exc, self.max_upload_bytes), dir) from None
        finally:
            await asyncio.to_thread(upload.close)
        return {"computer_id": comp.id, "dir": dir, "path": written.path, "name": parts[-1],
                "size": written.size}

    async def delete(self, org: str, computer_id: str, dir: str | None, path: str) -> dict[str, Any]:
        comp = await self._live(org, computer_id)
        dir = self._dir(comp, dir)
        parts = _parts(path)
        root = await self._root(comp, dir)
        if root is None:
            raise NotFound(f"{path} does not exist: the computer's {dir} is empty")
        try:
            kind = await asyncio.to_thread(confined.remove, root, parts)
        except (confined.PathRefused, confined.NotThere, confined.NotAFile, OSError) as exc:
            raise _service_error(exc, dir) from None
        return {"computer_id": comp.id, "dir": dir, "path": "/".join(parts), "deleted": True, "type": kind}

    # -- upload_file ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _open_for_action(self, comp: LiveComputer, dir: str | None,
                               path: str) -> AsyncIterator[UploadSource]:
        """upload_file's file: a refusal is the action's error (HTTP 200, ``status: error``)."""
        try:
            dir = self._dir(comp, dir)
            opened = await self._open(comp, dir, _parts(path))
        except ServiceError as exc:
            raise DriverError(f"upload_file: {exc.message}") from None
        try:
            yield UploadSource(opened.fd, opened.name, opened.size)
        finally:
            os.close(opened.fd)


def _parts(path: str) -> list[str]:
    try:
        return confined.split(path)
    except confined.PathRefused as exc:
        raise InvalidInput(f"path: {exc}", field="path") from None


def _limit_said(exc: Exception, limit: int) -> Exception:
    if isinstance(exc, confined.TooLarge):
        return confined.TooLarge(f"the upload is over {limit} bytes, the most allowed (OPENCONE_MAX_UPLOAD_BYTES)")
    return exc


def _make_like_parent(path: Path) -> None:
    """A missing downloads dir (a desktop whose browser never ran), owned as its parent is."""
    st = path.parent.stat()
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o755)
        os.chown(path, st.st_uid, st.st_gid)


def iso_ts(ts: float) -> str | None:
    return iso(datetime.fromtimestamp(ts, UTC))
