"""A throwaway PostgreSQL server for tests: Debian's ``postgresql`` binaries, a cluster in a temp dir,
reached only over a Unix socket in that dir (no TCP port: nothing listens on the network, and the
socket works from inside a private network namespace too).

``initdb`` refuses to run as root (CI runs as root), so as root the cluster belongs to the ``postgres``
user and every server command runs through ``runuser``; its clients (the tests, the servers they
start) connect as the database user ``postgres`` with local ``trust`` authentication.

Fixtures (a pytest plugin, loaded by tests/conftest.py):
  ``postgres``      session scope: the running ``PostgresServer`` (skipped, with the reason, when the
                    binaries are missing)
  ``postgres_url``  a fresh, empty database of it for one test: a ``postgresql+asyncpg://`` URL
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

DB_USER = "postgres"


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin dir (Debian keeps them out of PATH), or PATH's."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if debian:
        return debian[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing_reason() -> str | None:
    """Why a throwaway PostgreSQL cannot start here, or None when it can."""
    if find_bindir() is None:
        return "PostgreSQL is not installed (Debian package `postgresql`; scripts/setup.sh --test installs it)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(DB_USER)
        except KeyError:
            return "running as root without a `postgres` user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root without `runuser` to run initdb as `postgres`"
    return None


class PostgresServer:
    """One cluster in its own temp dir; ``start``/``stop`` may be called again (to test an outage)."""

    def __init__(self) -> None:
        reason = missing_reason()
        if reason:
            raise RuntimeError(reason)
        self.bindir = find_bindir()
        assert self.bindir is not None
        # /tmp itself (not pytest's tmp_path, nor $TMPDIR): the cluster's owner must reach it, and a Unix
        # socket path is limited to 107 bytes
        self.root = Path(tempfile.mkdtemp(prefix="opencone-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
        self.data = self.root / "data"
        self.socket_dir = self.root  # the socket is <root>/.s.PGSQL.5432
        self.log_path = self.root / "server.log"
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam(DB_USER)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as_owner = ["runuser", "-u", DB_USER, "--"]
        self._names = itertools.count(1)
        self._run("initdb", "-D", str(self.data), "-U", DB_USER, "-A", "trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-instructions", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self._as_owner, str(self.bindir / tool), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}{log}")

    def start(self) -> None:
        # no TCP at all; durability off (a throwaway cluster); small buffers on a shared machine
        options = (f"-k {self.socket_dir} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c shared_buffers=32MB -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", options, "-w", "-t", "60",
                  "start")

    def stop(self) -> None:
        """Stop the server (an outage to its clients: their connections are cut). ``fast``, not ``immediate``:
        with synchronous_commit off, a crash-like stop would lose the last commits."""
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` over the Unix socket."""
        return f"postgresql+asyncpg://{DB_USER}@/{database}?host={self.socket_dir}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql; its unaligned output."""
        done = subprocess.run([str(self.bindir / "psql"), "-h", str(self.socket_dir), "-U", DB_USER, "-d", database,
                               "-v", "ON_ERROR_STOP=1", "-XAtc", sql], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; its URL."""
        name = f"{prefix}{next(self._names)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    reason = missing_reason()
    if reason:
        print(f"skipping the PostgreSQL tests: {reason}")
        pytest.skip(reason)
    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture()
def postgres_url(postgres: PostgresServer) -> str:
    return postgres.create_database()
