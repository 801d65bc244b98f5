"""Orders with their price snapshot, payment notifications and refused placements.

Revision ID: 0001
Revises:
"""

from alembic import op

from services.runtime.tables import create_platform_tables, drop_platform_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_platform_tables(op)
    # order_id is derived from idempotency_key, so both identify the placement; request_hash tells a retry from
    # a different request that reuses the key.
    op.execute("""
        CREATE TABLE orders (
            order_id              text PRIMARY KEY,
            idempotency_key       text NOT NULL UNIQUE,
            request_hash          bytea NOT NULL,
            status                text NOT NULL CHECK (status IN ('PENDING_PAYMENT', 'PAID', 'DISPATCHED')),
            store_id              text NOT NULL,
            dealer_id             text NOT NULL,
            brand_id              text NOT NULL,
            consumer_id           text NOT NULL,
            attribution_scene     text NOT NULL DEFAULT '',
            attribution_dealer_id text NOT NULL,
            attribution_store_id  text NOT NULL,
            attribution_guide_id  text NOT NULL DEFAULT '',
            coupon_code           text,
            coupon_funder         text CHECK (coupon_funder IN ('BRAND')),
            coupon_discount_fen   bigint,
            subtotal_fen          bigint NOT NULL CHECK (subtotal_fen > 0),
            discount_fen          bigint NOT NULL CHECK (discount_fen >= 0),
            payable_fen           bigint NOT NULL,
            reservation_id        text NOT NULL,
            payment_txn_id        text,
            shipment_id           text,
            created_at            timestamptz NOT NULL,
            paid_at               timestamptz,
            dispatched_at         timestamptz,
            CONSTRAINT payable_is_subtotal_less_discount
                CHECK (payable_fen = subtotal_fen - discount_fen AND payable_fen >= 0),
            CONSTRAINT discount_is_the_coupon CHECK (
                (coupon_code IS NULL AND coupon_funder IS NULL AND coupon_discount_fen IS NULL AND discount_fen = 0)
                OR (coupon_code IS NOT NULL AND coupon_funder IS NOT NULL AND coupon_discount_fen = discount_fen)),
            CONSTRAINT paid_has_payment
                CHECK (status = 'PENDING_PAYMENT' OR (payment_txn_id IS NOT NULL AND paid_at IS NOT NULL)),
            CONSTRAINT dispatched_has_shipment
                CHECK (status <> 'DISPATCHED' OR (shipment_id IS NOT NULL AND dispatched_at IS NOT NULL))
        )""")
    op.execute("""
        CREATE TABLE order_lines (
            order_id              text NOT NULL REFERENCES orders,
            line_no               integer NOT NULL,
            sku_id                text NOT NULL,
            name                  text NOT NULL,
            quantity              bigint NOT NULL CHECK (quantity > 0),
            unit_price_fen        bigint NOT NULL CHECK (unit_price_fen > 0),
            unit_supply_price_fen bigint NOT NULL CHECK (unit_supply_price_fen >= 0),
            line_total_fen        bigint NOT NULL,
            PRIMARY KEY (order_id, line_no),
            CONSTRAINT line_total_is_price_times_quantity CHECK (line_total_fen = unit_price_fen * quantity)
        )""")
    # One row per provider transaction (a repeated notification finds its row); one payment per order as
    # defence in depth behind the PENDING_PAYMENT -> PAID check.
    op.execute("""
        CREATE TABLE payments (
            provider_txn_id text PRIMARY KEY,
            order_id        text NOT NULL UNIQUE REFERENCES orders,
            amount_fen      bigint NOT NULL CHECK (amount_fen > 0),
            received_at     timestamptz NOT NULL
        )""")
    # A placement that a dependency refused after stock was reserved (a coupon already used, say). The refusal is
    # kept so that reusing the key replays it instead of re-running the saga against released stock.
    op.execute("""
        CREATE TABLE placement_refusals (
            idempotency_key text PRIMARY KEY,
            request_hash    bytea NOT NULL,
            code            text NOT NULL,
            message         text NOT NULL,
            status_details  bytea NOT NULL,
            refused_at      timestamptz NOT NULL DEFAULT now()
        )""")


def downgrade() -> None:
    for table in ("placement_refusals", "payments", "order_lines", "orders"):
        op.execute(f"DROP TABLE {table}")
    drop_platform_tables(op)
