"""Exec benchmark: a sandboxed command through opencone against raw bubblewrap with the same flags.

Run by hand, never in CI:

    .venv/bin/python bench/bench_exec.py               # 200 samples per operation
    .venv/bin/python bench/bench_exec.py --samples 30  # quicker

API figures go through the official ``tzafon`` SDK to a real ``opencone serve``
process (exec/sync, the /exec NDJSON stream read to its exit line, and the
deprecated /debug action), beside a keepalive call for the HTTP + SDK floor.
The raw figure runs the very command line the server builds
(``opencone.drivers.sandbox.bwrap.command_line``, setpriv to uid 65534 when
root, the same environment) with ``subprocess.run``. Raw and API samples are
interleaved so background load hits both alike. Target: exec/sync p50 <= 15 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import loadavg, start_server, summary

from opencone.drivers.sandbox import bwrap
from opencone.drivers.sandbox.workspaces import Workspaces, sandbox_ids

COMMAND = "true"
TARGET_P50_MS = 15.0


def raw_argv(workspace: Path) -> list[str]:
    argv = bwrap.command_line(workspace, COMMAND, bwrap=shutil.which("bwrap") or "bwrap")
    ids = sandbox_ids()
    if ids is not None:
        argv = [shutil.which("setpriv") or "setpriv", f"--reuid={ids[0]}", f"--regid={ids[1]}", "--clear-groups",
                *argv]
    return argv


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    args = ap.parse_args()
    n, warmup = max(1, args.samples), 20

    load_start = loadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"opencone exec benchmark, {started}; {os.cpu_count()} cores; load {load_start[0]:.2f}; "
          f"{n} samples (+{warmup} warm-up) per operation", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="opencone-bench-exec-"))
    raw_ws = Workspaces(tmp / "raw-run", Path(tempfile.gettempdir()) / f"opencone-bench-ws-{os.getpid()}")
    raw_ws.reset()
    argv = raw_argv(raw_ws.ensure("comp_raw"))
    env = bwrap.environment({}, None)

    def raw() -> None:
        subprocess.run(argv, env=env, cwd="/", stdin=subprocess.DEVNULL, capture_output=True, check=True,
                       start_new_session=True)

    samples: dict[str, list[float]] = {k: [] for k in ("raw bwrap", "fork/exec true", "keepalive", "exec/sync",
                                                       "exec stream", "debug")}
    server = start_server(tmp, env={"OPENCONE_POOL_SIZE": "1"})
    try:
        client = server.client()
        comp = client.computers.create()

        def api_sync() -> None:
            assert client.computers.exec.sync(comp.id, command=COMMAND).exit_code == 0

        def api_stream() -> None:
            assert [ev.type for ev in client.computers.exec.create(comp.id, command=COMMAND)] == ["exit"]

        def api_debug() -> None:
            assert client.computers.debug(comp.id, command=COMMAND).status == "success"

        ops = {"raw bwrap": raw, "fork/exec true": lambda: subprocess.run(["true"], check=True),
               "keepalive": lambda: client.computers.keepalive(comp.id),  # the HTTP + SDK floor
               "exec/sync": api_sync, "exec stream": api_stream, "debug": api_debug}
        for i in range(warmup + n):
            for name, fn in ops.items():  # interleaved
                ms = timed(fn)
                if i >= warmup:
                    samples[name].append(ms)
        client.computers.delete(comp.id)
    finally:
        server.stop()
        raw_ws.remove("comp_raw")
        shutil.rmtree(raw_ws.root, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)

    rows = {name: summary(v) for name, v in samples.items()}
    base = rows["raw bwrap"]
    print()
    print(f"{'operation':<16}{'p50 ms':>9}{'p95 ms':>9}{'min ms':>9}   ratio p50 vs raw bwrap")
    for name, s in rows.items():
        ratio = s["p50"] / base["p50"] if base["p50"] else float("nan")
        print(f"{name:<16}{s['p50']:>9.2f}{s['p95']:>9.2f}{s['min']:>9.2f}   {ratio:.2f}x")
    p50 = rows["exec/sync"]["p50"]
    print()
    print(f"exec/sync p50 {p50:.2f} ms: {'meets' if p50 <= TARGET_P50_MS else 'misses'} the {TARGET_P50_MS:g} ms "
          f"target; overhead over raw bwrap {p50 - base['p50']:.2f} ms, of which the HTTP + SDK round trip "
          f"(keepalive) is {rows['keepalive']['p50']:.2f} ms")
    load_end = loadavg()
    print(f"load average (1 min) at start {load_start[0]:.2f}, at end {load_end[0]:.2f}")
    if not args.no_json:
        out = Path(__file__).resolve().parent / "results"
        out.mkdir(exist_ok=True)
        path = out / f"exec-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps({"started": started, "command": COMMAND, "samples": n, "rows": rows,
                                    "load_start": load_start, "load_end": load_end, "samples_ms": samples},
                                   indent=2))
        print(f"figures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
