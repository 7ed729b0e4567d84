"""Notte sessions, for both eras' adapters (routes/notte_seed.py, routes/notte.py).

A session is a browser computer of the key's organisation, made through the services
like any other (``GET /computers`` lists it, the live view shows it, another
organisation gets a 404): its idle timeout is the computer's inactivity timeout, its
maximum duration the computer's maximum lifetime, and the services' reaper ends it.
Every access that is an operation checks its lifetime first and counts as activity;
reading its status is neither. Beside the computer, this remembers only what Notte has
and opencone has not: the action ids of the last observation, and why a client closed it.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from opencone.api.wire import notte as w
from opencone.core import actions as a
from opencone.core.computers import ActionReport, ComputerView, CreateSpec, Step
from opencone.core.errors import Conflict, InvalidInput, NotFound, ServiceError
from opencone.core.runtime import Runtime
from opencone.drivers.base import Display

KEPT = 2000  # sessions remembered; the oldest ended ones are forgotten first
SNAPSHOT_CHARS = a.MAX_SNAPSHOT_CHARS  # the whole page: the action space needs every element
SETTLE_MS = 300  # after a click or Enter, time for a navigation it starts to commit before the next look


class Failed(ServiceError):
    """An operation that ran and failed inside the session (a page that did not load, a stale id)."""

    status = 400


@dataclass(slots=True)
class Observed:
    snapshot: dict[str, Any]
    entries: list[w.Entry]
    image: bytes | None
    context: dict[str, Any] | None


def canonical(factory: type[a._Action], **fields: Any) -> a.Action:
    """A canonical action, or a 422 naming what was wrong (a URL that is no web URL…)."""
    try:
        return factory(**fields)  # type: ignore[return-value]
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or factory.__name__
        raise InvalidInput(f"{where}: {str(err['msg']).removeprefix('Value error, ')}", field=where) from None


class Sessions:
    def __init__(self) -> None:
        self._states: OrderedDict[str, w.SessionState] = OrderedDict()

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self, rt: Runtime, org: str, idle_minutes: int, max_minutes: int | None,
                    display: Display | None = None, keep_alive: bool = True) -> tuple[ComputerView, w.SessionState]:
        s = rt.settings
        spec = CreateSpec(
            kind="browser", display=display or Display(s.default_width, s.default_height),
            max_lifetime_seconds=max_minutes * 60 if max_minutes else s.default_max_lifetime_seconds,
            inactivity_timeout_seconds=idle_minutes * 60, idle_timeout_enabled=True,
        )
        view = await rt.computers.create(org, spec)
        state = w.SessionState(view.id, org, keep_alive=keep_alive)
        self._states[view.id] = state
        self._forget_old()
        return view, state

    def _forget_old(self) -> None:
        while len(self._states) > KEPT:
            self._states.popitem(last=False)

    def state(self, org: str, session_id: str) -> w.SessionState:
        state = self._states.get(session_id)
        if state is None or state.org != org:
            raise NotFound(f"no session {session_id!r}")
        return state

    async def view(self, rt: Runtime, org: str, session_id: str) -> tuple[ComputerView, w.SessionState]:
        """A status read: not an access (a poller must not keep a session alive)."""
        state = self.state(org, session_id)
        return await rt.computers.get(org, session_id), state

    async def access(self, rt: Runtime, org: str, session_id: str) -> tuple[ComputerView, w.SessionState]:
        """Before an operation: the idle rule applied now, and a session that has ended refused."""
        state = self.state(org, session_id)
        view = await rt.computers.check_lifetime(org, session_id)
        life = w.lifecycle(view, state)
        if life.status != "active":
            raise Conflict(f"session {session_id} is {life.status} ({life.close_reason}); start a new session")
        return view, state

    async def close(self, rt: Runtime, org: str, session_id: str, reason: str = "manual") -> ComputerView:
        """End the session (idempotent: an ended one is left as it ended)."""
        state = self.state(org, session_id)
        view = await rt.computers.check_lifetime(org, session_id)
        if view.status != "terminated":
            state.close_reason = reason
            with contextlib.suppress(NotFound):
                await rt.computers.delete(org, session_id)
            view = await rt.computers.get(org, session_id)
        return view

    def sessions(self, org: str) -> list[w.SessionState]:
        return [s for s in self._states.values() if s.org == org]

    # -- operations -----------------------------------------------------------------------------
    async def run(self, rt: Runtime, org: str, session_id: str, actions: list[a.Action],
                  context_at: int | None = None) -> list[ActionReport]:
        """Run actions in order (one lock hold, one activity); a failed one is a Failed error.
        ``context_at``: the action whose report gets the page context (viewport, scroll)."""
        steps = [Step([act], None, i == context_at) for i, act in enumerate(actions)]
        reports = await rt.computers.perform(org, session_id, steps)
        if not reports[-1].ok or len(reports) < len(steps):
            bad = next(r for r in reports if not r.ok)
            raise Failed(bad.error_message or "the operation failed")
        return reports

    async def observe(self, rt: Runtime, org: str, state: w.SessionState, *, url: str | None = None,
                      before: list[a.Action] | None = None, screenshot: bool = False, limit: int = 100,
                      context: bool = False) -> Observed:
        """An element snapshot made into the session's action space (what later ids name)."""
        actions: list[a.Action] = list(before or [])
        if url:
            actions.append(canonical(a.Navigate, url=url))
        look = len(actions)
        actions.append(a.Snapshot(format="json", max_chars=SNAPSHOT_CHARS))
        if screenshot:
            actions.append(a.Screenshot())
        reports = await self.run(rt, org, state.id, actions, context_at=look if context else None)
        snap = reports[look].outcome.result
        entries = w.space_entries(snap["elements"], limit)
        state.snapshot_id = snap["snapshot_id"]
        state.actions = {e.id: e for e in entries}
        image = reports[-1].outcome.image if screenshot else None
        return Observed(snap, entries, image, reports[look].page_context)

    def entry(self, state: w.SessionState, action_id: str) -> w.Entry:
        found = state.actions.get(action_id)
        if found is None:
            known = ", ".join(list(state.actions)[:20]) or "none: observe the page first"
            raise Failed(f"no action {action_id!r} in the session's last observation (its ids: {known})")
        return found

    def element(self, state: w.SessionState, entry: w.Entry) -> a.Element:
        return a.Element(ref=entry.ref, snapshot_id=state.snapshot_id)

    async def markdown(self, rt: Runtime, org: str, session_id: str, *, main_only: bool, images: bool,
                       links: bool = True, before: list[a.Action] | None = None) -> dict[str, Any]:
        acts = [*(before or []), a.Markdown(main_only=main_only, images=images, links=links,
                                            max_chars=a.MAX_MARKDOWN_CHARS)]
        return (await self.run(rt, org, session_id, acts))[-1].outcome.result


def now(rt: Runtime) -> datetime:
    return rt.clock.now()


_registries: weakref.WeakKeyDictionary[Runtime, Sessions] = weakref.WeakKeyDictionary()


def sessions_of(rt: Runtime) -> Sessions:
    """The Notte sessions of a running server (one registry per runtime)."""
    found = _registries.get(rt)
    if found is None:
        found = _registries[rt] = Sessions()
    return found
