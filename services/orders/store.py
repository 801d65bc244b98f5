"""SQL for the orders schema."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.message import Message
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from services.runtime import outbox
from services.runtime.db import Connection, is_unique_violation
from services.runtime.errors import InvalidArgument

from .domain import Attribution, Coupon, Fulfilment, Line, Order, Refund, Status

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

# The order and its lines in one statement: one round trip on the hot path. A conflict on order_id (a retry
# that raced the first attempt) inserts nothing, and no line either; the caller then reads the winner back.
_PLACE = text(f"""
    WITH placed AS (
        INSERT INTO orders (idempotency_key, request_hash, {_ORDER_COLS}, fulfilment_mode, warehouse_id)
        VALUES (:idempotency_key, :request_hash, :order_id, :status, :store_id, :dealer_id, :brand_id, :consumer_id,
                :attribution_scene, :attribution_dealer_id, :attribution_store_id, :attribution_guide_id,
                :coupon_code, :coupon_funder, :coupon_discount_fen, :subtotal_fen, :discount_fen, :payable_fen,
                :reservation_id, :created_at, NULL, NULL, NULL, NULL, :fulfilment_mode, :warehouse_id)
        ON CONFLICT (order_id) DO NOTHING
        RETURNING order_id
    )
    INSERT INTO order_lines (order_id, line_no, {_LINE_COLS})
    SELECT placed.order_id, l.line_no, l.sku_id, l.name, l.quantity, l.unit_price_fen, l.unit_supply_price_fen,
           l.line_total_fen
    FROM placed, unnest(CAST(:sku_ids AS text[]), CAST(:names AS text[]), CAST(:quantities AS bigint[]),
                        CAST(:unit_prices AS bigint[]), CAST(:unit_supply_prices AS bigint[]),
                        CAST(:line_totals AS bigint[]))
         WITH ORDINALITY AS l(sku_id, name, quantity, unit_price_fen, unit_supply_price_fen, line_total_fen, line_no)
    RETURNING order_id
""")
# The order row with its lines as one JSON array: one round trip to read a whole order.
_SELECT_SQL = f"""
    SELECT {_ORDER_READ_COLS},
           (SELECT json_agg(json_build_array({_LINE_READ_COLS}) ORDER BY line_no) FROM order_lines l
            WHERE l.order_id = o.order_id) AS lines
    FROM orders o WHERE order_id = :id
"""
_SELECT = text(_SELECT_SQL)
_SELECT_LOCKED = text(_SELECT_SQL + " FOR UPDATE OF o")
# Many orders locked at once (event batches), in order_id order so that two batches cannot deadlock.
_SELECT_MANY_LOCKED = text(_SELECT_SQL.replace("WHERE order_id = :id", "WHERE order_id = ANY(:ids)")
                           + " ORDER BY o.order_id FOR UPDATE OF o")
# What shipments did to many orders, in one statement; the WHERE repeats the states a shipment may follow.
_DISPATCH_MANY = text("""
    UPDATE orders o SET status = v.status, shipment_id = v.shipment_id, dispatched_at = v.at
    FROM unnest(CAST(:ids AS text[]), CAST(:statuses AS text[]), CAST(:shipments AS text[]),
                CAST(:ats AS timestamptz[])) AS v(order_id, status, shipment_id, at)
    WHERE o.order_id = v.order_id AND o.status IN ('PAID', 'PARTIALLY_SHIPPED', 'PARTIALLY_REFUNDED', 'REFUNDED')
""")
# PENDING_PAYMENT -> PAID, the notification kept and OrderPaid announced, in one statement (atomic by itself,
# no BEGIN/COMMIT round trips). The WHERE repeats the state check against the newest row version; the
# payments key refuses a transaction id another order recorded (the whole statement fails then).
_PAY = text(f"""
    WITH paid AS (
        UPDATE orders SET status = 'PAID', payment_txn_id = :t, paid_at = :at
        WHERE order_id = :id AND status = 'PENDING_PAYMENT'
        RETURNING order_id
    ), kept AS (
        INSERT INTO payments (provider_txn_id, order_id, amount_fen, received_at)
        SELECT :t, paid.order_id, :amount, :at FROM paid
    ), announced AS (
        {outbox.Announcement.INSERT_ONE} FROM paid{outbox.Announcement.RETURNING}
    )
    SELECT (SELECT count(*) FROM paid) AS paid, (SELECT outbox_id FROM announced) AS outbox_id,
           (SELECT outbox_created_ms FROM announced) AS outbox_created_ms
""")
_PRIOR = text("""
    SELECT order_id, request_hash, NULL AS code, NULL AS message, NULL AS status_details
    FROM orders WHERE idempotency_key = :key
    UNION ALL
    SELECT NULL, request_hash, code, message, status_details FROM placement_refusals WHERE idempotency_key = :key
""")


@dataclass(frozen=True)
class Refusal:
    """How a dependency refused a placement: enough to answer a retry exactly as the first attempt was answered."""

    code: str
    message: str
    status_details: bytes


@dataclass(frozen=True)
class Prior:
    """What an idempotency key already led to: an order or a refusal."""

    request_hash: bytes
    order_id: str | None
    refusal: Refusal | None


def _order(row) -> Order:  # type: ignore[no-untyped-def]
    lines = json.loads(row.lines) if isinstance(row.lines, str) else row.lines
    coupon = Coupon(row.coupon_code, row.coupon_funder, row.coupon_discount_fen) if row.coupon_code else None
    return Order(
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
        pickup_ready_at=row.pickup_ready_at,
    )


class OrderStore:
    async def prior(self, conn: Connection, idempotency_key: str) -> Prior | None:
        row = (await conn.execute(_PRIOR, {"key": idempotency_key})).first()
        if row is None:
            return None
        refusal = None if row.order_id else Refusal(row.code, row.message, bytes(row.status_details))
        return Prior(bytes(row.request_hash), row.order_id, refusal)

    async def add_order(self, conn: Connection, order: Order, idempotency_key: str, request_hash: bytes) -> bool:
        """Insert the order with its lines; False if an order with this id exists already."""
        coupon = order.coupon
        params = {
            "idempotency_key": idempotency_key, "request_hash": request_hash, "order_id": order.order_id,
            "status": str(order.status), "store_id": order.store_id, "dealer_id": order.dealer_id,
            "brand_id": order.brand_id, "consumer_id": order.consumer_id,
            "attribution_scene": order.attribution.scene, "attribution_dealer_id": order.attribution.dealer_id,
            "attribution_store_id": order.attribution.store_id, "attribution_guide_id": order.attribution.guide_id,
            "coupon_code": coupon.code if coupon else None, "coupon_funder": coupon.funder if coupon else None,
            "coupon_discount_fen": coupon.discount_fen if coupon else None,
            "subtotal_fen": order.subtotal_fen, "discount_fen": order.discount_fen, "payable_fen": order.payable_fen,
            "reservation_id": order.reservation_id, "created_at": order.created_at,
            "fulfilment_mode": str(order.fulfilment_mode), "warehouse_id": order.warehouse_id,
            "sku_ids": [li.sku_id for li in order.lines], "names": [li.name for li in order.lines],
            "quantities": [li.quantity for li in order.lines],
            "unit_prices": [li.unit_price_fen for li in order.lines],
            "unit_supply_prices": [li.unit_supply_price_fen for li in order.lines],
            "line_totals": [li.line_total_fen for li in order.lines],
        }
        return (await conn.execute(_PLACE, params)).first() is not None

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

    async def order_hash(self, conn: Connection, order_id: str) -> bytes:
        return bytes((await conn.execute(text("SELECT request_hash FROM orders WHERE order_id = :id"),
                                         {"id": order_id})).scalar_one())

    async def record_payment(self, conn: Connection, paid: Order, amount_fen: int, subject: str,
                             event: Message) -> bool:
        """Mark the order PAID, keep the notification and queue `event`, in one statement. False (and nothing
        written) if the order is no longer PENDING_PAYMENT: the caller reads it again and decides again."""
        announcement = outbox.Announcement(subject, event)
        try:
            row = (await conn.execute(_PAY, {"t": paid.payment_txn_id, "at": paid.paid_at, "id": paid.order_id,
                                             "amount": amount_fen, **announcement.params})).one()
        except IntegrityError as err:
            if is_unique_violation(err) and getattr(err.orig, "constraint_name", "") == "payments_pkey":
                raise InvalidArgument.field("provider_txn_id", "was already recorded for another order") from None
            raise
        announcement.written(row.outbox_id, row.outbox_created_ms)
        return bool(row.paid)

    async def orders_locked(self, conn: Connection, order_ids: list[str]) -> dict[str, Order]:
        """Many orders with their lines, each row locked until the transaction ends."""
        rows = (await conn.execute(_SELECT_MANY_LOCKED, {"ids": sorted(set(order_ids))})).all()
        return {row.order_id: _order(row) for row in rows}

    async def record_dispatches(self, conn: Connection, dispatched: list[Order]) -> None:
        """The shipments' effect on many locked orders (one row each), in one statement."""
        if not dispatched:
            return
        updated = await conn.execute(_DISPATCH_MANY, {
            "ids": [o.order_id for o in dispatched], "statuses": [str(o.status) for o in dispatched],
            "shipments": [o.shipment_id for o in dispatched], "ats": [o.dispatched_at for o in dispatched]})
        if updated.rowcount != len(dispatched):
            raise RuntimeError(f"{len(dispatched) - updated.rowcount} of {len(dispatched)} orders changed under "
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
            text("SELECT order_id FROM orders WHERE status = 'PENDING_PAYMENT' "
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
            f"SELECT {_ORDER_READ_COLS}, (SELECT json_agg(json_build_array({_LINE_READ_COLS}) ORDER BY line_no) "
            f"FROM order_lines l WHERE l.order_id = o.order_id) AS lines FROM orders o WHERE {' AND '.join(where)} "
            "ORDER BY o.created_at DESC, o.order_id DESC LIMIT :n"), params)
        return [_order(r) for r in rows]


@dataclass(frozen=True)
class PriorRefund:
    order_id: str
    request_hash: bytes
    refund: bytes
