"""State: SQLAlchemy 2 (async), SQLite by default, PostgreSQL by URL, Alembic migrations."""
