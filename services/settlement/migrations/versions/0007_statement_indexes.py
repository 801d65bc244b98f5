"""Statements read a party's orders of one day.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX splits_dealer_day ON splits (dealer_id, settled_at)")
    op.execute("CREATE INDEX splits_brand_day ON splits (brand_id, settled_at)")


def downgrade() -> None:
    op.execute("DROP INDEX splits_brand_day")
    op.execute("DROP INDEX splits_dealer_day")
