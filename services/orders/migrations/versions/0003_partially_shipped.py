"""Orders served from several locations follow their shipments: PARTIALLY_SHIPPED while some have left.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BEFORE = "'PENDING_PAYMENT', 'PAID', 'DISPATCHED', 'CANCELLED', 'PARTIALLY_REFUNDED', 'REFUNDED', 'DELIVERED'"


def upgrade() -> None:
    op.execute("ALTER TABLE orders DROP CONSTRAINT orders_status_check")
    op.execute(f"ALTER TABLE orders ADD CONSTRAINT orders_status_check CHECK (status IN ({_BEFORE}, "
               "'PARTIALLY_SHIPPED'))")
    op.execute("ALTER TABLE orders ADD CONSTRAINT partially_shipped_has_shipment "
               "CHECK (status <> 'PARTIALLY_SHIPPED' OR (shipment_id IS NOT NULL AND dispatched_at IS NOT NULL))")


def downgrade() -> None:
    op.execute("ALTER TABLE orders DROP CONSTRAINT partially_shipped_has_shipment")
    op.execute("ALTER TABLE orders DROP CONSTRAINT orders_status_check")
    op.execute(f"ALTER TABLE orders ADD CONSTRAINT orders_status_check CHECK (status IN ({_BEFORE}))")
