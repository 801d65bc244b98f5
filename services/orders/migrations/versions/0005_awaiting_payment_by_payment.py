"""The unpaid-order sweeper's queue keyed on what makes an order unpaid (no payment, not cancelled) instead of
on its status.

Why: the payment statement updates `WHERE status = 'PENDING_PAYMENT'`, which implies the old predicate, so
the planner could serve it from this partial index — and with stale statistics (a fresh deployment, a burst
of orders) it did: every payment then scanned every unpaid order's entry, dead ones included (measured: ~1 ms
of Postgres CPU per payment after a thousand orders, growing with them). A predicate on paid_at and
cancelled_at describes the same orders and is one the payment statement cannot use.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX orders_awaiting_payment")
    op.execute("CREATE INDEX orders_awaiting_payment ON orders (created_at) "
               "WHERE paid_at IS NULL AND cancelled_at IS NULL")


def downgrade() -> None:
    op.execute("DROP INDEX orders_awaiting_payment")
    op.execute("CREATE INDEX orders_awaiting_payment ON orders (created_at) WHERE status = 'PENDING_PAYMENT'")
