"""Coupons and their redemptions.

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
    # brand_id and consumer_id belong to other services (catalog, the mall's members): no foreign keys.
    op.execute("""
        CREATE TABLE coupons (
            code              text PRIMARY KEY,
            brand_id          text   NOT NULL,
            consumer_id       text   NOT NULL,
            funder            text   NOT NULL CHECK (funder IN ('BRAND')),
            face_value_fen    bigint NOT NULL CHECK (face_value_fen > 0),
            min_order_fen     bigint NOT NULL CHECK (min_order_fen >= 0),
            status            text   NOT NULL CHECK (status IN ('ISSUED', 'REDEEMED')),
            redeemed_order_id text,
            issued_at         timestamptz NOT NULL,
            redeemed_at       timestamptz,
            CONSTRAINT coupons_redeemed_has_order CHECK (
                (status = 'REDEEMED') = (redeemed_order_id IS NOT NULL AND redeemed_at IS NOT NULL))
        )""")
    op.execute("CREATE INDEX coupons_consumer ON coupons (consumer_id, brand_id)")
    # The primary key on code is what makes a coupon redeemable at most once, whatever the application does.
    # The idempotency key lives here rather than in the generic idempotency table so that a redemption is one
    # row written in one statement on the order-placing hot path.
    op.execute("""
        CREATE TABLE redemptions (
            code               text PRIMARY KEY REFERENCES coupons,
            order_id           text   NOT NULL,
            discount_fen       bigint NOT NULL CHECK (discount_fen > 0),
            order_subtotal_fen bigint NOT NULL CHECK (order_subtotal_fen >= discount_fen),
            idempotency_key    text   NOT NULL CONSTRAINT redemptions_idempotency_key UNIQUE,
            request_hash       bytea  NOT NULL,
            redeemed_at        timestamptz NOT NULL
        )""")
    op.execute("CREATE INDEX redemptions_order ON redemptions (order_id)")


def downgrade() -> None:
    for table in ("redemptions", "coupons"):
        op.execute(f"DROP TABLE {table}")
    drop_platform_tables(op)
