"""Organisations, API keys and computers.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

from opencone.core.store.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("org_id", sa.String(64), sa.ForeignKey("organizations.id"), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(128), nullable=False, unique=True),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
    )
    op.create_table(
        "computers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("org_id", sa.String(64), sa.ForeignKey("organizations.id"), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False, index=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_activity_at", UTCDateTime(), nullable=False),
        sa.Column("max_lifetime_seconds", sa.Integer(), nullable=False),
        sa.Column("inactivity_timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("idle_timeout_enabled", sa.Boolean(), nullable=False),
        sa.Column("display_width", sa.Integer(), nullable=False),
        sa.Column("display_height", sa.Integer(), nullable=False),
        sa.Column("display_scale", sa.Float(), nullable=False),
        sa.Column("persistent", sa.Boolean(), nullable=False),
        sa.Column("environment_id", sa.String(64), nullable=True),
        sa.Column("context_id", sa.String(256), nullable=True, index=True),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("terminated_at", UTCDateTime(), nullable=True),
        sa.Column("termination_reason", sa.String(64), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("computers")
    op.drop_table("api_keys")
    op.drop_table("organizations")
