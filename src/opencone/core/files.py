"""Blobs behind capability URLs: screenshots fetched without an auth header.

SDK users pass ``screenshot_url`` straight to a model or to ``urllib``, with no
``Authorization`` header, so the URL itself is the credential: an unguessable
token that expires. Files live in the data dir; a file's age is its mtime, so
expiry survives a restart.

A new blob is kept in memory first and written to disk by a background thread
a moment later (``hold``), with the others put meanwhile. Writing a file inside
the request cost a screenshot 0.3 ms of latency and 0.7 ms of CPU (the write,
and waking a thread that contends for the GIL while the answer is sent,
measured on a desktop); batched and out of the request's way it costs neither
there. A reader is served from memory until the file is complete on disk (it is
written under a temporary name, then renamed), so it never sees one missing or
half written. A server killed within ``hold`` of a screenshot loses that
screenshot's file, as it loses the computer that took it.

The very same ``bytes`` put again (a desktop hands out its last JPEG again while
nothing was drawn: drivers/desktop/screen.py) gets its earlier token back, with
the file's expiry renewed, instead of another copy on disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from opencone.core.ids import new_token

log = logging.getLogger(__name__)

_TYPES = {"jpg": "image/jpeg", "png": "image/png", "bin": "application/octet-stream"}
_RECENT = 64  # blobs remembered for a put of the same object again (one per busy desktop is enough)


@dataclass(frozen=True, slots=True)
class Blob:
    """A stored blob: in memory (``data``) while its file is being written, else on disk (``path``)."""

    media_type: str
    data: bytes | None = None
    path: Path | None = None


class FileStore:
    def __init__(self, root: Path, ttl_seconds: int, *, hold: float = 0.5,
                 max_held_bytes: int = 64 << 20) -> None:
        self.root = root
        self.ttl = ttl_seconds
        self.hold = hold
        self.max_held_bytes = max_held_bytes  # past this, the writer starts at once
        root.mkdir(parents=True, exist_ok=True)
        self._held: dict[str, bytes] = {}  # token -> data, until its file is complete
        self._queued: list[str] = []  # tokens not yet handed to the writer
        self._held_bytes = 0
        self._recent: OrderedDict[int, tuple[bytes, str]] = OrderedDict()  # id(data) -> (data, its token)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closing = False
        self._writer = threading.Thread(target=self._write_forever, name="files", daemon=True)
        self._writer.start()

    def put(self, data: bytes, ext: str = "jpg") -> str:
        """Store ``data``; return its token (``<random>.<ext>``). The file is written in the background."""
        with self._lock:
            again = self._again(data, ext)
            if again is not None:
                return again
            token = f"{new_token(24)}.{ext}"
            self._recent[id(data)] = (data, token)  # (holding data keeps its id from being reused)
            if len(self._recent) > _RECENT:
                self._recent.popitem(last=False)
            self._held[token] = data
            self._queued.append(token)
            self._held_bytes += len(data)
            if len(self._queued) == 1 or self._held_bytes > self.max_held_bytes:
                self._wake.notify()
        return token

    def _again(self, data: bytes, ext: str) -> str | None:
        """The token ``data`` (this very object) was stored under, its expiry renewed; None if there is none."""
        known = self._recent.get(id(data))
        if known is None or known[0] is not data or not known[1].endswith(f".{ext}"):
            return None
        token = known[1]
        if token not in self._held:  # on disk: renew its age (a held one gets its mtime when written)
            try:
                os.utime(self.root / token)
            except OSError:  # swept meanwhile: store it anew
                del self._recent[id(data)]
                return None
        self._recent.move_to_end(id(data))
        return token

    def open(self, token: str) -> Blob | None:
        """The blob, or None when unknown or expired."""
        if "/" in token or token.startswith(".") or "." not in token:
            return None
        media_type = _TYPES.get(token.rsplit(".", 1)[1], "application/octet-stream")
        with self._lock:
            data = self._held.get(token)
        if data is not None:
            return Blob(media_type, data=data)
        path = self.root / token
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return None
        if age > self.ttl:
            return None
        return Blob(media_type, path=path)

    # -- the writer thread ------------------------------------------------------------------
    def _write_forever(self) -> None:
        while True:
            with self._lock:
                while not self._queued and not self._closing:
                    self._wake.wait()
                if not self._queued:
                    return  # closing, and everything is written
                if not self._closing and self._held_bytes <= self.max_held_bytes:
                    self._wake.wait(self.hold)  # let the batch gather (put or close may cut it short)
                batch, self._queued = self._queued, []
                items = [(token, self._held[token]) for token in batch]
            for token, data in items:
                self._write(token, data)
                with self._lock:
                    self._held.pop(token, None)
                    self._held_bytes -= len(data)

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

    def close(self, timeout: float = 10.0) -> None:
        """Write what is still held (the server is stopping)."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._writer.join(timeout)

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
