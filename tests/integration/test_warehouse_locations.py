"""Stock locations of every kind, stock count adjustments, holds that expire, and the flash sale: one SKU,
1,000 units, 5,000 buyers at once."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from omo.warehouse.v1 import events_pb2 as wh_events
from omo.warehouse.v1 import warehouse_pb2 as wh
from omo.warehouse.v1 import warehouse_pb2_grpc

from ..support import bad_request_fields, error_info, key
from .test_warehouse import assert_ledger_matches, ledger, level, release, reserve
from .test_warehouse_shipping import _last, wait_for


def create(clients, kind, **fields) -> wh.Warehouse:  # type: ignore[no-untyped-def]
    return clients.warehouse.CreateWarehouse(wh.CreateWarehouseRequest(
        idempotency_key=key(), code=f"L-{key()[:10]}", name="location", kind=kind, region="East",
        latitude=31.2, longitude=121.4, **fields)).warehouse


def refused(call, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call(request)
    return err.value


# -- locations ------------------------------------------------------------------------------------------
def test_each_kind_offers_its_usual_modes(clients, world):
    cloud = create(clients, wh.WAREHOUSE_KIND_CLOUD)
    forward = create(clients, wh.WAREHOUSE_KIND_FORWARD)
    store = create(clients, wh.WAREHOUSE_KIND_STORE, store_id=world.store.store_id)
    assert list(cloud.modes) == [wh.FULFILMENT_MODE_CLOUD_SHIPPING]
    assert (list(forward.modes), forward.express_radius_km) == (
        [wh.FULFILMENT_MODE_CLOUD_SHIPPING, wh.FULFILMENT_MODE_EXPRESS_3H], 30)
    assert (list(store.modes), store.store_id) == ([wh.FULFILMENT_MODE_STORE_PICKUP], world.store.store_id)
    assert clients.warehouse.GetWarehouse(wh.GetWarehouseRequest(warehouse_id=store.warehouse_id)).warehouse == store
    express = create(clients, wh.WAREHOUSE_KIND_FORWARD, modes=[wh.FULFILMENT_MODE_EXPRESS_3H], express_radius_km=12)
    assert (list(express.modes), express.express_radius_km) == ([wh.FULFILMENT_MODE_EXPRESS_3H], 12)


@pytest.mark.parametrize(("kind", "fields", "field"), [
    (wh.WAREHOUSE_KIND_STORE, {}, "store_id"),
    (wh.WAREHOUSE_KIND_CLOUD, {"store_id": "sto_x"}, "store_id"),
    (wh.WAREHOUSE_KIND_CLOUD, {"modes": [wh.FULFILMENT_MODE_STORE_PICKUP]}, "modes"),
    (wh.WAREHOUSE_KIND_CLOUD, {"modes": [wh.FULFILMENT_MODE_EXPRESS_3H]}, "express_radius_km"),
    (wh.WAREHOUSE_KIND_CLOUD, {"express_radius_km": 5}, "express_radius_km"),
])
def test_a_location_must_be_able_to_offer_its_modes(clients, kind, fields, field):
    err = refused(clients.warehouse.CreateWarehouse, wh.CreateWarehouseRequest(
        idempotency_key=key(), code=f"L-{key()[:10]}", name="x", kind=kind, region="East", latitude=31,
        longitude=121, **fields))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err) == [field]


def test_store_stock_of_an_unknown_store_is_not_found(clients):
    err = refused(clients.warehouse.CreateWarehouse, wh.CreateWarehouseRequest(
        idempotency_key=key(), code=f"L-{key()[:10]}", name="x", kind=wh.WAREHOUSE_KIND_STORE, region="East",
        latitude=31, longitude=121, store_id="sto_nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_unknown_location_is_not_found(clients):
    err = refused(clients.warehouse.GetWarehouse, wh.GetWarehouseRequest(warehouse_id="whs_nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


# -- adjustments ----------------------------------------------------------------------------------------
def adjust(clients, warehouse_id: str, sku_id: str, delta: int, k: str | None = None) -> wh.AdjustStockResponse:
    return clients.warehouse.AdjustStock(wh.AdjustStockRequest(
        idempotency_key=k or key(), warehouse_id=warehouse_id, sku_id=sku_id, delta=delta, note="cycle count"))


def test_adjustments_move_on_hand_once_and_never_below_reserved(clients, world):
    sku = world.new_sku(stock=10)
    w = world.warehouse.warehouse_id
    k = key()
    first = adjust(clients, w, sku.sku_id, -3, k)
    assert adjust(clients, w, sku.sku_id, -3, k) == first
    assert (first.stock.on_hand, first.stock.available) == (7, 7)
    assert ledger(clients, w, sku.sku_id)[-1].reason == wh.MOVEMENT_REASON_ADJUSTMENT
    assert ledger(clients, w, sku.sku_id)[-1].reference_id == first.adjustment_id

    reserve(clients, f"ord-{key()}", (sku.sku_id, 5))
    err = refused(clients.warehouse.AdjustStock, wh.AdjustStockRequest(
        idempotency_key=key(), warehouse_id=w, sku_id=sku.sku_id, delta=-3, note="lost"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).metadata["sku_id"] == sku.sku_id
    assert adjust(clients, w, sku.sku_id, -2).stock.available == 0
    assert adjust(clients, w, sku.sku_id, 4).stock.on_hand == 9
    assert_ledger_matches(clients, w, sku.sku_id)


def test_adjustment_input_is_checked(clients, world):
    sku = world.new_sku(stock=1)
    err = refused(clients.warehouse.AdjustStock, wh.AdjustStockRequest(
        idempotency_key=key(), warehouse_id=world.warehouse.warehouse_id, sku_id=sku.sku_id, delta=0, note="x"))
    assert (err.code(), bad_request_fields(err)) == (grpc.StatusCode.INVALID_ARGUMENT, ["delta"])
    err = refused(clients.warehouse.AdjustStock, wh.AdjustStockRequest(
        idempotency_key=key(), warehouse_id="whs_nope", sku_id=sku.sku_id, delta=1, note="x"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = refused(lambda r: clients.warehouse.AdjustStock(r, metadata=[("x-omo-principal", "dealer:dlr_1")]),
                  wh.AdjustStockRequest(idempotency_key=key(), warehouse_id=world.warehouse.warehouse_id,
                                        sku_id=sku.sku_id, delta=1, note="x"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


# -- expiry ---------------------------------------------------------------------------------------------
def test_an_unpaid_hold_expires_and_the_release_is_published(stack, clients, world):
    sku = world.new_sku(stock=4)
    w = world.warehouse.warehouse_id
    order_id = f"ord-{key()}"
    held = clients.warehouse.ReserveStock(wh.ReserveStockRequest(
        idempotency_key=key(), order_id=order_id, lines=[wh.StockLine(sku_id=sku.sku_id, quantity=3)],
        hold_for=Duration(seconds=1))).reservation
    assert held.expires_at.ToDatetime() > held.created_at.ToDatetime()
    lasting = reserve(clients, f"ord-{key()}", (sku.sku_id, 1))
    assert lasting.expires_at.seconds - lasting.created_at.seconds in range(899, 902)  # the 15-minute default

    released = wait_for(lambda: _last(stack, wh_events.ReservationReleased, "warehouse.reservation.released",
                                      reservation_id=held.reservation_id))
    assert (released.order_id, released.reason, released.warehouse_id) == (order_id, "expired", w)
    assert [(line.sku_id, line.quantity) for line in released.lines] == [(sku.sku_id, 3)]
    got = clients.warehouse.GetReservation(wh.GetReservationRequest(reservation_id=held.reservation_id))
    assert got.reservation.status == wh.RESERVATION_STATUS_RELEASED
    lv = level(clients, sku.sku_id, w)
    assert (lv.on_hand, lv.reserved) == (4, 1)
    assert ledger(clients, w, sku.sku_id)[-1].reason == wh.MOVEMENT_REASON_RELEASE
    assert_ledger_matches(clients, w, sku.sku_id)
    # Releasing it by hand afterwards is a state error, not a second release.
    with pytest.raises(grpc.RpcError) as err:
        release(clients, held.reservation_id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# -- flash sale -----------------------------------------------------------------------------------------
def test_flash_sale_reserves_exactly_the_units_there_are(stack, clients, world):
    """5,000 concurrent attempts on 1,000 units: exactly 1,000 held, each loser told which SKU ran out."""
    units, attempts = 1_000, 5_000
    sku = world.new_sku(stock=units)

    async def sale() -> list[object]:
        # Buyers come over many connections (a connection carries a bounded number of streams at once).
        channels = [grpc.aio.insecure_channel(stack.address("warehouse"), options=[("omo.test.connection", n)])
                    for n in range(attempts // 250)]
        stubs = [warehouse_pb2_grpc.WarehouseServiceStub(ch) for ch in channels]

        async def attempt(i: int) -> object:
            try:
                return (await stubs[i % len(stubs)].ReserveStock(wh.ReserveStockRequest(
                    idempotency_key=key(), order_id=f"flash-{key()}",
                    lines=[wh.StockLine(sku_id=sku.sku_id, quantity=1)]), timeout=60)).reservation
            except grpc.aio.AioRpcError as err:
                return err

        try:
            return await asyncio.gather(*(attempt(i) for i in range(attempts)))
        finally:
            for ch in channels:
                await ch.close()

    outcomes = asyncio.run(sale())
    won = [o for o in outcomes if isinstance(o, wh.Reservation)]
    lost = [o for o in outcomes if not isinstance(o, wh.Reservation)]
    assert len(won) == units
    assert len({r.reservation_id for r in won}) == units
    for err in lost:
        assert err.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION), err.details()
        assert error_info(err).metadata["sku_id"] == sku.sku_id
    lv = level(clients, sku.sku_id, world.warehouse.warehouse_id)
    assert (lv.on_hand, lv.reserved, lv.available) == (units, units, 0)
    assert_ledger_matches(clients, world.warehouse.warehouse_id, sku.sku_id)


def test_store_stock_takes_receipts_but_is_not_shipped_from(clients, world):
    """Store stock is for pickup at the counter; receipts into it work like any location."""
    store = create(clients, wh.WAREHOUSE_KIND_STORE, store_id=world.store.store_id)
    sku = world.new_sku(stock=0)
    got = clients.warehouse.ReceiveStock(wh.ReceiveStockRequest(
        idempotency_key=key(), warehouse_id=store.warehouse_id, sku_id=sku.sku_id, quantity=2)).stock
    assert (got.warehouse_id, got.on_hand) == (store.warehouse_id, 2)
    # Cloud shipping does not take a store's counter stock.
    with pytest.raises(grpc.RpcError) as err:
        reserve(clients, f"ord-{key()}", (sku.sku_id, 1))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
