"""Split routes: an order held at several locations has one reservation per location (its legs, numbered
from 0 in the plan's order), so every existing per-location path (release, ship, set aside, hand over)
works on a leg unchanged. Leg 0 carries the order's idempotency key and id as before; the unique keys now
include the leg, so a second hold for the same order or key still collides on leg 0.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE reservations ADD COLUMN leg smallint NOT NULL DEFAULT 0 CHECK (leg >= 0)")
    op.execute("ALTER TABLE reservations DROP CONSTRAINT reservations_order_id_key")
    op.execute("ALTER TABLE reservations DROP CONSTRAINT reservations_idempotency_key_key")
    op.execute("ALTER TABLE reservations ADD CONSTRAINT reservations_order_leg UNIQUE (order_id, leg)")
    op.execute("ALTER TABLE reservations ADD CONSTRAINT reservations_key_leg UNIQUE (idempotency_key, leg)")


def downgrade() -> None:
    op.execute("DELETE FROM reservation_lines l USING reservations r "
               "WHERE r.reservation_id = l.reservation_id AND r.leg > 0")
    op.execute("DELETE FROM reservations WHERE leg > 0")
    op.execute("ALTER TABLE reservations DROP CONSTRAINT reservations_key_leg")
    op.execute("ALTER TABLE reservations DROP CONSTRAINT reservations_order_leg")
    op.execute("ALTER TABLE reservations ADD CONSTRAINT reservations_idempotency_key_key UNIQUE (idempotency_key)")
    op.execute("ALTER TABLE reservations ADD CONSTRAINT reservations_order_id_key UNIQUE (order_id)")
    op.execute("ALTER TABLE reservations DROP COLUMN leg")
