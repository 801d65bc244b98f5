"""Handlers for the events orders consumes. Each runs inside the consumer's inbox transaction and touches only
the orders schema."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from omo.warehouse.v1 import events_pb2 as wh_events

from services.runtime.consumer import BatchHandler, Delivery, Handler
from services.runtime.db import Connection
from services.runtime.errors import NotFound

from . import domain
from .store import OrderStore


async def _locked_order(conn: Connection, store: OrderStore, order_id: str) -> domain.Order:
    order = await store.order(conn, order_id, lock=True)
    if order is None:
        raise NotFound("order", order_id)
    return order


def _when(stamp: Timestamp | None, delivery: Delivery) -> datetime:
    """The event's own time, or (deterministic on redelivery) the time the event was written, never the time
    it is handled."""
    if stamp is not None:
        return stamp.ToDatetime(tzinfo=UTC)
    return datetime.fromtimestamp(delivery.created_ms / 1000, UTC)


def on_shipments_dispatched(store: OrderStore) -> BatchHandler:
    """Each shipment marks its leg of the order shipped (found by the reservation it carries); the order is
    PARTIALLY_SHIPPED while other locations' shipments of a split order have not left yet, DISPATCHED with
    the last. A whole batch of shipments in two statements: the orders locked (and their legs read) at once, the
    rules applied in delivery order (several shipments of one order follow each other), the changes written
    at once. A redelivered shipment (or the same one under another event id) finds its leg shipped with it
    and changes nothing, so no leg's units count twice; an order that is not paid fails the batch, which the
    consumer then retries message by message, finally dead-lettering that one."""

    async def handle(conn: Connection, items: list[tuple[wh_events.ShipmentDispatched, Delivery]]) -> None:
        orders = await store.orders_locked(conn, [event.order_id for event, _ in items])
        changed: dict[str, domain.Order] = {}
        for event, delivery in items:
            order = changed.get(event.order_id) or orders.get(event.order_id)
            if order is None:
                raise NotFound("order", event.order_id)
            at = _when(event.dispatched_at if event.HasField("dispatched_at") else None, delivery)
            dispatched = domain.dispatch(order, event.shipment_id, at, event.order_fully_dispatched,
                                         reservation_id=event.reservation_id, warehouse_id=event.warehouse_id)
            if dispatched is not None:
                changed[event.order_id] = dispatched
        await store.record_dispatches(conn, [(orders[o], after) for o, after in changed.items()])

    return handle


def on_ready_for_pickup(store: OrderStore) -> Handler:
    """A paid store-pickup order is set aside at the store: the order carries the pickup code for the consumer.
    It becomes DISPATCHED when the consumer collects it (warehouse.shipment.dispatched)."""

    async def handle(conn: Connection, event: wh_events.ShipmentReadyForPickup, delivery: Delivery) -> None:
        order = await _locked_order(conn, store, event.order_id)
        at = _when(event.ready_at if event.HasField("ready_at") else None, delivery)
        ready = domain.ready_for_pickup(order, event.pickup_code, at)
        if ready is not None:
            await store.record_pickup_code(conn, ready)

    return handle


def on_shipment_delivered(store: OrderStore) -> Handler:
    """The carrier delivered the order's last shipment: DISPATCHED -> DELIVERED (a refunded order records the
    time only; an earlier shipment of a split order changes nothing). An order not
    dispatched yet fails the message, which is retried: the dispatch event may simply not have been handled
    yet."""

    async def handle(conn: Connection, event: wh_events.ShipmentDelivered, delivery: Delivery) -> None:
        order = await _locked_order(conn, store, event.order_id)
        at = _when(event.delivered_at if event.HasField("delivered_at") else None, delivery)
        delivered = domain.deliver(order, at, event.order_fully_delivered)
        if delivered is not None:
            await store.record_delivery(conn, order, delivered)

    return handle
