"""Split routes over gRPC: when no single location covers an order, the quoted plan is held as one
reservation per location, all or nothing; payment makes one shipment per location; the order follows its
shipments (PARTIALLY_SHIPPED, DISPATCHED, DELIVERED); cancelling, a refused coupon and a redelivered payment
act on every leg, once; two orders racing for the last unit of a split route never oversell."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from omo.orders.v1 import events_pb2 as order_events
from omo.orders.v1 import orders_pb2 as pb
from omo.warehouse.v1 import warehouse_pb2 as wh

from ..support import error_info, key
from .test_exactly_once import _find_and_republish
from .test_flow import buy_and_ship, eventually
from .test_order_lifecycle import cancel, deliver, dispatched, get, pay, reservation
from .test_orders import place_request
from .test_routing import SHANGHAI, place, quote, route, stock
from .test_warehouse import assert_ledger_matches, level

SHIPPING = wh.FULFILMENT_MODE_CLOUD_SHIPPING


def legs_of(plan_or_legs) -> list[tuple[str, list[tuple[str, int]]]]:  # type: ignore[no-untyped-def]
    return [(leg.warehouse_id, sorted((li.sku_id, li.quantity) for li in leg.lines)) for leg in plan_or_legs]


def reserve_request(*lines: tuple[str, int]) -> wh.ReserveStockRequest:
    return wh.ReserveStockRequest(idempotency_key=key(), order_id=f"ord-{key()}", route=route(SHIPPING),
                                  lines=[wh.StockLine(sku_id=s, quantity=q) for s, q in lines])


def two_sites(clients, world, **nearer_fields):  # type: ignore[no-untyped-def]
    """SKU a: 1 unit at each of two cloud warehouses near Shanghai, b: 1 at the farther one."""
    a, b = world.new_sku(stock=0), world.new_sku(stock=0)
    near = place(clients, wh.WAREHOUSE_KIND_CLOUD, 31.3, 121.3)
    nearer = place(clients, wh.WAREHOUSE_KIND_CLOUD, 31.25, 121.45, **nearer_fields)
    stock(clients, near, a.sku_id, 1)
    stock(clients, near, b.sku_id, 1)
    stock(clients, nearer, a.sku_id, 1)
    return a, b, near, nearer


def shipments(clients, order_id: str) -> list[wh.Shipment]:
    return list(clients.warehouse.ListShipments(wh.ListShipmentsRequest(order_id=order_id)).shipments)


def test_a_split_route_is_held_as_quoted_all_or_nothing_and_replayed(clients, world):
    a, b, near, nearer = two_sites(clients, world)
    plan = quote(clients, route(SHIPPING), (a.sku_id, 2), (b.sku_id, 1)).legs
    assert legs_of(plan) == [(nearer.warehouse_id, [(a.sku_id, 1)]),
                             (near.warehouse_id, sorted([(a.sku_id, 1), (b.sku_id, 1)]))]
    request = reserve_request((a.sku_id, 2), (b.sku_id, 1))
    held = clients.warehouse.ReserveStock(request)
    assert legs_of(held.legs) == legs_of(plan)  # what was quoted is what is held
    assert held.reservation == held.legs[0]
    assert {r.status for r in held.legs} == {wh.RESERVATION_STATUS_RESERVED}
    assert len({r.reservation_id for r in held.legs}) == 2
    for w in (near, nearer):
        assert (level(clients, a.sku_id, w.warehouse_id).reserved,
                level(clients, a.sku_id, w.warehouse_id).available) == (1, 0)
        assert_ledger_matches(clients, w.warehouse_id, a.sku_id)
    again = clients.warehouse.ReserveStock(request)  # stock is gone now, the answer is not
    assert list(again.legs) == list(held.legs)
    rival_key = wh.ReserveStockRequest()
    rival_key.CopyFrom(request)
    rival_key.idempotency_key = key()
    assert list(clients.warehouse.ReserveStock(rival_key).legs) == list(held.legs)  # the order holds once

    # Nothing left for another such order: refused naming the SKU, and nothing is held for it.
    with pytest.raises(grpc.RpcError) as err:
        clients.warehouse.ReserveStock(reserve_request((a.sku_id, 1)))
    assert (err.value.code(), error_info(err.value).metadata["sku_id"]) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, a.sku_id)
    assert level(clients, b.sku_id, near.warehouse_id).reserved == 1


def test_a_split_order_ships_once_per_location_and_is_delivered_with_its_last_parcel(clients, world):
    a, b, near, nearer = two_sites(clients, world)
    request = place_request(world, [(a, 2), (b, 1)])
    request.deliver_to.CopyFrom(pb.GeoPoint(latitude=SHANGHAI.latitude, longitude=SHANGHAI.longitude))
    order = clients.orders.PlaceOrder(request).order
    assert order.warehouse_id == nearer.warehouse_id  # the first leg of the route
    pay(clients, order)
    done = dispatched(clients, order.order_id)
    parcels = shipments(clients, order.order_id)
    assert sorted((s.warehouse_id, s.status) for s in parcels) == sorted(
        [(near.warehouse_id, wh.SHIPMENT_STATUS_DISPATCHED), (nearer.warehouse_id, wh.SHIPMENT_STATUS_DISPATCHED)])
    assert done.shipment_id in {s.shipment_id for s in parcels}
    for w, sku in ((near, a), (near, b), (nearer, a)):
        lv = level(clients, sku.sku_id, w.warehouse_id)
        assert (lv.on_hand, lv.reserved) == (0, 0)
        assert_ledger_matches(clients, w.warehouse_id, sku.sku_id)

    first, second = parcels
    deliver(clients, first.shipment_id)
    # The other parcel is still on its way: the order stays dispatched, not delivered.
    eventually(lambda: shipments(clients, order.order_id),
               lambda s: sum(x.status == wh.SHIPMENT_STATUS_DELIVERED for x in s) == 1, "one delivery")
    assert get(clients, order.order_id).status == pb.ORDER_STATUS_DISPATCHED
    last = deliver(clients, second.shipment_id)
    delivered = eventually(lambda: get(clients, order.order_id), lambda o: o.status == pb.ORDER_STATUS_DELIVERED,
                           "the order to be delivered")
    assert delivered.delivered_at == last.delivered_at
    assert get(clients, order.order_id).status == pb.ORDER_STATUS_DELIVERED


def test_an_order_is_partially_shipped_until_its_hand_fulfilled_leg_ships(clients, world):
    a, b, _near, by_hand = two_sites(clients, world, manual_fulfilment=True)
    request = place_request(world, [(a, 2), (b, 1)])
    request.deliver_to.CopyFrom(pb.GeoPoint(latitude=SHANGHAI.latitude, longitude=SHANGHAI.longitude))
    order = clients.orders.PlaceOrder(request).order
    pay(clients, order)
    partial = eventually(lambda: get(clients, order.order_id),
                         lambda o: o.status == pb.ORDER_STATUS_PARTIALLY_SHIPPED, "the order to be partially shipped")
    by_status = {s.status: s for s in shipments(clients, order.order_id)}
    assert sorted(by_status) == sorted([wh.SHIPMENT_STATUS_DISPATCHED, wh.SHIPMENT_STATUS_CREATED])
    assert partial.shipment_id == by_status[wh.SHIPMENT_STATUS_DISPATCHED].shipment_id
    assert by_status[wh.SHIPMENT_STATUS_CREATED].warehouse_id == by_hand.warehouse_id
    # A partially shipped order is on its way: it is not delivered, and cannot be cancelled.
    with pytest.raises(grpc.RpcError) as err:
        cancel(clients, order.order_id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        deliver(clients, by_status[wh.SHIPMENT_STATUS_CREATED].shipment_id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    sid = by_status[wh.SHIPMENT_STATUS_CREATED].shipment_id
    clients.warehouse.PickShipment(wh.PickShipmentRequest(idempotency_key=key(), shipment_id=sid))
    clients.warehouse.PackShipment(wh.PackShipmentRequest(idempotency_key=key(), shipment_id=sid))
    clients.warehouse.ShipShipment(wh.ShipShipmentRequest(idempotency_key=key(), shipment_id=sid,
                                                          carrier="SF Express", tracking_number="SF42"))
    assert dispatched(clients, order.order_id).shipment_id == sid
    lv = level(clients, a.sku_id, by_hand.warehouse_id)
    assert (lv.on_hand, lv.reserved) == (0, 0)
    assert_ledger_matches(clients, by_hand.warehouse_id, a.sku_id)


def test_cancelling_a_split_order_gives_back_every_leg(clients, world):
    a, b, near, nearer = two_sites(clients, world)
    request = place_request(world, [(a, 2), (b, 1)])
    request.deliver_to.CopyFrom(pb.GeoPoint(latitude=SHANGHAI.latitude, longitude=SHANGHAI.longitude))
    order = clients.orders.PlaceOrder(request).order
    assert cancel(clients, order.order_id).status == pb.ORDER_STATUS_CANCELLED
    eventually(lambda: [level(clients, a.sku_id, w.warehouse_id).reserved for w in (near, nearer)],
               lambda r: r == [0, 0], "both legs to be released")
    assert reservation(clients, order.reservation_id).status == wh.RESERVATION_STATUS_RELEASED
    assert level(clients, b.sku_id, near.warehouse_id).available == 1
    for w in (near, nearer):
        assert_ledger_matches(clients, w.warehouse_id, a.sku_id)


@pytest.mark.parametrize("round_", range(4))
def test_two_orders_racing_for_the_last_unit_of_a_split_route(clients, world, round_):
    """Each order needs both locations' last unit: exactly one gets them, the other is told which SKU ran
    out, and no level goes negative or drifts from its movements."""
    sku = world.new_sku(stock=0).sku_id
    near = place(clients, wh.WAREHOUSE_KIND_CLOUD, 31.3, 121.3)
    nearer = place(clients, wh.WAREHOUSE_KIND_CLOUD, 31.25, 121.45)
    stock(clients, near, sku, 1)
    stock(clients, nearer, sku, 1)
    barrier, held, refused = threading.Barrier(2), [], []

    def buy() -> None:
        barrier.wait()
        try:
            held.append(clients.warehouse.ReserveStock(reserve_request((sku, 2))))
        except grpc.RpcError as err:
            refused.append(err)

    threads = [threading.Thread(target=buy) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(held) == len(refused) == 1
    assert legs_of(held[0].legs) == [(nearer.warehouse_id, [(sku, 1)]), (near.warehouse_id, [(sku, 1)])]
    assert (refused[0].code(), error_info(refused[0]).metadata["sku_id"]) == (grpc.StatusCode.RESOURCE_EXHAUSTED, sku)
    for w in (near, nearer):
        lv = level(clients, sku, w.warehouse_id)
        assert (lv.on_hand, lv.reserved, lv.available) == (1, 1, 0)
        assert_ledger_matches(clients, w.warehouse_id, sku)


def test_a_refused_coupon_gives_back_every_leg_of_a_split_hold(clients, world):
    a, b, near, nearer = two_sites(clients, world)
    request = place_request(world, [(a, 2), (b, 1)], coupon_code="NO-SUCH-COUPON")
    request.deliver_to.CopyFrom(pb.GeoPoint(latitude=SHANGHAI.latitude, longitude=SHANGHAI.longitude))
    with pytest.raises(grpc.RpcError) as err:
        clients.orders.PlaceOrder(request)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for w, sku in ((near, a), (near, b), (nearer, a)):
        lv = level(clients, sku.sku_id, w.warehouse_id)
        assert (lv.on_hand, lv.reserved) == (1, 0)
        assert_ledger_matches(clients, w.warehouse_id, sku.sku_id)


def test_a_redelivered_payment_of_a_split_order_ships_nothing_more(stack, clients, world):
    a, b, near, nearer = two_sites(clients, world)
    request = place_request(world, [(a, 2), (b, 1)])
    request.deliver_to.CopyFrom(pb.GeoPoint(latitude=SHANGHAI.latitude, longitude=SHANGHAI.longitude))
    order = clients.orders.PlaceOrder(request).order
    pay(clients, order)
    done = dispatched(clients, order.order_id)
    parcels = shipments(clients, order.order_id)
    asyncio.run(_find_and_republish(stack.nats_url, "orders.order.paid", order_events.OrderPaid, order.order_id,
                                    fresh_id=True))
    buy_and_ship(clients, world, [(world.new_sku(), 1)])  # the marker, behind the duplicate
    assert shipments(clients, order.order_id) == parcels
    for w, sku in ((near, a), (near, b), (nearer, a)):
        lv = level(clients, sku.sku_id, w.warehouse_id)
        assert (lv.on_hand, lv.reserved) == (0, 0)
        assert_ledger_matches(clients, w.warehouse_id, sku.sku_id)
    assert get(clients, order.order_id) == done
