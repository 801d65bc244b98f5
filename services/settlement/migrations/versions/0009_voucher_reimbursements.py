"""Vouchers redeemed at a store counter and reimbursed by the brand: once per voucher.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE voucher_reimbursements (
            code          text   PRIMARY KEY,
            brand_id      text   NOT NULL,
            store_id      text   NOT NULL,
            amount_fen    bigint NOT NULL CHECK (amount_fen > 0),
            journal_id    text   NOT NULL REFERENCES journals DEFERRABLE INITIALLY DEFERRED,
            reimbursed_at timestamptz NOT NULL DEFAULT clock_timestamp()
        )""")


def downgrade() -> None:
    op.execute("DROP TABLE voucher_reimbursements")
