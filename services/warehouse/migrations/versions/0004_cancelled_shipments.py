"""A paid order cancelled before hand-over: its waiting shipments become CANCELLED (CancelFulfilment). Wrong
pickup codes are counted: after MAX_WRONG_CODES the pickup is locked.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BEFORE = "'DISPATCHED', 'READY_FOR_PICKUP', 'DELIVERED', 'CREATED', 'PICKED', 'PACKED'"


def upgrade() -> None:
    op.execute("ALTER TABLE shipments DROP CONSTRAINT shipments_status_check")
    op.execute(f"ALTER TABLE shipments ADD CONSTRAINT shipments_status_check CHECK (status IN ({_BEFORE}, "
               "'CANCELLED'))")
    op.execute("ALTER TABLE shipments ADD COLUMN cancelled_at timestamptz")
    op.execute("ALTER TABLE shipments ADD COLUMN wrong_codes integer NOT NULL DEFAULT 0 CHECK (wrong_codes >= 0)")


def downgrade() -> None:
    op.execute("ALTER TABLE shipments DROP COLUMN wrong_codes")
    op.execute("ALTER TABLE shipments DROP COLUMN cancelled_at")
    op.execute("ALTER TABLE shipments DROP CONSTRAINT shipments_status_check")
    op.execute(f"ALTER TABLE shipments ADD CONSTRAINT shipments_status_check CHECK (status IN ({_BEFORE}))")
