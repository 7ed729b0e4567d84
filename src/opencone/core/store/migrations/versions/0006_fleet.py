"""The fleet (OPENCONE_FLEET=ray): the nodes table, and the node each computer runs on.

Revision ID: 0006_fleet
Revises: 0005_recordings
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from opencone.core.store.models import UTCDateTime

revision = "0006_fleet"
down_revision = "0005_recordings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("ray_node_id", sa.String(128), nullable=True, index=True),
        sa.Column("url", sa.String(1024), nullable=False),
        sa.Column("incarnation", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("capacity_browser", sa.Integer(), nullable=False),
        sa.Column("capacity_desktop", sa.Integer(), nullable=False),
        sa.Column("live_browser", sa.Integer(), nullable=False),
        sa.Column("live_desktop", sa.Integer(), nullable=False),
        sa.Column("reserved_browser", sa.Integer(), nullable=False),
        sa.Column("reserved_desktop", sa.Integer(), nullable=False),
        sa.Column("reserved_at", UTCDateTime(), nullable=True),
        sa.Column("free_mem_mb", sa.Integer(), nullable=False),
        sa.Column("load", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    # batch: SQLite cannot ALTER a table in place (render_as_batch in env.py); PostgreSQL just adds the column
    with op.batch_alter_table("computers") as batch:
        batch.add_column(sa.Column("node_id", sa.String(128), nullable=True))
        batch.create_index("ix_computers_node_id", ["node_id"])


def downgrade() -> None:
    with op.batch_alter_table("computers") as batch:
        batch.drop_index("ix_computers_node_id")
        batch.drop_column("node_id")
    op.drop_table("nodes")
