"""The fleet (OPENCONE_FLEET=ray): the node each object a node made lives on (a task, a stored response,
a saved environment, a recording, an OpenEnv session), so any replica routes a request about it there.

Revision ID: 0007_fleet_objects
Revises: 0006_fleet
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from opencone.core.store.models import UTCDateTime

revision = "0007_fleet_objects"
down_revision = "0006_fleet"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fleet_objects",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("org_id", sa.String(64), nullable=False, index=True),
        sa.Column("node_id", sa.String(128), nullable=False, index=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fleet_objects")
