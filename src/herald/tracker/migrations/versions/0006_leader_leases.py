"""leader leases: the one outbox relay of a deployment of many hosts

Revision ID: 0006_leader_leases
Revises: 0005_delivery_counters
Create Date: 2026-12-07 18:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_leader_leases"
down_revision = "0005_delivery_counters"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leader_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=True),
        sa.Column("fence", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("leader_leases")
