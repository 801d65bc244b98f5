"""Debts between parties that splits left owed (parts of legs above the sharing cap, closed shares,
shortfalls), and the periodic transfers that settle a dealer's debts from its available balance.

A transfer is recorded as REQUESTED (with its provider request number) before the provider is asked, so a
crash before its result is written re-sends the very same request.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE debts (
            creditor_type   text    NOT NULL,
            creditor_id     text    NOT NULL,
            debtor_type     text    NOT NULL,
            debtor_id       text    NOT NULL,
            outstanding_fen bigint  NOT NULL CHECK (outstanding_fen >= 0),
            transfers       integer NOT NULL DEFAULT 0,
            PRIMARY KEY (debtor_type, debtor_id, creditor_type, creditor_id)
        )""")
    op.execute("CREATE INDEX debts_open ON debts (debtor_type, debtor_id) WHERE outstanding_fen > 0")
    op.execute("""
        CREATE TABLE debt_transfers (
            transfer_no   text    PRIMARY KEY,
            creditor_type text    NOT NULL,
            creditor_id   text    NOT NULL,
            debtor_type   text    NOT NULL,
            debtor_id     text    NOT NULL,
            seq           integer NOT NULL,
            amount_fen    bigint  NOT NULL CHECK (amount_fen > 0),
            state         text    NOT NULL,
            requested_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            done_at       timestamptz,
            UNIQUE (debtor_type, debtor_id, creditor_type, creditor_id, seq)
        )""")
    # At most one transfer per dealer in flight: planning spends the dealer's available balance once.
    op.execute("CREATE UNIQUE INDEX debt_transfers_one_open ON debt_transfers (debtor_type, debtor_id) "
               "WHERE state = 'REQUESTED'")


def downgrade() -> None:
    op.execute("DROP TABLE debt_transfers")
    op.execute("DROP TABLE debts")
