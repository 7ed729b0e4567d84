"""The warm pool's policy (drivers/pool.py), with an injected clock and launch/dispose callables
that count what they are asked to do; and one real server taking a burst of creates."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from opencone.drivers import priority
from opencone.drivers.pool import MIB, PoolPolicy, WarmPool
from opencone.drivers.priority import LaunchPriority
from opencone.testing import start_server


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Launcher:
    """Items are numbers; each launch waits until the test lets it finish (``release``)."""

    def __init__(self) -> None:
        self.started = 0
        self.running = 0
        self.peak_running = 0
        self.disposed: list[int] = []
        self.fail_next = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def launch(self) -> int:
        self.started += 1
        n = self.started
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)
        try:
            await self.gate.wait()
            await asyncio.sleep(0)
            if self.fail_next:
                self.fail_next -= 1
                raise RuntimeError(f"launch {n} failed")
            return n
        finally:
            self.running -= 1

    async def dispose(self, item: int) -> None:
        self.disposed.append(item)


def make_pool(launcher: Launcher, clock: FakeClock, **policy: object) -> WarmPool[int]:
    return WarmPool("test", PoolPolicy(**policy), launcher.launch, launcher.dispose,  # type: ignore[arg-type]
                    clock=clock, free_memory=lambda: 64 * 1024 * MIB, tick_seconds=0.005)


async def until(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


async def test_fills_to_the_floor_then_grows_after_a_burst_and_shrinks_when_idle() -> None:
    launcher, clock = Launcher(), FakeClock()
    pool = make_pool(launcher, clock, floor=2, max=16, parallel=3, idle_seconds=50)
    pool.start()
    try:
        await until(lambda: pool.ready_count == 2)
        await asyncio.sleep(0.05)
        assert launcher.started == 2  # the floor, no more while nothing is asked
        items = await asyncio.gather(*(pool.take() for _ in range(10)))
        assert len(set(items)) == 10
        assert launcher.peak_running <= 3  # never more launches at once than allowed
        assert pool.target() == 10  # the burst
        clock.now += 2  # past the refill delay (and the burst's span): the pool prepares for the next burst
        await until(lambda: pool.ready_count == 10)
        second = await asyncio.gather(*(pool.take() for _ in range(10)))
        assert pool.misses == 8  # the first burst's takes beyond the two ready; none in the second
        assert not set(second) & set(items)
        clock.now += 2
        await until(lambda: pool.ready_count == 10)
        clock.now += 47  # 49 s after the last burst: still wanted
        await asyncio.sleep(0.05)
        assert pool.ready_count == 10 and not launcher.disposed
        clock.now += 3
        await until(lambda: pool.ready_count == 2)
        await until(lambda: len(launcher.disposed) == 8)
        assert pool.target() == 2
    finally:
        await pool.close()


async def test_a_burst_served_slowly_is_remembered_from_its_last_take() -> None:
    launcher, clock = Launcher(), FakeClock()
    pool = make_pool(launcher, clock, floor=0, max=8, parallel=2, idle_seconds=50)
    pool.start()
    try:
        launcher.gate.clear()
        takes = asyncio.gather(*(pool.take() for _ in range(6)))
        await until(lambda: launcher.started == 2)
        clock.now += 40  # the launches take long (a loaded machine)
        launcher.gate.set()
        await takes
        clock.now += 45  # 85 s after the burst began, 45 s after it was served: still wanted
        await until(lambda: pool.ready_count == 6)
        assert pool.target() == 6
        clock.now += 6
        await until(lambda: pool.ready_count == 0)
    finally:
        await pool.close()


async def test_respects_max_and_one_create_at_a_time_is_no_burst() -> None:
    launcher, clock = Launcher(), FakeClock()
    pool = make_pool(launcher, clock, floor=1, max=4, parallel=8)
    pool.start()
    try:
        await until(lambda: pool.ready_count == 1)
        await pool.take()
        clock.now += 5
        await until(lambda: pool.ready_count == 1)
        await asyncio.sleep(0.05)
        assert pool.target() == 1 and launcher.started == 2
        await asyncio.gather(*(pool.take() for _ in range(12)))
        assert pool.target() == 4
        clock.now += 1
        await until(lambda: pool.ready_count == 4)
        await asyncio.sleep(0.05)
        assert pool.ready_count + pool.launching == 4
    finally:
        await pool.close()


async def test_memory_reserve_stops_launches_ahead_of_demand_but_not_a_create() -> None:
    launcher, clock = Launcher(), FakeClock()
    base = [5000 * MIB]  # each live item takes 200 MiB of it; the reserve is 2048 MiB

    def free() -> int:
        return base[0] - 200 * MIB * (launcher.started - len(launcher.disposed))

    pool = WarmPool("test", PoolPolicy(floor=0, max=20, parallel=1, memory_reserve_bytes=2048 * MIB,
                                       item_bytes_guess=200 * MIB),
                    launcher.launch, launcher.dispose, clock=clock, free_memory=free, tick_seconds=0.005)
    pool.start()
    try:
        await asyncio.gather(*(pool.take() for _ in range(8)))  # asked for: launched whatever memory says
        assert launcher.started == 8 and pool.target() == 8
        clock.now += 2
        await until(lambda: pool.ready_count == 6)
        await asyncio.sleep(0.05)
        # 8 ready was the target; 3400 MiB free after the burst leaves room for 6 above the reserve
        assert launcher.started == 14 and free() >= 2048 * MIB
        base[0] = 3000 * MIB  # now well below the reserve: nothing ahead of demand
        for _ in range(7):
            assert await pool.take() > 0  # six ready, then one launched for the create itself
        assert launcher.started == 15
        clock.now += 2
        await asyncio.sleep(0.05)
        assert launcher.started == 15 and pool.ready_count == 0
    finally:
        await pool.close()


class Cpu:
    """The idle cores the pool sees, as the test sets them."""

    def __init__(self, idle: float) -> None:
        self.idle = idle

    def __call__(self) -> float:
        return self.idle


async def test_launches_ahead_of_demand_wait_for_spare_cpu_but_a_take_never_does() -> None:
    launcher, clock, cpu = Launcher(), FakeClock(), Cpu(0.1)
    pool = WarmPool("test", PoolPolicy(floor=4, max=4, parallel=3, spare_cores=0.5, busy_wait_seconds=5),
                    launcher.launch, launcher.dispose, clock=clock, free_memory=lambda: 64 * 1024 * MIB,
                    tick_seconds=0.005, idle_cores=cpu)
    pool.start()
    try:
        await asyncio.sleep(0.05)
        assert launcher.started == 0  # busy: the floor waits
        assert await pool.take() == 1  # a create is served at once, busy or not
        clock.now += 5  # busy for the whole wait: one launch at a time from then on
        launcher.gate.clear()
        await until(lambda: launcher.started == 2)
        await asyncio.sleep(0.05)
        assert launcher.running == 1 and launcher.started == 2
        launcher.gate.set()
        await until(lambda: pool.ready_count == 4)
        assert launcher.peak_running == 1
        cpu.idle = 1.5  # spare CPU: a refill runs its launches in parallel
        await asyncio.gather(*(pool.take() for _ in range(3)))
        launcher.gate.clear()
        clock.now += 1  # (past the refill delay)
        await until(lambda: launcher.running == 3)
        launcher.gate.set()
        await until(lambda: pool.ready_count == 4)
        # busy again: this refill waits the whole wait afresh
        cpu.idle = 0.0
        await pool.take()
        clock.now += 1
        started = launcher.started
        await asyncio.sleep(0.05)
        assert launcher.started == started
        clock.now += 5
        await until(lambda: launcher.started == started + 1)
    finally:
        await pool.close()


def test_idle_cores_is_the_spare_cpu_since_the_last_look() -> None:
    from types import SimpleNamespace

    from opencone.drivers.cpu_idle import IdleCores

    now, spare = [0.0], [100.0]
    idle = IdleCores(read=lambda: SimpleNamespace(idle=spare[0], iowait=0.0, nice=0.0), clock=lambda: now[0],
                     min_window=0.05)
    first = idle()
    assert first == float(os.cpu_count() or 1)  # nothing measured yet: all cores
    now[0], spare[0] = 1.0, 101.5
    assert idle() == 1.5  # 1.5 CPU seconds idle in 1 s
    now[0], spare[0] = 1.01, 101.5
    assert idle() == 1.5  # too soon for a new window: the last figure
    now[0], spare[0] = 2.0, 101.6
    assert idle() == pytest.approx(0.1)  # since the last window (1.0 s), the look at 1.01 s not counted
    # time at a raised nice value (the pool's own launches) counts as spare
    idle = IdleCores(read=lambda: SimpleNamespace(idle=0.0, iowait=0.0, nice=spare[0]), clock=lambda: now[0])
    idle()
    now[0], spare[0] = 3.0, 103.6
    assert idle() == pytest.approx(2.0)


async def test_an_empty_pool_take_joins_the_launch_under_way() -> None:
    launcher, clock = Launcher(), FakeClock()
    pool = make_pool(launcher, clock, floor=1, max=1, parallel=4)
    launcher.gate.clear()
    pool.start()
    await until(lambda: pool.launching == 1)
    taking = asyncio.ensure_future(pool.take())
    await asyncio.sleep(0.05)
    assert launcher.started == 1  # waits for the launch already running, starts none behind it
    launcher.gate.set()
    assert await taking == 1
    await pool.close()


async def test_a_failing_launch_does_not_hang_takers() -> None:
    launcher, clock = Launcher(), FakeClock()
    pool = make_pool(launcher, clock, floor=0, max=4, parallel=2)
    pool.start()
    try:
        launcher.fail_next = 3
        results = await asyncio.wait_for(
            asyncio.gather(*(pool.take() for _ in range(3)), return_exceptions=True), 5)
        assert all(isinstance(r, RuntimeError) for r in results), results
        assert pool.failures == 3
        assert await asyncio.wait_for(pool.take(), 5) == 4  # the next launch works again
        # a take given up (its request cancelled) leaves its item for the next take
        launcher.gate.clear()
        cancelled = asyncio.ensure_future(pool.take())
        await until(lambda: pool.launching >= 1)
        cancelled.cancel()
        launcher.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await until(lambda: pool.ready_count >= 1 or launcher.disposed != [])
    finally:
        await pool.close()
    assert launcher.running == 0


async def test_close_fails_waiting_takes_and_disposes_every_item() -> None:
    launcher, clock = Launcher(), FakeClock()
    pool = make_pool(launcher, clock, floor=2, max=4, parallel=2)
    pool.start()
    await until(lambda: pool.ready_count == 2)
    launcher.gate.clear()
    await pool.take()
    await pool.take()
    waiting = asyncio.ensure_future(pool.take())
    await until(lambda: pool.launching == 1)
    await pool.close()
    with pytest.raises(RuntimeError):
        await waiting
    assert launcher.running == 0


class AheadLauncher(Launcher):
    """Records the priority each launch ran under (drivers/priority.py's ``current``), by item."""

    def __init__(self) -> None:
        super().__init__()
        self.priorities: dict[int, LaunchPriority | None] = {}

    async def launch(self) -> int:
        prio = priority.current.get()
        item = await super().launch()
        self.priorities[item] = prio
        return item


def make_ahead_pool(launcher: AheadLauncher, clock: FakeClock, **policy: object) -> WarmPool[int]:
    return WarmPool("test", PoolPolicy(**policy), launcher.launch, launcher.dispose,  # type: ignore[arg-type]
                    clock=clock, free_memory=lambda: 64 * 1024 * MIB, tick_seconds=0.005, lower_ahead=True,
                    idle_cores=lambda: 8.0)  # (a machine with CPU to spare: the real one's load plays no part)


async def test_launches_ahead_of_demand_are_raised_when_a_take_comes_to_wait_or_takes_their_item() -> None:
    launcher, clock = AheadLauncher(), FakeClock()
    pool = make_ahead_pool(launcher, clock, floor=2, max=2, parallel=4)
    launcher.gate.clear()
    pool.start()
    try:
        await until(lambda: pool.launching == 2)
        running = list(pool._ahead.values())  # (the two launches filling the floor, ahead of demand)
        assert len(running) == 2 and not any(p.raised for p in running)
        taking = asyncio.ensure_future(pool.take())
        await until(lambda: any(p.raised for p in running))
        await asyncio.sleep(0.05)
        assert [p.raised for p in running].count(True) == 1  # one take waits: one launch raised
        assert launcher.started == 2  # and none started behind them
        launcher.gate.set()
        first = await taking
        prio = launcher.priorities[first]
        assert prio is not None and prio.raised  # whichever launch served it, it runs raised
        # items made ahead of demand wait in the pool lowered, and are raised as they are handed out
        clock.now += 1  # (a refill ahead of demand waits a moment after a take)
        await until(lambda: pool.ready_count == 2)
        ready = [launcher.priorities[n] for n in pool._ready]
        assert all(p is not None for p in ready)
        assert [p.raised for p in ready if p is not None].count(False) >= 1
        got = await pool.take()
        got_prio = launcher.priorities[got]
        assert got_prio is not None and got_prio.raised
        left = [launcher.priorities[n] for n in pool._ready]
        assert all(p is not None and not p.raised for p in left)
        # a take that finds nothing under way gets a launch of its own, at normal priority
        launcher.gate.clear()
        await pool.take()  # (no time passes now: nothing is launched ahead of demand)
        waiting = [asyncio.ensure_future(pool.take()) for _ in range(2)]
        await until(lambda: pool.launching >= 2)
        launcher.gate.set()
        items = await asyncio.gather(*waiting)
        assert [launcher.priorities[n] for n in items] == [None, None]
    finally:
        await pool.close()


async def test_a_launch_watches_for_its_sandbox_session_only_until_it_appears() -> None:
    """A launch's new session (bubblewrap's setsid) is lowered as soon as it shows; then the watch
    ends instead of walking the launch's children for the rest of its start (drivers/priority.py)."""
    # a session leader whose child makes a session of its own a moment later, as bubblewrap does
    leader = await asyncio.create_subprocess_exec("sh", "-c", "sleep 0.2; exec setsid -w sleep 30",
                                                  start_new_session=True)
    try:
        launch = LaunchPriority(nice=19)
        launch.started(leader, 19)
        (watch,) = launch._follows
        await asyncio.wait_for(asyncio.shield(watch), 5)  # ends by itself, well before its 10 s limit
        assert not watch.cancelled()
        (child,) = await asyncio.to_thread(lambda: psutil.Process(leader.pid).children())
        assert os.getsid(child.pid) != os.getsid(leader.pid)  # (setsid forked, as a group leader must)
        assert session_nices({child.pid}) == autogroups(19)
    finally:  # the leader's tree only: its child is in a session (and group) of its own
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process(leader.pid).children(recursive=True):
                proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, 9)
        await leader.wait()


def thread_nices(pid: int) -> dict[int, int]:
    """The nice value of every thread of ``pid`` (field 19 of /proc/<pid>/task/<tid>/stat)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            out[int(tid)] = int(stat[stat.rindex(")") + 2:].split()[16])
    return out


def session_nices(pids: set[int]) -> set[int]:
    """The nice values of the autogroups (one per session) ``pids`` are in; none where autogroups
    are off (kernel.sched_autogroup_enabled): then threads' nice values alone count."""
    out = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            out.add(int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1]))
    return out


def autogroups(nice: int) -> set[int]:
    """What ``session_nices`` must find when every session is at ``nice``."""
    enabled = Path("/proc/sys/kernel/sched_autogroup_enabled")
    return {nice} if enabled.exists() and enabled.read_text().strip() == "1" else set()


def browser_trees(srv: object) -> dict[str, set[int]]:
    """Each of a server's browsers (by profile dir) with the processes of its tree."""
    trees: dict[str, set[int]] = {}
    for pid in srv.chromium_pids():  # type: ignore[attr-defined]
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            profile = next((a.split("=", 1)[1] for a in proc.cmdline() if a.startswith("--user-data-dir=")), None)
            if profile and proc.name() != "bwrap" and "--type=" not in " ".join(proc.cmdline()):
                trees[profile] = {pid, *(c.pid for c in proc.children(recursive=True))}
    return trees


@pytest.mark.skipif(not priority.can_raise(), reason="needs a server that may raise a priority (CAP_SYS_NICE)")
def test_a_pool_browser_waits_at_the_lowest_priority_and_works_at_normal_once_created(tmp_path: Path) -> None:
    """A refill ahead of demand must not take the CPU from live computers: a pool browser's every
    process and thread runs at nice 19, and so do its sessions' autogroups (each session competes
    as one group), until a create takes it; then all at 0 (drivers/priority.py)."""
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "1", "OPENCONE_POOL_MAX": "1"})
    try:
        srv.wait_warm(1, timeout=60)
        (profile, tree), = browser_trees(srv).items()
        nices = {pid: thread_nices(pid) for pid in tree}
        assert len(tree) >= 3 and all(n == 19 for threads in nices.values() for n in threads.values()), nices
        assert session_nices(tree) == autogroups(19)
        client = srv.client(timeout=60)
        comp = client.computers.create(kind="browser")
        tree = browser_trees(srv)[profile]  # (the same browser: it was the pool's only one)
        nices = {pid: thread_nices(pid) for pid in tree}
        assert all(threads[pid] == 0 for pid, threads in nices.items() if pid in threads), nices
        assert not any(n == 19 for threads in nices.values() for n in threads.values()), nices
        assert session_nices(tree) == autogroups(0)
        # it works at that priority, and a page it opens now starts there too
        result = client.computers.navigate(comp.id, url="data:text/html,<title>t</title>")
        assert result.status == "success", result
        renderers = {pid: thread_nices(pid) for pid in browser_trees(srv)[profile]}
        assert not any(n == 19 for threads in renderers.values() for n in threads.values()), renderers
        srv.wait_warm(1, timeout=60)  # the refill is ahead of demand again
        refill = {p: t for p, t in browser_trees(srv).items() if p != profile}
        assert len(refill) == 1
        (refill_tree,) = refill.values()
        assert all(n == 19 for pid in refill_tree for n in thread_nices(pid).values())
        assert session_nices(refill_tree) == autogroups(19)
        client.computers.delete(comp.id)
    finally:
        srv.stop()


def desktop_trees(srv: object) -> dict[str, set[int]]:
    """Each of a server's desktops (by its pid file: Xvfb, openbox, the terminal, the browser) with
    every process below those."""
    trees: dict[str, set[int]] = {}
    for pidfile in Path(srv.run_dir).glob("desktop-*.pids"):  # type: ignore[attr-defined]
        tree: set[int] = set()
        for line in pidfile.read_text().splitlines():
            with contextlib.suppress(ValueError, psutil.Error):
                proc = psutil.Process(int(line.split()[0]))
                tree |= {proc.pid, *(c.pid for c in proc.children(recursive=True))}
        trees[pidfile.name] = tree
    return trees


@pytest.mark.skipif(not priority.can_raise(), reason="needs a server that may raise a priority (CAP_SYS_NICE)")
def test_a_pool_desktop_waits_at_the_lowest_priority_and_works_at_normal_once_created(tmp_path: Path) -> None:
    """The same for a desktop: its X server, window manager, terminal and browser all wait at 19
    (threads and sessions) and all run at 0 once a create has it."""
    srv = start_server(tmp_path, env={"OPENCONE_DESKTOP_POOL_SIZE": "1", "OPENCONE_DESKTOP_POOL_MAX": "1"})
    try:
        deadline = time.monotonic() + 90
        while srv.health().get("warm_desktops", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        (name, tree), = desktop_trees(srv).items()
        assert len(tree) >= 6, tree  # Xvfb, openbox, the terminal's sandbox and shell, the browser's
        nices = {pid: thread_nices(pid) for pid in tree}
        assert all(n == 19 for threads in nices.values() for n in threads.values()), nices
        assert session_nices(tree) == autogroups(19)
        client = srv.client(timeout=90)
        comp = client.computers.create(kind="desktop")
        tree = desktop_trees(srv)[name]
        nices = {pid: thread_nices(pid) for pid in tree}
        assert not any(n == 19 for threads in nices.values() for n in threads.values()), nices
        assert session_nices(tree) == autogroups(0)
        shot = client.computers.screenshot(comp.id, base64=True)
        assert shot.status == "success", shot
        client.computers.delete(comp.id)
    finally:
        srv.stop()


def test_a_burst_of_creates_on_a_real_server_all_work(tmp_path: Path) -> None:
    """Eight creates at once on a server whose floor is one: each gets a working browser, and the
    pool then grows toward the burst (bench/bench_burst.py times it)."""
    srv = start_server(tmp_path, env={"OPENCONE_POOL_SIZE": "1", "OPENCONE_POOL_MAX": "8"})
    try:
        client = srv.client(timeout=120)
        with ThreadPoolExecutor(8) as ex:
            comps = list(ex.map(lambda _i: client.computers.create(kind="browser"), range(8)))
            assert len({c.id for c in comps}) == 8
            shots = list(ex.map(lambda c: client.computers.screenshot(c.id, base64=True), comps))
            assert all(s.status == "success" and (s.result or {}).get("screenshot_url", "").startswith(
                "data:image/jpeg;base64,") for s in shots), shots
            list(ex.map(lambda c: client.computers.delete(c.id), comps))
        srv.wait_warm(8, timeout=120)  # grown toward the burst: the next one is served from the pool
    finally:
        srv.stop()
