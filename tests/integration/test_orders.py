"""Orders over gRPC: placing is idempotent and converges, payments are recorded once, bad input names its
fields, coupons are redeemed once and the last unit goes to exactly one buyer."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from omo.catalog.v1 import catalog_pb2 as cat
from omo.marketing.v1 import marketing_pb2 as mkt
from omo.orders.v1 import orders_pb2 as pb
from omo.warehouse.v1 import warehouse_pb2 as wh

from ..support import bad_request_fields, error_info, key


def place_request(world, lines, coupon_code="", consumer_id="consumer-1", attribution=None, idem=None):  # type: ignore[no-untyped-def]
    return pb.PlaceOrderRequest(
        idempotency_key=idem or key(), store_id=world.store.store_id, consumer_id=consumer_id,
        lines=[pb.OrderLineInput(sku_id=sku.sku_id, quantity=qty) for sku, qty in lines],
        coupon_code=coupon_code, attribution=attribution)


def available(clients, sku) -> int:  # type: ignore[no-untyped-def]
    levels = clients.warehouse.GetStock(wh.GetStockRequest(sku_id=sku.sku_id)).levels
    return sum(level.available for level in levels)


def issue_coupon(clients, world, consumer_id="consumer-1", face_fen=10_000) -> mkt.Coupon:  # type: ignore[no-untyped-def]
    return clients.marketing.IssueCoupon(mkt.IssueCouponRequest(
        idempotency_key=key(), brand_id=world.brand.brand_id, consumer_id=consumer_id, funder=mkt.FUNDER_BRAND,
        face_value_fen=face_fen, min_order_fen=0)).coupon


def refused(call, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call(request)
    return err.value


# -- placing ----------------------------------------------------------------------------------------------

def test_an_order_is_priced_at_the_unified_price_and_credited_to_the_store(clients, world):
    a = world.new_sku(retail_fen=599_900, supply_fen=480_000)
    b = world.new_sku(retail_fen=19_900, supply_fen=12_000)
    order = clients.orders.PlaceOrder(place_request(world, [(a, 1), (b, 3)])).order
    assert order.status == pb.ORDER_STATUS_PENDING_PAYMENT
    assert [(li.sku_id, li.quantity, li.unit_price_fen, li.unit_supply_price_fen, li.line_total_fen)
            for li in order.lines] == [(a.sku_id, 1, 599_900, 480_000, 599_900), (b.sku_id, 3, 19_900, 12_000, 59_700)]
    assert (order.subtotal_fen, order.discount_fen, order.payable_fen) == (659_600, 0, 659_600)
    assert (order.store_id, order.dealer_id, order.brand_id) == (
        world.store.store_id, world.dealer.dealer_id, world.brand.brand_id)
    assert (order.attribution.store_id, order.attribution.dealer_id) == (world.store.store_id, world.dealer.dealer_id)
    assert order.reservation_id
    assert clients.orders.GetOrder(pb.GetOrderRequest(order_id=order.order_id)).order == order


def test_a_retried_placement_returns_the_same_order_and_reserves_once(clients, world):
    sku = world.new_sku(stock=10)
    request = place_request(world, [(sku, 3)])
    first = clients.orders.PlaceOrder(request).order
    again = clients.orders.PlaceOrder(request).order
    assert again == first
    assert available(clients, sku) == 7


def test_the_same_key_for_a_different_request_is_refused(clients, world):
    sku = world.new_sku()
    request = place_request(world, [(sku, 1)])
    clients.orders.PlaceOrder(request)
    other = pb.PlaceOrderRequest()
    other.CopyFrom(request)
    other.lines[0].quantity = 2
    err = refused(clients.orders.PlaceOrder, other)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err) == ["idempotency_key"]


@pytest.mark.parametrize(("mutate", "fields"), [
    (lambda r: r.ClearField("lines"), ["lines"]),
    (lambda r: setattr(r.lines[0], "quantity", 0), ["lines[0].quantity"]),
    (lambda r: setattr(r, "store_id", ""), ["store_id"]),
    (lambda r: r.lines.append(r.lines[0]), ["lines[1].sku_id"]),
])
def test_bad_input_names_the_fields(clients, world, mutate, fields):
    # Input rules are checked before any other service is asked, so the SKU need not exist.
    request = place_request(world, [(cat.Sku(sku_id="sku_any"), 1)])
    mutate(request)
    err = refused(clients.orders.PlaceOrder, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err) == fields


def test_an_unknown_sku_is_not_found(clients, world):
    request = place_request(world, [])
    request.lines.add(sku_id="sku_does_not_exist", quantity=1)
    err = refused(clients.orders.PlaceOrder, request)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(err).metadata["id"] == "sku_does_not_exist"


def test_a_delisted_sku_cannot_be_ordered_and_nothing_is_reserved(clients, world):
    sku = world.new_sku(stock=5)
    clients.catalog.DelistSkuInStore(cat.DelistSkuInStoreRequest(
        idempotency_key=key(), store_id=world.store.store_id, sku_id=sku.sku_id))
    err = refused(clients.orders.PlaceOrder, place_request(world, [(sku, 1)]))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).metadata["sku_id"] == sku.sku_id
    assert available(clients, sku) == 5


def test_delisting_a_sku_already_ordered_stops_its_sales_at_once_and_listing_it_again_resumes_them(clients, world):
    """Orders quotes from its own copy of what stores list once it has quoted a store's SKUs, and follows
    catalog's listing events: a SKU delisted after it was ordered is refused for the next order (within the
    event's delivery), and sold again once listed again."""
    sku = world.new_sku(stock=10)
    clients.orders.PlaceOrder(place_request(world, [(sku, 1)]))
    clients.catalog.DelistSkuInStore(cat.DelistSkuInStoreRequest(
        idempotency_key=key(), store_id=world.store.store_id, sku_id=sku.sku_id))
    deadline = time.monotonic() + 2.0
    while True:
        try:
            clients.orders.PlaceOrder(place_request(world, [(sku, 1)]))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_info(err).metadata["sku_id"] == sku.sku_id
            break
        assert time.monotonic() < deadline, "a delisted SKU was still sold two seconds later"
        time.sleep(0.01)
    clients.catalog.ListSkuInStore(cat.ListSkuInStoreRequest(
        idempotency_key=key(), store_id=world.store.store_id, sku_id=sku.sku_id))
    again = clients.orders.PlaceOrder(place_request(world, [(sku, 1)])).order
    assert again.lines[0].unit_price_fen == sku.retail_price_fen


def test_not_enough_stock_is_resource_exhausted_naming_the_sku(clients, world):
    sku = world.new_sku(stock=2)
    err = refused(clients.orders.PlaceOrder, place_request(world, [(sku, 3)]))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(err).metadata["sku_id"] == sku.sku_id


def test_attribution_may_credit_a_sister_store_but_not_another_dealer(clients, world):
    sister = clients.catalog.CreateStore(cat.CreateStoreRequest(
        idempotency_key=key(), dealer_id=world.dealer.dealer_id, name="Jing'an", region="East",
        latitude=31.22, longitude=121.45)).store
    sku = world.new_sku()
    order = clients.orders.PlaceOrder(place_request(world, [(sku, 1)], attribution=pb.Attribution(
        scene="live-1208", store_id=sister.store_id, guide_id="guide-7"))).order
    assert (order.store_id, order.attribution.store_id, order.attribution.dealer_id, order.attribution.guide_id) == (
        world.store.store_id, sister.store_id, world.dealer.dealer_id, "guide-7")

    rival = clients.catalog.CreateDealer(cat.CreateDealerRequest(
        idempotency_key=key(), brand_id=world.brand.brand_id, name="Rival", merchant_id=f"mch-{key()[:10]}")).dealer
    rival_store = clients.catalog.CreateStore(cat.CreateStoreRequest(
        idempotency_key=key(), dealer_id=rival.dealer_id, name="Rival store", region="East", latitude=31,
        longitude=121)).store
    for attribution, field in [(pb.Attribution(store_id=rival_store.store_id), "attribution.store_id"),
                               (pb.Attribution(dealer_id=rival.dealer_id), "attribution.dealer_id")]:
        err = refused(clients.orders.PlaceOrder, place_request(world, [(sku, 1)], attribution=attribution))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_fields(err) == [field]


def test_two_buyers_racing_for_the_last_unit(clients, world):
    sku = world.new_sku(stock=1)
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def buy(consumer_id: str) -> None:
        request = place_request(world, [(sku, 1)], consumer_id=consumer_id)
        barrier.wait()
        try:
            outcomes.append(clients.orders.PlaceOrder(request).order)
        except grpc.RpcError as err:
            outcomes.append(err.code())

    threads = [threading.Thread(target=buy, args=(f"buyer-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    placed = [o for o in outcomes if isinstance(o, pb.Order)]
    assert len(placed) == 1
    assert [o for o in outcomes if not isinstance(o, pb.Order)] == [grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert available(clients, sku) == 0


# -- coupons ----------------------------------------------------------------------------------------------

def test_a_coupon_is_redeemed_once_and_a_second_order_gives_its_stock_back(clients, world):
    sku = world.new_sku(retail_fen=100_000, supply_fen=80_000, stock=10)
    coupon = issue_coupon(clients, world, face_fen=10_000)
    request = place_request(world, [(sku, 1)], coupon_code=coupon.code)
    first = clients.orders.PlaceOrder(request).order
    assert (first.subtotal_fen, first.discount_fen, first.payable_fen) == (100_000, 10_000, 90_000)
    assert (first.coupon.code, first.coupon.funder, first.coupon.discount_fen) == (
        coupon.code, pb.COUPON_FUNDER_BRAND, 10_000)
    assert clients.orders.PlaceOrder(request).order == first
    assert clients.marketing.GetCoupon(mkt.GetCouponRequest(code=coupon.code)).coupon.redeemed_order_id == \
        first.order_id
    assert available(clients, sku) == 9

    second = place_request(world, [(sku, 2)], coupon_code=coupon.code)
    err = refused(clients.orders.PlaceOrder, second)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert available(clients, sku) == 9
    # Retrying the refused placement answers the same, and does not hold stock again.
    assert refused(clients.orders.PlaceOrder, second).code() == grpc.StatusCode.FAILED_PRECONDITION
    assert available(clients, sku) == 9
    # Its key stays bound to the refused request: reusing it without the coupon is a different request.
    without_coupon = pb.PlaceOrderRequest()
    without_coupon.CopyFrom(second)
    without_coupon.coupon_code = ""
    err = refused(clients.orders.PlaceOrder, without_coupon)
    assert (err.code(), bad_request_fields(err)) == (grpc.StatusCode.INVALID_ARGUMENT, ["idempotency_key"])
    assert available(clients, sku) == 9


def test_an_unknown_coupon_is_not_found_and_releases_the_stock(clients, world):
    sku = world.new_sku(stock=4)
    err = refused(clients.orders.PlaceOrder, place_request(world, [(sku, 1)], coupon_code="NO-SUCH-COUPON"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert available(clients, sku) == 4


# -- payments ---------------------------------------------------------------------------------------------

def test_a_repeated_payment_notification_has_no_second_effect(clients, world):
    order = clients.orders.PlaceOrder(place_request(world, [(world.new_sku(), 2)])).order
    pay = pb.RecordPaymentRequest(provider_txn_id=f"wx-{key()}", order_id=order.order_id,
                                  amount_fen=order.payable_fen)
    paid = clients.orders.RecordPayment(pay).order
    assert paid.status == pb.ORDER_STATUS_PAID
    assert paid.payment_txn_id == pay.provider_txn_id
    again = clients.orders.RecordPayment(pay).order
    assert again.payment_txn_id == paid.payment_txn_id
    assert again.paid_at == paid.paid_at


def test_a_wrong_amount_is_refused_naming_amount_fen(clients, world):
    order = clients.orders.PlaceOrder(place_request(world, [(world.new_sku(), 1)])).order
    err = refused(clients.orders.RecordPayment, pb.RecordPaymentRequest(
        provider_txn_id=f"wx-{key()}", order_id=order.order_id, amount_fen=order.payable_fen - 1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err) == ["amount_fen"]
    assert clients.orders.GetOrder(pb.GetOrderRequest(order_id=order.order_id)).order.status == \
        pb.ORDER_STATUS_PENDING_PAYMENT


def test_an_order_is_paid_once(clients, world):
    order = clients.orders.PlaceOrder(place_request(world, [(world.new_sku(), 1)])).order
    first_txn = f"wx-{key()}"
    clients.orders.RecordPayment(pb.RecordPaymentRequest(
        provider_txn_id=first_txn, order_id=order.order_id, amount_fen=order.payable_fen))
    err = refused(clients.orders.RecordPayment, pb.RecordPaymentRequest(
        provider_txn_id=f"wx-{key()}", order_id=order.order_id, amount_fen=order.payable_fen))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert clients.orders.GetOrder(pb.GetOrderRequest(order_id=order.order_id)).order.payment_txn_id == first_txn


def test_one_transaction_cannot_pay_two_orders(clients, world):
    sku = world.new_sku()
    first, second = (clients.orders.PlaceOrder(place_request(world, [(sku, 1)])).order for _ in range(2))
    txn = f"wx-{key()}"
    clients.orders.RecordPayment(pb.RecordPaymentRequest(
        provider_txn_id=txn, order_id=first.order_id, amount_fen=first.payable_fen))
    err = refused(clients.orders.RecordPayment, pb.RecordPaymentRequest(
        provider_txn_id=txn, order_id=second.order_id, amount_fen=second.payable_fen))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err) == ["provider_txn_id"]


def test_payments_arriving_together_are_each_judged_on_their_own(clients, world):
    """Concurrent notifications share one statement in the orders service: the two that reuse one
    transaction id still pay one order between them, a repeated one still has no second effect, and every
    other order is paid."""
    sku = world.new_sku(stock=40)
    orders = [clients.orders.PlaceOrder(place_request(world, [(sku, 1)])).order for _ in range(24)]
    shared = f"wx-shared-{key()}"
    calls = [pb.RecordPaymentRequest(provider_txn_id=shared if i < 2 else f"wx-{key()}", order_id=o.order_id,
                                     amount_fen=o.payable_fen) for i, o in enumerate(orders)]
    calls.append(calls[5])  # the provider repeats a notification

    def notify(call: pb.RecordPaymentRequest) -> grpc.StatusCode:
        try:
            clients.orders.RecordPayment(call)
            return grpc.StatusCode.OK
        except grpc.RpcError as err:
            return err.code()

    with ThreadPoolExecutor(len(calls)) as pool:
        outcomes = list(pool.map(notify, calls))
    assert sorted(outcomes[:2], key=str) == sorted([grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT], key=str)
    assert set(outcomes[2:]) == {grpc.StatusCode.OK}
    statuses = [clients.orders.GetOrder(pb.GetOrderRequest(order_id=o.order_id)).order for o in orders]
    assert sum(o.payment_txn_id == shared for o in statuses) == 1
    assert all(o.payment_txn_id == c.provider_txn_id for o, c in zip(statuses[2:], calls[2:], strict=False))


def test_retries_of_one_placement_arriving_together_make_one_order(clients, world):
    sku = world.new_sku(stock=10)
    request = place_request(world, [(sku, 1)])
    with ThreadPoolExecutor(8) as pool:
        placed = list(pool.map(lambda _: clients.orders.PlaceOrder(request).order, range(8)))
    assert len({o.order_id for o in placed}) == 1
    assert available(clients, sku) == 9


def test_paying_an_unknown_order_is_not_found(clients):
    err = refused(clients.orders.RecordPayment, pb.RecordPaymentRequest(
        provider_txn_id=f"wx-{key()}", order_id="ord_unknown", amount_fen=100))
    assert err.code() == grpc.StatusCode.NOT_FOUND


# -- reading ----------------------------------------------------------------------------------------------

def test_a_dealer_reads_only_its_own_orders(clients, world):
    order = clients.orders.PlaceOrder(place_request(world, [(world.new_sku(), 1)])).order
    request = pb.GetOrderRequest(order_id=order.order_id)
    own = clients.orders.GetOrder(request, metadata=[("x-omo-principal", f"dealer:{world.dealer.dealer_id}")])
    assert own.order.order_id == order.order_id
    with pytest.raises(grpc.RpcError) as err:
        clients.orders.GetOrder(request, metadata=[("x-omo-principal", "dealer:dlr_someone_else")])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
