"""Recording benchmark: what recording a computer's screen costs its actions and the server's CPU.

Run by hand, never in CI:

    .venv/bin/python bench/bench_recording.py            # ~1.5 minutes
    .venv/bin/python bench/bench_recording.py --quick    # fewer samples, shorter windows

Figures, each beside the same figure with recording off, measured in the same run:

- **click** and **screenshot** latency through the official SDK on a page whose colour toggles on
  every mousedown (so each click makes a frame the recorder encodes: the worst case), recording off,
  a plain screencast reader (what the live view costs, no encoding) and recording on, in alternating
  blocks of 10 samples on the same computer; p50/p95 and the ratio to off.
- **CPU** of the server process (user + system, Chromium excluded: it is another process) over a
  window, on a still page and on a page that repaints every animation frame, recording off and on;
  and the encoder threads' own CPU (``opencone-rec-*`` in /proc), the frames they encoded and the
  bytes written, so CPU per encoded frame.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from _common import loadavg, start_server, summary

TOGGLE = ("data:text/html,<style>html,body{margin:0;height:100%;background:rgb(255,0,0)}</style><script>"
          "let on=false;document.addEventListener('mousedown',()=>{on=!on;"
          "document.body.style.background=on?'rgb(0,0,255)':'rgb(255,0,0)'})</script>")
STILL = "data:text/html,<h1 style='font:40px sans-serif;margin:40px'>A still page</h1><p>Nothing moves here.</p>"
ANIM = ("data:text/html,<canvas id=c width=600 height=400></canvas><script>"
        "const x=document.getElementById('c').getContext('2d');let n=0;"
        "function d(){n++;x.fillStyle='hsl('+(n*7)+',80%25,50%25)';x.fillRect(0,0,600,400);"
        "x.fillStyle='black';x.font='64px sans-serif';x.fillText(String(n),30,100);requestAnimationFrame(d)}"
        "requestAnimationFrame(d)</script>")
TICK = os.sysconf("SC_CLK_TCK")


def encoder_cpu(pid: int) -> float:
    """CPU seconds of the server's encoder threads alive now."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if not (task / "comm").read_text().startswith("opencone-rec"):
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, IndexError, ValueError):
            continue
    return total


class CastReader:
    """A live-view-like reader of the screencast (SSE) in a thread: what watching costs without recording."""

    def __init__(self, http: Any, cid: str) -> None:
        self.stop = threading.Event()
        self.frames = 0
        self._thread = threading.Thread(target=self._run, args=(http, cid), daemon=True)
        self._thread.start()

    def _run(self, http: Any, cid: str) -> None:
        with http.stream("GET", f"/computers/{cid}/screencast", timeout=None) as r:
            for line in r.iter_lines():
                self.frames += line.startswith("data:")
                if self.stop.is_set():
                    return

    def close(self) -> None:
        self.stop.set()
        self._thread.join(5)


MODES = ("off", "cast", "on")


def latencies(client: Any, http: Any, cid: str, samples: int) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {m: {"click": [], "screenshot": []} for m in MODES}
    client.computers.navigate(cid, url=TOGGLE)
    done = 0
    while done < samples:
        for mode in MODES:
            cast = CastReader(http, cid) if mode == "cast" else None
            if mode == "on":
                assert http.post(f"/computers/{cid}/recording/start").status_code == 200
            time.sleep(0.3)  # the first frame, its encode
            for _ in range(10):
                t = time.perf_counter()
                assert client.computers.click(cid, x=300, y=300).status == "success"
                out[mode]["click"].append((time.perf_counter() - t) * 1000)
                time.sleep(0.05)  # the frame it made, on its way to the encoder
                t = time.perf_counter()
                assert client.computers.screenshot(cid).status == "success"
                out[mode]["screenshot"].append((time.perf_counter() - t) * 1000)
            if mode == "on":
                assert http.post(f"/computers/{cid}/recording/stop").status_code == 200
            if cast is not None:
                cast.close()
        done += 10
    return out


def cpu_window(client: Any, http: Any, server_pid: int, cid: str, url: str, seconds: float,
               record: bool) -> dict[str, Any]:
    client.computers.navigate(cid, url=url)
    if record:
        assert http.post(f"/computers/{cid}/recording/start").status_code == 200
    time.sleep(1.0)  # settle: the first frame, the page's first paints
    proc = psutil.Process(server_pid)
    c0, e0, t0 = proc.cpu_times(), encoder_cpu(server_pid), time.monotonic()
    frames0 = http.get(f"/computers/{cid}/recording/timeline").json()["recording"] if record else None
    time.sleep(seconds)
    c1, e1, t1 = proc.cpu_times(), encoder_cpu(server_pid), time.monotonic()
    out: dict[str, Any] = {"server_cpu_pct": 100 * ((c1.user + c1.system) - (c0.user + c0.system)) / (t1 - t0)}
    if record:
        frames1 = http.get(f"/computers/{cid}/recording/timeline").json()["recording"]
        frames = frames1["frames"] - frames0["frames"]
        out.update(encoder_cpu_pct=100 * (e1 - e0) / (t1 - t0), frames_per_s=frames / (t1 - t0),
                   kbytes_per_s=(frames1["size_bytes"] - frames0["size_bytes"]) / 1024 / (t1 - t0),
                   ms_cpu_per_frame=1000 * (e1 - e0) / frames if frames else None)
        assert http.post(f"/computers/{cid}/recording/stop").status_code == 200
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    samples, window = (20, 4.0) if args.quick else (args.samples, args.window)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-recording-") as tmp:
        server = start_server(Path(tmp), env={"OPENCONE_POOL_SIZE": "1"})
        try:
            client, http = server.client(), server.http()
            cid = client.computers.create().id
            print(f"load before: {loadavg()}")
            lat = latencies(client, http, cid, samples)
            print(f"\nlatency through the SDK, {samples} samples each (ms), load {loadavg()}")
            print("off: nothing watches the screen; cast: a screencast reader (what the live view costs); "
                  "on: recording. Ratios against off.")
            print(f"{'':12} {'off p50':>8} {'cast p50':>9} {'on p50':>8} {'ratio':>6} "
                  f"{'off p95':>8} {'cast p95':>9} {'on p95':>8} {'ratio':>6}")
            for op in ("click", "screenshot"):
                off, cast, on = (summary(lat[m][op]) for m in MODES)
                print(f"{op:12} {off['p50']:8.2f} {cast['p50']:9.2f} {on['p50']:8.2f} {on['p50'] / off['p50']:6.2f} "
                      f"{off['p95']:8.2f} {cast['p95']:9.2f} {on['p95']:8.2f} {on['p95'] / off['p95']:6.2f}")
            print(f"\nserver CPU over {window:g} s windows (% of one core), load {loadavg()}")
            for name, url in (("still", STILL), ("animating", ANIM)):
                off = cpu_window(client, http, server.process.pid, cid, url, window, False)
                on = cpu_window(client, http, server.process.pid, cid, url, window, True)
                per_frame = on["ms_cpu_per_frame"]
                print(f"{name:10} off {off['server_cpu_pct']:6.1f}%   on {on['server_cpu_pct']:6.1f}% "
                      f"(encoder threads {on['encoder_cpu_pct']:5.1f}%, {on['frames_per_s']:5.1f} frames/s, "
                      f"{on['kbytes_per_s']:7.1f} KB/s, "
                      f"{'–' if per_frame is None else f'{per_frame:.1f} ms'} CPU per frame)")
            print(f"load after: {loadavg()}")
            client.computers.delete(cid)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
