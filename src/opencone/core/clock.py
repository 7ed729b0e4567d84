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
    ts = ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
