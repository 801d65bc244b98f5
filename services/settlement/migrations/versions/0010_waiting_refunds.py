"""Refunds that arrive while the provider is mid-way through a split wait here, and are applied as soon as
the split is COMPLETED (by the split-return job), instead of failing their event again and again.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE waiting_refunds (
            order_id    text   NOT NULL REFERENCES splits,
            refund_id   text   NOT NULL,
            amount_fen  bigint NOT NULL CHECK (amount_fen > 0),
            received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (order_id, refund_id)
        )""")


def downgrade() -> None:
    op.execute("DROP TABLE waiting_refunds")
