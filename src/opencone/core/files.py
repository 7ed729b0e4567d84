"""Blobs behind capability URLs: screenshots fetched without an auth header.

SDK users pass ``screenshot_url`` straight to a model or to ``urllib``, with no
``Authorization`` header, so the URL itself is the credential: an unguessable
token that expires. Files live in the data dir; a file's age is its mtime, so
expiry survives a restart.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from opencone.core.ids import new_token

_TYPES = {"jpg": "image/jpeg", "png": "image/png", "bin": "application/octet-stream"}


class FileStore:
    def __init__(self, root: Path, ttl_seconds: int) -> None:
        self.root = root
        self.ttl = ttl_seconds
        root.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, ext: str = "jpg") -> str:
        """Store ``data``; return its token (``<random>.<ext>``)."""
        token = f"{new_token(24)}.{ext}"
        tmp = self.root / f".{token}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.root / token)  # readers never see a half-written file
        return token

    def open(self, token: str) -> tuple[Path, str] | None:
        """The file and its media type, or None when unknown or expired."""
        if "/" in token or token.startswith(".") or "." not in token:
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
