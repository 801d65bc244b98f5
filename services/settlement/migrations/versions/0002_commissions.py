"""Commissions: a split may owe several parties for one reason (the store and the guide both lacking their
commission on a zero-margin order), so a split's receivable is keyed by its creditor too.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE split_receivables DROP CONSTRAINT split_receivables_pkey")
    op.execute("ALTER TABLE split_receivables ADD PRIMARY KEY (order_id, reason, creditor_type, creditor_id)")


def downgrade() -> None:
    op.execute("ALTER TABLE split_receivables DROP CONSTRAINT split_receivables_pkey")
    op.execute("ALTER TABLE split_receivables ADD PRIMARY KEY (order_id, reason)")
