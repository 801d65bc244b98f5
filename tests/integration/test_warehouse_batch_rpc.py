"""BatchReserveStock over gRPC: each item answered exactly as ReserveStock would answer it (held, sold out
naming the SKU, a bad item failing alone naming its field, a retried key replaying the first answer), and a
flash sale sent through batches that never oversells."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from omo.warehouse.v1 import warehouse_pb2 as wh

from ..support import bad_request_fields, error_info_of, key
from .test_routing import SHANGHAI, place, route, stock
from .test_warehouse import assert_ledger_matches, level

SHIPPING = wh.FULFILMENT_MODE_CLOUD_SHIPPING


def request(*lines: tuple[str, int], order_id: str | None = None, k: str | None = None,
            routed: bool = False) -> wh.ReserveStockRequest:
    r = wh.ReserveStockRequest(idempotency_key=k or key(), order_id=order_id or f"ord-{key()}",
                               lines=[wh.StockLine(sku_id=s, quantity=q) for s, q in lines])
    if routed:
        r.route.CopyFrom(route(SHIPPING, SHANGHAI))
    return r


def batch(clients, *requests: wh.ReserveStockRequest) -> list[wh.ReserveStockResult]:
    return list(clients.warehouse.BatchReserveStock(wh.BatchReserveStockRequest(requests=requests)).results)


def single_failure(clients, req: wh.ReserveStockRequest) -> status_pb2.Status:
    with pytest.raises(grpc.RpcError) as err:
        clients.warehouse.ReserveStock(req)
    status = rpc_status.from_call(err.value)
    return status if status is not None else status_pb2.Status(code=err.value.code().value[0],
                                                               message=err.value.details())


def bad_request_of(status: status_pb2.Status) -> list[str]:
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            fields += [v.field for v in br.field_violations]
    return fields


def test_each_item_is_answered_as_reserve_stock_would_answer_it(clients, world):
    plenty, scarce = world.new_sku(stock=10).sku_id, world.new_sku(stock=1).sku_id
    routed_sku = world.new_sku(stock=0).sku_id
    near = place(clients, wh.WAREHOUSE_KIND_CLOUD, 31.25, 121.45)
    stock(clients, near, routed_sku, 3)
    retried = request((plenty, 1))
    first = clients.warehouse.ReserveStock(retried)
    reused = wh.ReserveStockRequest()
    reused.CopyFrom(retried)
    reused.lines[0].quantity = 2  # the same key for another request
    nameless = request((plenty, 1))
    nameless.order_id = ""
    requests = [
        request((plenty, 2), (scarce, 1)),           # held
        request((plenty, 1), (scarce, 1)),           # sold out: the unit went to the item before
        request((plenty, 0)),                        # breaks ReserveStock's own rules
        retried,                                     # a retry: the first answer again
        reused,
        request((routed_sku, 2), routed=True),       # held where routing sends it
        nameless,                                    # another bad field
    ]
    results = batch(clients, *requests)
    assert [r.WhichOneof("outcome") for r in results] == ["response", "error", "error", "response", "error",
                                                           "response", "error"]
    # A success is what the single call (a retry now) replays; a failure is what the single call says.
    for req, result in zip(requests, results, strict=True):
        if result.WhichOneof("outcome") == "response":
            assert clients.warehouse.ReserveStock(req) == result.response
        else:
            assert result.error == single_failure(clients, req)
    assert results[3].response == first
    assert results[1].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert error_info_of(results[1].error).metadata["sku_id"] == scarce
    assert bad_request_of(results[2].error) == ["lines[0].quantity"]
    assert bad_request_of(results[4].error) == ["idempotency_key"]
    assert bad_request_of(results[6].error) == ["order_id"]
    assert results[5].response.reservation.warehouse_id == near.warehouse_id
    assert level(clients, plenty, world.warehouse.warehouse_id).reserved == 3
    assert level(clients, scarce, world.warehouse.warehouse_id).reserved == 1


def test_one_key_twice_in_a_batch_holds_once_and_both_get_the_hold(clients, world):
    sku = world.new_sku(stock=5).sku_id
    req = request((sku, 2))
    rival = request((sku, 2), order_id=req.order_id)  # another key for the same order and lines
    results = batch(clients, req, req, rival)
    assert [r.WhichOneof("outcome") for r in results] == ["response"] * 3
    assert len({r.response.reservation.reservation_id for r in results}) == 1
    assert level(clients, sku, world.warehouse.warehouse_id).reserved == 2


def test_an_empty_batch_is_invalid(clients):
    with pytest.raises(grpc.RpcError) as err:
        clients.warehouse.BatchReserveStock(wh.BatchReserveStockRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == ["requests"]


def test_a_flash_sale_through_batches_sells_every_unit_once(clients, world):
    units, attempts, per_batch = 1_000, 5_000, 250
    sku = world.new_sku(stock=units).sku_id
    w = world.warehouse.warehouse_id
    batches = [[request((sku, 1)) for _ in range(per_batch)] for _ in range(attempts // per_batch)]

    def send(requests: list[wh.ReserveStockRequest]) -> list[wh.ReserveStockResult]:
        return batch(clients, *requests)

    with ThreadPoolExecutor(8) as pool:
        results = [r for answered in pool.map(send, batches) for r in answered]
    won = [r for r in results if r.WhichOneof("outcome") == "response"]
    lost = [r.error for r in results if r.WhichOneof("outcome") == "error"]
    assert len(won) == units and len(lost) == attempts - units
    assert len({r.response.reservation.reservation_id for r in won}) == units
    assert {e.code for e in lost} == {grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}
    assert {error_info_of(e).metadata["sku_id"] for e in lost} == {sku}
    lv = level(clients, sku, w)
    assert (lv.on_hand, lv.reserved, lv.available) == (units, units, 0)
    assert_ledger_matches(clients, w, sku)


def test_multi_line_baskets_in_concurrent_batches_keep_every_level_whole(clients, world):
    skus = [world.new_sku(stock=6).sku_id for _ in range(3)]
    rng = random.Random(5)
    baskets = [rng.sample(skus, rng.randint(1, 3)) for _ in range(60)]
    batches = [baskets[i:i + 15] for i in range(0, len(baskets), 15)]

    def send(group: list[list[str]]) -> list[str]:
        results = batch(clients, *(request(*[(s, 1) for s in basket]) for basket in group))
        held = []
        for basket, result in zip(group, results, strict=True):
            if result.WhichOneof("outcome") == "response":
                assert sorted(li.sku_id for li in result.response.reservation.lines) == sorted(basket)
                held += basket
            else:
                assert result.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                assert error_info_of(result.error).metadata["sku_id"] in basket
        return held

    with ThreadPoolExecutor(4) as pool:
        held = [s for got in pool.map(send, batches) for s in got]
    for sku_id in skus:
        lv = level(clients, sku_id, world.warehouse.warehouse_id)
        assert lv.reserved == held.count(sku_id) <= 6
        assert_ledger_matches(clients, world.warehouse.warehouse_id, sku_id)
