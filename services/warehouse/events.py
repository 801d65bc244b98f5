"""Handlers for the events the warehouse consumes."""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import datetime

from omo.orders.v1 import events_pb2 as orders_events

from services.runtime import jobs, log, outbox
from services.runtime.consumer import Delivery
from services.runtime.db import Connection, Database
from services.runtime.errors import FailedPrecondition
from services.runtime.ids import derived_id
from services.runtime.timestamps import now

from . import domain
from .messages import (
    RESERVATION_RELEASED,
    SHIPMENT_DISPATCHED,
    SHIPMENT_READY_FOR_PICKUP,
    ready_for_pickup,
    reservation_released,
    shipment_dispatched,
)
from .store import HeldFor, WarehouseStore

_log = log.get(__name__)
# Six digits, read out or scanned at the counter.
PICKUP_CODE_DIGITS = 6


class OrderPaidHandler:
    """A paid order ships: each reservation (one per location of its route) becomes one shipment and the
    units leave that location, or wait for the consumer or the staff there.

    Runs in the inbox transaction. Idempotent by business key too: the order's reservation rows are locked
    first, and a location that already has a shipment of the order is left alone, so the same payment seen
    again under another event id ships nothing twice."""

    def __init__(self, store: WarehouseStore):
        self.store = store

    async def __call__(self, conn: Connection, event: orders_events.OrderPaid, delivery: Delivery) -> None:
        order = event.order
        held = await self.store.reservations_for_order(conn, order.order_id)
        if not held:
            raise FailedPrecondition(f"paid order {order.order_id!r} has no reservation",
                                     reason="RESERVATION_NOT_FOUND", metadata={"order_id": order.order_id})
        first = held[0].reservation
        if order.reservation_id and order.reservation_id != first.reservation_id:
            raise FailedPrecondition(
                f"paid order {order.order_id!r} names reservation {order.reservation_id!r}, "
                f"the warehouse holds {first.reservation_id!r} for it",
                reason="RESERVATION_MISMATCH",
                metadata={"order_id": order.order_id, "reservation_id": first.reservation_id},
            )
        split = len(held) > 1
        if split:
            await self.store.lock_stock(conn, [(h.reservation.warehouse_id, h.reservation.lines) for h in held])
        dispatched = []
        for found in held:
            shipment = await self._leg(conn, found, split)
            if shipment is not None:
                dispatched.append(shipment)
        if dispatched:
            done = await self.store.progress(conn, order.order_id)
            for shipment in dispatched:
                await outbox.add(conn, SHIPMENT_DISPATCHED, shipment_dispatched(shipment, done.all_dispatched))

    async def _leg(self, conn: Connection, found: HeldFor, split: bool) -> domain.Shipment | None:
        """One location's part of the order; the shipment if it left at once."""
        reservation = found.reservation
        action = domain.ship_action(reservation, found.shipped, found.location_kind, found.location_manual)
        if action is domain.ShipAction.ALREADY_SHIPPED:
            return None
        if action is domain.ShipAction.TO_PICK:
            to_pick = replace(self._shipment(reservation, reservation.warehouse_id, None), status="CREATED")
            await self.store.set_aside(conn, reservation, to_pick, None)
            return None
        if action is domain.ShipAction.SET_ASIDE:
            ready = replace(self._shipment(reservation, reservation.warehouse_id, None), status="READY_FOR_PICKUP",
                            ready_at=now())
            # Random, not derived: only the consumer (through orders) learns it. A redelivery finds the
            # shipment made and stops above, so the code is drawn once.
            code = f"{secrets.randbelow(10**PICKUP_CODE_DIGITS):0{PICKUP_CODE_DIGITS}d}"
            await self.store.set_aside(conn, reservation, ready, code)
            await outbox.add(conn, SHIPMENT_READY_FOR_PICKUP, ready_for_pickup(ready, found.location_store_id, code))
            return None
        dispatched_at = now()
        if action is domain.ShipAction.SHIP_HELD:
            shipment = self._shipment(reservation, reservation.warehouse_id, dispatched_at)
            await self.store.ship_held(conn, reservation, shipment)
            return shipment
        return await self._retake(conn, reservation, dispatched_at, split)

    async def _retake(self, conn: Connection, reservation: domain.Reservation,
                      dispatched_at: datetime, split: bool) -> domain.Shipment:
        """Paid after its hold was released: take the units again, own warehouse first. If nobody has them
        the event fails, is retried and finally dead-lettered for a refund."""
        warehouses = domain.retake_order(reservation, await self.store.cloud_warehouse_ids(conn), split)
        for warehouse_id in warehouses:
            shipment = self._shipment(reservation, warehouse_id, dispatched_at)
            if await self.store.retake_and_ship(conn, reservation, shipment):
                return shipment
        raise FailedPrecondition(
            f"order {reservation.order_id!r} was paid after its reservation was released and no cloud "
            "warehouse has its units any more",
            reason="STOCK_GONE_AFTER_RELEASE",
            metadata={"order_id": reservation.order_id, "reservation_id": reservation.reservation_id},
        )

    @staticmethod
    def _shipment(reservation: domain.Reservation, warehouse_id: str,
                  dispatched_at: datetime | None) -> domain.Shipment:
        # Derived id: a retried delivery computes the same shipment, and the unique keys catch a second one.
        return domain.Shipment(derived_id("shp", reservation.order_id, warehouse_id), reservation.order_id,
                               warehouse_id, reservation.reservation_id, reservation.lines, dispatched_at)


class OrderCancelledHandler:
    """A cancelled (never paid) order gives its holds back, every leg of a split route. An order whose hold
    already went (expired or released) or that never got one has nothing to give back; a shipped one cannot
    have been cancelled, since orders refuses to cancel a paid order, so that is a broken invariant worth a
    dead letter."""

    def __init__(self, store: WarehouseStore):
        self.store = store

    async def __call__(self, conn: Connection, event: orders_events.OrderCancelled, delivery: Delivery) -> None:
        held = [h.reservation for h in await self.store.reservations_for_order(conn, event.order_id)
                if h.reservation.status != domain.ReservationStatus.RELEASED]
        if len(held) > 1:
            await self.store.lock_stock(conn, [(r.warehouse_id, r.lines) for r in held])
        reason = f"order cancelled: {event.reason}"[:200]
        for reservation in held:
            domain.check_transition(reservation, domain.ReservationStatus.RELEASED)
            await outbox.add(conn, RESERVATION_RELEASED, reservation_released(reservation, reason, now()))
            await self.store.release(conn, reservation, reason)


class OrderRefundedHandler:
    """Goods a consumer sent back go into the stock they shipped from, as return movements referencing the
    refund. Only refunds with goods_returned move stock; a money-only refund leaves it alone."""

    def __init__(self, store: WarehouseStore):
        self.store = store

    async def __call__(self, conn: Connection, event: orders_events.OrderRefunded, delivery: Delivery) -> None:
        refund = event.refund
        if not refund.goods_returned:
            return
        shipped_from = {line.sku_id: s.warehouse_id
                        for s in await self.store.shipments_locked(conn, refund.order_id) for line in s.lines}
        returns = domain.merge_lines((line.sku_id, line.quantity) for line in refund.lines)
        for line in returns:  # sku_id order: the order stock rows are locked in everywhere
            warehouse_id = shipped_from.get(line.sku_id)
            if warehouse_id is None:
                raise FailedPrecondition(
                    f"refund {refund.provider_refund_id!r} returns sku {line.sku_id!r}, which order "
                    f"{refund.order_id!r} has no shipment of", reason="RETURN_NOT_SHIPPED",
                    metadata={"order_id": refund.order_id, "sku_id": line.sku_id})
            await self.store.book(conn, warehouse_id, line.sku_id, line.quantity, domain.MovementReason.RETURN,
                                  refund.provider_refund_id)


class ExpirySweeper:
    """Releases holds whose order stayed unpaid past expires_at and publishes ReservationReleased (reason
    "expired"). One reservation per transaction: its rows are locked reservation first, then stock in sku_id
    order, like every other path, and SKIP LOCKED lets replicas sweep side by side."""

    def __init__(self, engine: Database, store: WarehouseStore, interval_s: float, per_pass: int = 200):
        self.engine = engine
        self.store = store
        self.interval_s = interval_s
        self.per_pass = per_pass

    async def run(self) -> None:
        await jobs.repeat("reservation sweep", self.sweep, rest_s=self.interval_s, full=self.per_pass)

    async def sweep(self) -> int:
        released = 0
        while released < self.per_pass:
            async with self.engine.begin() as conn:
                expired = await self.store.expired_reservations(conn, 1)
                if not expired:
                    return released
                reservation = expired[0]
                await outbox.add(conn, RESERVATION_RELEASED, reservation_released(reservation, "expired", now()))
                await self.store.release(conn, reservation, "expired")
            released += 1
        return released
