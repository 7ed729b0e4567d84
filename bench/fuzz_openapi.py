"""A long schemathesis run over opencone's OpenAPI document (tests/test_openapi_fuzz.py runs a short one in CI).

Run by hand, never in CI:

    .venv/bin/python bench/fuzz_openapi.py                    # 100 requests per operation and mode (~5000)
    .venv/bin/python bench/fuzz_openapi.py --examples 20 --seed 7

It starts a server of its own (``opencone.fuzz.SERVER_ENV``), makes one live computer, and
sends every operation ``--examples`` generated requests per mode (valid data, and data the
document calls invalid) with the server's key; each answer is checked for no 5xx and a
status, media type, headers and body the document declares (``opencone.fuzz.CHECKS``). The
two never-ending streams (/events, /screencast) are left out. Prints the findings, one per
kind and operation, and writes ``bench/results/fuzz-<time>.json``; exits 1 on any finding.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import start_server

from opencone import fuzz


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="requests per operation and mode")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/fuzz-<time>.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opencone-fuzz-") as tmp:
        server = start_server(Path(tmp), env=fuzz.SERVER_ENV)
        try:
            cid = server.client().computers.create().id
            report = fuzz.run(server, cid, examples=args.examples, seed=args.seed)
        finally:
            server.stop()
    print(report.summary())
    if not args.no_json:
        out = Path(__file__).with_name("results") / f"fuzz-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"examples": args.examples, "seed": args.seed, **dataclasses.asdict(report)},
                                  indent=1, default=str))
        print(f"wrote {out}")
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
