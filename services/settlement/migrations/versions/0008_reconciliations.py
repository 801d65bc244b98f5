"""The latest reconciliation of each day against the provider's bill.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE reconciliations (
            day           text    PRIMARY KEY,
            bill_lines    integer NOT NULL,
            ledger_lines  integer NOT NULL,
            matched       integer NOT NULL,
            -- [{kind, type, reference, bill_fen, ledger_fen}, ...]
            breaks        jsonb   NOT NULL,
            reconciled_at timestamptz NOT NULL DEFAULT clock_timestamp()
        )""")


def downgrade() -> None:
    op.execute("DROP TABLE reconciliations")
