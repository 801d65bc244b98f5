"""The legs of an order: one per location of its route, each with its lines, its shipment once it left and
the units returned to it. An order placed before is one leg, from its own columns: shipped if it was
dispatched (a split order caught partly shipped is not: which leg left is unknown, and the warehouse's
event for the last one marks every leg out), with the goods its refunds returned.

Lines are arrays in the leg's row, not rows of their own: placing writes one row per location, not one per
line too.

Revision ID: 0006
Revises: 0005
"""

from collections import defaultdict

from alembic import op
from omo.orders.v1 import orders_pb2
from sqlalchemy import text

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_PAGE = 1000


def upgrade() -> None:
    op.execute("""
        CREATE FUNCTION returns_within(quantities bigint[], returned bigint[]) RETURNS boolean
        LANGUAGE sql IMMUTABLE AS $$
            SELECT coalesce(bool_and(r BETWEEN 0 AND q), true) FROM unnest(quantities, returned) AS u(q, r)
        $$""")
    op.execute("""
        CREATE TABLE order_legs (
            order_id       text NOT NULL REFERENCES orders,
            leg            integer NOT NULL CHECK (leg >= 0),
            reservation_id text NOT NULL,
            warehouse_id   text NOT NULL,
            sku_ids        text[] NOT NULL,
            quantities     bigint[] NOT NULL,
            returned       bigint[] NOT NULL,
            shipment_id    text NOT NULL DEFAULT '',
            dispatched_at  timestamptz,
            PRIMARY KEY (order_id, leg),
            CONSTRAINT one_quantity_per_line CHECK (
                cardinality(sku_ids) > 0 AND cardinality(quantities) = cardinality(sku_ids)
                AND cardinality(returned) = cardinality(sku_ids)),
            CONSTRAINT returns_within_leg CHECK (returns_within(quantities, returned)),
            CONSTRAINT only_what_left_comes_back CHECK (dispatched_at IS NOT NULL OR 0 = ALL(returned)),
            CONSTRAINT shipment_has_time CHECK (shipment_id = '' OR dispatched_at IS NOT NULL)
        )""")
    op.execute("""
        INSERT INTO order_legs (order_id, leg, reservation_id, warehouse_id, sku_ids, quantities, returned,
                                shipment_id, dispatched_at)
        SELECT o.order_id, 0, o.reservation_id, o.warehouse_id, array_agg(l.sku_id ORDER BY l.line_no),
               array_agg(l.quantity ORDER BY l.line_no), array_agg(0::bigint ORDER BY l.line_no),
               CASE WHEN o.status <> 'PARTIALLY_SHIPPED' THEN coalesce(o.shipment_id, '') ELSE '' END,
               CASE WHEN o.status <> 'PARTIALLY_SHIPPED' THEN o.dispatched_at END
        FROM orders o JOIN order_lines l USING (order_id)
        GROUP BY o.order_id""")
    _backfill_returns()


def _backfill_returns() -> None:
    """Units sent back by earlier refunds, from the refunds as published (only orders shipped in full
    took returned goods then, so each goes to the order's one leg)."""
    conn = op.get_bind()
    after = ""
    while True:
        rows = conn.execute(text("SELECT provider_refund_id, order_id, refund FROM refunds "
                                 "WHERE provider_refund_id > :after ORDER BY provider_refund_id LIMIT :n"),
                            {"after": after, "n": _PAGE}).all()
        if not rows:
            return
        after = rows[-1].provider_refund_id
        back: dict[tuple[str, str], int] = defaultdict(int)
        for row in rows:
            refund = orders_pb2.Refund.FromString(bytes(row.refund))
            if refund.goods_returned:
                for line in refund.lines:
                    back[(row.order_id, line.sku_id)] += line.quantity
        if back:
            conn.execute(text("""
                UPDATE order_legs g SET returned = ARRAY(
                    SELECT u.r + coalesce(v.q, 0)
                    FROM unnest(g.sku_ids, g.returned) WITH ORDINALITY AS u(s, r, n)
                    LEFT JOIN unnest(CAST(:orders AS text[]), CAST(:skus AS text[]), CAST(:qs AS bigint[]))
                         AS v(o, s, q) ON v.o = g.order_id AND v.s = u.s
                    ORDER BY u.n)
                WHERE g.order_id = ANY(CAST(:orders AS text[])) AND g.leg = 0"""),
                {"orders": [o for o, _ in back], "skus": [s for _, s in back], "qs": list(back.values())})


def downgrade() -> None:
    op.execute("DROP TABLE order_legs")
    op.execute("DROP FUNCTION returns_within(bigint[], bigint[])")
