"""Cancelled orders, refunds by line and quantity, the unpaid-order sweeper's queue, and listing orders by
consumer, store and dealer.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE orders DROP CONSTRAINT orders_status_check")
    op.execute("ALTER TABLE orders ADD CONSTRAINT orders_status_check CHECK (status IN "
               "('PENDING_PAYMENT', 'PAID', 'DISPATCHED', 'CANCELLED', 'PARTIALLY_REFUNDED', 'REFUNDED', 'DELIVERED'))")
    # A cancelled order was never paid.
    op.execute("ALTER TABLE orders DROP CONSTRAINT paid_has_payment")
    op.execute("ALTER TABLE orders ADD CONSTRAINT paid_has_payment CHECK (status IN ('PENDING_PAYMENT', "
               "'CANCELLED') OR (payment_txn_id IS NOT NULL AND paid_at IS NOT NULL))")
    op.execute("ALTER TABLE orders ADD COLUMN cancelled_at timestamptz")
    op.execute("ALTER TABLE orders ADD COLUMN cancel_reason text NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE orders ADD COLUMN refunded_fen bigint NOT NULL DEFAULT 0")
    op.execute("ALTER TABLE orders ADD CONSTRAINT refunds_within_payable "
               "CHECK (refunded_fen >= 0 AND refunded_fen <= payable_fen)")
    op.execute("ALTER TABLE orders ADD CONSTRAINT cancelled_has_time "
               "CHECK (status <> 'CANCELLED' OR cancelled_at IS NOT NULL)")
    op.execute("ALTER TABLE order_lines ADD COLUMN refunded_quantity bigint NOT NULL DEFAULT 0")
    op.execute("ALTER TABLE order_lines ADD COLUMN refunded_fen bigint NOT NULL DEFAULT 0")
    op.execute("ALTER TABLE order_lines ADD CONSTRAINT refunds_within_line "
               "CHECK (refunded_quantity BETWEEN 0 AND quantity AND refunded_fen BETWEEN 0 AND line_total_fen)")
    # One row per provider refund: a repeated notification finds it; `refund` is the serialized
    # omo.orders.v1.Refund that was published, so a retry answers with the same amounts.
    op.execute("""
        CREATE TABLE refunds (
            provider_refund_id text PRIMARY KEY,
            order_id           text NOT NULL REFERENCES orders,
            request_hash       bytea NOT NULL,
            amount_fen         bigint NOT NULL CHECK (amount_fen >= 0),
            refund             bytea NOT NULL,
            refunded_at        timestamptz NOT NULL
        )""")
    op.execute("CREATE INDEX refunds_by_order ON refunds (order_id)")
    op.execute("ALTER TABLE orders ADD COLUMN fulfilment_mode text NOT NULL DEFAULT 'CLOUD_SHIPPING' "
               "CHECK (fulfilment_mode IN ('CLOUD_SHIPPING', 'EXPRESS_3H', 'STORE_PICKUP'))")
    op.execute("ALTER TABLE orders ADD COLUMN warehouse_id text NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE orders ADD COLUMN pickup_code text NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE orders ADD COLUMN delivered_at timestamptz")
    # The sweeper's queue: only unpaid orders are in it.
    op.execute("CREATE INDEX orders_awaiting_payment ON orders (created_at) WHERE status = 'PENDING_PAYMENT'")
    # ListOrders pages newest first through one party's orders.
    for party in ("consumer_id", "store_id", "dealer_id"):
        op.execute(f"CREATE INDEX orders_by_{party} ON orders ({party}, created_at DESC, order_id DESC)")


def downgrade() -> None:
    for party in ("consumer_id", "store_id", "dealer_id"):
        op.execute(f"DROP INDEX orders_by_{party}")
    op.execute("DROP INDEX orders_awaiting_payment")
    op.execute("DROP TABLE refunds")
    op.execute("ALTER TABLE order_lines DROP CONSTRAINT refunds_within_line")
    for column in ("refunded_fen", "refunded_quantity"):
        op.execute(f"ALTER TABLE order_lines DROP COLUMN {column}")
    for constraint in ("cancelled_has_time", "refunds_within_payable"):
        op.execute(f"ALTER TABLE orders DROP CONSTRAINT {constraint}")
    for column in ("delivered_at", "pickup_code", "warehouse_id", "fulfilment_mode", "refunded_fen",
                   "cancel_reason", "cancelled_at"):
        op.execute(f"ALTER TABLE orders DROP COLUMN {column}")
    op.execute("ALTER TABLE orders DROP CONSTRAINT paid_has_payment")
    op.execute("ALTER TABLE orders ADD CONSTRAINT paid_has_payment "
               "CHECK (status = 'PENDING_PAYMENT' OR (payment_txn_id IS NOT NULL AND paid_at IS NOT NULL))")
    op.execute("ALTER TABLE orders DROP CONSTRAINT orders_status_check")
    op.execute("ALTER TABLE orders ADD CONSTRAINT orders_status_check "
               "CHECK (status IN ('PENDING_PAYMENT', 'PAID', 'DISPATCHED'))")
