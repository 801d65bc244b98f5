"""The queues of open split returns and open debt transfers keyed on `done_at IS NULL` instead of on their state.

Why: finishing split returns (`... WHERE return_no = ANY(:nos) AND state = 'REQUESTED'`), retrying them, and
finishing debt transfers (`... AND state = 'REQUESTED'`) imply the old predicates `state = 'REQUESTED'`, so
the planner could serve them from these partial indexes, and a plan made while the tables were empty did:
each such statement then read every open row's entry (dead ones included) instead of probing the primary
key for the few it names. `done_at IS NULL` describes the same rows (a return or a transfer gets its
`done_at` in the statement that makes it final, and only then), now checked by a constraint, and the
statements that finish rows cannot use it; the job queries that want the open rows say `done_at IS NULL`
too. The transfer index stays unique: at most one transfer per dealer in flight.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE split_returns ADD CONSTRAINT split_returns_done_when_final "
               "CHECK ((state = 'REQUESTED') = (done_at IS NULL))")
    op.execute("DROP INDEX split_returns_due")
    op.execute("CREATE INDEX split_returns_due ON split_returns (next_attempt_at) WHERE done_at IS NULL")
    op.execute("ALTER TABLE debt_transfers ADD CONSTRAINT debt_transfers_done_when_final "
               "CHECK ((state = 'REQUESTED') = (done_at IS NULL))")
    op.execute("DROP INDEX debt_transfers_one_open")
    op.execute("CREATE UNIQUE INDEX debt_transfers_one_open ON debt_transfers (debtor_type, debtor_id) "
               "WHERE done_at IS NULL")


def downgrade() -> None:
    op.execute("DROP INDEX debt_transfers_one_open")
    op.execute("CREATE UNIQUE INDEX debt_transfers_one_open ON debt_transfers (debtor_type, debtor_id) "
               "WHERE state = 'REQUESTED'")
    op.execute("ALTER TABLE debt_transfers DROP CONSTRAINT debt_transfers_done_when_final")
    op.execute("DROP INDEX split_returns_due")
    op.execute("CREATE INDEX split_returns_due ON split_returns (next_attempt_at) WHERE state = 'REQUESTED'")
    op.execute("ALTER TABLE split_returns DROP CONSTRAINT split_returns_done_when_final")
