"""Queries: a consumer's, a store's and a dealer's orders page by page; a SKU's stock across locations; a
location's whole ledger."""

from __future__ import annotations

import grpc
import pytest
from omo.orders.v1 import orders_pb2 as pb
from omo.warehouse.v1 import warehouse_pb2 as wh

from ..support import bad_request_fields, key
from .test_orders import place_request
from .test_warehouse import new_warehouse


def all_pages(clients, metadata=(), **party) -> list[pb.Order]:  # type: ignore[no-untyped-def]
    orders, token = [], ""
    while True:
        page = clients.orders.ListOrders(pb.ListOrdersRequest(page_size=2, page_token=token, **party),
                                         metadata=metadata)
        assert len(page.orders) <= 2
        orders += page.orders
        token = page.next_page_token
        if not token:
            return orders


def test_orders_are_listed_newest_first_by_consumer_store_and_dealer(clients, world):
    sku = world.new_sku(stock=20)
    consumer = f"consumer-{key()[:8]}"
    placed = [clients.orders.PlaceOrder(place_request(world, [(sku, 1)], consumer_id=consumer)).order
              for _ in range(5)]
    mine = all_pages(clients, consumer_id=consumer)
    assert [o.order_id for o in mine] == [o.order_id for o in reversed(placed)]
    assert mine[0] == clients.orders.GetOrder(pb.GetOrderRequest(order_id=mine[0].order_id)).order
    ids = {o.order_id for o in placed}
    by_store = all_pages(clients, store_id=world.store.store_id)
    by_dealer = all_pages(clients, metadata=[("x-omo-principal", f"dealer:{world.dealer.dealer_id}")],
                          dealer_id=world.dealer.dealer_id)
    for listed in (by_store, by_dealer):
        assert ids <= {o.order_id for o in listed}
        stamps = [(o.created_at.ToDatetime(), o.order_id) for o in listed]
        assert stamps == sorted(stamps, reverse=True)


def test_listing_another_dealers_orders_is_denied_and_bad_input_named(clients, world):
    with pytest.raises(grpc.RpcError) as err:
        clients.orders.ListOrders(pb.ListOrdersRequest(dealer_id=world.dealer.dealer_id),
                                  metadata=[("x-omo-principal", "dealer:dlr_someone_else")])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A dealer asking for a consumer sees only that consumer's orders with the dealer: none here.
    consumer = f"consumer-{key()[:8]}"
    clients.orders.PlaceOrder(place_request(world, [(world.new_sku(), 1)], consumer_id=consumer))
    other = clients.orders.ListOrders(pb.ListOrdersRequest(consumer_id=consumer),
                                      metadata=[("x-omo-principal", "dealer:dlr_someone_else")])
    assert list(other.orders) == []
    with pytest.raises(grpc.RpcError) as err:
        clients.orders.ListOrders(pb.ListOrdersRequest())
    assert (err.value.code(), bad_request_fields(err.value)) == (grpc.StatusCode.INVALID_ARGUMENT, ["consumer_id"])
    with pytest.raises(grpc.RpcError) as err:
        clients.orders.ListOrders(pb.ListOrdersRequest(consumer_id="c", page_token="garbage"))
    assert bad_request_fields(err.value) == ["page_token"]


def test_stock_across_locations_and_a_locations_whole_ledger(clients, world):
    a, b = world.new_sku(stock=0), world.new_sku(stock=0)
    here, there = new_warehouse(clients), new_warehouse(clients)
    for w, sku, qty in ((here, a, 3), (there, a, 4), (here, b, 5)):
        clients.warehouse.ReceiveStock(wh.ReceiveStockRequest(
            idempotency_key=key(), warehouse_id=w.warehouse_id, sku_id=sku.sku_id, quantity=qty))
    levels = clients.warehouse.GetStock(wh.GetStockRequest(sku_id=a.sku_id)).levels
    assert sorted((lv.warehouse_id, lv.on_hand) for lv in levels) == sorted(
        [(here.warehouse_id, 3), (there.warehouse_id, 4)])
    ledger = clients.warehouse.ListMovements(wh.ListMovementsRequest(warehouse_id=here.warehouse_id)).movements
    assert [(m.sku_id, m.on_hand_delta) for m in ledger] == [(a.sku_id, 3), (b.sku_id, 5)]
