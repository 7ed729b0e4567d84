"""Agent tasks (agent/): one row per task, its parameters, progress and outcome.

Revision ID: 0003_agent_tasks
Revises: 0002_environments
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from opencone.core.store.models import UTCDateTime

revision = "0003_agent_tasks"
down_revision = "0002_environments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_tasks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("org_id", sa.String(64), sa.ForeignKey("organizations.id"), nullable=False, index=True),
        sa.Column("status", sa.String(32), nullable=False, index=True),
        sa.Column("instruction", sa.Text(), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("computer_id", sa.String(64), nullable=True, index=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("task_metadata", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(256), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("usage", sa.JSON(), nullable=False),
        sa.UniqueConstraint("org_id", "idempotency_key", name="uq_agent_tasks_idempotency"),
    )


def downgrade() -> None:
    op.drop_table("agent_tasks")
