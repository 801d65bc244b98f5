"""COMPLETED: the consumer had every item and the after-sales window passed; the completion sweeper's queue.
When a pickup was set aside at the counter, for the pickup-expiry sweeper.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BEFORE = ("'PENDING_PAYMENT', 'PAID', 'DISPATCHED', 'CANCELLED', 'PARTIALLY_REFUNDED', 'REFUNDED', 'DELIVERED', "
           "'PARTIALLY_SHIPPED'")


def upgrade() -> None:
    op.execute("ALTER TABLE orders DROP CONSTRAINT orders_status_check")
    op.execute(f"ALTER TABLE orders ADD CONSTRAINT orders_status_check CHECK (status IN ({_BEFORE}, 'COMPLETED'))")
    op.execute("ALTER TABLE orders ADD COLUMN completed_at timestamptz")
    op.execute("ALTER TABLE orders ADD CONSTRAINT completed_has_time "
               "CHECK ((status = 'COMPLETED') = (completed_at IS NOT NULL))")
    op.execute("ALTER TABLE orders ADD COLUMN pickup_ready_at timestamptz")
    op.execute("CREATE INDEX orders_awaiting_pickup ON orders (pickup_ready_at) "
               "WHERE pickup_ready_at IS NOT NULL AND dispatched_at IS NULL")
    # The completion sweeper's queue: only orders that may still complete are in it.
    op.execute("CREATE INDEX orders_in_after_sales ON orders (coalesce(delivered_at, dispatched_at)) "
               "WHERE status IN ('DELIVERED', 'DISPATCHED', 'PARTIALLY_REFUNDED')")


def downgrade() -> None:
    op.execute("DROP INDEX orders_in_after_sales")
    op.execute("DROP INDEX orders_awaiting_pickup")
    op.execute("ALTER TABLE orders DROP COLUMN pickup_ready_at")
    op.execute("ALTER TABLE orders DROP CONSTRAINT completed_has_time")
    op.execute("ALTER TABLE orders DROP COLUMN completed_at")
    op.execute("ALTER TABLE orders DROP CONSTRAINT orders_status_check")
    op.execute(f"ALTER TABLE orders ADD CONSTRAINT orders_status_check CHECK (status IN ({_BEFORE}))")
