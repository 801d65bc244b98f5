"""Background sweepers of the orders service: unpaid orders cancelled when their payment window closes,
orders completed when their after-sales window closes, pickups never collected cancelled."""

from __future__ import annotations

from omo.orders.v1 import events_pb2
from omo.orders.v1 import orders_pb2 as pb

from services.runtime import jobs, log, outbox, timestamps
from services.runtime.db import Database

from . import domain
from .api import PICKUP_EXPIRED, SUBJECT_ORDER_COMPLETED, OrderApi, cancel_order
from .store import OrderStore

_log = log.get(__name__)


class UnpaidOrderSweeper:
    """Cancels orders still unpaid when their payment window closes, and announces each cancellation (the
    warehouse releases the hold, marketing gives the coupon back). SKIP LOCKED: replicas sweep side by side,
    and an order a payment is being recorded for right now is left for the next pass."""

    def __init__(self, engine: Database, store: OrderStore, window_s: float, interval_s: float,
                 per_pass: int = 200):
        self.engine = engine
        self.store = store
        self.window_s = window_s
        self.interval_s = interval_s
        self.per_pass = per_pass

    async def run(self) -> None:
        await jobs.repeat("unpaid order sweep", self.sweep, rest_s=self.interval_s, full=self.per_pass)

    async def sweep(self) -> int:
        async with self.engine.begin() as conn:
            overdue = await self.store.overdue(conn, self.window_s, self.per_pass)
            for order in overdue:
                await cancel_order(conn, self.store, order, "payment window expired")
        return len(overdue)


class CompletionSweeper:
    """Completes orders whose after-sales window closed (the consumer has had every item for
    OMO_AFTER_SALES_WINDOW_S) and announces each on orders.order.completed. SKIP LOCKED: replicas sweep side
    by side, and an order a refund is being recorded for right now is left for the next pass."""

    def __init__(self, engine: Database, store: OrderStore, window_s: float, interval_s: float,
                 per_pass: int = 200):
        self.engine = engine
        self.store = store
        self.window_s = window_s
        self.interval_s = interval_s
        self.per_pass = per_pass

    async def run(self) -> None:
        await jobs.repeat("completion sweep", self.sweep, rest_s=self.interval_s, full=self.per_pass)

    async def sweep(self) -> int:
        async with self.engine.begin() as conn:
            due, at = await self.store.after_sales_over(conn, self.window_s, self.per_pass)
            for order in due:
                completed = domain.complete(order, at, self.window_s)
                await self.store.record_completion(conn, order, completed)
                await outbox.add(conn, SUBJECT_ORDER_COMPLETED, events_pb2.OrderCompleted(
                    order_id=order.order_id, store_id=order.store_id, dealer_id=order.dealer_id,
                    completed_at=timestamps.to_proto(at)))
        return len(due)


class PickupExpirySweeper:
    """Cancels paid pickups never collected within OMO_PICKUP_WINDOW_S through CancelOrder itself (keyed by
    the order): the warehouse cancels the waiting shipment and releases the hold, every unit is refunded, the
    coupon comes back. A pickup collected meanwhile is refused by the warehouse (HANDED_OVER) and left alone."""

    def __init__(self, engine: Database, store: OrderStore, api: OrderApi, window_s: float, interval_s: float,
                 per_pass: int = 50):
        self.engine = engine
        self.store = store
        self.api = api
        self.window_s = window_s
        self.interval_s = interval_s
        self.per_pass = per_pass

    async def run(self) -> None:
        # Every pass rests: a pickup the warehouse refuses to cancel (collected meanwhile) stays due.
        await jobs.repeat("pickup expiry sweep", self.sweep, rest_s=self.interval_s, full=self.per_pass + 1)

    async def sweep(self) -> int:
        async with self.engine.connect() as conn:
            expired = await self.store.pickups_expired(conn, self.window_s, self.per_pass)
        cancelled = 0
        for order_id in expired:
            try:
                await self.api.CancelOrder(pb.CancelOrderRequest(
                    idempotency_key=f"pickup-expired:{order_id}", order_id=order_id,
                    reason=PICKUP_EXPIRED), None)
                cancelled += 1
            except Exception as exc:  # collected meanwhile, or a peer away: the next pass looks again
                _log.info("expired pickup not cancelled", order_id=order_id, error=repr(exc))
        return cancelled
