"""Alembic environment: runs on a connection handed over by ``opencone.core.store.db``."""

from __future__ import annotations

from alembic import context

from opencone.core.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the programmatic path is supported
    raise RuntimeError("run migrations through opencone.core.store.db.migrate()")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
