"""Fleet settings: what a server refuses to start with, what placement takes from them, and that local mode
imports nothing of the fleet (nor asyncpg)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import typer

from opencone import cli
from opencone.config import Settings
from opencone.fleet import placement


def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENCONE_")}
    return subprocess.run([sys.executable, "-m", "opencone", "serve", "--port", "0", "--data-dir", str(tmp_path)],
                          env={**clean, **env}, capture_output=True, text=True, timeout=120)


def test_a_fleet_server_without_postgresql_stops_at_start_saying_why(tmp_path: Path) -> None:
    done = _serve(tmp_path, OPENCONE_FLEET="ray")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.startswith("opencone: bad setting: OPENCONE_FLEET=ray needs "
                                  "OPENCONE_DATABASE_URL=postgresql+asyncpg://"), done.stderr[-2000:]


@pytest.mark.parametrize(("env", "says"), [
    ({"OPENCONE_FLEET": "ray", "OPENCONE_DATABASE_URL": "sqlite+aiosqlite:///x.db"},
     "OPENCONE_FLEET=ray needs OPENCONE_DATABASE_URL=postgresql+asyncpg://"),
    ({"OPENCONE_FLEET": "kubernetes"}, "OPENCONE_FLEET: Input should be 'local' or 'ray'"),
    ({"OPENCONE_DATABASE_URL": "postgresql://u:hunter2-secret@db/x"},
     "OPENCONE_DATABASE_URL: unsupported database URL scheme 'postgresql'"),
    ({"OPENCONE_FLEET_INTERNAL_TOKEN": "short"}, "OPENCONE_FLEET_INTERNAL_TOKEN: String should have at least 16"),
])
def test_bad_fleet_settings_are_named_one_a_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                  env: dict[str, str], says: str) -> None:
    for name in [k for k in os.environ if k.startswith("OPENCONE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(typer.Exit) as stopped:
        cli._settings(None)
    err = capsys.readouterr().err
    assert stopped.value.exit_code == 2
    # the setting as the user spells it, no value echoed (a URL may hold a password)
    assert err.startswith("opencone: bad setting: ") and says in err and "hunter2" not in err, err


def test_placement_takes_its_options_from_the_settings() -> None:
    s = Settings(fleet_placement_k=3, fleet_heartbeat_ttl_seconds=4.5, fleet_browser_memory_mb=100,
                 fleet_desktop_memory_mb=900)
    assert placement.settings_kwargs(s) == {"k": 3, "heartbeat_ttl": timedelta(seconds=4.5),
                                            "memory_reserve_mb": {"browser": 100, "desktop": 900}}
    fleet = Settings(fleet="ray", database_url="postgresql+asyncpg://u@/db?host=/tmp")
    assert fleet.fleet == "ray" and fleet.resolved_database_url.startswith("postgresql+asyncpg://")


def test_local_mode_imports_nothing_of_the_fleet() -> None:
    code = ("import sys; from opencone.config import Settings; from opencone.api.app import create_app; "
            "create_app(Settings()); "
            "print(sorted(m for m in sys.modules if m.startswith(('opencone.fleet', 'asyncpg', 'ray'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
