"""The model gateway's overhead: ``/v1/chat/completions`` and ``/v1/responses`` through opencone
beside the same call made directly to the upstream, in the same run.

Run by hand, never in CI:

    .venv/bin/python bench/bench_gateway.py            # 300 samples per row (~1 minute)
    .venv/bin/python bench/bench_gateway.py --quick    # 50 samples

The upstream is the fake model server of the tests (tests/fake_models, another process) in
its ``fast`` mode, answering at once; opencone is configured as a user would
(``OPENAI_BASE_URL`` + ``OPENAI_API_KEY``, ``ANTHROPIC_BASE_URL`` + ``ANTHROPIC_API_KEY``).
Both sides are called with the official ``openai`` SDK (sync, ``max_retries=0``, keep-alive
connections), samples interleaved one by one so background load hits both alike.

Rows (direct → through opencone):

- **chat**: ``chat.completions.create`` to the fake → the same through opencone (pass-through);
- **chat stream, first chunk / whole**: ``stream=True`` with ``include_usage``: time to the first
  chunk the SDK yields, and to the end;
- **responses (native)**: ``responses.create`` to the fake's Responses API → through opencone
  (pass-through, plus the row that notes whose the response is);
- **responses stream, first event / whole** (native);
- **chat (Anthropic)**: ``anthropic`` SDK ``messages.create`` to the fake → ``chat.completions.create``
  of ``anthropic/…`` through opencone (translated both ways);
- **responses (emulated over Anthropic)**: ``messages.create`` → ``responses.create`` of
  ``anthropic/…`` through opencone (emulated: the Response built and stored with its event log).

Columns: p50 and p95 in ms of each side, the ratio of the medians, Δ (opencone's median minus
the direct one: what the gateway adds), and **cpu**: the opencone server process's CPU time
(user + system) per call, over all of that row's calls through it: what the gateway costs the
machine, which the load of other jobs does not change as much as it changes latency. Targets:
≤ 2 ms p50 added, and ≤ 2 ms added to a stream's first chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import psutil
from _common import loadavg, start_server, summary

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fake_models import start_fake  # noqa: E402  (the tests' fake upstream)

MESSAGES = [{"role": "user", "content": "say something short"}]


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def first_and_whole(make: Callable[[], Any]) -> tuple[float, float]:
    """Milliseconds to the first item a stream yields, and to its end."""
    t0 = time.perf_counter()
    first = None
    with make() as stream:
        for _ in stream:
            if first is None:
                first = (time.perf_counter() - t0) * 1000
    return first or 0.0, (time.perf_counter() - t0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="50 samples")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/gateway-<time>.json")
    args = parser.parse_args()
    samples = 50 if args.quick else args.samples
    warmup = 20

    fake = start_fake(mode="fast", log_bodies=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    server = start_server(tmp, env={**fake.openai_env(), **fake.anthropic_env(), "OPENCONE_POOL_SIZE": "0",
                                    "OPENCONE_MODEL_MAX_RETRIES": "0", "OPENCONE_LOG_LEVEL": "warning"})
    try:
        direct = openai.OpenAI(api_key=fake.api_key, base_url=fake.base_url, max_retries=0)
        ours = openai.OpenAI(api_key=server.api_key, base_url=f"{server.base_url}/v1", max_retries=0)
        claude = anthropic.Anthropic(api_key=fake.api_key, base_url=fake.anthropic_base_url, max_retries=0)

        def chat(client: openai.OpenAI, model: str) -> Callable[[], Any]:
            return lambda: client.chat.completions.create(model=model, messages=MESSAGES)  # type: ignore[arg-type]

        def chat_stream(client: openai.OpenAI, model: str) -> Callable[[], Any]:
            return lambda: client.chat.completions.create(model=model, messages=MESSAGES, stream=True,  # type: ignore
                                                          stream_options={"include_usage": True})

        def responses(client: openai.OpenAI, model: str) -> Callable[[], Any]:
            return lambda: client.responses.create(model=model, input="say something short")

        def responses_stream(client: openai.OpenAI, model: str) -> Callable[[], Any]:
            return lambda: client.responses.create(model=model, input="say something short", stream=True)

        def messages() -> Any:
            return claude.messages.create(model="claude-sonnet-4-5", max_tokens=256, messages=MESSAGES)  # type: ignore

        rows: list[tuple[str, Callable[[], Any], Callable[[], Any], str]] = [
            ("chat", chat(direct, "gpt-5.4"), chat(ours, "openai/gpt-5.4"), "call"),
            ("chat stream", chat_stream(direct, "gpt-5.4"), chat_stream(ours, "openai/gpt-5.4"), "stream"),
            ("responses (native)", responses(direct, "gpt-5.4"), responses(ours, "openai/gpt-5.4"), "call"),
            ("responses stream (native)", responses_stream(direct, "gpt-5.4"),
             responses_stream(ours, "openai/gpt-5.4"), "stream"),
            ("chat (Anthropic, translated)", messages, chat(ours, "anthropic/claude-sonnet-4-5"), "call"),
            ("responses (emulated over Anthropic)", messages, responses(ours, "anthropic/claude-sonnet-4-5"), "call"),
        ]
        proc = psutil.Process(server.process.pid)
        results: dict[str, Any] = {}
        for name, raw, gateway, kind in rows:
            series: dict[str, list[float]] = {}
            cpu = 0.0
            for n in range(warmup + samples):
                for side, fn in (("direct", raw), ("opencone", gateway)):
                    before = proc.cpu_times()
                    if kind == "stream":
                        first, whole = first_and_whole(fn)
                        values = {f"{side} first": first, f"{side} whole": whole}
                    else:
                        values = {side: timed(fn)}
                    after = proc.cpu_times()
                    if n >= warmup:
                        for key, value in values.items():
                            series.setdefault(key, []).append(value)
                        if side == "opencone":
                            cpu += (after.user - before.user) + (after.system - before.system)
                fake.clear()  # (its log is not kept: the fake is not what is measured)
            results[name] = {key: summary(values) for key, values in series.items()}
            results[name]["server cpu ms per call"] = cpu / samples * 1000
        print_table(results, samples)
        if not args.no_json:
            out = Path(__file__).with_name("results")
            out.mkdir(exist_ok=True)
            path = out / f"gateway-{time.strftime('%Y%m%d-%H%M%S')}.json"
            path.write_text(json.dumps({"samples": samples, "loadavg": loadavg(), "cpus": os.cpu_count(),
                                        "results": results}, indent=2))
            print(f"\nwritten to {path}")
    finally:
        server.stop()
        fake.stop()


def print_table(results: dict[str, Any], samples: int) -> None:
    print(f"\n{samples} samples per row, load {loadavg()[0]:.2f} on {os.cpu_count()} cpus; ms\n")
    print(f"{'row':<44} {'direct p50':>10} {'p95':>7} {'opencone p50':>13} {'p95':>7} {'ratio':>6} {'Δ ms':>6} "
          f"{'cpu':>5}")
    for name, figures in results.items():
        pairs = [("", "direct", "opencone")] if "direct" in figures else \
            [(" (first chunk)", "direct first", "opencone first"), (" (whole)", "direct whole", "opencone whole")]
        for label, d, o in pairs:
            dd, oo = figures[d], figures[o]
            cpu = f"{figures['server cpu ms per call']:>5.2f}" if label != " (whole)" else ""
            print(f"{name + label:<44} {dd['p50']:>10.2f} {dd['p95']:>7.2f} {oo['p50']:>13.2f} {oo['p95']:>7.2f} "
                  f"{oo['p50'] / dd['p50']:>6.2f} {oo['p50'] - dd['p50']:>6.2f} {cpu}")


if __name__ == "__main__":
    main()
