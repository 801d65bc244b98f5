"""Refunds: what each leg gave back, the refunds recorded (once per provider refund id), and the split returns
(分账回退) asked of receivers, retried with the same request number until they succeed.

`splits.revision` counts the refunds that reshaped a split still SCHEDULED, so the sharing job never writes
progress computed from a split a refund has changed meanwhile.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE splits ADD COLUMN revision integer NOT NULL DEFAULT 0")
    op.execute("""
        ALTER TABLE split_legs
            ADD COLUMN refunded_fen      bigint NOT NULL DEFAULT 0 CHECK (refunded_fen >= 0),
            ADD COLUMN frozen_refund_fen bigint NOT NULL DEFAULT 0 CHECK (frozen_refund_fen >= 0)""")
    # A leg never gives back more than it held: no leg goes negative.
    op.execute("ALTER TABLE split_legs ADD CONSTRAINT refund_within_leg "
               "CHECK (frozen_refund_fen <= refunded_fen AND refunded_fen <= amount_fen)")
    op.execute("""
        CREATE TABLE refunds (
            order_id    text   NOT NULL REFERENCES splits,
            refund_id   text   NOT NULL,
            amount_fen  bigint NOT NULL CHECK (amount_fen > 0),
            journal_id  text   NOT NULL REFERENCES journals DEFERRABLE INITIALLY DEFERRED,
            recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (order_id, refund_id)
        )""")
    op.execute("""
        CREATE TABLE split_returns (
            return_no       text   PRIMARY KEY,
            order_id        text   NOT NULL REFERENCES splits,
            refund_id       text   NOT NULL,
            role            text   NOT NULL,
            receiver_type   text   NOT NULL,
            receiver_id     text   NOT NULL,
            amount_fen      bigint NOT NULL CHECK (amount_fen > 0),
            state           text   NOT NULL,
            attempts        integer NOT NULL DEFAULT 0,
            last_error      text,
            next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            done_at         timestamptz
        )""")
    op.execute("CREATE INDEX split_returns_due ON split_returns (next_attempt_at) WHERE state = 'REQUESTED'")


def downgrade() -> None:
    op.execute("DROP TABLE split_returns")
    op.execute("DROP TABLE refunds")
    op.execute("ALTER TABLE split_legs DROP CONSTRAINT refund_within_leg")
    op.execute("ALTER TABLE split_legs DROP COLUMN refunded_fen, DROP COLUMN frozen_refund_fen")
    op.execute("ALTER TABLE splits DROP COLUMN revision")
