"""Vouchers redeemed at a store counter (no order): which store, and what the brand reimburses it.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE coupons ADD COLUMN redeemed_store_id text")
    # A redeemed coupon was redeemed by exactly one order or at exactly one store counter.
    op.execute("ALTER TABLE coupons DROP CONSTRAINT coupons_redeemed_has_order")
    op.execute("""
        ALTER TABLE coupons ADD CONSTRAINT coupons_redeemed_once CHECK (
            (status = 'REDEEMED') = (redeemed_at IS NOT NULL
                                     AND (redeemed_order_id IS NOT NULL) <> (redeemed_store_id IS NOT NULL)))""")
    op.execute("""
        CREATE TABLE counter_redemptions (
            code              text   PRIMARY KEY REFERENCES coupons,
            store_id          text   NOT NULL,
            reimbursement_fen bigint NOT NULL CHECK (reimbursement_fen > 0),
            redeemed_at       timestamptz NOT NULL
        )""")


def downgrade() -> None:
    op.execute("DROP TABLE counter_redemptions")
    op.execute("ALTER TABLE coupons DROP CONSTRAINT coupons_redeemed_once")
    op.execute("ALTER TABLE coupons DROP COLUMN redeemed_store_id")
    op.execute("""
        ALTER TABLE coupons ADD CONSTRAINT coupons_redeemed_has_order CHECK (
            (status = 'REDEEMED') = (redeemed_order_id IS NOT NULL AND redeemed_at IS NOT NULL))""")
