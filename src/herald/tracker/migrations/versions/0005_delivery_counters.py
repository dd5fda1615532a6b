"""delivery counters: the totals behind /metrics, summed over every delivering process

Revision ID: 0005_delivery_counters
Revises: 0004_admin_sessions
Create Date: 2026-12-07 18:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_delivery_counters"
down_revision = "0004_admin_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "delivery_counters",
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("labels", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("metric", "labels"),
    )


def downgrade() -> None:
    op.drop_table("delivery_counters")
