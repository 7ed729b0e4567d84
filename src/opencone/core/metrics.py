"""What ``GET /metrics`` says, in Prometheus' text format (the official ``prometheus-client``).

Two kinds of figures:

* **events** (creates, actions, errors, exec runs) are counted as they happen, in
  counters and histograms of this server's own ``CollectorRegistry``: never the
  library's global one, so two servers in one process (the tests) never share;
* **state** (live computers, pools, subscribers, tasks) is read from the running
  services at scrape time by a collector, so a gauge cannot drift from the truth
  the way an inc/dec pair missed on one error path would.

An action's cost here is one ``perf_counter`` pair and one ``observe`` on a child
looked up once per action kind (about a microsecond; see bench/bench_metrics.py).
"""

from __future__ import annotations

import os
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# creates: a pool hit answers in milliseconds, a cold launch in a second or more, a burst in tens
CREATE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# actions: a click is a few ms, a navigation up to the navigation timeout
ACTION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# a figure read at scrape time: read() yields (label values, value)
Read = Callable[[], Iterable[tuple[tuple[str, ...], float]]]


class _StateCollector(Collector):
    """Figures the services already keep (how many computers, a pool's misses), read from them
    when Prometheus scrapes, never copied: gauges, and counters the services count themselves."""

    def __init__(self) -> None:
        self.reads: list[tuple[type[Metric], str, str, tuple[str, ...], Read]] = []

    def collect(self) -> Iterable[Metric]:
        for family_type, name, doc, labels, read in self.reads:
            family = family_type(name, doc, labels=list(labels))
            try:
                samples = list(read())
            except Exception:  # a service mid-shutdown: that figure is left out, the scrape still answers
                continue
            for values, value in samples:
                family.add_metric(list(values), value)
            yield family

    def describe(self) -> Iterable[Metric]:
        return ()  # read when scraped; their names are this module's and clash with none


class Metrics:
    """One server's metrics: its registry, the event counters, and the state gauges' readers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.creates = Counter("opencone_computer_creates", "Computers created, by kind and whether a warm "
                               "pool had one ready (pool=hit|miss).", ["kind", "pool"], registry=r)
        self.create_failures = Counter("opencone_computer_create_failures", "Creates that failed to start a "
                                       "computer (not refused requests), by kind.", ["kind"], registry=r)
        self.create_seconds = Histogram("opencone_computer_create_seconds", "Server time of a create, by kind "
                                        "and pool hit or miss.", ["kind", "pool"], buckets=CREATE_BUCKETS,
                                        registry=r)
        self.action_seconds = Histogram("opencone_action_seconds", "Time one canonical action took in its "
                                        "driver, by action type.", ["action"], buckets=ACTION_BUCKETS, registry=r)
        self.action_errors = Counter("opencone_action_errors", "Actions that answered status error (HTTP 200), "
                                     "by action type.", ["action"], registry=r)
        self.http_errors = Counter("opencone_http_errors", "Error answers (4xx/5xx), by status and error type.",
                                   ["status", "error"], registry=r)
        self._state = _StateCollector()
        r.register(self._state)
        ProcessCollector(registry=r)  # the server process: CPU seconds, resident memory, open files
        PlatformCollector(registry=r)
        # children looked up once: labels() costs more than the observe itself
        self._actions: dict[str, tuple[Any, Any]] = {}
        self.started_at = time.time()
        self.gauge("opencone_uptime_seconds", "Seconds since this server started.", (),
                   lambda: [((), time.time() - self.started_at)])

    # -- state ------------------------------------------------------------------------------
    def gauge(self, name: str, doc: str, labels: tuple[str, ...], read: Read) -> None:
        """A gauge whose samples ``read()`` gives at scrape time."""
        self._state.reads.append((GaugeMetricFamily, name, doc, labels, read))

    def counter(self, name: str, doc: str, labels: tuple[str, ...], read: Read) -> None:
        """A counter a service keeps itself (``name`` without ``_total``), read at scrape time."""
        self._state.reads.append((CounterMetricFamily, name, doc, labels, read))

    # -- events -----------------------------------------------------------------------------
    def observe_create(self, kind: str, pool_hit: bool, seconds: float) -> None:
        pool = "hit" if pool_hit else "miss"
        self.creates.labels(kind, pool).inc()
        self.create_seconds.labels(kind, pool).observe(seconds)

    def observe_action(self, kind: str, seconds: float, ok: bool) -> None:
        children = self._actions.get(kind)
        if children is None:
            children = self._actions[kind] = (self.action_seconds.labels(kind), self.action_errors.labels(kind))
        children[0].observe(seconds)
        if not ok:
            children[1].inc()

    def observe_error(self, status: int, error: str) -> None:
        self.http_errors.labels(str(status), error).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def tally(items: Iterable[tuple[str, ...]]) -> list[tuple[tuple[str, ...], float]]:
    """Label tuples counted: the samples of a gauge 'how many of each'."""
    return [(labels, float(n)) for labels, n in sorted(Tally(items).items())]


def watch_runtime(metrics: Metrics, rt: Any) -> None:
    """The services' state as gauges and counters (``rt``: a ``core.runtime.Runtime``)."""
    factories = {"browser": rt.browsers, "desktop": rt.desktops}
    metrics.gauge("opencone_computers", "Live computers, by kind and status (ready, running: an action "
                  "in flight, terminated: ending now).", ("kind", "status"),
                  lambda: tally((c.kind, c.status) for c in rt.computers.live_computers()))
    metrics.gauge("opencone_pool_ready", "Warm computers ready to be taken, by pool.", ("pool",),
                  lambda: [((k,), f.pool.ready_count) for k, f in factories.items()])
    metrics.gauge("opencone_pool_launching", "Warm computers being launched, by pool.", ("pool",),
                  lambda: [((k,), getattr(f.pool, "launching", 0)) for k, f in factories.items()])
    metrics.counter("opencone_pool_misses", "Takes that found a pool empty (the create waited for a launch), "
                    "by pool.", ("pool",), lambda: [((k,), getattr(f.pool, "misses", 0)) for k, f in factories.items()])
    metrics.gauge("opencone_event_subscribers", "Open /computers/{id}/events streams.", (),
                  lambda: [((), rt.events.subscriber_total)])
    metrics.gauge("opencone_screencast_viewers", "Open screencast streams (live view, /screencast).", (),
                  lambda: [((), rt.screencasts.viewer_total)])
    metrics.gauge("opencone_exec_running", "Shell commands running now.", (), lambda: [((), rt.exec.running_count)])
    metrics.counter("opencone_exec_runs", "Shell commands started (exec, exec/sync, debug).", (),
                    lambda: [((), rt.exec.started)])


def watch_agents(metrics: Metrics, agents: Any) -> None:
    """Agent tasks (``agents``: an ``agent.service.AgentService``): live ones by status, ended ones counted."""
    metrics.gauge("opencone_agent_tasks", "Agent tasks not ended, by status (queued, running, paused).",
                  ("status",), lambda: tally((r.status,) for r in list(agents.runs.values()) if not r.ended))
    metrics.counter("opencone_agent_tasks_ended", "Agent tasks ended since start, by final status.", ("status",),
                    lambda: [((status,), float(n)) for status, n in sorted(agents.ended.items())])


def host_figures() -> dict[str, Any]:
    """The machine at a glance: load, cores, memory (what ``opencone status`` shows)."""
    import psutil

    mem = psutil.virtual_memory()
    one, five, fifteen = os.getloadavg()
    me = psutil.Process()
    return {
        "cpus": os.cpu_count() or 1,
        "load": [round(one, 2), round(five, 2), round(fifteen, 2)],
        "memory_total_bytes": mem.total,
        "memory_available_bytes": mem.available,
        "server_rss_bytes": me.memory_info().rss,
    }
