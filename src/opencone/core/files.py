"""Blobs behind capability URLs: screenshots fetched without an auth header.

SDK users pass ``screenshot_url`` straight to a model or to ``urllib``, with no
``Authorization`` header, so the URL itself is the credential: an unguessable
token that expires. Files live in the data dir; a file's age is its mtime, so
expiry survives a restart.

A file is written on a background thread: creating a file costs the request
0.2–1 ms on ext4, and more while other work loads the disk. Nobody can ask for
it before ``put`` has returned its token, and ``open`` waits for a write still
under way, so a reader never sees it missing or half written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from opencone.core.ids import new_token

log = logging.getLogger(__name__)

_WRITE_WAIT = 30.0  # seconds ``open`` waits for a write still under way

_TYPES = {"jpg": "image/jpeg", "png": "image/png", "bin": "application/octet-stream"}


class FileStore:
    def __init__(self, root: Path, ttl_seconds: int) -> None:
        self.root = root
        self.ttl = ttl_seconds
        root.mkdir(parents=True, exist_ok=True)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="files")
        self._writing: dict[str, Future[None]] = {}  # token -> its write, while under way

    def put(self, data: bytes, ext: str = "jpg") -> str:
        """Store ``data``; return its token (``<random>.<ext>``). The file is written in the background."""
        token = f"{new_token(24)}.{ext}"
        done = self._writer.submit(self._write, token, data)
        self._writing[token] = done
        done.add_done_callback(lambda _f: self._writing.pop(token, None))  # at once if already written
        return token

    def _write(self, token: str, data: bytes) -> None:
        tmp = os.path.join(self.root, f".{token}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, os.path.join(self.root, token))  # a crash never leaves a half-written file
        except OSError:
            log.exception("could not write %s", token)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def open(self, token: str) -> tuple[Path, str] | None:
        """The file and its media type, or None when unknown or expired."""
        if "/" in token or token.startswith(".") or "." not in token:
            return None
        writing = self._writing.get(token)
        if writing is not None:
            try:
                writing.result(_WRITE_WAIT)
            except Exception:
                return None
        path = self.root / token
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return None
        if age > self.ttl:
            return None
        return path, _TYPES.get(token.rsplit(".", 1)[1], "application/octet-stream")

    def sweep(self) -> int:
        """Delete expired files; return how many."""
        cutoff = time.time() - self.ttl
        removed = 0
        for entry in os.scandir(self.root):
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue
        return removed
