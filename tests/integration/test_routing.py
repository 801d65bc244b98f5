"""Routing over gRPC: quotes by mode and place, routed reservations that hold what was quoted, two buyers
racing for the last unit of the nearest location, and express orders placed through a store entry. Split
routes: test_split_routes.py."""

from __future__ import annotations

import threading

import grpc
import pytest
from omo.orders.v1 import orders_pb2 as pb
from omo.warehouse.v1 import warehouse_pb2 as wh

from ..support import bad_request_fields, error_info, key
from .test_flow import eventually
from .test_order_lifecycle import dispatched, pay
from .test_orders import place_request
from .test_warehouse import assert_ledger_matches

SHANGHAI = wh.GeoPoint(latitude=31.23, longitude=121.47)


def place(clients, kind, lat, lon, **fields) -> wh.Warehouse:  # type: ignore[no-untyped-def]
    return clients.warehouse.CreateWarehouse(wh.CreateWarehouseRequest(
        idempotency_key=key(), code=f"R-{key()[:10]}", name="routing", kind=kind, region="East",
        latitude=lat, longitude=lon, **fields)).warehouse


def stock(clients, w: wh.Warehouse, sku_id: str, quantity: int) -> None:
    clients.warehouse.ReceiveStock(wh.ReceiveStockRequest(
        idempotency_key=key(), warehouse_id=w.warehouse_id, sku_id=sku_id, quantity=quantity))


def route(mode, at=SHANGHAI) -> wh.Route:  # type: ignore[no-untyped-def]
    return wh.Route(mode=mode, deliver_to=at)


def quote(clients, r: wh.Route, *lines: tuple[str, int]) -> wh.RoutePlan:
    return clients.warehouse.QuoteRoute(wh.QuoteRouteRequest(
        route=r, lines=[wh.StockLine(sku_id=s, quantity=q) for s, q in lines])).plan


def reserve(clients, r: wh.Route, *lines: tuple[str, int]) -> wh.Reservation:
    return clients.warehouse.ReserveStock(wh.ReserveStockRequest(
        idempotency_key=key(), order_id=f"ord-{key()}", route=r,
        lines=[wh.StockLine(sku_id=s, quantity=q) for s, q in lines])).reservation


def test_each_mode_is_served_from_the_right_place_and_reserved_as_quoted(clients, world):
    sku = world.new_sku(stock=0).sku_id
    far = place(clients, wh.WAREHOUSE_KIND_CLOUD, 30.66, 104.06)                      # Chengdu
    forward = place(clients, wh.WAREHOUSE_KIND_FORWARD, 31.22, 121.54)                # Pudong, 30 km reach
    counter = place(clients, wh.WAREHOUSE_KIND_STORE, 31.20, 121.44, store_id=world.store.store_id)
    for w in (far, forward, counter):
        stock(clients, w, sku, 5)

    for mode, expect in ((wh.FULFILMENT_MODE_EXPRESS_3H, forward), (wh.FULFILMENT_MODE_STORE_PICKUP, counter)):
        [leg] = quote(clients, route(mode), (sku, 2)).legs
        assert leg.warehouse_id == expect.warehouse_id and 0 < leg.distance_km < 30
        assert quote(clients, route(mode), (sku, 2)).legs[0] == leg  # the same answer every time
        held = reserve(clients, route(mode), (sku, 2))
        assert held.warehouse_id == expect.warehouse_id
    # Beijing is out of the forward warehouse's express reach: nobody can run 3-hour express there.
    with pytest.raises(grpc.RpcError) as err:
        reserve(clients, route(wh.FULFILMENT_MODE_EXPRESS_3H, wh.GeoPoint(latitude=39.9, longitude=116.4)), (sku, 1))
    assert (err.value.code(), error_info(err.value).metadata["sku_id"]) == (grpc.StatusCode.RESOURCE_EXHAUSTED, sku)


def test_two_buyers_racing_for_the_nearest_last_unit(clients, world):
    sku = world.new_sku(stock=0).sku_id
    nearest = place(clients, wh.WAREHOUSE_KIND_CLOUD, 31.24, 121.48)
    next_one = place(clients, wh.WAREHOUSE_KIND_CLOUD, 31.6, 121.9)
    stock(clients, nearest, sku, 1)
    stock(clients, next_one, sku, 1)
    barrier, held = threading.Barrier(2), []

    def buy() -> None:
        barrier.wait()
        held.append(reserve(clients, route(wh.FULFILMENT_MODE_CLOUD_SHIPPING), (sku, 1)).warehouse_id)

    threads = [threading.Thread(target=buy) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(held) == sorted([nearest.warehouse_id, next_one.warehouse_id])
    with pytest.raises(grpc.RpcError) as err:
        reserve(clients, route(wh.FULFILMENT_MODE_CLOUD_SHIPPING), (sku, 1))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_routed_retry_replays_the_first_hold(clients, world):
    sku = world.new_sku(stock=0).sku_id
    w = place(clients, wh.WAREHOUSE_KIND_CLOUD, 31.24, 121.48)
    stock(clients, w, sku, 1)
    request = wh.ReserveStockRequest(idempotency_key=key(), order_id=f"ord-{key()}",
                                     route=route(wh.FULFILMENT_MODE_CLOUD_SHIPPING),
                                     lines=[wh.StockLine(sku_id=sku, quantity=1)])
    first = clients.warehouse.ReserveStock(request).reservation
    assert clients.warehouse.ReserveStock(request).reservation == first  # stock is gone now, the answer is not


# -- through PlaceOrder -------------------------------------------------------------------------------------
def test_an_express_order_is_held_and_shipped_at_the_forward_warehouse_near_the_consumer(clients, world):
    sku = world.new_sku(stock=5)  # in the seeded cloud warehouse, ~50 km from Shanghai
    forward = place(clients, wh.WAREHOUSE_KIND_FORWARD, 31.22, 121.54)
    stock(clients, forward, sku.sku_id, 2)
    here = pb.GeoPoint(latitude=SHANGHAI.latitude, longitude=SHANGHAI.longitude)

    request = place_request(world, [(sku, 2)])
    request.fulfilment_mode = pb.FULFILMENT_MODE_EXPRESS_3H
    request.deliver_to.CopyFrom(here)
    order = clients.orders.PlaceOrder(request).order
    assert (order.fulfilment_mode, order.warehouse_id) == (pb.FULFILMENT_MODE_EXPRESS_3H, forward.warehouse_id)
    pay(clients, order)
    assert dispatched(clients, order.order_id).warehouse_id == forward.warehouse_id
    [shipment] = clients.warehouse.ListShipments(wh.ListShipmentsRequest(order_id=order.order_id)).shipments
    assert shipment.warehouse_id == forward.warehouse_id

    # The forward warehouse is empty now: more express is refused naming the SKU, parcels still go.
    again = place_request(world, [(sku, 1)])
    again.fulfilment_mode = pb.FULFILMENT_MODE_EXPRESS_3H
    again.deliver_to.CopyFrom(here)
    with pytest.raises(grpc.RpcError) as err:
        clients.orders.PlaceOrder(again)
    assert (err.value.code(), error_info(err.value).metadata["sku_id"]) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, sku.sku_id)
    parcel = place_request(world, [(sku, 1)])
    parcel.deliver_to.CopyFrom(here)
    shipped = clients.orders.PlaceOrder(parcel).order
    assert (shipped.fulfilment_mode, shipped.warehouse_id) == (
        pb.FULFILMENT_MODE_CLOUD_SHIPPING, world.warehouse.warehouse_id)


def test_express_needs_to_know_where_the_consumer_is(clients, world):
    request = place_request(world, [(world.new_sku(), 1)])
    request.fulfilment_mode = pb.FULFILMENT_MODE_EXPRESS_3H
    with pytest.raises(grpc.RpcError) as err:
        clients.orders.PlaceOrder(request)
    assert (err.value.code(), bad_request_fields(err.value)) == (grpc.StatusCode.INVALID_ARGUMENT, ["deliver_to"])


def test_a_pickup_order_waits_at_the_store_until_collected_with_its_code(clients, world):
    sku = world.new_sku(stock=0)
    counter = place(clients, wh.WAREHOUSE_KIND_STORE, 31.20, 121.44, store_id=world.store.store_id)
    stock(clients, counter, sku.sku_id, 3)
    request = place_request(world, [(sku, 2)])
    request.fulfilment_mode = pb.FULFILMENT_MODE_STORE_PICKUP
    request.deliver_to.CopyFrom(pb.GeoPoint(latitude=SHANGHAI.latitude, longitude=SHANGHAI.longitude))
    order = clients.orders.PlaceOrder(request).order
    assert (order.fulfilment_mode, order.warehouse_id) == (pb.FULFILMENT_MODE_STORE_PICKUP, counter.warehouse_id)
    pay(clients, order)
    ready = eventually(lambda: clients.orders.GetOrder(pb.GetOrderRequest(order_id=order.order_id)).order,
                       lambda o: o.pickup_code, "the pickup code")
    assert ready.status == pb.ORDER_STATUS_PAID and len(ready.pickup_code) == 6
    [waiting] = clients.warehouse.ListShipments(wh.ListShipmentsRequest(order_id=order.order_id)).shipments
    assert (waiting.status, waiting.warehouse_id) == (wh.SHIPMENT_STATUS_READY_FOR_PICKUP, counter.warehouse_id)
    assert not waiting.HasField("dispatched_at")
    held = clients.warehouse.GetReservation(wh.GetReservationRequest(reservation_id=order.reservation_id))
    assert held.reservation.status == wh.RESERVATION_STATUS_CONFIRMED
    lv = next(lv for lv in clients.warehouse.GetStock(wh.GetStockRequest(sku_id=sku.sku_id)).levels
              if lv.warehouse_id == counter.warehouse_id)
    assert (lv.on_hand, lv.reserved) == (3, 2)  # still on the shelf, set aside

    wrong = "000000" if ready.pickup_code != "000000" else "111111"
    with pytest.raises(grpc.RpcError) as err:
        clients.warehouse.CollectPickup(wh.CollectPickupRequest(
            idempotency_key=key(), shipment_id=waiting.shipment_id, pickup_code=wrong))
    assert (err.value.code(), bad_request_fields(err.value)) == (grpc.StatusCode.INVALID_ARGUMENT, ["pickup_code"])
    collect = wh.CollectPickupRequest(idempotency_key=key(), shipment_id=waiting.shipment_id,
                                      pickup_code=ready.pickup_code)
    picked = clients.warehouse.CollectPickup(collect).shipment
    assert picked.status == wh.SHIPMENT_STATUS_DISPATCHED and picked.HasField("dispatched_at")
    assert clients.warehouse.CollectPickup(collect).shipment == picked  # a retry answers the same
    with pytest.raises(grpc.RpcError) as err:
        clients.warehouse.CollectPickup(wh.CollectPickupRequest(
            idempotency_key=key(), shipment_id=waiting.shipment_id, pickup_code=ready.pickup_code))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dispatched(clients, order.order_id).shipment_id == waiting.shipment_id
    lv = next(lv for lv in clients.warehouse.GetStock(wh.GetStockRequest(sku_id=sku.sku_id)).levels
              if lv.warehouse_id == counter.warehouse_id)
    assert (lv.on_hand, lv.reserved) == (1, 0)
    assert_ledger_matches(clients, counter.warehouse_id, sku.sku_id)
