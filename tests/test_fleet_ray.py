"""The fleet on Ray, run where Ray may run: inside a private network namespace.

Ray probes cloud-metadata addresses when a head starts, whatever its settings say, and no test may send
traffic anywhere but 127.0.0.1: so the fleet's tests run in a pytest of their own under ``unshare -n``
with loopback up and ``RAY_USAGE_STATS_ENABLED=0`` (CI runs as root), and each test here passes when
every one of its module's passed there: tests/fleet_ray_cases.py (the fleet in use, and its failures),
then tests/fleet_gcs_cases.py (a cluster of its own whose head loses its GCS). Skipped, saying why,
without Ray, ``unshare``, root or PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
CASES = TESTS / "fleet_ray_cases.py"
GCS_CASES = TESTS / "fleet_gcs_cases.py"


def _skip_reason() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed (pip install 'opencone[ray]')"
    if shutil.which("unshare") is None:
        return "`unshare` (util-linux) is missing: the Ray tests run in a private network namespace"
    if os.geteuid() != 0:
        return "not root: `unshare -n` needs CAP_SYS_ADMIN (CI runs as root)"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"`unshare -n` is not permitted here: {probe.stderr.strip()[:200]}"
    from postgres import missing_reason

    return missing_reason()


def _run_in_netns(cases: Path, timeout: float) -> str:
    """Run a cases module under ``unshare -n``; its output, once every test of it passed."""
    reason = _skip_reason()
    if reason:
        print(f"skipping the Ray fleet tests: {reason}")
        pytest.skip(reason)
    env = {**os.environ, "OPENCONE_TEST_NETNS": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONFAULTHANDLER": "1"}
    done = subprocess.run(["unshare", "-n", sys.executable, "-m", "pytest", str(cases), "-q", "-x", "-s",
                           "-p", "no:cacheprovider", "-o", "addopts="],
                          cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=timeout)
    out = done.stdout
    report = out[out.find("= FAILURES ="):] if "= FAILURES =" in out else out[-4000:]
    assert done.returncode == 0, \
        f"the fleet tests failed in their network namespace:\n{report[-8000:]}\n{done.stderr[-2000:]}"
    summary = out.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, summary
    return out


@pytest.mark.timeout(600)
def test_fleet_in_a_private_network_namespace() -> None:
    out = _run_in_netns(CASES, 560)
    print("\n".join(line for line in out.splitlines() if "node_lost in" in line or "creates through" in line))


@pytest.mark.timeout(300)
def test_fleet_without_its_head() -> None:
    """A cluster of its own whose GCS is killed (run after the other: it needs nothing of it)."""
    _run_in_netns(GCS_CASES, 260)
