"""Recordings of computers' screens (core/recording.py).

Revision ID: 0005_recordings
Revises: 0004_responses
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from opencone.core.store.models import UTCDateTime

revision = "0005_recordings"
down_revision = "0004_responses"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recordings",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("org_id", sa.String(64), sa.ForeignKey("organizations.id"), nullable=False, index=True),
        sa.Column("computer_id", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False, index=True),
        sa.Column("keep", sa.Boolean(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("stop_reason", sa.String(64), nullable=True),
        sa.Column("error", sa.String(1024), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("recordings")
