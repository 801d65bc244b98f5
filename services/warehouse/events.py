"""Handlers for the events the warehouse consumes."""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import datetime

from google.protobuf.message import Message
from omo.orders.v1 import events_pb2 as orders_events
from omo.orders.v1 import orders_pb2

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
_AT_ONCE = frozenset({domain.ShipAction.SHIP_HELD, domain.ShipAction.ALREADY_SHIPPED})
# Six digits, read out or scanned at the counter.
PICKUP_CODE_DIGITS = 6


class OrderPaidHandler:
    """Paid orders ship: each reservation (one per location of an order's route) becomes one shipment and the
    units leave that location, or wait for the consumer or the staff there.

    A batch handler (`Subscription.batch_handler`), so that a batch of payments costs a few statements
    whatever its size: the legs of all its orders loaded and locked in one, every held leg at an automated
    location shipped in one, the progress of its split orders read in one, its events written in one. The
    rarer legs (set aside for pickup or hand fulfilment, re-taken after a release) go one by one after the
    batch's stock rows are locked. Runs in the inbox transaction. Idempotent by business key too: the orders'
    reservation rows are locked first, and a location that already has a shipment of the order is left
    alone, so the same payment seen again under another event id (in this batch or a later one) ships
    nothing twice."""

    def __init__(self, store: WarehouseStore):
        self.store = store

    async def __call__(self, conn: Connection, paid: list[tuple[orders_events.OrderPaid, Delivery]]) -> None:
        order_ids = list(dict.fromkeys(event.order.order_id for event, _ in paid))
        held = await self.store.reservations_for_orders(conn, order_ids)
        for event, _ in paid:
            _check_paid(event.order, held.get(event.order.order_id, []))
        at = now()
        legs = [(found, domain.ship_action(found.reservation, found.shipped, found.location_kind,
                                           found.location_manual))
                for order_id in order_ids for found in held[order_id]]
        to_ship = [(found.reservation, self._shipment(found.reservation, found.reservation.warehouse_id, at))
                   for found, action in legs if action is domain.ShipAction.SHIP_HELD]
        retake_at = [(found.reservation.warehouse_id, found.reservation.lines)
                     for found, action in legs if action is domain.ShipAction.RETAKE]
        if all(action in _AT_ONCE for _, action in legs) and all(len(held[o]) == 1 for o in order_ids):
            # The common batch (every order at one automated location): its events are known before anything
            # ships, so they are written first and the stock rows, which reservations wait for, are locked by
            # the last statement before the commit.
            await outbox.add_many(conn, [(SHIPMENT_DISPATCHED, shipment_dispatched(shipment, True))
                                         for _, shipment in to_ship])
            if to_ship:
                await self.store.ship_held_many(conn, to_ship, [])
            return
        if to_ship or retake_at:
            await self.store.ship_held_many(conn, to_ship, retake_at)
        ship = {reservation.reservation_id: shipment for reservation, shipment in to_ship}
        ready: dict[str, list[tuple[str, Message]]] = {}
        dispatched: dict[str, list[domain.Shipment]] = {}
        for found, action in legs:
            order_id = found.reservation.order_id
            if action is domain.ShipAction.SHIP_HELD:
                dispatched.setdefault(order_id, []).append(ship[found.reservation.reservation_id])
            elif action is domain.ShipAction.RETAKE:
                split = len(held[order_id]) > 1
                dispatched.setdefault(order_id, []).append(await self._retake(conn, found.reservation, at, split))
            elif action is not domain.ShipAction.ALREADY_SHIPPED:
                ready.setdefault(order_id, []).extend(await self._set_aside(conn, found, action))
        # An order held at one location is complete with the shipment just made; a split order's other legs
        # may have left before (or wait), so their shipments are read, under the legs' locks taken above.
        split_out = [order_id for order_id in dispatched if len(held[order_id]) > 1]
        statuses = await self.store.shipment_statuses(conn, split_out) if split_out else {}
        events: list[tuple[str, Message]] = []
        for order_id in order_ids:
            events += ready.get(order_id, [])
            out = dispatched.get(order_id, [])
            if out:
                done = domain.progress_of(len(held[order_id]), statuses.get(order_id, [s.status for s in out]))
                events += [(SHIPMENT_DISPATCHED, shipment_dispatched(s, done.all_dispatched)) for s in out]
        await outbox.add_many(conn, events)

    async def _set_aside(self, conn: Connection, found: HeldFor,
                         action: domain.ShipAction) -> list[tuple[str, Message]]:
        """A leg that waits at its location: for the staff to pick it, or for the consumer at the counter
        (the event that tells orders the pickup code)."""
        reservation = found.reservation
        if action is domain.ShipAction.TO_PICK:
            to_pick = replace(self._shipment(reservation, reservation.warehouse_id, None), status="CREATED")
            await self.store.set_aside(conn, reservation, to_pick, None)
            return []
        ready = replace(self._shipment(reservation, reservation.warehouse_id, None), status="READY_FOR_PICKUP",
                        ready_at=now())
        # Random, not derived: only the consumer (through orders) learns it. A redelivery finds the shipment
        # made and stops above, so the code is drawn once.
        code = f"{secrets.randbelow(10**PICKUP_CODE_DIGITS):0{PICKUP_CODE_DIGITS}d}"
        await self.store.set_aside(conn, reservation, ready, code)
        return [(SHIPMENT_READY_FOR_PICKUP, ready_for_pickup(ready, found.location_store_id, code))]

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


def _check_paid(order: orders_pb2.Order, held: list[HeldFor]) -> None:
    """A paid order must hold stock here, and the reservation it names must be its first leg."""
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


class OrderCancelledHandler:
    """Cancelled (never paid) orders give their holds back, every leg of a split route. An order whose hold
    already went (expired or released) or that never got one has nothing to give back; a shipped one cannot
    have been cancelled, since orders refuses to cancel a paid order, so that is a broken invariant worth a
    dead letter.

    A batch handler like OrderPaidHandler: the batch's legs loaded and locked in one statement, released in
    one (stock rows in (sku_id, warehouse_id) order), their events written in one. An order cancelled twice
    in one batch (another event id) is released once, with the first event's reason."""

    def __init__(self, store: WarehouseStore):
        self.store = store

    async def __call__(self, conn: Connection,
                       cancelled: list[tuple[orders_events.OrderCancelled, Delivery]]) -> None:
        reasons: dict[str, str] = {}
        for event, _ in cancelled:
            reasons.setdefault(event.order_id, f"order cancelled: {event.reason}"[:200])
        held = await self.store.reservations_for_orders(conn, list(reasons))
        freed = []
        for order_id, reason in reasons.items():
            for found in held.get(order_id, []):
                if found.reservation.status == domain.ReservationStatus.RELEASED:
                    continue
                domain.check_transition(found.reservation, domain.ReservationStatus.RELEASED)
                freed.append((found.reservation, reason))
        if not freed:
            return
        at = now()
        await self.store.release_many(conn, freed)
        await outbox.add_many(conn, [(RESERVATION_RELEASED, reservation_released(r, reason, at))
                                     for r, reason in freed])


class OrderRefundedHandler:
    """Goods a consumer sent back go into the stock they shipped from, as return movements referencing the
    refund: each leg's units at the location its shipment left (orders names the legs). Only refunds with
    goods_returned move stock; a money-only refund leaves it alone, also a partly shipped order's waiting
    leg, which still goes."""

    def __init__(self, store: WarehouseStore):
        self.store = store

    async def __call__(self, conn: Connection, event: orders_events.OrderRefunded, delivery: Delivery) -> None:
        refund = event.refund
        if not refund.goods_returned:
            return
        returns = [domain.Return(line.sku_id, line.quantity,
                                 tuple((g.reservation_id, g.warehouse_id, g.quantity) for g in line.legs))
                   for line in refund.lines]
        shipments = await self.store.shipments_locked(conn, refund.order_id)
        bookings = domain.return_bookings(refund.order_id, returns, shipments)
        for sku_id, warehouse_id, units in bookings:  # (sku_id, warehouse_id): the order stock rows are locked in
            await self.store.book(conn, warehouse_id, sku_id, units, domain.MovementReason.RETURN,
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
