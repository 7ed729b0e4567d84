"""Lifetimes: the pure rules with a fixed clock, and the reaper with second-scale settings."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import tzafon
from conftest import Server
from tzafon import Lightcone

from opencone.core.lifetimes import EndReason, Lifetime, end_reason, expires_at, idle_expires_at, next_deadline

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def lt(last: float = 0, max_s: int = 3600, idle_s: int = 120, idle: bool = True) -> Lifetime:
    return Lifetime(T0, T0 + timedelta(seconds=last), max_s, idle_s, idle)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_max_lifetime_always_applies() -> None:
    assert end_reason(at(3599), lt(last=3599)) is None
    assert end_reason(at(3600), lt(last=3599)) is EndReason.MAX_LIFETIME
    assert end_reason(at(3600), lt(last=3599, idle=False)) is EndReason.MAX_LIFETIME
    assert expires_at(lt()) == at(3600)


def test_idle_timeout_applies_only_while_enabled() -> None:
    assert end_reason(at(119), lt()) is None
    assert end_reason(at(120), lt()) is EndReason.INACTIVITY
    assert end_reason(at(500), lt(idle=False)) is None
    assert idle_expires_at(lt(idle=False)) is None


def test_activity_resets_idle() -> None:
    assert end_reason(at(200), lt(last=100)) is None
    assert idle_expires_at(lt(last=100)) == at(220)
    assert next_deadline(lt(last=100)) == at(220)
    assert next_deadline(lt(last=3550)) == at(3600)


def _wait_terminated(client: Lightcone, cid: str, within: float) -> tzafon.types.ComputerResponse:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        comp = client.computers.retrieve(cid)
        if comp.status == "terminated":
            return comp
        time.sleep(0.1)
    raise AssertionError(f"{cid} still {comp.status} after {within}s")


def test_reaper_ends_a_computer_at_its_max_lifetime(server: Server, client: Lightcone) -> None:
    comp = client.computers.create(max_lifetime_seconds=2, idle_timeout_enabled=False)
    start = time.monotonic()
    ended = _wait_terminated(client, comp.id, 5)
    assert 1.9 <= time.monotonic() - start <= 4.0
    assert ended.model_extra["termination_reason"] == "max_lifetime_reached"
    with pytest.raises(tzafon.ConflictError):
        client.computers.keepalive(comp.id)


def test_idle_computer_ends_and_keepalive_defers_it(server: Server, client: Lightcone) -> None:
    kept = client.computers.create(inactivity_timeout_seconds=1)
    idle = client.computers.create(inactivity_timeout_seconds=1)
    for _ in range(6):  # 2.4 s of keepalives, well past the 1 s idle timeout
        client.computers.keepalive(kept.id)
        time.sleep(0.4)
    assert client.computers.retrieve(kept.id).status == "ready"
    assert client.computers.retrieve(idle.id).model_extra["termination_reason"] == "inactivity_timeout"
    ended = _wait_terminated(client, kept.id, 3)
    assert ended.model_extra["termination_reason"] == "inactivity_timeout"


def test_actions_count_as_activity(server: Server, client: Lightcone) -> None:
    comp = client.computers.create(inactivity_timeout_seconds=1)
    try:
        for _ in range(5):
            assert client.computers.click(comp.id, x=5, y=5).status == "success"
            time.sleep(0.4)
        assert client.computers.retrieve(comp.id).status == "ready"
        # a long action is activity too: a 1.5 s wait must not be cut by the 1 s idle timeout
        assert client.computers.execute(comp.id, action={"type": "wait", "ms": 1500}).status == "success"
        assert client.computers.retrieve(comp.id).status == "ready"
    finally:
        client.computers.delete(comp.id)


def test_status_is_running_while_an_action_executes(server: Server, client: Lightcone) -> None:
    from concurrent.futures import ThreadPoolExecutor

    comp = client.computers.create()
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.computers.execute, comp.id, action={"type": "wait", "ms": 800})
            time.sleep(0.3)
            assert client.computers.retrieve_status(comp.id).status == "running"
            assert pending.result().status == "success"
        assert client.computers.retrieve_status(comp.id).status == "ready"
    finally:
        client.computers.delete(comp.id)
