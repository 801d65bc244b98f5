"""Profit sharing: a split is carried out at the provider after a delay. The split row tracks its state
(SCHEDULED -> SHARING -> UNFREEZING -> COMPLETED) and when the sharing job may next work on it; each leg
tracks what it sends through the provider (within the dealer's cap) and the provider's result.

The completion journal is posted only when every share is final, so the split and its receivables no longer
reference it.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE splits DROP CONSTRAINT splits_split_journal_id_fkey")
    op.execute("ALTER TABLE split_receivables DROP CONSTRAINT split_receivables_journal_id_fkey")
    # Splits recorded before this migration were carried out at once: they are COMPLETED.
    op.execute("""
        ALTER TABLE splits
            ADD COLUMN state       text   NOT NULL DEFAULT 'COMPLETED',
            ADD COLUMN cap_fen     bigint NOT NULL DEFAULT 0 CHECK (cap_fen >= 0),
            ADD COLUMN due_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            ADD COLUMN lease_until timestamptz,
            ADD COLUMN attempts    integer NOT NULL DEFAULT 0,
            ADD COLUMN last_error  text,
            ADD COLUMN completed_at timestamptz""")
    op.execute("ALTER TABLE splits ALTER COLUMN state DROP DEFAULT")
    op.execute("CREATE INDEX splits_due ON splits (due_at) WHERE state <> 'COMPLETED'")
    op.execute("""
        ALTER TABLE split_legs
            ADD COLUMN shared_fen   bigint NOT NULL DEFAULT 0 CHECK (shared_fen >= 0),
            ADD COLUMN state        text   NOT NULL DEFAULT 'SUCCESS',
            ADD COLUMN close_reason text   NOT NULL DEFAULT ''""")
    op.execute("ALTER TABLE split_legs ADD CONSTRAINT shared_within_leg CHECK (shared_fen <= amount_fen)")
    op.execute("ALTER TABLE split_legs ALTER COLUMN state DROP DEFAULT")


def downgrade() -> None:
    op.execute("ALTER TABLE split_legs DROP COLUMN shared_fen, DROP COLUMN state, DROP COLUMN close_reason")
    op.execute("DROP INDEX splits_due")
    op.execute("""ALTER TABLE splits DROP COLUMN state, DROP COLUMN cap_fen, DROP COLUMN due_at,
                  DROP COLUMN lease_until, DROP COLUMN attempts, DROP COLUMN last_error, DROP COLUMN completed_at""")
