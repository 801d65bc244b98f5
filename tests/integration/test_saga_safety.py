"""Saga safety: a process dies or a step is left half-done in the middle of an order, and the system
converges by itself — no reservation outlives its order, no paid order goes unshipped, none ships twice."""

from __future__ import annotations

import signal

from google.protobuf.duration_pb2 import Duration
from omo.orders.v1 import orders_pb2 as pb
from omo.warehouse.v1 import warehouse_pb2 as wh

from services.runtime.ids import derived_id

from ..conftest import PAYMENT_WINDOW_S
from ..support import key
from .test_flow import eventually
from .test_order_lifecycle import get, pay
from .test_orders import place_request
from .test_warehouse import assert_ledger_matches, level

# What orders asks of the warehouse for a placement (see services/orders/placement.py).
_HOLD = Duration(seconds=PAYMENT_WINDOW_S + 60)


def shipments(clients, order_id: str) -> list[wh.Shipment]:
    return list(clients.warehouse.ListShipments(wh.ListShipmentsRequest(order_id=order_id)).shipments)


def test_a_paid_order_ships_once_the_killed_warehouse_is_back(stack, clients, world):
    sku = world.new_sku(stock=4)
    w = world.warehouse.warehouse_id
    order = clients.orders.PlaceOrder(place_request(world, [(sku, 3)])).order
    stack.stop_service("warehouse", signal.SIGKILL)
    try:
        paid = pay(clients, order)  # orders needs nobody to take the payment: the event waits in the stream
        assert paid.status == pb.ORDER_STATUS_PAID
    finally:
        stack.start_service("warehouse")
        stack.wait_healthy(services=("warehouse",))
    done = eventually(lambda: get(clients, order.order_id), lambda o: o.status == pb.ORDER_STATUS_DISPATCHED,
                      "the paid order to be dispatched after the restart")
    [shipment] = shipments(clients, order.order_id)
    assert shipment.shipment_id == done.shipment_id
    lv = level(clients, sku.sku_id, w)
    assert (lv.on_hand, lv.reserved) == (1, 0)
    assert_ledger_matches(clients, w, sku.sku_id)


def test_a_placement_that_died_after_reserving_holds_once_when_retried(clients, world):
    """The orders process reserved stock and died before writing the order: the caller's retry finds the
    same hold (the order id and the warehouse key derive from the placement's key) instead of a second one."""
    sku = world.new_sku(stock=5)
    request = place_request(world, [(sku, 2)])
    order_id = derived_id("ord", request.idempotency_key)
    orphan = clients.warehouse.ReserveStock(wh.ReserveStockRequest(
        idempotency_key=f"{order_id}:reserve", order_id=order_id, hold_for=_HOLD,
        lines=[wh.StockLine(sku_id=sku.sku_id, quantity=2)])).reservation
    order = clients.orders.PlaceOrder(request).order
    assert (order.order_id, order.reservation_id) == (order_id, orphan.reservation_id)
    assert level(clients, sku.sku_id, world.warehouse.warehouse_id).reserved == 2


def test_a_hold_whose_order_never_came_is_released_by_expiry(clients, world):
    """Reserved, then the placement was abandoned for good (the caller never retried): the hold expires."""
    sku = world.new_sku(stock=2)
    orphan = clients.warehouse.ReserveStock(wh.ReserveStockRequest(
        idempotency_key=key(), order_id=f"ord-{key()}", hold_for=Duration(seconds=1),
        lines=[wh.StockLine(sku_id=sku.sku_id, quantity=2)])).reservation
    eventually(lambda: clients.warehouse.GetReservation(
        wh.GetReservationRequest(reservation_id=orphan.reservation_id)).reservation,
        lambda r: r.status == wh.RESERVATION_STATUS_RELEASED, "the orphan hold to expire")
    assert level(clients, sku.sku_id, world.warehouse.warehouse_id).available == 2


def test_an_unpaid_order_cancelled_while_the_warehouse_is_down_releases_its_hold_later(stack, clients, world):
    sku = world.new_sku(stock=3)
    order = clients.orders.PlaceOrder(place_request(world, [(sku, 3)])).order
    stack.stop_service("warehouse", signal.SIGKILL)
    try:
        cancelled = clients.orders.CancelOrder(pb.CancelOrderRequest(
            idempotency_key=key(), order_id=order.order_id, reason="out of patience")).order
        assert cancelled.status == pb.ORDER_STATUS_CANCELLED
    finally:
        stack.start_service("warehouse")
        stack.wait_healthy(services=("warehouse",))
    eventually(lambda: level(clients, sku.sku_id, world.warehouse.warehouse_id),
               lambda lv: lv.reserved == 0 and lv.available == 3, "the hold to be released after the restart")
    assert shipments(clients, order.order_id) == []
