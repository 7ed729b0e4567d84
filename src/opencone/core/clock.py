"""An injectable clock, so lifetime logic is tested without sleeping."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FileOffsetClock:
    """TEST ONLY: the system clock plus a number of seconds read from a file, so that tests can
    move a server process's time on (a Notte session's 1-minute idle timeout without waiting a
    minute). The file is read again whenever it changes; a missing or unreadable one is 0."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._offset = timedelta(0)

    def now(self) -> datetime:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._stamp = stamp
                self._offset = timedelta(seconds=float(self.path.read_text().strip() or 0))
        except (OSError, ValueError):
            self._offset = timedelta(0)
        return datetime.now(UTC) + self._offset


def iso(ts: datetime | None) -> str | None:
    """UTC ISO-8601 with a ``Z`` suffix, millisecond precision: ``2026-11-22T12:00:00.123Z``."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    elif ts.utcoffset():
        ts = ts.astimezone(UTC)
    # isoformat is C code: a third of strftime's cost, and this runs several times per action
    return ts.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
