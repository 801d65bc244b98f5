"""Handlers for the events the warehouse consumes."""

from __future__ import annotations

from datetime import datetime

from omo.orders.v1 import events_pb2 as orders_events

from services.runtime import outbox
from services.runtime.consumer import Delivery
from services.runtime.db import Connection
from services.runtime.errors import FailedPrecondition
from services.runtime.ids import derived_id
from services.runtime.timestamps import now

from . import domain
from .messages import SHIPMENT_DISPATCHED, shipment_dispatched
from .store import WarehouseStore


class OrderPaidHandler:
    """A paid order ships: its reservation becomes one shipment and the units leave the warehouse.

    Runs in the inbox transaction. Idempotent by business key too: the order's reservation row is locked
    first, and an order that already has a shipment is left alone, so the same payment seen again under
    another event id ships nothing twice."""

    def __init__(self, store: WarehouseStore):
        self.store = store

    async def __call__(self, conn: Connection, event: orders_events.OrderPaid, delivery: Delivery) -> None:
        order = event.order
        found = await self.store.reservation_for_order(conn, order.order_id)
        if found is None:
            raise FailedPrecondition(f"paid order {order.order_id!r} has no reservation",
                                     reason="RESERVATION_NOT_FOUND", metadata={"order_id": order.order_id})
        reservation, shipped = found
        if order.reservation_id and order.reservation_id != reservation.reservation_id:
            raise FailedPrecondition(
                f"paid order {order.order_id!r} names reservation {order.reservation_id!r}, "
                f"the warehouse holds {reservation.reservation_id!r} for it",
                reason="RESERVATION_MISMATCH",
                metadata={"order_id": order.order_id, "reservation_id": reservation.reservation_id},
            )
        action = domain.ship_action(reservation, shipped)
        if action is domain.ShipAction.ALREADY_SHIPPED:
            return
        dispatched_at = now()
        if action is domain.ShipAction.SHIP_HELD:
            shipment = self._shipment(reservation, reservation.warehouse_id, dispatched_at)
            await self.store.ship_held(conn, reservation, shipment)
        else:
            shipment = await self._retake(conn, reservation, dispatched_at)
        await outbox.add(conn, SHIPMENT_DISPATCHED, shipment_dispatched(shipment))

    async def _retake(self, conn: Connection, reservation: domain.Reservation,
                      dispatched_at: datetime) -> domain.Shipment:
        """Paid after its hold was released: take the units again, own warehouse first. If nobody has them
        the event fails, is retried and finally dead-lettered for a refund."""
        warehouses = domain.retake_order(reservation, await self.store.cloud_warehouse_ids(conn))
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
    def _shipment(reservation: domain.Reservation, warehouse_id: str, dispatched_at: datetime) -> domain.Shipment:
        # Derived id: a retried delivery computes the same shipment, and the unique keys catch a second one.
        return domain.Shipment(derived_id("shp", reservation.order_id, warehouse_id), reservation.order_id,
                               warehouse_id, reservation.reservation_id, reservation.lines, dispatched_at)
