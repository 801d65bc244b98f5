"""SQL for the warehouse schema.

Every statement that changes on_hand or reserved also writes the movements for that change, in the same
statement, so the ledger cannot drift from the levels. Stock rows are always locked in (sku_id, warehouse_id)
order (`... ORDER BY sku_id[, warehouse_id] FOR UPDATE`, one location's rows being a subsequence of that
order) before they are updated, so two statements touching the same SKUs cannot deadlock each other.

Every statement here is a prepared statement whose generic plan is kept until its tables are next analyzed,
and the plans of a fresh deployment are made on empty tables. So a statement that joins a batch's keys to a
table that grows also restricts that table by the keys themselves (`... = ANY(:keys)`, on the columns of the
index that should serve it): whatever join the plan picks, the table is then read through that index for the
batch's rows only, never scanned whole. Measured on 100,000 orders with the plans made on empty tables: the
statements of a paid batch went from ~2,100-2,600 buffers to ~250-540."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text

from services.runtime.db import Connection

from .domain import (
    Availability,
    Line,
    Movement,
    MovementReason,
    Progress,
    Reservation,
    ReservationStatus,
    Shipment,
    StockLevel,
    Warehouse,
    progress,
)

_WAREHOUSE_COLS = ("warehouse_id, code, name, kind, region, latitude, longitude, modes, store_id, express_radius_km, "
                   "manual_fulfilment")
# A reservation `r` with its lines as two parallel arrays in sku_id order.
_RESERVATION_COLS = """
    r.reservation_id, r.order_id, r.warehouse_id, r.status, r.created_at, r.idempotency_key, r.request_hash,
    r.expires_at, r.leg,
    ARRAY(SELECT l.sku_id FROM reservation_lines l WHERE l.reservation_id = r.reservation_id
          ORDER BY l.sku_id) AS skus,
    ARRAY(SELECT l.quantity FROM reservation_lines l WHERE l.reservation_id = r.reservation_id
          ORDER BY l.sku_id) AS quantities
"""
# The lines as a relation from two parallel arrays. In every statement below, a MATERIALIZED `locked` CTE
# locks their stock rows `ORDER BY sku_id FOR UPDATE` before the UPDATE, so the lock order is the sort
# order whatever plan the UPDATE gets.
_LINES = "lines AS (SELECT * FROM unnest(CAST(:skus AS text[]), CAST(:qtys AS bigint[])) AS l(sku_id, quantity))"

# ReserveStock calls held at one location each, many in one statement run outside an explicit transaction:
# the hot stock rows are locked only until the statement commits, and the whole batch shares that commit.
# The logic lives in the database function reserve_calls (migrations 0005, 0006): prior reservations by key or
# order, the candidate rows locked in (sku_id, warehouse_id) order, each call's first-fit choice in arrival
# order, all lines or none, and the levels, reservations, lines and movements written together.
_RESERVE_CALLS = text("SELECT * FROM reserve_calls(CAST(:rids AS text[]), CAST(:order_ids AS text[]), "
                      "CAST(:keys AS text[]), CAST(:hashes AS bytea[]), CAST(:holds AS double precision[]), "
                      "CAST(:warehouses AS text[]), CAST(:line_calls AS integer[]), CAST(:skus AS text[]), "
                      "CAST(:qtys AS bigint[])) ORDER BY ord")

# RESERVED (or CONFIRMED) -> RELEASED for many reservations at once: their stock rows locked in
# (sku_id, warehouse_id) order, the held units back to available stock (one UPDATE per row) with a movement
# per reservation line, and the reservations' status and reason, each only from the status it was read in.
_RELEASE = text("""
    WITH lines AS (
        SELECT * FROM unnest(CAST(:line_rids AS text[]), CAST(:line_ws AS text[]), CAST(:skus AS text[]),
                             CAST(:qtys AS bigint[])) AS l(reservation_id, warehouse_id, sku_id, quantity)
    ),
    locked AS MATERIALIZED (
        SELECT s.warehouse_id, s.sku_id, w.quantity FROM stock s
        JOIN (SELECT warehouse_id, sku_id, sum(quantity) AS quantity FROM lines GROUP BY warehouse_id, sku_id) w
          ON w.warehouse_id = s.warehouse_id AND w.sku_id = s.sku_id
        WHERE s.sku_id = ANY(CAST(:skus AS text[])) AND s.warehouse_id = ANY(CAST(:line_ws AS text[]))
        ORDER BY s.sku_id, s.warehouse_id FOR UPDATE OF s
    ),
    freed AS (
        UPDATE stock s SET reserved = s.reserved - k.quantity, updated_at = now()
        FROM locked k
        WHERE s.warehouse_id = k.warehouse_id AND s.sku_id = k.sku_id AND s.reserved >= k.quantity
          AND s.sku_id = ANY(CAST(:skus AS text[])) AND s.warehouse_id = ANY(CAST(:line_ws AS text[]))
        RETURNING s.warehouse_id, s.sku_id
    ),
    moved AS (
        INSERT INTO movements (warehouse_id, sku_id, on_hand_delta, reserved_delta, reason, reference_id)
        SELECT l.warehouse_id, l.sku_id, 0, -l.quantity, 'release', l.reservation_id
        FROM lines l JOIN freed f ON f.warehouse_id = l.warehouse_id AND f.sku_id = l.sku_id
        ORDER BY l.sku_id, l.warehouse_id, l.reservation_id
    ),
    changed AS (
        UPDATE reservations r SET status = 'RELEASED', release_reason = x.reason, updated_at = now()
        FROM unnest(CAST(:rids AS text[]), CAST(:reasons AS text[]), CAST(:from_statuses AS text[]))
             AS x(rid, reason, from_status)
        WHERE r.reservation_id = x.rid AND r.status = x.from_status AND r.reservation_id = ANY(CAST(:rids AS text[]))
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM freed) AS rows, (SELECT count(*) FROM changed) AS reservations
""")

# The parts of shipping common to a held and a re-taken reservation: the shipment, its lines, the status.
_SHIPMENT_ROWS = """
    shipment AS (
        INSERT INTO shipments (shipment_id, order_id, warehouse_id, reservation_id, status, dispatched_at)
        SELECT :sid, :order_id, :w, :rid, 'DISPATCHED', CAST(:at AS timestamptz) WHERE EXISTS (SELECT 1 FROM taken)
        RETURNING 1
    ),
    shipped_lines AS (
        INSERT INTO shipment_lines (shipment_id, sku_id, quantity) SELECT :sid, sku_id, quantity FROM taken
    ),
    changed AS (
        UPDATE reservations SET status = 'SHIPPED', warehouse_id = :w, updated_at = now()
        WHERE reservation_id = :rid AND status = :from_status AND EXISTS (SELECT 1 FROM taken)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM taken) AS lines, (SELECT count(*) FROM changed) AS reservations
"""

# Held units of `lines` leave warehouse :w under shipment :sid: on_hand and reserved both go down, with
# their movements. A hand-over at the counter or after picking and packing.
_TAKE_HELD = """
    locked AS MATERIALIZED (
        SELECT s.sku_id, l.quantity FROM stock s JOIN lines l ON l.sku_id = s.sku_id
        WHERE s.warehouse_id = :w AND s.sku_id = ANY(ARRAY(SELECT sku_id FROM lines)) ORDER BY s.sku_id FOR UPDATE OF s
    ),
    taken AS (
        UPDATE stock s SET on_hand = s.on_hand - k.quantity, reserved = s.reserved - k.quantity, updated_at = now()
        FROM locked k
        WHERE s.warehouse_id = :w AND s.sku_id = k.sku_id AND s.reserved >= k.quantity
          AND s.sku_id = ANY(ARRAY(SELECT sku_id FROM lines))
        RETURNING s.sku_id, k.quantity
    ),
    moved AS (
        INSERT INTO movements (warehouse_id, sku_id, on_hand_delta, reserved_delta, reason, reference_id)
        SELECT :w, sku_id, -quantity, -quantity, 'shipment', :sid FROM taken ORDER BY sku_id
    )"""

# The held legs of many orders leave at once (the order-paid consumer's batch). Every stock row the batch
# touches, shipped here or by a later statement of the same transaction (`lock_only`, quantity 0: a released
# leg re-taken at its own location), is locked first, in (sku_id, warehouse_id) order; then the units leave,
# one UPDATE per row, with a movement per shipment line. `rows` lets the caller check that everything moved.
_SHIP_HELD_MANY = text("""
    WITH lines AS (
        SELECT * FROM unnest(CAST(:line_sids AS text[]), CAST(:line_ws AS text[]), CAST(:skus AS text[]),
                             CAST(:qtys AS bigint[])) AS l(shipment_id, warehouse_id, sku_id, quantity)
    ),
    wanted AS (
        SELECT w.warehouse_id, w.sku_id, sum(w.quantity) AS quantity FROM (
            SELECT l.warehouse_id, l.sku_id, l.quantity FROM lines l
            UNION ALL
            SELECT o.w, o.sku, 0 FROM unnest(CAST(:lock_ws AS text[]), CAST(:lock_skus AS text[])) AS o(w, sku)
        ) w GROUP BY w.warehouse_id, w.sku_id
    ),
    locked AS MATERIALIZED (
        SELECT s.warehouse_id, s.sku_id, w.quantity FROM stock s
        JOIN wanted w ON w.warehouse_id = s.warehouse_id AND w.sku_id = s.sku_id
        WHERE s.sku_id = ANY(CAST(:skus AS text[]) || CAST(:lock_skus AS text[]))
          AND s.warehouse_id = ANY(CAST(:line_ws AS text[]) || CAST(:lock_ws AS text[]))
        ORDER BY s.sku_id, s.warehouse_id FOR UPDATE OF s
    ),
    taken AS (
        UPDATE stock s SET on_hand = s.on_hand - k.quantity, reserved = s.reserved - k.quantity, updated_at = now()
        FROM locked k
        WHERE k.quantity > 0 AND s.warehouse_id = k.warehouse_id AND s.sku_id = k.sku_id
          AND s.reserved >= k.quantity
          AND s.sku_id = ANY(CAST(:skus AS text[])) AND s.warehouse_id = ANY(CAST(:line_ws AS text[]))
        RETURNING s.warehouse_id, s.sku_id
    ),
    moved AS (
        INSERT INTO movements (warehouse_id, sku_id, on_hand_delta, reserved_delta, reason, reference_id)
        SELECT l.warehouse_id, l.sku_id, -l.quantity, -l.quantity, 'shipment', l.shipment_id
        FROM lines l JOIN taken t ON t.warehouse_id = l.warehouse_id AND t.sku_id = l.sku_id
        ORDER BY l.sku_id, l.warehouse_id, l.shipment_id
    )
    SELECT count(*) AS rows FROM taken
""")
# The shipments of those legs, their lines and the reservations' RESERVED -> SHIPPED: rows no reservation
# waits for (the reservations are locked by the caller already, the shipments are new), written before the
# stock rows are taken, so that the hot rows stay locked only for the statement above and the commit.
_RECORD_SHIPPED = text("""
    WITH shipment AS (
        INSERT INTO shipments (shipment_id, order_id, warehouse_id, reservation_id, status, dispatched_at)
        SELECT x.sid, x.o, x.w, x.rid, 'DISPATCHED', x.at
        FROM unnest(CAST(:sids AS text[]), CAST(:order_ids AS text[]), CAST(:ws AS text[]),
                    CAST(:rids AS text[]), CAST(:ats AS timestamptz[])) AS x(sid, o, w, rid, at)
    ),
    shipped_lines AS (
        INSERT INTO shipment_lines (shipment_id, sku_id, quantity)
        SELECT * FROM unnest(CAST(:line_sids AS text[]), CAST(:skus AS text[]), CAST(:qtys AS bigint[]))
    ),
    changed AS (
        UPDATE reservations r SET status = 'SHIPPED', updated_at = now()
        WHERE r.reservation_id = ANY(CAST(:rids AS text[])) AND r.status = 'RESERVED'
        RETURNING 1
    )
    SELECT count(*) AS reservations FROM changed
""")

# RELEASED -> SHIPPED from warehouse :w: take the units again with the same conditional update as a
# reservation (all lines or none) and ship them at once. The ledger shows both steps.
_RETAKE_AND_SHIP = text(f"""
    WITH {_LINES},
    locked AS MATERIALIZED (
        SELECT s.sku_id, l.quantity FROM stock s JOIN lines l ON l.sku_id = s.sku_id
        WHERE s.warehouse_id = :w AND s.sku_id = ANY(CAST(:skus AS text[])) AND s.on_hand - s.reserved >= l.quantity
        ORDER BY s.sku_id FOR UPDATE OF s
    ),
    taken AS (
        UPDATE stock s SET on_hand = s.on_hand - k.quantity, updated_at = now()
        FROM locked k
        WHERE (SELECT count(*) FROM locked) = :n
          AND s.warehouse_id = :w AND s.sku_id = k.sku_id AND s.on_hand - s.reserved >= k.quantity
          AND s.sku_id = ANY(CAST(:skus AS text[]))
        RETURNING s.sku_id, k.quantity
    ),
    moved AS (
        INSERT INTO movements (warehouse_id, sku_id, on_hand_delta, reserved_delta, reason, reference_id)
        SELECT :w, t.sku_id, step.on_hand * t.quantity, step.reserved * t.quantity, step.reason,
               CASE step.reason WHEN 'reservation' THEN :rid ELSE :sid END
        FROM taken t
        CROSS JOIN (VALUES (1, 0, 1, 'reservation'), (2, -1, -1, 'shipment')) AS step(seq, on_hand, reserved, reason)
        ORDER BY step.seq, t.sku_id
    ),
    {_SHIPMENT_ROWS}
""")

# Goods booked in or out of on hand (receipt, adjustment, return): the level and its movement together. The
# inserted row is never negative (the CHECK tests it before ON CONFLICT); only an existing row goes down,
# and the stock CHECK refuses going below reserved even if two calls raced past the domain check.
_BOOK = text("""
    WITH level AS (
        INSERT INTO stock (warehouse_id, sku_id, on_hand) VALUES (:w, :s, GREATEST(CAST(:q AS bigint), 0))
        ON CONFLICT (warehouse_id, sku_id)
        DO UPDATE SET on_hand = stock.on_hand + CAST(:q AS bigint), updated_at = now()
        RETURNING warehouse_id, sku_id, on_hand, reserved
    ),
    moved AS (
        INSERT INTO movements (warehouse_id, sku_id, on_hand_delta, reserved_delta, reason, reference_id)
        SELECT warehouse_id, sku_id, CAST(:q AS bigint), 0, :reason, :ref FROM level
    )
    SELECT warehouse_id, sku_id, on_hand, reserved FROM level
""")

# RESERVED -> CONFIRMED with a shipment that waits to be handed over; the units stay held.
_SET_ASIDE = text(f"""
    WITH {_LINES},
    changed AS (
        UPDATE reservations SET status = 'CONFIRMED', expires_at = NULL, updated_at = now()
        WHERE reservation_id = :rid AND status = 'RESERVED'
        RETURNING 1
    ),
    shipment AS (
        INSERT INTO shipments (shipment_id, order_id, warehouse_id, reservation_id, status, pickup_code, ready_at)
        SELECT :sid, :order_id, :w, :rid, :status, :code, CAST(:at AS timestamptz) FROM changed
        RETURNING 1
    ),
    ready_lines AS (
        INSERT INTO shipment_lines (shipment_id, sku_id, quantity)
        SELECT :sid, l.sku_id, l.quantity FROM lines l WHERE EXISTS (SELECT 1 FROM shipment)
    )
    SELECT (SELECT count(*) FROM changed) AS reservations
""")

# READY_FOR_PICKUP or PACKED -> DISPATCHED: the consumer took the goods, or a carrier did; they leave the stock.
_HAND_OVER = text(f"""
    WITH lines AS (SELECT sku_id, quantity FROM shipment_lines WHERE shipment_id = :sid),
    {_TAKE_HELD},
    handed AS (
        UPDATE shipments SET status = 'DISPATCHED', dispatched_at = CAST(:at AS timestamptz), carrier = :carrier,
                             tracking_number = :tracking
        WHERE shipment_id = :sid AND status = :from_status
    ),
    changed AS (
        UPDATE reservations SET status = 'SHIPPED', updated_at = now()
        WHERE reservation_id = :rid AND status = 'CONFIRMED'
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM taken) AS lines, (SELECT count(*) FROM changed) AS reservations
""")

@dataclass(frozen=True)
class ReserveResult:
    """What the one-statement reservation did: found a prior reservation, reserved, or neither (then
    `available` is the snapshot it decided on)."""

    prior: bool
    warehouse_id: str | None
    created_at: datetime | None
    available: Availability
    expires_at: datetime | None = None
    # A concurrent call for the same key or order won the unique-key race: look again.
    conflict: bool = False


@dataclass(frozen=True)
class SplitResult:
    """What holding a split route did: found a prior reservation, held every leg, or neither (lost units)."""

    prior: bool
    legs: tuple[Reservation, ...] = ()


@dataclass(frozen=True)
class ReserveCall:
    """One ReserveStock call as the database function takes it."""

    reservation_id: str
    order_id: str
    key: str
    request_hash: bytes
    lines: tuple[Line, ...]
    hold_s: float
    # The location routing chose; None: the first cloud warehouse covering every line.
    warehouse_id: str | None = None


def _result(row) -> ReserveResult:  # type: ignore[no-untyped-def]
    available: dict[str, dict[str, int]] = {}
    for w, s, a in zip(row.level_warehouses, row.level_skus, row.level_available, strict=True):
        available.setdefault(w, {})[s] = a
    return ReserveResult(row.prior, row.warehouse_id, row.created_at, available, row.expires_at)


def _split(lines: tuple[Line, ...]) -> dict[str, list]:
    return {"skus": [line.sku_id for line in lines], "qtys": [line.quantity for line in lines], "n": len(lines)}


def _reservation(row) -> Reservation:  # type: ignore[no-untyped-def]
    return Reservation(
        reservation_id=row.reservation_id,
        order_id=row.order_id,
        warehouse_id=row.warehouse_id,
        status=ReservationStatus(row.status),
        lines=tuple(Line(s, q) for s, q in zip(row.skus, row.quantities, strict=True)),
        created_at=row.created_at,
        idempotency_key=row.idempotency_key,
        request_hash=bytes(row.request_hash),
        expires_at=row.expires_at,
        leg=row.leg,
    )


class WarehouseStore:
    # -- warehouses and stock ---------------------------------------------------------------------------
    async def add_warehouse(self, conn: Connection, w: Warehouse) -> bool:
        """False if the code is taken (the unique constraint decides, so concurrent creates are safe)."""
        row = (await conn.execute(
            text(f"INSERT INTO warehouses ({_WAREHOUSE_COLS}) VALUES "
                 "(:warehouse_id, :code, :name, :kind, :region, :latitude, :longitude, CAST(:modes AS text[]), "
                 ":store_id, :express_radius_km, :manual_fulfilment) ON CONFLICT (code) DO NOTHING RETURNING 1"),
            {**vars(w), "kind": str(w.kind), "modes": list(w.modes)},
        )).first()
        return row is not None

    async def warehouse(self, conn: Connection, warehouse_id: str) -> Warehouse | None:
        row = (await conn.execute(text(f"SELECT {_WAREHOUSE_COLS} FROM warehouses WHERE warehouse_id = :id"),
                                  {"id": warehouse_id})).first()
        return _warehouse(row) if row else None

    async def cloud_warehouse_ids(self, conn: Connection) -> list[str]:
        rows = await conn.execute(text("SELECT warehouse_id FROM warehouses WHERE kind = 'CLOUD' "
                                       "ORDER BY warehouse_id"))
        return [r.warehouse_id for r in rows]

    async def book(self, conn: Connection, warehouse_id: str, sku_id: str, quantity: int,
                   reason: MovementReason, reference_id: str) -> StockLevel:
        """on_hand += quantity (negative for an adjustment down) with its movement."""
        row = (await conn.execute(_BOOK, {"w": warehouse_id, "s": sku_id, "q": quantity, "reason": str(reason),
                                          "ref": reference_id})).one()
        return StockLevel(*row)

    async def level(self, conn: Connection, warehouse_id: str, sku_id: str, *,
                    lock: bool = False) -> StockLevel | None:
        row = (await conn.execute(
            text("SELECT warehouse_id, sku_id, on_hand, reserved FROM stock WHERE warehouse_id = :w AND sku_id = :s"
                 + (" FOR UPDATE" if lock else "")), {"w": warehouse_id, "s": sku_id})).first()
        return StockLevel(*row) if row else None

    async def route_levels(self, conn: Connection, mode: str,
                           sku_ids: list[str]) -> tuple[list[Warehouse], Availability]:
        """Every location offering the mode, and what it has available of the SKUs."""
        rows = (await conn.execute(text(
            f"SELECT {', '.join('h.' + c for c in _WAREHOUSE_COLS.split(', '))}, "
            "ARRAY(SELECT s.sku_id FROM stock s WHERE s.warehouse_id = h.warehouse_id "
            "      AND s.sku_id = ANY(CAST(:skus AS text[])) ORDER BY s.sku_id) AS skus, "
            "ARRAY(SELECT s.on_hand - s.reserved FROM stock s WHERE s.warehouse_id = h.warehouse_id "
            "      AND s.sku_id = ANY(CAST(:skus AS text[])) ORDER BY s.sku_id) AS available "
            "FROM warehouses h WHERE :mode = ANY(h.modes) ORDER BY h.warehouse_id"),
            {"mode": mode, "skus": sku_ids})).all()
        return ([_warehouse(r) for r in rows],
                {r.warehouse_id: dict(zip(r.skus, r.available, strict=True)) for r in rows})

    async def levels(self, conn: Connection, sku_id: str) -> list[StockLevel]:
        rows = await conn.execute(text("SELECT warehouse_id, sku_id, on_hand, reserved FROM stock "
                                       "WHERE sku_id = :s ORDER BY warehouse_id"), {"s": sku_id})
        return [StockLevel(*r) for r in rows]

    async def movements(self, conn: Connection, warehouse_id: str, sku_id: str, after: int,
                        limit: int) -> list[Movement]:
        """One SKU's movements in a warehouse, or every SKU's when sku_id is empty."""
        which = "AND sku_id = :s " if sku_id else ""
        rows = await conn.execute(
            text("SELECT movement_id, warehouse_id, sku_id, on_hand_delta, reserved_delta, reason, reference_id, "
                 f"created_at FROM movements WHERE warehouse_id = :w {which}AND movement_id > :after "
                 "ORDER BY movement_id LIMIT :n"),
            {"w": warehouse_id, "s": sku_id, "after": after, "n": limit},
        )
        return [Movement(r.movement_id, r.warehouse_id, r.sku_id, r.on_hand_delta, r.reserved_delta,
                         MovementReason(r.reason), r.reference_id, r.created_at) for r in rows]

    # -- reservations -----------------------------------------------------------------------------------
    async def reserve_calls(self, conn: Connection, calls: list[ReserveCall]) -> list[ReserveResult]:
        """Calls held at one location each, in one statement (one commit); results in the calls' order."""
        line_calls = [n for n, call in enumerate(calls, 1) for _ in call.lines]
        lines = [line for call in calls for line in call.lines]
        rows = (await conn.execute(_RESERVE_CALLS, {
            "rids": [c.reservation_id for c in calls], "order_ids": [c.order_id for c in calls],
            "keys": [c.key for c in calls], "hashes": [c.request_hash for c in calls],
            "holds": [c.hold_s for c in calls], "warehouses": [c.warehouse_id for c in calls],
            "line_calls": line_calls, "skus": [line.sku_id for line in lines],
            "qtys": [line.quantity for line in lines],
        })).all()
        return [_result(row) for row in rows]

    async def expired_reservations(self, conn: Connection, limit: int) -> list[Reservation]:
        """Holds past their expiry, oldest first, locked; ones another sweeper holds are skipped."""
        rows = await conn.execute(
            text(f"SELECT {_RESERVATION_COLS} FROM reservations r WHERE r.status = 'RESERVED' "
                 "AND r.expires_at <= now() ORDER BY r.expires_at LIMIT :n FOR UPDATE OF r SKIP LOCKED"),
            {"n": limit})
        return [_reservation(r) for r in rows]

    async def prior_reservations(self, conn: Connection, key: str, order_id: str) -> list[Reservation]:
        # Two single-index probes: a cached plan for the OR can be a scan of every reservation.
        rows = await conn.execute(
            text(f"SELECT {_RESERVATION_COLS} FROM reservations r WHERE r.idempotency_key = :key "
                 f"UNION ALL SELECT {_RESERVATION_COLS} FROM reservations r "
                 "WHERE r.order_id = :o AND r.idempotency_key <> :key"),
            {"key": key, "o": order_id},
        )
        return [_reservation(r) for r in rows]

    async def reservation(self, conn: Connection, reservation_id: str, *,
                          lock: bool = False) -> Reservation | None:
        sql = (f"SELECT {_RESERVATION_COLS} FROM reservations r WHERE r.reservation_id = :id"
               + (" FOR UPDATE OF r" if lock else ""))
        row = (await conn.execute(text(sql), {"id": reservation_id})).first()
        return _reservation(row) if row else None

    async def reservations_for_order(self, conn: Connection, order_id: str) -> list[HeldFor]:
        return (await self.reservations_for_orders(conn, [order_id])).get(order_id, [])

    async def reservations_for_orders(self, conn: Connection, order_ids: list[str]) -> dict[str, list[HeldFor]]:
        """The orders' reservations (one per leg of its route, leg 0 first), locked against concurrent
        shipping or release in (order_id, leg) order, so that batches of orders cannot deadlock each other;
        whether each leg's location has a shipment of the order already, and what kind of location holds it
        (and whose store, for store stock)."""
        # Each leg's shipment is one probe of the (order_id, warehouse_id) key: a scalar sub-query, unlike
        # EXISTS, cannot be planned as a hash of the whole table (which a plan made while `shipments` was small
        # and never analyzed did: a scan of every shipment per batch).
        sql = (f"SELECT {_RESERVATION_COLS}, (SELECT true FROM shipments s WHERE s.order_id = r.order_id "
               "AND s.warehouse_id = r.warehouse_id) IS NOT NULL AS shipped, "
               "h.kind AS location_kind, "
               "h.store_id AS location_store_id, h.manual_fulfilment AS location_manual "
               "FROM reservations r JOIN warehouses h ON h.warehouse_id = r.warehouse_id "
               "WHERE r.order_id = ANY(CAST(:orders AS text[])) ORDER BY r.order_id, r.leg FOR UPDATE OF r")
        held: dict[str, list[HeldFor]] = {}
        for row in await conn.execute(text(sql), {"orders": order_ids}):
            held.setdefault(row.order_id, []).append(HeldFor(_reservation(row), row.shipped, row.location_kind,
                                                             row.location_store_id, row.location_manual))
        return held

    async def lock_order(self, conn: Connection, order_id: str) -> None:
        """Lock every leg of the order (leg order), the first lock on every path that changes one of its
        shipments, so that the last shipment to leave or be delivered sees all the others."""
        await conn.execute(text("SELECT 1 FROM reservations WHERE order_id = :o ORDER BY leg FOR UPDATE"),
                           {"o": order_id})

    async def lock_stock(self, conn: Connection, legs: list[tuple[str, tuple[Line, ...]]]) -> None:
        """Lock the stock rows of several locations in (sku_id, warehouse_id) order, the order every
        single-location statement's rows are a subsequence of: legs handled one after the other then cannot
        deadlock with a split reservation or a batch."""
        pairs = [(w, line.sku_id) for w, lines in legs for line in lines]
        await conn.execute(text(
            "SELECT 1 FROM stock s JOIN unnest(CAST(:ws AS text[]), CAST(:ss AS text[])) AS p(w, sku) "
            "ON s.warehouse_id = p.w AND s.sku_id = p.sku "
            "WHERE s.sku_id = ANY(CAST(:ss AS text[])) AND s.warehouse_id = ANY(CAST(:ws AS text[])) "
            "ORDER BY s.sku_id, s.warehouse_id FOR UPDATE OF s"),
            {"ws": [w for w, _ in pairs], "ss": [sku for _, sku in pairs]})

    async def progress(self, conn: Connection, order_id: str) -> Progress:
        """How far the order's shipments are, as of this transaction (the caller holds lock_order)."""
        legs = (await conn.execute(text("SELECT count(*) AS n FROM reservations WHERE order_id = :o"),
                                   {"o": order_id})).one().n
        return progress(legs, await self.shipments(conn, order_id))

    async def shipment_statuses(self, conn: Connection, order_ids: list[str]) -> dict[str, list[str]]:
        """Every shipment's status, by order, as of this statement (the caller holds the orders' legs)."""
        rows = await conn.execute(text(
            "SELECT order_id, array_agg(status) AS statuses FROM shipments "
            "WHERE order_id = ANY(CAST(:orders AS text[])) GROUP BY order_id"), {"orders": order_ids})
        return {row.order_id: list(row.statuses) for row in rows}

    async def reserve_split(self, conn: Connection, call: ReserveCall, rids: list[str],
                            legs: list[tuple[str, tuple[Line, ...]]]) -> SplitResult:
        """A split route held all or nothing, in the caller's transaction: one reservation per location
        (leg i gets rids[i]), the stock rows of every leg locked in (sku_id, warehouse_id) order and
        re-checked on their newest versions. Nothing is written if a prior reservation has the key or the
        order (prior) or a leg's units went to a concurrent call (neither prior nor legs: look again)."""
        # Two single-index probes: a cached plan for an OR can become a scan of every reservation.
        prior = (await conn.execute(text(
            "SELECT EXISTS (SELECT 1 FROM reservations WHERE idempotency_key = :k) "
            "OR EXISTS (SELECT 1 FROM reservations WHERE order_id = :o) AS held"),
            {"k": call.key, "o": call.order_id})).one().held
        if prior:
            return SplitResult(prior=True)
        flat = [(i, w, line) for i, (w, lines) in enumerate(legs) for line in lines]
        params = {"ws": [w for _, w, _ in flat], "ss": [line.sku_id for _, _, line in flat],
                  "qs": [line.quantity for _, _, line in flat], "rs": [rids[i] for i, _, _ in flat]}
        rows = (await conn.execute(text(
            "SELECT s.warehouse_id, s.sku_id, s.on_hand - s.reserved AS available FROM stock s "
            "JOIN unnest(CAST(:ws AS text[]), CAST(:ss AS text[])) AS p(w, sku) "
            "ON s.warehouse_id = p.w AND s.sku_id = p.sku "
            "WHERE s.sku_id = ANY(CAST(:ss AS text[])) AND s.warehouse_id = ANY(CAST(:ws AS text[])) "
            "ORDER BY s.sku_id, s.warehouse_id FOR UPDATE OF s"),
            params)).all()
        available = {(r.warehouse_id, r.sku_id): r.available for r in rows}
        if any(available.get((w, line.sku_id), 0) < line.quantity for _, w, line in flat):
            return SplitResult(prior=False)
        await conn.execute(text(
            "UPDATE stock s SET reserved = s.reserved + p.q, updated_at = now() "
            "FROM unnest(CAST(:ws AS text[]), CAST(:ss AS text[]), CAST(:qs AS bigint[])) AS p(w, sku, q) "
            "WHERE s.warehouse_id = p.w AND s.sku_id = p.sku "
            "AND s.sku_id = ANY(CAST(:ss AS text[])) AND s.warehouse_id = ANY(CAST(:ws AS text[]))"), params)
        made = (await conn.execute(text(
            "INSERT INTO reservations (reservation_id, order_id, warehouse_id, status, idempotency_key, "
            "request_hash, created_at, expires_at, leg) "
            "SELECT r, :o, w, 'RESERVED', :k, CAST(:h AS bytea), now(), now() + make_interval(secs => :hold), "
            "leg - 1 FROM unnest(CAST(:rids AS text[]), CAST(:whs AS text[])) WITH ORDINALITY AS x(r, w, leg) "
            "RETURNING reservation_id, created_at, expires_at"),
            {"o": call.order_id, "k": call.key, "h": call.request_hash, "hold": call.hold_s,
             "rids": rids, "whs": [w for w, _ in legs]})).all()
        await conn.execute(text(
            "INSERT INTO reservation_lines (reservation_id, sku_id, quantity) "
            "SELECT r, sku, q FROM unnest(CAST(:rs AS text[]), CAST(:ss AS text[]), CAST(:qs AS bigint[])) "
            "AS p(r, sku, q)"), params)
        await conn.execute(text(
            "INSERT INTO movements (warehouse_id, sku_id, on_hand_delta, reserved_delta, reason, reference_id) "
            "SELECT w, sku, 0, q, 'reservation', r FROM unnest(CAST(:ws AS text[]), CAST(:ss AS text[]), "
            "CAST(:qs AS bigint[]), CAST(:rs AS text[])) AS p(w, sku, q, r) ORDER BY sku, w"), params)
        when = {row.reservation_id: (row.created_at, row.expires_at) for row in made}
        return SplitResult(prior=False, legs=tuple(
            Reservation(rids[i], call.order_id, w, ReservationStatus.RESERVED, lines, when[rids[i]][0],
                        call.key, call.request_hash, when[rids[i]][1], i) for i, (w, lines) in enumerate(legs)))

    async def set_aside(self, conn: Connection, reservation: Reservation, shipment: Shipment,
                        pickup_code: str | None) -> None:
        """RESERVED -> CONFIRMED (no longer expires) with a shipment that waits (READY_FOR_PICKUP at a store,
        CREATED where staff fulfil by hand); the units stay held until it is handed over."""
        row = (await conn.execute(_SET_ASIDE, {**_split(shipment.lines), "rid": reservation.reservation_id,
                                               "sid": shipment.shipment_id, "order_id": shipment.order_id,
                                               "w": shipment.warehouse_id, "code": pickup_code,
                                               "at": shipment.ready_at, "status": shipment.status})).one()
        if row.reservations != 1:
            raise RuntimeError(f"reservation {reservation.reservation_id} changed under its row lock")

    async def pickup(self, conn: Connection, shipment_id: str) -> tuple[Shipment, str, int] | None:
        """A shipment with its pickup code and the wrong codes tried so far, its reservation and itself locked
        (reservation first, as on every other path)."""
        row = (await conn.execute(text(
            "SELECT sh.shipment_id, sh.pickup_code, sh.wrong_codes FROM shipments sh JOIN reservations r "
            "ON r.reservation_id = sh.reservation_id WHERE sh.shipment_id = :sid FOR UPDATE OF r, sh"),
            {"sid": shipment_id})).first()
        if row is None:
            return None
        found = await self.shipment(conn, shipment_id)
        assert found is not None
        return found, row.pickup_code or "", row.wrong_codes

    async def count_wrong_code(self, conn: Connection, shipment_id: str, pickup_code: str, most: int) -> int | None:
        """If the code is wrong for a pickup still waiting and not locked, count it (one statement under the
        row lock, so concurrent guesses are counted one by one and never pass the limit): the attempt's
        number. None if the code is right, the pickup is locked or it is not waiting any more."""
        row = (await conn.execute(text(
            "UPDATE shipments SET wrong_codes = wrong_codes + 1 WHERE shipment_id = :s "
            "AND status = 'READY_FOR_PICKUP' AND pickup_code IS DISTINCT FROM :code AND wrong_codes < :most "
            "RETURNING wrong_codes"), {"s": shipment_id, "code": pickup_code, "most": most})).first()
        return row.wrong_codes if row else None

    async def shipment_locked(self, conn: Connection, shipment_id: str) -> Shipment | None:
        await conn.execute(text("SELECT 1 FROM shipments WHERE shipment_id = :s FOR UPDATE"), {"s": shipment_id})
        return await self.shipment(conn, shipment_id)

    async def step(self, conn: Connection, before: Shipment, to: str) -> None:
        """CREATED -> PICKED -> PACKED: nothing moves in stock, the units stay held."""
        updated = await conn.execute(
            text("UPDATE shipments SET status = :to WHERE shipment_id = :s AND status = :from"),
            {"to": to, "s": before.shipment_id, "from": before.status})
        if updated.rowcount != 1:
            raise RuntimeError(f"shipment {before.shipment_id} changed under its row lock")

    async def cancel_shipment(self, conn: Connection, shipment: Shipment) -> None:
        """A waiting shipment -> CANCELLED; its hold is released by the caller (release)."""
        updated = await conn.execute(
            text("UPDATE shipments SET status = 'CANCELLED', cancelled_at = now() "
                 "WHERE shipment_id = :s AND status = :from"), {"s": shipment.shipment_id, "from": shipment.status})
        if updated.rowcount != 1:
            raise RuntimeError(f"shipment {shipment.shipment_id} changed under its row lock")

    async def deliver(self, conn: Connection, shipment: Shipment) -> None:
        updated = await conn.execute(
            text("UPDATE shipments SET status = 'DELIVERED', delivered_at = :at "
                 "WHERE shipment_id = :s AND status = 'DISPATCHED'"),
            {"at": shipment.delivered_at, "s": shipment.shipment_id})
        if updated.rowcount != 1:
            raise RuntimeError(f"shipment {shipment.shipment_id} changed under its row lock")

    async def hand_over(self, conn: Connection, before: Shipment, after: Shipment) -> None:
        """A waiting shipment (READY_FOR_PICKUP or PACKED) -> DISPATCHED: the held units leave the stock."""
        row = (await conn.execute(_HAND_OVER, {
            "sid": before.shipment_id, "w": before.warehouse_id, "rid": before.reservation_id,
            "at": after.dispatched_at, "from_status": before.status, "carrier": after.carrier,
            "tracking": after.tracking_number})).one()
        if row.lines != len(before.lines) or row.reservations != 1:
            raise RuntimeError(f"handing over shipment {before.shipment_id} changed {row.lines} stock rows and "
                               f"{row.reservations} reservations")

    async def release(self, conn: Connection, reservation: Reservation, reason: str) -> None:
        await self.release_many(conn, [(reservation, reason)])

    async def release_many(self, conn: Connection, released: list[tuple[Reservation, str]]) -> None:
        """Holds given back (each with its reason), in one statement; the caller holds their rows' locks and
        checked their states, so anything short of every line and every reservation changing is a broken
        invariant: fail the transaction rather than half-apply."""
        lines = [(r, line) for r, _ in released for line in r.lines]
        row = (await conn.execute(_RELEASE, {
            "line_rids": [r.reservation_id for r, _ in lines], "line_ws": [r.warehouse_id for r, _ in lines],
            "skus": [line.sku_id for _, line in lines], "qtys": [line.quantity for _, line in lines],
            "rids": [r.reservation_id for r, _ in released], "reasons": [reason for _, reason in released],
            "from_statuses": [str(r.status) for r, _ in released],
        })).one()
        rows = len({(r.warehouse_id, line.sku_id) for r, line in lines})
        if row.rows != rows or row.reservations != len(released):
            raise RuntimeError(f"releasing {len(released)} reservations changed {row.rows}/{rows} stock rows and "
                               f"{row.reservations} reservations")

    # -- shipments --------------------------------------------------------------------------------------
    async def ship_held_many(self, conn: Connection, legs: list[tuple[Reservation, Shipment]],
                             lock_only: Sequence[tuple[str, tuple[Line, ...]]] = ()) -> None:
        """Every held leg ships at once: its shipment and the reservation's status first, then the stock rows,
        which reservations wait for; `lock_only` (location, lines) are stock rows a later statement of the
        transaction changes, locked here with the rest in the one lock order."""
        lines = [(shipment, line) for _, shipment in legs for line in shipment.lines]
        locks = [(w, line.sku_id) for w, held in lock_only for line in held]
        line_params = {"line_sids": [s.shipment_id for s, _ in lines], "skus": [line.sku_id for _, line in lines],
                       "qtys": [line.quantity for _, line in lines]}
        changed = (await conn.execute(_RECORD_SHIPPED, {
            **line_params, "sids": [s.shipment_id for _, s in legs], "order_ids": [s.order_id for _, s in legs],
            "ws": [s.warehouse_id for _, s in legs], "rids": [r.reservation_id for r, _ in legs],
            "ats": [s.dispatched_at for _, s in legs],
        })).scalar_one() if legs else 0
        taken = (await conn.execute(_SHIP_HELD_MANY, {
            **line_params, "line_ws": [s.warehouse_id for s, _ in lines],
            "lock_ws": [w for w, _ in locks], "lock_skus": [sku for _, sku in locks],
        })).scalar_one()
        rows = len({(s.warehouse_id, line.sku_id) for s, line in lines})
        if taken != rows or changed != len(legs):
            raise RuntimeError(f"shipping {len(legs)} held reservations changed {taken}/{rows} stock rows and "
                               f"{changed} reservations")

    async def retake_and_ship(self, conn: Connection, reservation: Reservation, shipment: Shipment) -> bool:
        """False (and nothing changed) if the warehouse no longer has every line available."""
        row = (await conn.execute(_RETAKE_AND_SHIP, _ship_params(reservation, shipment))).one()
        if row.lines == 0:
            return False
        _expect(row, len(reservation.lines), "re-take", reservation)
        return True

    async def shipments(self, conn: Connection, order_id: str) -> list[Shipment]:
        rows = await conn.execute(text(_SHIPMENTS + "WHERE s.order_id = :o ORDER BY s.shipment_id"), {"o": order_id})
        return [_shipment(r) for r in rows]

    async def shipment(self, conn: Connection, shipment_id: str) -> Shipment | None:
        row = (await conn.execute(text(_SHIPMENTS + "WHERE s.shipment_id = :s"), {"s": shipment_id})).first()
        return _shipment(row) if row else None


    async def shipments_locked(self, conn: Connection, order_id: str) -> list[Shipment]:
        await conn.execute(text("SELECT 1 FROM shipments WHERE order_id = :o ORDER BY shipment_id FOR UPDATE"),
                           {"o": order_id})
        return await self.shipments(conn, order_id)


_SHIPMENTS = """
    SELECT s.shipment_id, s.order_id, s.warehouse_id, s.reservation_id, s.status, s.dispatched_at, s.ready_at,
           s.delivered_at, s.carrier, s.tracking_number,
           ARRAY(SELECT l.sku_id FROM shipment_lines l WHERE l.shipment_id = s.shipment_id ORDER BY l.sku_id) AS skus,
           ARRAY(SELECT l.quantity FROM shipment_lines l WHERE l.shipment_id = s.shipment_id
                 ORDER BY l.sku_id) AS quantities
    FROM shipments s """


@dataclass(frozen=True)
class HeldFor:
    """An order's reservation as the order-paid consumer sees it."""

    reservation: Reservation
    shipped: bool
    location_kind: str
    location_store_id: str
    location_manual: bool


def _shipment(r) -> Shipment:  # type: ignore[no-untyped-def]
    return Shipment(r.shipment_id, r.order_id, r.warehouse_id, r.reservation_id,
                    tuple(Line(s, q) for s, q in zip(r.skus, r.quantities, strict=True)), r.dispatched_at, r.status,
                    r.ready_at, r.delivered_at, r.carrier, r.tracking_number)


def _warehouse(row) -> Warehouse:  # type: ignore[no-untyped-def]
    return Warehouse(row.warehouse_id, row.code, row.name, row.kind, row.region, row.latitude, row.longitude,
                     tuple(row.modes), row.store_id, row.express_radius_km, row.manual_fulfilment)


def _ship_params(reservation: Reservation, shipment: Shipment) -> dict[str, object]:
    return {**_split(shipment.lines), "w": shipment.warehouse_id, "rid": reservation.reservation_id,
            "sid": shipment.shipment_id, "order_id": shipment.order_id, "at": shipment.dispatched_at,
            "from_status": str(reservation.status)}


def _expect(row, lines: int, what: str, reservation: Reservation) -> None:  # type: ignore[no-untyped-def]
    """The caller holds the reservation's row lock and checked its state, so anything short of every line
    and the one reservation changing is a broken invariant: fail the transaction rather than half-apply."""
    if row.lines != lines or row.reservations != 1:
        raise RuntimeError(f"{what} of reservation {reservation.reservation_id} changed {row.lines}/{lines} "
                           f"stock rows and {row.reservations} reservations")
