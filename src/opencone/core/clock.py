"""An injectable clock, so lifetime logic is tested without sleeping."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


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
