"""SQL for the orders schema."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from google.protobuf.message import Message
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from services.runtime import outbox
from services.runtime.db import Connection, is_unique_violation
from services.runtime.errors import InvalidArgument

from .domain import Attribution, Coupon, Fulfilment, Leg, LegLine, Line, Order, Refund, Status, legacy_leg

_ORDER_COLS = (
    "order_id, status, store_id, dealer_id, brand_id, consumer_id, attribution_scene, attribution_dealer_id, "
    "attribution_store_id, attribution_guide_id, coupon_code, coupon_funder, coupon_discount_fen, subtotal_fen, "
    "discount_fen, payable_fen, reservation_id, created_at, payment_txn_id, paid_at, shipment_id, dispatched_at"
)
_LINE_COLS = "sku_id, name, quantity, unit_price_fen, unit_supply_price_fen, line_total_fen"
# Read back with what happened after placing (cancel, refunds); placing writes only the columns above.
_ORDER_READ_COLS = (_ORDER_COLS + ", cancelled_at, cancel_reason, refunded_fen, fulfilment_mode, warehouse_id, "
                    "pickup_code, delivered_at, completed_at, pickup_ready_at")
_LINE_READ_COLS = _LINE_COLS + ", refunded_quantity, refunded_fen"
# An order's lines and legs as two JSON arrays beside its row: one round trip reads a whole order.
_READ = f"""
    SELECT {_ORDER_READ_COLS},
           (SELECT json_agg(json_build_array({_LINE_READ_COLS}) ORDER BY line_no) FROM order_lines l
            WHERE l.order_id = o.order_id) AS lines,
           (SELECT json_agg(json_build_array(g.reservation_id, g.warehouse_id, g.sku_ids, g.quantities, g.returned,
                                             g.shipment_id, g.dispatched_at) ORDER BY g.leg) FROM order_legs g
            WHERE g.order_id = o.order_id) AS legs
    FROM orders o"""
# Legs of many orders from flat arrays, one element per leg line (placing, shipping and returns write them).
_LEGS_IN = """
    SELECT x.order_id, x.leg, x.reservation_id, x.warehouse_id, array_agg(x.sku_id ORDER BY x.n) AS sku_ids,
           array_agg(x.quantity ORDER BY x.n) AS quantities, array_agg(x.returned ORDER BY x.n) AS returned,
           x.shipment_id, x.dispatched_at
    FROM unnest(CAST(:leg_orders AS text[]), CAST(:leg_nos AS integer[]), CAST(:leg_rids AS text[]),
                CAST(:leg_warehouses AS text[]), CAST(:leg_skus AS text[]), CAST(:leg_quantities AS bigint[]),
                CAST(:leg_returned AS bigint[]), CAST(:leg_shipments AS text[]), CAST(:leg_ats AS timestamptz[]))
         WITH ORDINALITY AS x(order_id, leg, reservation_id, warehouse_id, sku_id, quantity, returned, shipment_id,
                              dispatched_at, n)
    GROUP BY x.order_id, x.leg, x.reservation_id, x.warehouse_id, x.shipment_id, x.dispatched_at"""
# What shipping and returns change on legs. An order stored by a process older than its legs has none
# stored (it reads as one leg): the first change inserts it.
_UPSERT_LEGS = f"""
    INSERT INTO order_legs (order_id, leg, reservation_id, warehouse_id, sku_ids, quantities, returned, shipment_id,
                            dispatched_at)
    SELECT g.* FROM ({_LEGS_IN}) g JOIN changed USING (order_id)
    ON CONFLICT (order_id, leg) DO UPDATE SET warehouse_id = excluded.warehouse_id, returned = excluded.returned,
        shipment_id = excluded.shipment_id, dispatched_at = excluded.dispatched_at"""

# Orders with their lines, many in one statement (placements arriving together share it). A conflict on
# order_id (a retry that raced the first attempt) or a refusal recorded under the key inserts nothing for
# that order, and no line either; the caller then looks the key up.
_PLACE = text(f"""
    WITH input AS (
        SELECT * FROM unnest(
            CAST(:keys AS text[]), CAST(:hashes AS bytea[]), CAST(:order_ids AS text[]), CAST(:statuses AS text[]),
            CAST(:store_ids AS text[]), CAST(:dealer_ids AS text[]), CAST(:brand_ids AS text[]),
            CAST(:consumer_ids AS text[]), CAST(:scenes AS text[]), CAST(:attr_dealers AS text[]),
            CAST(:attr_stores AS text[]), CAST(:attr_guides AS text[]), CAST(:coupon_codes AS text[]),
            CAST(:coupon_funders AS text[]), CAST(:coupon_discounts AS bigint[]), CAST(:subtotals AS bigint[]),
            CAST(:discounts AS bigint[]), CAST(:payables AS bigint[]), CAST(:reservation_ids AS text[]),
            CAST(:created_ats AS timestamptz[]), CAST(:modes AS text[]), CAST(:warehouse_ids AS text[]))
        AS i(idempotency_key, request_hash, order_id, status, store_id, dealer_id, brand_id, consumer_id,
             attribution_scene, attribution_dealer_id, attribution_store_id, attribution_guide_id, coupon_code,
             coupon_funder, coupon_discount_fen, subtotal_fen, discount_fen, payable_fen, reservation_id,
             created_at, fulfilment_mode, warehouse_id)
    ), placed AS (
        INSERT INTO orders (idempotency_key, request_hash, {_ORDER_COLS}, fulfilment_mode, warehouse_id)
        SELECT idempotency_key, request_hash, order_id, status, store_id, dealer_id, brand_id, consumer_id,
               attribution_scene, attribution_dealer_id, attribution_store_id, attribution_guide_id, coupon_code,
               coupon_funder, coupon_discount_fen, subtotal_fen, discount_fen, payable_fen, reservation_id,
               created_at, NULL, NULL, NULL, NULL, fulfilment_mode, warehouse_id
        FROM input
        -- A key whose first attempt was refused stays bound to that refusal: no order under it, ever.
        WHERE NOT EXISTS (SELECT 1 FROM placement_refusals r WHERE r.idempotency_key = input.idempotency_key)
        ORDER BY order_id
        ON CONFLICT (order_id) DO NOTHING
        RETURNING order_id
    ), lines AS (
        INSERT INTO order_lines (order_id, line_no, {_LINE_COLS})
        SELECT l.order_id, l.line_no, l.sku_id, l.name, l.quantity, l.unit_price_fen, l.unit_supply_price_fen,
               l.line_total_fen
        FROM unnest(CAST(:line_orders AS text[]), CAST(:line_nos AS integer[]), CAST(:sku_ids AS text[]),
                    CAST(:names AS text[]), CAST(:quantities AS bigint[]), CAST(:unit_prices AS bigint[]),
                    CAST(:unit_supply_prices AS bigint[]), CAST(:line_totals AS bigint[]))
             AS l(order_id, line_no, sku_id, name, quantity, unit_price_fen, unit_supply_price_fen, line_total_fen)
        JOIN placed p ON p.order_id = l.order_id
    ), legs AS (
        INSERT INTO order_legs (order_id, leg, reservation_id, warehouse_id, sku_ids, quantities, returned,
                                shipment_id, dispatched_at)
        SELECT g.* FROM ({_LEGS_IN}) g JOIN placed p ON p.order_id = g.order_id
    )
    SELECT order_id FROM placed
""")
_SELECT_SQL = _READ + " WHERE order_id = :id"
_SELECT = text(_SELECT_SQL)
_SELECT_LOCKED = text(_SELECT_SQL + " FOR UPDATE OF o")
# Many orders locked at once (event batches), in order_id order so that two batches cannot deadlock.
_SELECT_MANY_LOCKED = text(_SELECT_SQL.replace("WHERE order_id = :id", "WHERE order_id = ANY(:ids)")
                           + " ORDER BY o.order_id FOR UPDATE OF o")
# What shipments did to many orders and their legs, in one statement; each order changes only from the
# status it was judged in.
_DISPATCH_MANY = text(f"""
    WITH changed AS (
        UPDATE orders o SET status = v.status, shipment_id = v.shipment_id, dispatched_at = v.at,
                            warehouse_id = v.warehouse_id
        FROM unnest(CAST(:ids AS text[]), CAST(:befores AS text[]), CAST(:statuses AS text[]),
                    CAST(:shipments AS text[]), CAST(:ats AS timestamptz[]), CAST(:warehouses AS text[]))
             AS v(order_id, before, status, shipment_id, at, warehouse_id)
        WHERE o.order_id = v.order_id AND o.status = v.before
        RETURNING o.order_id
    ), legs AS ({_UPSERT_LEGS})
    SELECT count(*) AS changed FROM changed
""")
# The legs a refund returned goods to, for one order the caller holds locked.
_RETURN_TO_LEGS = text(f"WITH changed AS (SELECT CAST(:order_id AS text) AS order_id) {_UPSERT_LEGS}")
# PENDING_PAYMENT -> PAID, the notification kept and OrderPaid announced, for many orders in one statement
# (atomic by itself, no BEGIN/COMMIT round trips; notifications arriving together share it). The WHERE
# repeats the state check against the newest row versions; the payments key refuses a transaction id another
# order recorded (the whole statement fails then, and the caller retries its payments one by one). Outbox
# rows are written in input order, so their ids ascend with it.
_PAY = text("""
    WITH input AS (
        SELECT * FROM unnest(CAST(:order_ids AS text[]), CAST(:txns AS text[]), CAST(:ats AS timestamptz[]),
                             CAST(:amounts AS bigint[]), CAST(:subjects AS text[]), CAST(:types AS text[]),
                             CAST(:payloads AS bytea[]), CAST(:rids AS text[]))
                 WITH ORDINALITY AS i(order_id, txn, at, amount, subject, event_type, payload, rid, n)
    ), paid AS (
        UPDATE orders o SET status = 'PAID', payment_txn_id = i.txn, paid_at = i.at
        FROM input i WHERE o.order_id = i.order_id AND o.status = 'PENDING_PAYMENT'
        RETURNING o.order_id
    ), kept AS (
        INSERT INTO payments (provider_txn_id, order_id, amount_fen, received_at)
        SELECT i.txn, i.order_id, i.amount, i.at FROM input i JOIN paid USING (order_id)
    ), announced AS (
        INSERT INTO outbox (subject, event_type, payload, request_id)
        SELECT i.subject, i.event_type, i.payload, i.rid FROM input i JOIN paid USING (order_id) ORDER BY i.n
        RETURNING id, (extract(epoch FROM created_at) * 1000)::bigint AS created_ms
    )
    SELECT ARRAY(SELECT i.order_id FROM input i JOIN paid USING (order_id) ORDER BY i.n) AS paid,
           ARRAY(SELECT id FROM announced ORDER BY id) AS outbox_ids,
           ARRAY(SELECT created_ms FROM announced ORDER BY id) AS created_ms
""")
# What many idempotency keys already led to, in one statement: an order, a refusal, or nothing.
_PRIORS = text("""
    SELECT k.key, o.order_id, coalesce(o.request_hash, r.request_hash) AS request_hash, r.code, r.message,
           r.status_details
    FROM unnest(CAST(:keys AS text[])) AS k(key)
    LEFT JOIN orders o ON o.idempotency_key = k.key
    LEFT JOIN placement_refusals r ON r.idempotency_key = k.key
    WHERE o.order_id IS NOT NULL OR r.idempotency_key IS NOT NULL
""")


@dataclass(frozen=True)
class Refusal:
    """How a dependency refused a placement: enough to answer a retry exactly as the first attempt was answered."""

    code: str
    message: str
    status_details: bytes


def is_txn_taken(err: IntegrityError) -> bool:
    """The payments key refused a provider transaction id (it paid another order)."""
    return is_unique_violation(err) and getattr(err.orig, "constraint_name", "") == "payments_pkey"


@dataclass(frozen=True)
class Placing:
    """An order to insert with the idempotency key and request hash it was placed under."""

    order: Order
    idempotency_key: str
    request_hash: bytes


@dataclass(frozen=True)
class Paying:
    """A payment to record: the order as paid, the amount notified and the event announcing it."""

    paid: Order
    amount_fen: int
    subject: str
    event: Message


@dataclass(frozen=True)
class Prior:
    """What an idempotency key already led to: an order or a refusal."""

    request_hash: bytes
    order_id: str | None
    refusal: Refusal | None


def _json(value):  # type: ignore[no-untyped-def]
    return json.loads(value) if isinstance(value, str) else value


def _leg(r: list) -> Leg:  # type: ignore[type-arg]
    reservation_id, warehouse_id, skus, quantities, returned, shipment_id, at = r
    return Leg(reservation_id, warehouse_id, tuple(LegLine(*li) for li in zip(skus, quantities, returned, strict=True)),
               shipment_id, datetime.fromisoformat(at) if at else None)


def _leg_params(orders: list[Order]) -> dict[str, list]:  # type: ignore[type-arg]
    """The legs of orders as _LEGS_IN's flat arrays."""
    rows = [(o.order_id, n, leg, line) for o in orders for n, leg in enumerate(o.legs) for line in leg.lines]
    return {
        "leg_orders": [r[0] for r in rows], "leg_nos": [r[1] for r in rows],
        "leg_rids": [r[2].reservation_id for r in rows], "leg_warehouses": [r[2].warehouse_id for r in rows],
        "leg_skus": [r[3].sku_id for r in rows], "leg_quantities": [r[3].quantity for r in rows],
        "leg_returned": [r[3].returned_quantity for r in rows], "leg_shipments": [r[2].shipment_id for r in rows],
        "leg_ats": [r[2].dispatched_at for r in rows],
    }


def _order(row) -> Order:  # type: ignore[no-untyped-def]
    lines = _json(row.lines)
    coupon = Coupon(row.coupon_code, row.coupon_funder, row.coupon_discount_fen) if row.coupon_code else None
    order = Order(
        order_id=row.order_id, status=Status(row.status), store_id=row.store_id, dealer_id=row.dealer_id,
        brand_id=row.brand_id, consumer_id=row.consumer_id,
        attribution=Attribution(row.attribution_scene, row.attribution_dealer_id, row.attribution_store_id,
                                row.attribution_guide_id),
        lines=tuple(Line(*li) for li in lines), coupon=coupon, subtotal_fen=row.subtotal_fen,
        discount_fen=row.discount_fen,
        payable_fen=row.payable_fen, reservation_id=row.reservation_id, created_at=row.created_at,
        payment_txn_id=row.payment_txn_id or "", paid_at=row.paid_at, shipment_id=row.shipment_id or "",
        dispatched_at=row.dispatched_at, cancelled_at=row.cancelled_at, cancel_reason=row.cancel_reason,
        refunded_fen=row.refunded_fen, fulfilment_mode=Fulfilment(row.fulfilment_mode), warehouse_id=row.warehouse_id,
        pickup_code=row.pickup_code, delivered_at=row.delivered_at, completed_at=row.completed_at,
        pickup_ready_at=row.pickup_ready_at, legs=tuple(_leg(g) for g in _json(row.legs) or ()),
    )
    return order if order.legs else replace(order, legs=(legacy_leg(order),))


class OrderStore:
    async def priors(self, conn: Connection, keys: list[str]) -> dict[str, Prior]:
        """What each of many idempotency keys already led to (keys that led nowhere are absent)."""
        found = {}
        for row in await conn.execute(_PRIORS, {"keys": keys}):
            refusal = None if row.order_id else Refusal(row.code, row.message, bytes(row.status_details))
            found[row.key] = Prior(bytes(row.request_hash), row.order_id, refusal)
        return found

    async def add_orders(self, conn: Connection, placements: list[Placing]) -> set[str]:
        """Insert orders with their lines; the ids of those inserted (not those that existed already)."""
        orders = [p.order for p in placements]
        coupons = [o.coupon for o in orders]
        lines = [(o.order_id, n, li) for o in orders for n, li in enumerate(o.lines, start=1)]
        params = {
            "keys": [p.idempotency_key for p in placements], "hashes": [p.request_hash for p in placements],
            "order_ids": [o.order_id for o in orders], "statuses": [str(o.status) for o in orders],
            "store_ids": [o.store_id for o in orders], "dealer_ids": [o.dealer_id for o in orders],
            "brand_ids": [o.brand_id for o in orders], "consumer_ids": [o.consumer_id for o in orders],
            "scenes": [o.attribution.scene for o in orders],
            "attr_dealers": [o.attribution.dealer_id for o in orders],
            "attr_stores": [o.attribution.store_id for o in orders],
            "attr_guides": [o.attribution.guide_id for o in orders],
            "coupon_codes": [c.code if c else None for c in coupons],
            "coupon_funders": [c.funder if c else None for c in coupons],
            "coupon_discounts": [c.discount_fen if c else None for c in coupons],
            "subtotals": [o.subtotal_fen for o in orders], "discounts": [o.discount_fen for o in orders],
            "payables": [o.payable_fen for o in orders], "reservation_ids": [o.reservation_id for o in orders],
            "created_ats": [o.created_at for o in orders], "modes": [str(o.fulfilment_mode) for o in orders],
            "warehouse_ids": [o.warehouse_id for o in orders],
            "line_orders": [oid for oid, _, _ in lines], "line_nos": [n for _, n, _ in lines],
            "sku_ids": [li.sku_id for _, _, li in lines], "names": [li.name for _, _, li in lines],
            "quantities": [li.quantity for _, _, li in lines],
            "unit_prices": [li.unit_price_fen for _, _, li in lines],
            "unit_supply_prices": [li.unit_supply_price_fen for _, _, li in lines],
            "line_totals": [li.line_total_fen for _, _, li in lines],
            **_leg_params(orders),
        }
        return {row.order_id for row in await conn.execute(_PLACE, params)}

    async def add_refusal(self, conn: Connection, idempotency_key: str, request_hash: bytes,
                          refusal: Refusal) -> None:
        await conn.execute(
            text("INSERT INTO placement_refusals (idempotency_key, request_hash, code, message, status_details) "
                 "VALUES (:key, :hash, :code, :message, :details) ON CONFLICT (idempotency_key) DO NOTHING"),
            {"key": idempotency_key, "hash": request_hash, "code": refusal.code, "message": refusal.message,
             "details": refusal.status_details},
        )

    async def order(self, conn: Connection, order_id: str, *, lock: bool = False) -> Order | None:
        """The order with its lines; `lock` holds its row until the transaction ends (payments, shipments)."""
        row = (await conn.execute(_SELECT_LOCKED if lock else _SELECT, {"id": order_id})).first()
        return _order(row) if row else None

    async def record_payments(self, conn: Connection, payments: list[Paying]) -> set[str]:
        """Mark orders PAID, keep the notifications and queue their events, in one statement: the ids of the
        orders paid now. An order no longer PENDING_PAYMENT is left alone (its caller reads it again and
        decides again). A transaction id that another order recorded fails the whole statement
        (IntegrityError on payments_pkey)."""
        announcements = [outbox.Announcement(p.subject, p.event) for p in payments]
        row = (await conn.execute(_PAY, {
            "order_ids": [p.paid.order_id for p in payments], "txns": [p.paid.payment_txn_id for p in payments],
            "ats": [p.paid.paid_at for p in payments], "amounts": [p.amount_fen for p in payments],
            "subjects": [a.subject for a in announcements], "types": [a.event_type for a in announcements],
            "payloads": [a.payload for a in announcements], "rids": [a.request_id for a in announcements],
        })).one()
        by_order = dict(zip((p.paid.order_id for p in payments), announcements, strict=True))
        for order_id, outbox_id, created_ms in zip(row.paid, row.outbox_ids, row.created_ms, strict=True):
            by_order[order_id].written(conn, outbox_id, created_ms)
        return set(row.paid)

    async def record_payment(self, conn: Connection, payment: Paying) -> bool:
        """One payment (see record_payments); a transaction id another order recorded is INVALID_ARGUMENT."""
        try:
            return bool(await self.record_payments(conn, [payment]))
        except IntegrityError as err:
            if is_txn_taken(err):
                raise InvalidArgument.field("provider_txn_id", "was already recorded for another order") from None
            raise

    async def orders_locked(self, conn: Connection, order_ids: list[str]) -> dict[str, Order]:
        """Many orders with their lines, each row locked until the transaction ends."""
        rows = (await conn.execute(_SELECT_MANY_LOCKED, {"ids": sorted(set(order_ids))})).all()
        return {row.order_id: _order(row) for row in rows}

    async def record_dispatches(self, conn: Connection, dispatched: list[tuple[Order, Order]]) -> None:
        """The shipments' effect on many locked orders (before, after) and their legs, in one statement."""
        if not dispatched:
            return
        after = [a for _, a in dispatched]
        changed = (await conn.execute(_DISPATCH_MANY, {
            "ids": [o.order_id for o in after], "befores": [str(b.status) for b, _ in dispatched],
            "statuses": [str(o.status) for o in after], "shipments": [o.shipment_id for o in after],
            "ats": [o.dispatched_at for o in after], "warehouses": [o.warehouse_id for o in after],
            **_leg_params(after)})).scalar_one()
        if changed != len(dispatched):
            raise RuntimeError(f"{len(dispatched) - changed} of {len(dispatched)} orders changed under "
                               "their row locks")

    async def record_pickup_code(self, conn: Connection, order: Order) -> None:
        updated = await conn.execute(
            text("UPDATE orders SET pickup_code = :code, pickup_ready_at = :at WHERE order_id = :id "
                 "AND status IN ('PAID', 'PARTIALLY_REFUNDED', 'REFUNDED') AND dispatched_at IS NULL"),
            {"code": order.pickup_code, "at": order.pickup_ready_at, "id": order.order_id})
        if updated.rowcount != 1:
            raise RuntimeError(f"order {order.order_id} changed under its row lock")

    async def record_delivery(self, conn: Connection, before: Order, delivered: Order) -> None:
        updated = await conn.execute(
            text("UPDATE orders SET status = :to, delivered_at = :at WHERE order_id = :id AND status = :from "
                 "AND delivered_at IS NULL"),
            {"to": str(delivered.status), "at": delivered.delivered_at, "id": delivered.order_id,
             "from": str(before.status)})
        if updated.rowcount != 1:
            raise RuntimeError(f"order {delivered.order_id} changed under its row lock")

    async def record_cancel(self, conn: Connection, cancelled: Order, before: Status = Status.PENDING_PAYMENT) -> None:
        updated = await conn.execute(
            text("UPDATE orders SET status = 'CANCELLED', cancelled_at = :at, cancel_reason = :reason "
                 "WHERE order_id = :id AND status = :from"),
            {"at": cancelled.cancelled_at, "reason": cancelled.cancel_reason, "id": cancelled.order_id,
             "from": str(before)},
        )
        if updated.rowcount != 1:
            raise RuntimeError(f"order {cancelled.order_id} changed under its row lock")

    async def overdue(self, conn: Connection, window_s: float, limit: int) -> list[Order]:
        """Unpaid orders past their payment window, oldest first, locked; rows another sweeper holds are
        skipped."""
        ids = (await conn.execute(
            text("SELECT order_id FROM orders WHERE paid_at IS NULL AND cancelled_at IS NULL "
                 "AND status = 'PENDING_PAYMENT' "
                 "AND created_at <= now() - make_interval(secs => :w) ORDER BY created_at LIMIT :n "
                 "FOR UPDATE SKIP LOCKED"), {"w": window_s, "n": limit})).scalars()
        orders = [await self.order(conn, order_id) for order_id in ids]
        return [o for o in orders if o is not None]

    async def after_sales_over(self, conn: Connection, window_s: float, limit: int) -> tuple[list[Order], datetime]:
        """Orders whose consumer had every item longer than the after-sales window ago, locked (rows another
        sweeper holds are skipped), with the database's clock they were judged by."""
        rows = (await conn.execute(
            text("SELECT order_id, now() AS at FROM orders "
                 "WHERE status IN ('DELIVERED', 'DISPATCHED', 'PARTIALLY_REFUNDED') "
                 "AND coalesce(delivered_at, dispatched_at) <= now() - make_interval(secs => :w) "
                 "AND (delivered_at IS NOT NULL OR fulfilment_mode = 'STORE_PICKUP') "
                 "ORDER BY coalesce(delivered_at, dispatched_at) LIMIT :n FOR UPDATE SKIP LOCKED"),
            {"w": window_s, "n": limit})).all()
        orders = [await self.order(conn, row.order_id) for row in rows]
        at = rows[0].at if rows else datetime.now(UTC)
        return [o for o in orders if o is not None], at

    async def pickups_expired(self, conn: Connection, window_s: float, limit: int) -> list[str]:
        """Paid pickups waiting at the counter longer than the window, oldest first."""
        return (await conn.execute(
            text("SELECT order_id FROM orders WHERE pickup_ready_at <= now() - make_interval(secs => :w) "
                 "AND dispatched_at IS NULL AND status IN ('PAID', 'PARTIALLY_REFUNDED', 'REFUNDED') "
                 "ORDER BY pickup_ready_at LIMIT :n"), {"w": window_s, "n": limit})).scalars()

    async def record_completion(self, conn: Connection, before: Order, completed: Order) -> None:
        updated = await conn.execute(
            text("UPDATE orders SET status = 'COMPLETED', completed_at = :at WHERE order_id = :id AND status = :from"),
            {"at": completed.completed_at, "id": completed.order_id, "from": str(before.status)})
        if updated.rowcount != 1:
            raise RuntimeError(f"order {completed.order_id} changed under its row lock")

    async def prior_refund(self, conn: Connection, provider_refund_id: str) -> PriorRefund | None:
        row = (await conn.execute(
            text("SELECT order_id, request_hash, refund FROM refunds WHERE provider_refund_id = :id"),
            {"id": provider_refund_id})).first()
        return PriorRefund(row.order_id, bytes(row.request_hash), bytes(row.refund)) if row else None

    async def record_refund(self, conn: Connection, before: Order, after: Order, refund: Refund,
                            request_hash: bytes, published: bytes) -> None:
        """The refund, the order's status and total, and each line's refunded units, for a locked order. The
        refunds key refuses a provider refund id another order recorded meanwhile."""
        inserted = (await conn.execute(
            text("INSERT INTO refunds (provider_refund_id, order_id, request_hash, amount_fen, refund, refunded_at) "
                 "VALUES (:id, :o, :hash, :amount, :refund, :at) ON CONFLICT (provider_refund_id) DO NOTHING "
                 "RETURNING 1"),
            {"id": refund.provider_refund_id, "o": refund.order_id, "hash": request_hash,
             "amount": refund.amount_fen, "refund": published, "at": refund.refunded_at})).first()
        if inserted is None:
            raise InvalidArgument.field("provider_refund_id", "was already recorded for another order")
        updated = await conn.execute(
            text("UPDATE orders SET status = :to, refunded_fen = :total WHERE order_id = :id AND status = :from"),
            {"to": str(after.status), "total": after.refunded_fen, "id": after.order_id, "from": str(before.status)})
        if updated.rowcount != 1:
            raise RuntimeError(f"order {after.order_id} changed under its row lock")
        await conn.execute(
            text("UPDATE order_lines l SET refunded_quantity = v.q, refunded_fen = v.f "
                 "FROM unnest(CAST(:skus AS text[]), CAST(:qs AS bigint[]), CAST(:fs AS bigint[])) AS v(sku, q, f) "
                 "WHERE l.order_id = :id AND l.sku_id = v.sku"),
            {"id": after.order_id, "skus": [li.sku_id for li in after.lines],
             "qs": [li.refunded_quantity for li in after.lines], "fs": [li.refunded_fen for li in after.lines]})
        if after.legs != before.legs:
            await conn.execute(_RETURN_TO_LEGS, {"order_id": after.order_id, **_leg_params([after])})

    async def list_orders(self, conn: Connection, column: str, value: str, tenant: tuple[str, str] | None,
                          after: tuple[datetime, str] | None, limit: int) -> list[Order]:
        """Newest first. `column` and the tenant column come from domain.list_scope's fixed set, never from
        the caller, so they are safe to put in the SQL text."""
        where = [f"o.{column} = :v"]
        params: dict[str, object] = {"v": value, "n": limit}
        if tenant is not None:
            where.append(f"o.{tenant[0]} = :tv")
            params["tv"] = tenant[1]
        if after is not None:
            where.append("(o.created_at, o.order_id) < (:at, :oid)")
            params.update(at=after[0], oid=after[1])
        rows = await conn.execute(text(
            f"{_READ} WHERE {' AND '.join(where)} ORDER BY o.created_at DESC, o.order_id DESC LIMIT :n"), params)
        return [_order(r) for r in rows]


@dataclass(frozen=True)
class PriorRefund:
    order_id: str
    request_hash: bytes
    refund: bytes
