"""The store's migrations on PostgreSQL and SQLite: every revision applies, and the schema they build is the
one the models declare (so a model changed without a migration, or a SQLite-only migration, fails here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text

from opencone.core.store.db import make_engine, migrate
from opencone.core.store.models import Base


def _schema_drift(conn: Connection) -> list[object]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": False})
    return list(compare_metadata(ctx, Base.metadata))


async def _check(url: str) -> None:
    engine = make_engine(url)
    try:
        await migrate(engine)
        await migrate(engine)  # a second start finds everything applied
        async with engine.connect() as conn:
            head = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
            assert head == "0008_nodes_notify"
            drift = await conn.run_sync(_schema_drift)
            assert drift == [], f"the migrations and the models differ: {drift}"
    finally:
        await engine.dispose()


@pytest.mark.asyncio(loop_scope="session")
async def test_migrations_match_models_on_postgres(postgres_url: str) -> None:
    await _check(postgres_url)


@pytest.mark.asyncio(loop_scope="session")
async def test_migrations_match_models_on_sqlite(tmp_path: Path) -> None:
    await _check(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
