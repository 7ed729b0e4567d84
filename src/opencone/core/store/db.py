"""Engine, sessions and migrations."""

from __future__ import annotations

import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from opencone.core.errors import ServiceError

MIGRATIONS = Path(__file__).with_name("migrations")


class DatabaseUnavailable(ServiceError):
    """The database server cannot be reached (PostgreSQL down, restarting, out of connections): a 503 that
    says so, not a 500 naming a socket error. Computers already running keep working."""

    status = 503

    def __init__(self, message: str = "the database (PostgreSQL) is unavailable; retry later",
                 **details: object) -> None:
        super().__init__(message, **details)


# asyncpg's errors that mean "no server to talk to" (by name: asyncpg is only there with PostgreSQL)
_UNREACHABLE = {"ConnectionDoesNotExistError", "CannotConnectNowError", "ConnectionFailureError",
                "AdminShutdownError", "CrashShutdownError", "TooManyConnectionsError"}


def unavailable(exc: BaseException | None) -> bool:
    """Whether ``exc`` (a driver's error, raw or as SQLAlchemy wraps it) means the server is out of reach,
    as opposed to a statement it refused."""
    from sqlalchemy.exc import DBAPIError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    seen = 0
    while exc is not None and seen < 5:  # SQLAlchemy's wrapper -> the adapter's -> asyncpg's own
        if isinstance(exc, DatabaseUnavailable | OSError | TimeoutError | PoolTimeout):
            return True
        if isinstance(exc, OperationalError) or type(exc).__name__ in _UNREACHABLE:
            return True
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__
        seen += 1
    return False


def _unavailable_is_503(engine: AsyncEngine) -> None:
    """A server that cannot be reached raises ``DatabaseUnavailable``: both when a connection is opened
    (asyncpg raises a bare OSError there, which SQLAlchemy passes through unwrapped) and when one drops."""

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect, _record, cargs, cparams):  # type: ignore[no-untyped-def]
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:
            if unavailable(exc):
                raise DatabaseUnavailable(reason=type(exc).__name__) from exc
            raise

    @event.listens_for(engine.sync_engine, "handle_error")
    def _error(ctx):  # type: ignore[no-untyped-def]
        if ctx.is_disconnect or unavailable(ctx.original_exception):
            return DatabaseUnavailable(reason=type(ctx.original_exception).__name__)
        return None


PG_CONNECT_TIMEOUT = 10.0  # asyncpg waits 60 s for a server that does not answer: a create would hang that long


def _ping_when_idle(engine: AsyncEngine, seconds: float) -> None:
    """The pool's pre-ping, only for a connection idle longer than ``seconds`` (one that was just used
    is there; a busy server saves a round trip per checkout). A failed ping: a new connection. Before
    that, at every checkout, a connection the server closed (a restart, an admin's terminate: asyncpg
    saw its socket end) is known closed without a round trip, and replaced."""
    from sqlalchemy.exc import DisconnectionError

    @event.listens_for(engine.sync_engine, "checkin")
    def _checkin(_dbapi_conn, record):  # type: ignore[no-untyped-def]
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checkout(dbapi_conn, record, _proxy):  # type: ignore[no-untyped-def]
        driver = getattr(dbapi_conn, "_connection", None)  # SQLAlchemy's adapter around asyncpg's connection
        if driver is not None and getattr(driver, "is_closed", lambda: False)():
            raise DisconnectionError("the database closed this connection")
        since = record.info.get("idle_since")
        if since is not None and time.monotonic() - since > seconds:
            try:
                dbapi_conn.ping()
            except Exception as exc:
                raise DisconnectionError(str(exc)) from exc


def make_engine(url: str, *, autocommit: bool = False, ping_idle_after: float | None = None) -> AsyncEngine:
    """``autocommit``: every statement its own transaction, with no BEGIN/COMMIT round trips, and a ping of
    one round trip (asyncpg's ping of a connection in a transaction mode is BEGIN, ping, ROLLBACK).
    ``ping_idle_after``: a connection is pinged at checkout only when idle that long (else always)."""
    extra: dict[str, object] = {"connect_args": {"timeout": PG_CONNECT_TIMEOUT}} \
        if url.startswith("postgresql+asyncpg") else {}
    if autocommit:
        extra["isolation_level"] = "AUTOCOMMIT"
    pre_ping = not url.startswith("sqlite") and ping_idle_after is None
    engine = create_async_engine(url, pool_pre_ping=pre_ping, **extra)
    if ping_idle_after is not None and not url.startswith("sqlite"):
        _ping_when_idle(engine, ping_idle_after)
    if not url.startswith("sqlite"):
        _unavailable_is_503(engine)
    if url.startswith("sqlite"):
        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # CLI and server may share the file
            cur.execute("PRAGMA synchronous=NORMAL")  # WAL: safe against a crash, no fsync per commit
            cur.execute("PRAGMA busy_timeout=5000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    return engine


def _upgrade(connection: Connection) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def migrate(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(engine, expire_on_commit=False)
