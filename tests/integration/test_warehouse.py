"""Warehouse over gRPC: receipts, reservations that never oversell, releases, and the stock ledger."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from omo.warehouse.v1 import warehouse_pb2 as wh

from ..support import bad_request_fields, error_info, key


def level(clients, sku_id: str, warehouse_id: str) -> wh.StockLevel:
    levels = clients.warehouse.GetStock(wh.GetStockRequest(sku_id=sku_id)).levels
    return next(lv for lv in levels if lv.warehouse_id == warehouse_id)


def reserve(clients, order_id: str, *lines: tuple[str, int], k: str | None = None) -> wh.Reservation:
    return clients.warehouse.ReserveStock(wh.ReserveStockRequest(
        idempotency_key=k or key(), order_id=order_id,
        lines=[wh.StockLine(sku_id=s, quantity=q) for s, q in lines])).reservation


def release(clients, reservation_id: str, k: str | None = None) -> wh.Reservation:
    return clients.warehouse.ReleaseReservation(wh.ReleaseReservationRequest(
        idempotency_key=k or key(), reservation_id=reservation_id, reason="unpaid")).reservation


def ledger(clients, warehouse_id: str, sku_id: str, page_size: int = 0) -> list[wh.Movement]:
    moves, token = [], ""
    while True:
        page = clients.warehouse.ListMovements(wh.ListMovementsRequest(
            warehouse_id=warehouse_id, sku_id=sku_id, page_size=page_size, page_token=token))
        moves += page.movements
        token = page.next_page_token
        if not token:
            return moves


def assert_ledger_matches(clients, warehouse_id: str, sku_id: str) -> None:
    moves = ledger(clients, warehouse_id, sku_id)
    lv = level(clients, sku_id, warehouse_id)
    assert (lv.on_hand, lv.reserved) == (sum(m.on_hand_delta for m in moves), sum(m.reserved_delta for m in moves))
    assert lv.available == lv.on_hand - lv.reserved >= 0


def new_warehouse(clients) -> wh.Warehouse:
    return clients.warehouse.CreateWarehouse(wh.CreateWarehouseRequest(
        idempotency_key=key(), code=f"FW-{key()[:8]}", name="Forward warehouse", kind=wh.WAREHOUSE_KIND_CLOUD,
        region="East", latitude=31.2, longitude=121.5)).warehouse


# -- warehouses and receipts -----------------------------------------------------------------------------
def test_warehouse_codes_are_unique_and_creation_is_idempotent(clients):
    req = wh.CreateWarehouseRequest(idempotency_key=key(), code=f"CW-{key()[:8]}", name="Chengdu cloud",
                                    kind=wh.WAREHOUSE_KIND_CLOUD, region="West", latitude=30.6, longitude=104.1)
    first = clients.warehouse.CreateWarehouse(req).warehouse
    assert clients.warehouse.CreateWarehouse(req).warehouse == first
    req.idempotency_key = key()
    with pytest.raises(grpc.RpcError) as err:
        clients.warehouse.CreateWarehouse(req)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(err.value).metadata["code"] == req.code


def test_receipts_show_in_stock_and_replay_once(clients, world):
    sku = world.new_sku(stock=0)
    assert list(clients.warehouse.GetStock(wh.GetStockRequest(sku_id=sku.sku_id)).levels) == []
    req = wh.ReceiveStockRequest(idempotency_key=key(), warehouse_id=world.warehouse.warehouse_id,
                                 sku_id=sku.sku_id, quantity=7)
    first = clients.warehouse.ReceiveStock(req)
    assert clients.warehouse.ReceiveStock(req) == first
    clients.warehouse.ReceiveStock(wh.ReceiveStockRequest(
        idempotency_key=key(), warehouse_id=world.warehouse.warehouse_id, sku_id=sku.sku_id, quantity=5))
    lv = level(clients, sku.sku_id, world.warehouse.warehouse_id)
    assert (lv.on_hand, lv.reserved, lv.available) == (12, 0, 12)
    moves = ledger(clients, world.warehouse.warehouse_id, sku.sku_id)
    assert [(m.reason, m.on_hand_delta) for m in moves] == [(wh.MOVEMENT_REASON_RECEIPT, 7),
                                                            (wh.MOVEMENT_REASON_RECEIPT, 5)]
    assert moves[0].reference_id == first.receipt_id


def test_receipts_into_unknown_places_or_by_stores_are_refused(clients, world):
    sku = world.new_sku(stock=0)
    with pytest.raises(grpc.RpcError) as err:
        clients.warehouse.ReceiveStock(wh.ReceiveStockRequest(
            idempotency_key=key(), warehouse_id="whs_nope", sku_id=sku.sku_id, quantity=1))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        clients.warehouse.ReceiveStock(wh.ReceiveStockRequest(
            idempotency_key=key(), warehouse_id=world.warehouse.warehouse_id, sku_id="sku_nope", quantity=1))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        clients.warehouse.ReceiveStock(wh.ReceiveStockRequest(
            idempotency_key=key(), warehouse_id=world.warehouse.warehouse_id, sku_id=sku.sku_id, quantity=1),
            metadata=[("x-omo-principal", f"store:{world.store.store_id}")])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


# -- reservations -------------------------------------------------------------------------------------------
def test_reserve_and_release_move_the_numbers(clients, world):
    sku = world.new_sku(stock=10)
    w = world.warehouse.warehouse_id
    r = reserve(clients, f"ord-{key()}", (sku.sku_id, 3))
    assert r.status == wh.RESERVATION_STATUS_RESERVED and r.warehouse_id == w
    assert [(line.sku_id, line.quantity) for line in r.lines] == [(sku.sku_id, 3)]
    lv = level(clients, sku.sku_id, w)
    assert (lv.on_hand, lv.reserved, lv.available) == (10, 3, 7)
    assert clients.warehouse.GetReservation(wh.GetReservationRequest(reservation_id=r.reservation_id)).reservation == r

    k = key()
    released = release(clients, r.reservation_id, k)
    assert released.status == wh.RESERVATION_STATUS_RELEASED
    assert release(clients, r.reservation_id, k) == released
    lv = level(clients, sku.sku_id, w)
    assert (lv.on_hand, lv.reserved, lv.available) == (10, 0, 10)
    with pytest.raises(grpc.RpcError) as err:
        release(clients, r.reservation_id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert_ledger_matches(clients, w, sku.sku_id)


def test_over_reserving_names_the_short_sku_and_holds_nothing(clients, world):
    plenty, scarce = world.new_sku(stock=10), world.new_sku(stock=2)
    with pytest.raises(grpc.RpcError) as err:
        reserve(clients, f"ord-{key()}", (plenty.sku_id, 1), (scarce.sku_id, 3))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(err.value).metadata["sku_id"] == scarce.sku_id
    assert scarce.sku_id in err.value.details()
    assert level(clients, plenty.sku_id, world.warehouse.warehouse_id).reserved == 0
    assert level(clients, scarce.sku_id, world.warehouse.warehouse_id).reserved == 0

    never_stocked = world.new_sku(stock=0)
    with pytest.raises(grpc.RpcError) as err:
        reserve(clients, f"ord-{key()}", (never_stocked.sku_id, 1))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(err.value).metadata["sku_id"] == never_stocked.sku_id


def test_reserve_is_idempotent_and_one_order_holds_one_reservation(clients, world):
    sku = world.new_sku(stock=10)
    order, k = f"ord-{key()}", key()
    first = reserve(clients, order, (sku.sku_id, 2), k=k)
    assert reserve(clients, order, (sku.sku_id, 2), k=k) == first
    assert level(clients, sku.sku_id, world.warehouse.warehouse_id).reserved == 2

    with pytest.raises(grpc.RpcError) as err:
        reserve(clients, order, (sku.sku_id, 5), k=k)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == ["idempotency_key"]

    # Another key for the same order: the same lines get the existing hold, other lines are refused.
    assert reserve(clients, order, (sku.sku_id, 2)).reservation_id == first.reservation_id
    with pytest.raises(grpc.RpcError) as err:
        reserve(clients, order, (sku.sku_id, 3))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err.value).metadata["reservation_id"] == first.reservation_id
    assert level(clients, sku.sku_id, world.warehouse.warehouse_id).reserved == 2


def test_concurrent_retries_and_rival_keys_for_one_order_hold_once(clients, world):
    sku = world.new_sku(stock=50)
    order, k = f"ord-{key()}", key()
    keys = [k] * 8 + [key() for _ in range(8)]  # retries of one call, and other calls for the same order
    with ThreadPoolExecutor(len(keys)) as pool:
        held = list(pool.map(lambda kk: reserve(clients, order, (sku.sku_id, 2), k=kk).reservation_id, keys))
    assert len(set(held)) == 1
    assert level(clients, sku.sku_id, world.warehouse.warehouse_id).reserved == 2


def test_duplicate_lines_are_held_as_one(clients, world):
    sku = world.new_sku(stock=10)
    r = reserve(clients, f"ord-{key()}", (sku.sku_id, 2), (sku.sku_id, 3))
    assert [(line.sku_id, line.quantity) for line in r.lines] == [(sku.sku_id, 5)]


def test_bad_reservation_input_names_the_field(clients, world):
    with pytest.raises(grpc.RpcError) as err:
        reserve(clients, f"ord-{key()}", ("sku_x", 0))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == ["lines[0].quantity"]


def test_unknown_reservation_is_not_found(clients):
    with pytest.raises(grpc.RpcError) as err:
        release(clients, "rsv_nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_first_cloud_warehouse_that_covers_every_line_is_used(clients, world):
    a, b = world.new_sku(stock=5), world.new_sku(stock=0)  # the seeded warehouse has A but not B
    second = new_warehouse(clients)  # ids are time-ordered: it sorts after the seeded one
    for sku in (a, b):
        clients.warehouse.ReceiveStock(wh.ReceiveStockRequest(
            idempotency_key=key(), warehouse_id=second.warehouse_id, sku_id=sku.sku_id, quantity=5))
    assert reserve(clients, f"ord-{key()}", (a.sku_id, 1)).warehouse_id == world.warehouse.warehouse_id
    assert reserve(clients, f"ord-{key()}", (a.sku_id, 1), (b.sku_id, 1)).warehouse_id == second.warehouse_id
    # Now 4 of A are available in each: the first takes 4, then only the second has any left.
    assert reserve(clients, f"ord-{key()}", (a.sku_id, 4)).warehouse_id == world.warehouse.warehouse_id
    assert reserve(clients, f"ord-{key()}", (a.sku_id, 3)).warehouse_id == second.warehouse_id
    with pytest.raises(grpc.RpcError) as err:
        reserve(clients, f"ord-{key()}", (a.sku_id, 2))
    assert error_info(err.value).metadata["sku_id"] == a.sku_id
    assert reserve(clients, f"ord-{key()}", (a.sku_id, 1)).warehouse_id == second.warehouse_id
    for w in (world.warehouse.warehouse_id, second.warehouse_id):
        assert_ledger_matches(clients, w, a.sku_id)


@pytest.mark.parametrize("units", [1, 5])
def test_concurrent_buyers_never_oversell(clients, world, units):
    sku = world.new_sku(stock=units)
    buyers = 24

    def buy(i: int) -> str:
        try:
            reserve(clients, f"ord-{key()}", (sku.sku_id, 1))
            return "ok"
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
            assert error_info(err).metadata["sku_id"] == sku.sku_id
            return "short"

    with ThreadPoolExecutor(buyers) as pool:
        outcomes = list(pool.map(buy, range(buyers)))
    assert outcomes.count("ok") == units
    assert outcomes.count("short") == buyers - units
    lv = level(clients, sku.sku_id, world.warehouse.warehouse_id)
    assert (lv.on_hand, lv.reserved, lv.available) == (units, units, 0)
    assert_ledger_matches(clients, world.warehouse.warehouse_id, sku.sku_id)


def test_concurrent_multi_line_orders_keep_every_level_whole(clients, world):
    skus = [world.new_sku(stock=6).sku_id for _ in range(3)]
    rng = random.Random(7)
    baskets = [rng.sample(skus, rng.randint(1, 3)) for _ in range(30)]

    def buy(basket: list[str]) -> list[str]:
        try:
            reserve(clients, f"ord-{key()}", *[(s, 1) for s in basket])
            return basket
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
            return []

    with ThreadPoolExecutor(12) as pool:
        held = [s for basket in pool.map(buy, baskets) for s in basket]
    for sku_id in skus:
        lv = level(clients, sku_id, world.warehouse.warehouse_id)
        assert lv.reserved == held.count(sku_id) <= 6
        assert_ledger_matches(clients, world.warehouse.warehouse_id, sku_id)


def test_levels_always_equal_the_sums_of_their_movements(clients, world):
    """A random walk of receipts, reservations and releases; after every step the ledger adds up."""
    sku = world.new_sku(stock=3)
    w = world.warehouse.warehouse_id
    rng = random.Random(2020_12_08)
    held: list[str] = []
    for _ in range(40):
        op = rng.choice(["receive", "reserve", "reserve", "release"])
        if op == "receive":
            clients.warehouse.ReceiveStock(wh.ReceiveStockRequest(
                idempotency_key=key(), warehouse_id=w, sku_id=sku.sku_id, quantity=rng.randint(1, 3)))
        elif op == "reserve":
            try:
                held.append(reserve(clients, f"ord-{key()}", (sku.sku_id, rng.randint(1, 4))).reservation_id)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        elif held:
            release(clients, held.pop(rng.randrange(len(held))))
        assert_ledger_matches(clients, w, sku.sku_id)
    assert len(ledger(clients, w, sku.sku_id, page_size=3)) == len(ledger(clients, w, sku.sku_id))


def test_movements_of_an_unknown_warehouse_are_not_found(clients):
    with pytest.raises(grpc.RpcError) as err:
        clients.warehouse.ListMovements(wh.ListMovementsRequest(warehouse_id="whs_nope", sku_id="sku_x"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
