"""Saved environments of persistent computers.

Revision ID: 0002_environments
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from opencone.core.store.models import UTCDateTime

revision = "0002_environments"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "environments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("org_id", sa.String(64), sa.ForeignKey("organizations.id"), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("saved_at", UTCDateTime(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("context_id", sa.String(256), nullable=True, index=True),
        sa.Column("saved_by", sa.String(64), nullable=True),
        sa.Column("last_error", sa.String(1024), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("environments")
