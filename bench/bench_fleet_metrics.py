"""What a fleet replica's ``GET /metrics`` costs in CPU per node: merging the nodes' texts.

Run by hand, never in CI:

    .venv/bin/python bench/bench_fleet_metrics.py               # a real node's text, 50 nodes
    .venv/bin/python bench/bench_fleet_metrics.py --nodes 100
    .venv/bin/python bench/bench_fleet_metrics.py --text FILE   # a saved /metrics text instead of a server

The text is a real server's own ``/metrics`` (``opencone.testing.start_server``, after a create and a
click so the histograms have samples), given to ``fleet/replica_ops.merge`` as the text of every node
(``--nodes`` copies, each its own node id), then with every sample's value its node's own (as in a
real fleet: the same families and label sets, other values; merge checks each distinct string once per
scrape). Two ways over the same texts, each the best of 7 runs of this process's CPU time
(``time.process_time``), in ms per node:

* **parser**: ``replica_ops._merge_parsed``, the way merge went before (every text parsed by
  ``prometheus_client.parser``, relabelled, rendered again by ``generate_latest``), still the way for a
  text in an unusual shape;
* **lines**: ``replica_ops.merge``, the line-by-line rewrite a node's own text takes.

Both answers are checked to mean the same (parsed back, labels sorted) before anything is printed.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import loadavg, start_server
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from opencone.fleet import replica_ops

RUNS = 7
SAMPLE_VALUE = re.compile(r"^([^#\n].*) (\S+)$", re.M)  # a node's own text: no timestamps


def node_text() -> str:
    """A real server's /metrics after a create and a click."""
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp))
        try:
            client = server.client()
            comp = client.computers.create()
            with server.http() as http:
                http.post(f"/computers/{comp.id}/click", json={"x": 10, "y": 10}).raise_for_status()
                text = http.get("/metrics").text
            client.computers.delete(comp.id)
            return text
        finally:
            server.stop()


def cpu_ms(fn: Callable[[], bytes]) -> float:
    """Best of RUNS, in ms of this process's CPU."""
    runs = []
    for _ in range(RUNS):
        t0 = time.process_time()
        fn()
        runs.append((time.process_time() - t0) * 1000)
    return min(runs)


def own_values(text: str, i: int) -> str:
    """The text with every sample's value moved by ``i`` (what another node would answer)."""
    return SAMPLE_VALUE.sub(lambda m: f"{m[1]} {floatToGoString(float(m[2]) + i)}", text)


def compare(label: str, texts: dict[str, str]) -> None:
    lines = replica_ops.merge(texts)
    parsed = replica_ops._merge_parsed(texts, lambda node_id: None)
    assert meaning(lines) == meaning(parsed), "the two ways disagree"
    assert all(replica_ops._relabelled(t, n) is not None for n, t in texts.items()), "not read line by line"
    old = cpu_ms(lambda: replica_ops._merge_parsed(texts, lambda node_id: None)) / len(texts)
    new = cpu_ms(lambda: replica_ops.merge(texts)) / len(texts)
    print(f"{label}: {len(texts)} nodes, merged {len(lines)} bytes")
    print(f"  parser   {old:7.3f} ms CPU per node")
    print(f"  lines    {new:7.3f} ms CPU per node   ({old / new:.1f}x less); a 100-node scrape: "
          f"{old * 100:.0f} ms -> {new * 100:.1f} ms of the replica's CPU")


def meaning(text: bytes) -> list[Any]:
    return [(f.name, f.type, f.documentation, [(s.name, sorted(s.labels.items()), s.value, s.timestamp)
                                               for s in f.samples])
            for f in text_string_to_metric_families(text.decode())]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--text", type=Path, help="a saved /metrics text (no server started)")
    args = ap.parse_args()
    text = args.text.read_text() if args.text else node_text()
    print(f"node text: {len(text.splitlines())} lines, {len(text)} bytes")
    compare("copies of one text", {f"node-{i}": text for i in range(args.nodes)})
    compare("values of their own", {f"node-{i}": own_values(text, i) for i in range(args.nodes)})
    print("load: {:.2f} {:.2f} {:.2f}".format(*loadavg()))


if __name__ == "__main__":
    main()
