"""indexes for herald check: notifications by (state, created_at), deliveries by updated_at

Revision ID: 0007_check
Revises: 0006_leader_leases
Create Date: 2026-12-07 18:00:00.000000
"""

from alembic import op

revision = "0007_check"
down_revision = "0006_leader_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_state")
        batch_op.create_index("ix_notifications_state_created", ["state", "created_at"], unique=False)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_updated_at", ["updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_updated_at")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_state_created")
        batch_op.create_index("ix_notifications_state", ["state"], unique=False)
