"""The warehouse's order-paid consumer in isolation: the test publishes omo.orders.v1.OrderPaid itself and
watches the shipment appear, exactly once, with the stock and the ledger following."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import nats
import pytest
from omo.orders.v1 import events_pb2 as orders_events
from omo.orders.v1 import orders_pb2 as orders
from omo.warehouse.v1 import events_pb2 as wh_events
from omo.warehouse.v1 import warehouse_pb2 as wh

from ..support import key
from .test_warehouse import assert_ledger_matches, ledger, level, release, reserve


def publish_paid(stack, reservation: wh.Reservation, event_id: str | None = None) -> str:
    """Publish OrderPaid for the reservation's order as the orders service would; returns the event id."""
    event_id = event_id or f"orders-test-{uuid.uuid4().hex}"
    event = orders_events.OrderPaid(
        order=orders.Order(order_id=reservation.order_id, reservation_id=reservation.reservation_id,
                           lines=[orders.OrderLine(sku_id=line.sku_id, quantity=line.quantity)
                                  for line in reservation.lines]),
        provider_txn_id=f"txn-{key()[:12]}",
    )
    headers = {
        "Omo-Event-Id": event_id,
        # A fresh Nats-Msg-Id every time: JetStream must not drop the re-publish, the inbox has to catch it.
        "Nats-Msg-Id": uuid.uuid4().hex,
        "Omo-Event-Type": "omo.orders.v1.OrderPaid",
        "Omo-Created-Ms": str(int(time.time() * 1000)),
    }

    async def send() -> None:
        nc = await nats.connect(stack.nats_url)
        try:
            await nc.jetstream().publish("orders.order.paid", event.SerializeToString(), headers=headers)
        finally:
            await nc.close()

    asyncio.run(send())
    return event_id


def last_event(stack, stream: str, subject: str) -> bytes:
    async def get() -> bytes:
        nc = await nats.connect(stack.nats_url)
        try:
            return (await nc.jetstream().get_last_msg(stream, subject)).data
        finally:
            await nc.close()

    return asyncio.run(get())


def _last(stack, event_type, subject: str, **expect: str):  # type: ignore[no-untyped-def]
    """The last event on a warehouse subject if it is the expected one (the relay may not have sent it yet)."""
    try:
        event = event_type.FromString(last_event(stack, "WAREHOUSE", subject))
    except nats.js.errors.NotFoundError:
        return None
    return event if all(getattr(event, k) == v for k, v in expect.items()) else None


def wait_for(predicate, timeout_s: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def shipments(clients, order_id: str) -> list[wh.Shipment]:
    return list(clients.warehouse.ListShipments(wh.ListShipmentsRequest(order_id=order_id)).shipments)


def reservation_status(clients, reservation_id: str) -> int:
    return clients.warehouse.GetReservation(wh.GetReservationRequest(reservation_id=reservation_id)).reservation.status


def test_a_paid_order_ships_its_reservation_once(stack, clients, world):
    a, b = world.new_sku(stock=10), world.new_sku(stock=4)
    w = world.warehouse.warehouse_id
    r = reserve(clients, f"ord-{key()}", (a.sku_id, 3), (b.sku_id, 1))
    assert shipments(clients, r.order_id) == []

    event_id = publish_paid(stack, r)
    [shipment] = wait_for(lambda: shipments(clients, r.order_id))
    assert shipment.status == wh.SHIPMENT_STATUS_DISPATCHED
    assert (shipment.order_id, shipment.warehouse_id) == (r.order_id, w)
    assert list(shipment.lines) == list(r.lines)
    assert reservation_status(clients, r.reservation_id) == wh.RESERVATION_STATUS_SHIPPED
    for sku, on_hand in ((a, 7), (b, 3)):
        lv = level(clients, sku.sku_id, w)
        assert (lv.on_hand, lv.reserved) == (on_hand, 0)
        assert_ledger_matches(clients, w, sku.sku_id)
        assert ledger(clients, w, sku.sku_id)[-1].reference_id == shipment.shipment_id

    dispatched = wait_for(lambda: _last(stack, wh_events.ShipmentDispatched, "warehouse.shipment.dispatched",
                                        shipment_id=shipment.shipment_id))
    assert list(dispatched.lines) == list(r.lines)

    # The same event again (new Nats-Msg-Id), and the same payment under another event id: one shipment.
    publish_paid(stack, r, event_id)
    publish_paid(stack, r)
    marker = reserve(clients, f"ord-{key()}", (a.sku_id, 1))
    publish_paid(stack, marker)
    wait_for(lambda: shipments(clients, marker.order_id))  # the consumer is past both re-publishes
    assert shipments(clients, r.order_id) == [shipment]
    assert level(clients, a.sku_id, w).on_hand == 6
    assert_ledger_matches(clients, w, a.sku_id)

    with pytest.raises(grpc.RpcError) as err:
        release(clients, r.reservation_id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_paid_after_release_takes_the_units_again(stack, clients, world):
    sku = world.new_sku(stock=5)
    w = world.warehouse.warehouse_id
    r = reserve(clients, f"ord-{key()}", (sku.sku_id, 2))
    release(clients, r.reservation_id)
    released = wait_for(lambda: _last(stack, wh_events.ReservationReleased, "warehouse.reservation.released",
                                      reservation_id=r.reservation_id))
    assert (released.order_id, released.reason) == (r.order_id, "unpaid")

    publish_paid(stack, r)
    [shipment] = wait_for(lambda: shipments(clients, r.order_id))
    assert shipment.warehouse_id == w
    assert reservation_status(clients, r.reservation_id) == wh.RESERVATION_STATUS_SHIPPED
    lv = level(clients, sku.sku_id, w)
    assert (lv.on_hand, lv.reserved) == (3, 0)
    reasons = [m.reason for m in ledger(clients, w, sku.sku_id)]
    assert reasons[-2:] == [wh.MOVEMENT_REASON_RESERVATION, wh.MOVEMENT_REASON_SHIPMENT]
    assert_ledger_matches(clients, w, sku.sku_id)


def test_paid_after_release_with_the_units_gone_is_dead_lettered(stack, clients, world):
    sku = world.new_sku(stock=1)
    w = world.warehouse.warehouse_id
    r = reserve(clients, f"ord-{key()}", (sku.sku_id, 1))
    release(clients, r.reservation_id)
    reserve(clients, f"ord-{key()}", (sku.sku_id, 1))  # somebody else buys the last unit

    publish_paid(stack, r)
    dead = wait_for(lambda: _dead_letter_for(stack, r.order_id), timeout_s=40)
    assert dead
    assert shipments(clients, r.order_id) == []
    assert reservation_status(clients, r.reservation_id) == wh.RESERVATION_STATUS_RELEASED
    lv = level(clients, sku.sku_id, w)
    assert (lv.on_hand, lv.reserved) == (1, 1)


def _dead_letter_for(stack, order_id: str) -> bool:
    try:
        data = last_event(stack, "DLQ", "dlq.warehouse-order-paid")
    except nats.js.errors.NotFoundError:
        return False
    return orders_events.OrderPaid.FromString(data).order.order_id == order_id
