"""A warm pool that follows demand: computers launched ahead of time so create does not wait.

Launching Chromium costs ~350 ms and half a second of CPU; taking one from the
pool costs nothing. The pool keeps at least ``floor`` items ready and grows
toward the recent peak of creates (a burst of 32 leaves 32 ready for the next
one), never beyond ``max`` and never while free memory is below the reserve
plus what one more item takes; once no burst was seen for ``idle_seconds`` it
shrinks back to the floor.

Launches run in parallel, at most ``parallel`` at once: on 2 cores 32 launches
started together share the CPU and all finish together, at the end (measured:
32 creates answered within 0.6 s of each other, after 18.7 s), while a few at
a time hand out the first browsers after a second and the last no later. A
take that finds nothing ready waits for the next launch under way instead of
starting one behind it; a launch that fails hands its error to the take that
waited longest, so no take waits forever.

With ``lower_ahead`` (browsers, desktops), a launch ahead of demand runs at the
lowest CPU priority (drivers/priority.py: set for the launch's task, applied to
every process it starts), raised to normal when a take comes to wait for it or
takes what it made. Such a launch also starts only while the machine has CPU to
spare (``spare_cores`` idle, drivers/cpu_idle.py), since the server's own share of
it runs at normal priority: ten lifecycles at once on 2 cores had their page loads
take 1.67x those of ten raw browsers with the refill among them, 1.36x with it
after them. A machine that stays busy gets one launch at a time after
``busy_wait_seconds``, so its pool still comes back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import psutil

from opencone.drivers import priority as priorities
from opencone.drivers.cpu_idle import IdleCores
from opencone.drivers.priority import LaunchPriority

log = logging.getLogger(__name__)

T = TypeVar("T")
REFILL_DELAY_SECONDS = 0.5
MIB = 1024 * 1024


def available_memory() -> int:
    return int(psutil.virtual_memory().available)


def default_parallel() -> int:
    """Launches at once: one per core plus one, so a launch waiting on I/O leaves no core idle."""
    return (os.cpu_count() or 1) + 1


@dataclass(slots=True)
class PoolPolicy:
    floor: int = 2  # always kept ready (OPENCONE_POOL_SIZE)
    max: int = 32  # never more ready or launching (OPENCONE_POOL_MAX)
    parallel: int = 0  # launches at once; 0: default_parallel()
    memory_reserve_bytes: int = 2048 * MIB  # pre-launches stop where free memory would go below this
    idle_seconds: float = 50.0  # a burst is forgotten after this long: back to the floor within a minute
    burst_span_seconds: float = 0.25  # takes this close count as one burst (create, delete, create: not)
    item_bytes_guess: int = 200 * MIB  # what one item takes before one was measured
    spare_cores: float = 0.5  # idle CPU (in cores) a launch ahead of demand waits for
    busy_wait_seconds: float = 5.0  # after this long without it, one launch ahead at a time anyway

    def __post_init__(self) -> None:
        self.max = max(self.max, self.floor)
        if self.parallel <= 0:
            self.parallel = default_parallel()


class PoolClosed(RuntimeError):
    pass


class WarmPool(Generic[T]):
    def __init__(
        self,
        name: str,
        size: int | PoolPolicy,
        launch: Callable[[], Awaitable[T]],
        dispose: Callable[[T], Awaitable[None]],
        healthy: Callable[[T], bool] = lambda _item: True,
        *,
        clock: Callable[[], float] = time.monotonic,
        free_memory: Callable[[], int] = available_memory,
        measure: Callable[[T], int] | None = None,
        tick_seconds: float = 0.5,
        lower_ahead: bool = False,
        idle_cores: Callable[[], float] | None = None,
    ) -> None:
        """``idle_cores``: the CPU left over lately (drivers/cpu_idle.py); by default measured for a
        pool whose launches ahead are lowered, where its own launches count as spare; else not
        consulted."""
        self.name = name
        self.policy = size if isinstance(size, PoolPolicy) else PoolPolicy(floor=size, max=max(size, 32))
        self._launch = launch
        self._lower_ahead = lower_ahead
        self._dispose = dispose
        self._healthy = healthy
        self._clock = clock
        self._free_memory = free_memory
        self._measure = measure  # bytes one launched item takes (its process tree's private memory)
        self._tick = tick_seconds
        if idle_cores is None and lower_ahead and priorities.can_raise():
            idle_cores = IdleCores()
        self._idle_cores = idle_cores
        self._busy_since: float | None = None  # since when launches ahead have waited for spare CPU
        self._ready: collections.deque[T] = collections.deque()  # oldest first
        self._waiters: collections.deque[asyncio.Future[T]] = collections.deque()
        self._launches: set[asyncio.Task[None]] = set()
        self._ahead: dict[asyncio.Task[None], LaunchPriority] = {}  # of those, the ones still ahead of demand
        self._lowered: dict[int, LaunchPriority] = {}  # id of an item made ahead of demand → its priority
        self._disposals: set[asyncio.Task[None]] = set()
        self._takes: collections.deque[float] = collections.deque()  # times of takes in the last burst span
        self._peaks: collections.deque[tuple[float, int]] = collections.deque()  # (time, burst size)
        self._taking = 0  # takes in progress
        self._last_take = float("-inf")
        self._backoff_until = float("-inf")
        self._backoff = 0.5
        self._item_bytes = 0  # measured, the largest seen
        self._wakeup = asyncio.Event()
        self._manager: asyncio.Task[None] | None = None
        self._closed = False
        self.failures = 0
        self.misses = 0  # takes that found nothing ready

    @property
    def size(self) -> int:
        return self.policy.floor

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    @property
    def launching(self) -> int:
        return len(self._launches)

    def start(self) -> None:
        if self._manager is None:
            self._manager = asyncio.create_task(self._manage_forever(), name=f"pool-{self.name}")

    # -- demand ---------------------------------------------------------------------------
    def target(self) -> int:
        """How many items the pool wants ready now: the floor, or the largest burst seen within
        ``idle_seconds`` (bursts of two or more: one create at a time is no burst), at most max."""
        now, p = self._clock(), self.policy
        while self._peaks and now - self._peaks[0][0] > p.idle_seconds:
            self._peaks.popleft()
        peak = max((n for _t, n in self._peaks), default=0)
        return min(p.max, max(p.floor, peak if peak >= 2 else 0))

    def _note_take(self) -> int:
        """Count a take starting now; the size of the burst it belongs to."""
        now = self._clock()
        self._last_take = now
        self._takes.append(now)
        while now - self._takes[0] > self.policy.burst_span_seconds:
            self._takes.popleft()
        burst = max(len(self._takes), self._taking)
        self._note_peak(burst)
        return burst

    def _note_peak(self, burst: int) -> None:
        """A burst of ``burst`` seen now (again when its takes end: a burst served slowly, by
        launches, is forgotten ``idle_seconds`` after its last take got its item, not after it began)."""
        now = self._clock()
        while self._peaks and self._peaks[-1][1] <= burst:  # an earlier peak no larger is not needed now
            self._peaks.pop()
        self._peaks.append((now, burst))

    # -- take -----------------------------------------------------------------------------
    async def take(self) -> T:
        """A ready item, or the next one a launch under way (or started now) brings."""
        if self._closed:
            raise PoolClosed(f"the {self.name} pool is closed")
        self._taking += 1
        burst = self._note_take()
        try:
            while self._ready:
                item = self._ready.pop()  # the newest: the oldest go first when the pool shrinks
                if self._healthy(item):
                    self._hand_out(item)
                    return item
                self._dispose_later(item)
            self.misses += 1
            waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            self._pump()
            try:
                return await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._offer(waiter.result())  # it came just as the take was given up
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        finally:
            self._taking -= 1
            self._note_peak(burst)
            self._wakeup.set()

    def _offer(self, item: T) -> None:
        """A launched item: to the take waiting longest, else onto the ready list."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._hand_out(item)
                waiter.set_result(item)
                return
        self._ready.append(item)

    def _hand_out(self, item: T) -> None:
        lowered = self._lowered.pop(id(item), None)
        if lowered is not None:
            self._raise(lowered)

    def _raise(self, lowered: LaunchPriority) -> None:
        try:
            lowered.raise_now()
        except Exception:  # it still works, at the priority it was launched with; the pool goes on
            log.exception("warm pool %s: cannot raise a launch's priority", self.name)

    # -- launches -------------------------------------------------------------------------
    def _pump(self) -> None:
        """Start the launches the takes waiting and the target call for, as far as the policy allows."""
        if self._closed:
            return
        p, now = self.policy, self._clock()
        waiting = sum(1 for w in self._waiters if not w.done())
        # takes wait for launches ahead of demand now: those are demanded, at normal priority
        for task in list(self._ahead)[:max(0, waiting - (len(self._launches) - len(self._ahead)))]:
            self._raise(self._ahead.pop(task))
        while len(self._launches) < p.parallel:
            if waiting > len(self._launches):  # a take with no launch of its own to wait for
                self._start_launch(ahead=False)
                continue
            # ahead of demand: not right after a take (a launch burns half a second of CPU; the create
            # that took an item and the actions after it would pay for it), nor while failing
            have = len(self._ready) + len(self._launches) - waiting
            if have >= self.target():
                self._busy_since = None  # nothing to launch: a later refill waits for spare CPU afresh
                break
            if now - self._last_take < REFILL_DELAY_SECONDS or now < self._backoff_until:
                break
            if not self._memory_allows() or not self._cpu_allows(now):
                break
            self._start_launch(ahead=True)
        self._shrink()

    def _memory_allows(self) -> bool:
        per_item = self._item_bytes or self.policy.item_bytes_guess
        try:
            free = self._free_memory()
        except Exception:  # no reading, no pre-launch beyond the floor
            return len(self._ready) + len(self._launches) < self.policy.floor
        return free - per_item * (len(self._launches) + 1) >= self.policy.memory_reserve_bytes

    def _cpu_allows(self, now: float) -> bool:
        """Whether a launch ahead of demand may start: with ``spare_cores`` idle since the last look,
        or, once it has waited ``busy_wait_seconds`` for that, when no other launch is under way."""
        if self._idle_cores is None:
            return True
        if self._idle_cores() >= self.policy.spare_cores:
            self._busy_since = None
            return True
        if self._busy_since is None:
            self._busy_since = now
        return now - self._busy_since >= self.policy.busy_wait_seconds and not self._launches

    def _shrink(self) -> None:
        """Past the target: the oldest ready items go (a kill each: cheap, and the memory is back at once)."""
        excess = len(self._ready) - self.target()
        while excess > 0 and not self._waiters:
            self._dispose_later(self._ready.popleft())
            excess -= 1

    def _start_launch(self, ahead: bool) -> None:
        priority = LaunchPriority() if ahead and self._lower_ahead else None
        task = asyncio.get_running_loop().create_task(self._launch_one(priority), name=f"pool-{self.name}-launch")
        self._launches.add(task)
        task.add_done_callback(self._launches.discard)
        if priority is not None:
            self._ahead[task] = priority
            task.add_done_callback(lambda t: self._ahead.pop(t, None))

    async def _launch_one(self, priority: LaunchPriority | None) -> None:
        if priority is not None:
            priorities.current.set(priority)  # (this task's context: what the launch starts runs lowered)
        try:
            item = await self._launch()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep the server alive: the take waiting longest gets the error
            self.failures += 1
            log.error("warm pool %s: launch failed: %s", self.name, exc)
            self._backoff_until = self._clock() + self._backoff
            self._backoff = min(self._backoff * 2, 30.0)
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
                    break
            return
        finally:
            if priority is not None:
                priority.finished()
            self._wakeup.set()
        self._backoff = 0.5
        if self._closed:
            await self._dispose(item)
            return
        if self._measure is not None and self._item_bytes == 0:
            with contextlib.suppress(Exception):
                self._item_bytes = await asyncio.to_thread(self._measure, item)
        if priority is not None and not priority.raised:
            self._lowered[id(item)] = priority  # raised when it is handed out
        self._offer(item)

    def _dispose_later(self, item: T) -> None:
        self._lowered.pop(id(item), None)
        task = asyncio.get_running_loop().create_task(self._dispose(item))
        self._disposals.add(task)
        task.add_done_callback(self._disposals.discard)

    async def _manage_forever(self) -> None:
        while not self._closed:
            self._pump()
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                # the deferred refill and the idle shrink are due with time alone
                await asyncio.wait_for(self._wakeup.wait(), self._tick)

    async def wait_full(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self._ready) < self.target():
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        self._closed = True
        if self._manager:
            self._manager.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._manager
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(PoolClosed(f"the {self.name} pool is closed"))
        launches = list(self._launches)
        for task in launches:
            task.cancel()
        await asyncio.gather(*launches, return_exceptions=True)
        items, self._ready = list(self._ready), collections.deque()
        self._lowered.clear()
        await asyncio.gather(*(self._dispose(i) for i in items), *self._disposals, return_exceptions=True)
