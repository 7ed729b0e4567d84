"""Lifetimes as pure functions of (now, record).

A computer ends when its maximum lifetime is reached, or, while the idle timeout
is enabled, when no action or keepalive touched it for ``inactivity_timeout``.
Nothing here reads a clock; callers pass ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class EndReason(StrEnum):
    DELETED = "deleted"
    MAX_LIFETIME = "max_lifetime_reached"
    INACTIVITY = "inactivity_timeout"
    BROWSER_CRASHED = "browser_crashed"
    DESKTOP_CRASHED = "desktop_crashed"
    SERVER_SHUTDOWN = "server_shutdown"
    SERVER_RESTARTED = "server_restarted"
    START_FAILED = "start_failed"


@dataclass(frozen=True, slots=True)
class Lifetime:
    created_at: datetime
    last_activity_at: datetime
    max_lifetime_seconds: int
    inactivity_timeout_seconds: int
    idle_timeout_enabled: bool


def expires_at(lt: Lifetime) -> datetime:
    return lt.created_at + timedelta(seconds=lt.max_lifetime_seconds)


def idle_expires_at(lt: Lifetime) -> datetime | None:
    if not lt.idle_timeout_enabled:
        return None
    return lt.last_activity_at + timedelta(seconds=lt.inactivity_timeout_seconds)


def end_reason(now: datetime, lt: Lifetime) -> EndReason | None:
    """Why the computer must end at ``now``, or None while it may live on."""
    if now >= expires_at(lt):
        return EndReason.MAX_LIFETIME
    idle = idle_expires_at(lt)
    if idle is not None and now >= idle:
        return EndReason.INACTIVITY
    return None


def next_deadline(lt: Lifetime) -> datetime:
    """The earliest moment at which ``end_reason`` can become non-None."""
    idle = idle_expires_at(lt)
    hard = expires_at(lt)
    return hard if idle is None else min(hard, idle)


def next_end(lt: Lifetime) -> tuple[datetime, EndReason]:
    """The earliest deadline and the reason the computer would end then."""
    idle = idle_expires_at(lt)
    hard = expires_at(lt)
    if idle is not None and idle < hard:
        return idle, EndReason.INACTIVITY
    return hard, EndReason.MAX_LIFETIME
