"""A paid order whose goods were not handed over yet (waiting at the counter, or at a hand-fulfilment
location before it ships) is cancelled with its whole payment refunded, its shipments cancelled, its held
units and its coupon given back; refunds after payment, money only until the goods leave."""

from __future__ import annotations

import threading
from datetime import timedelta

import grpc
from omo.marketing.v1 import marketing_pb2 as mkt
from omo.orders.v1 import events_pb2 as orders_events
from omo.orders.v1 import orders_pb2 as pb
from omo.warehouse.v1 import warehouse_pb2 as wh

from ..conftest import PICKUP_WINDOW_S
from ..support import bad_request_fields, error_info, key
from .test_flow import eventually
from .test_order_lifecycle import cancel, get, last_on, pay, refund, reservation
from .test_orders import issue_coupon, place_request, refused
from .test_routing import SHANGHAI, place, stock
from .test_warehouse import assert_ledger_matches, level


def pickup_order(clients, world, sku, quantity: int, coupon_code: str = "") -> tuple[pb.Order, wh.Warehouse]:  # type: ignore[no-untyped-def]
    counter = place(clients, wh.WAREHOUSE_KIND_STORE, 31.20, 121.44, store_id=world.store.store_id)
    stock(clients, counter, sku.sku_id, 3)
    request = place_request(world, [(sku, quantity)], coupon_code=coupon_code)
    request.fulfilment_mode = pb.FULFILMENT_MODE_STORE_PICKUP
    request.deliver_to.CopyFrom(pb.GeoPoint(latitude=SHANGHAI.latitude, longitude=SHANGHAI.longitude))
    order = clients.orders.PlaceOrder(request).order
    pay(clients, order)
    eventually(lambda: get(clients, order.order_id), lambda o: o.pickup_code, "the pickup code")
    return order, counter


def shipments(clients, order_id: str) -> list[wh.Shipment]:
    return list(clients.warehouse.ListShipments(wh.ListShipmentsRequest(order_id=order_id)).shipments)


def test_a_paid_pickup_waiting_at_the_counter_is_cancelled_and_refunded_in_full(stack, clients, world):
    sku = world.new_sku(stock=0, retail_fen=30_000, supply_fen=20_000)
    coupon = issue_coupon(clients, world, face_fen=5_000)
    order, counter = pickup_order(clients, world, sku, 2, coupon.code)
    assert order.payable_fen == 55_000

    k = key()
    cancelled = cancel(clients, order.order_id, k)
    assert (cancelled.status, cancelled.refunded_fen) == (pb.ORDER_STATUS_CANCELLED, order.payable_fen)
    assert cancelled.lines[0].refunded_quantity == 2 and cancelled.HasField("cancelled_at")
    assert cancel(clients, order.order_id, k) == cancelled  # a retry answers the same
    refunded = eventually(lambda: last_on(stack, "orders.order.refunded", orders_events.OrderRefunded),
                          lambda e: e.refund.order_id == order.order_id, "the refund event")
    assert (refunded.refund.provider_refund_id, refunded.refund.amount_fen, refunded.refund.goods_returned) == (
        f"cancel-{order.order_id}", order.payable_fen, False)
    [waiting] = shipments(clients, order.order_id)
    assert waiting.status == wh.SHIPMENT_STATUS_CANCELLED
    assert reservation(clients, order.reservation_id).status == wh.RESERVATION_STATUS_RELEASED
    lv = level(clients, sku.sku_id, counter.warehouse_id)
    assert (lv.on_hand, lv.reserved) == (3, 0)  # back on the shelf, never left
    assert_ledger_matches(clients, counter.warehouse_id, sku.sku_id)
    # The coupon is the consumer's again, and the code at the counter opens nothing.
    back = eventually(lambda: clients.marketing.GetCoupon(mkt.GetCouponRequest(code=coupon.code)).coupon,
                      lambda c: not c.redeemed_order_id, "the coupon to be given back")
    assert back.status == mkt.COUPON_STATUS_ISSUED
    reused = clients.orders.PlaceOrder(place_request(world, [(world.new_sku(stock=1), 1)],
                                                     coupon_code=coupon.code)).order
    assert reused.discount_fen == 5_000
    err = refused(clients.warehouse.CollectPickup, wh.CollectPickupRequest(
        idempotency_key=key(), shipment_id=waiting.shipment_id, pickup_code=get(clients, order.order_id).pickup_code))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    err = refused(lambda o: refund(clients, o), order.order_id)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_hand_fulfilled_order_is_cancelled_until_it_ships(clients, world):
    sku = world.new_sku(stock=0)
    by_hand = clients.warehouse.CreateWarehouse(wh.CreateWarehouseRequest(
        idempotency_key=key(), code=f"HC-{key()[:8]}", name="hand-packed", kind=wh.WAREHOUSE_KIND_CLOUD,
        region="East", latitude=31.49, longitude=120.31, manual_fulfilment=True)).warehouse
    stock(clients, by_hand, sku.sku_id, 4)
    orders = [clients.orders.PlaceOrder(place_request(world, [(sku, 2)])).order for _ in range(2)]
    for order in orders:
        pay(clients, order)
    created = [eventually(lambda o=o: shipments(clients, o.order_id), lambda s: len(s) == 1, "the shipment")[0]
               for o in orders]
    clients.warehouse.PickShipment(wh.PickShipmentRequest(idempotency_key=key(), shipment_id=created[0].shipment_id))
    assert cancel(clients, orders[0].order_id).status == pb.ORDER_STATUS_CANCELLED  # picked, not shipped yet
    err = refused(clients.warehouse.PackShipment, wh.PackShipmentRequest(
        idempotency_key=key(), shipment_id=created[0].shipment_id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION

    clients.warehouse.PickShipment(wh.PickShipmentRequest(idempotency_key=key(), shipment_id=created[1].shipment_id))
    clients.warehouse.PackShipment(wh.PackShipmentRequest(idempotency_key=key(), shipment_id=created[1].shipment_id))
    clients.warehouse.ShipShipment(wh.ShipShipmentRequest(idempotency_key=key(), shipment_id=created[1].shipment_id,
                                                          carrier="SF", tracking_number="SF1"))
    err = refused(lambda o: cancel(clients, o), orders[1].order_id)
    assert (err.code(), error_info(err).reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HANDED_OVER")
    assert get(clients, orders[1].order_id).status != pb.ORDER_STATUS_CANCELLED
    lv = level(clients, sku.sku_id, by_hand.warehouse_id)
    assert (lv.on_hand, lv.reserved) == (2, 0)  # one order's units left, the cancelled one's are back
    assert_ledger_matches(clients, by_hand.warehouse_id, sku.sku_id)


def test_a_paid_order_is_refunded_money_only_before_its_goods_leave(clients, world):
    sku = world.new_sku(stock=0, retail_fen=10_000, supply_fen=7_000)
    order, counter = pickup_order(clients, world, sku, 2)
    err = refused(lambda o: refund(clients, o, (sku.sku_id, 1), returned=True), order.order_id)
    assert (err.code(), bad_request_fields(err)) == (grpc.StatusCode.INVALID_ARGUMENT, ["goods_returned"])
    partly = refund(clients, order.order_id, (sku.sku_id, 1)).order
    assert (partly.status, partly.refunded_fen) == (pb.ORDER_STATUS_PARTIALLY_REFUNDED, 10_000)
    # The consumer still collects what was bought; the refund stands.
    [waiting] = shipments(clients, order.order_id)
    clients.warehouse.CollectPickup(wh.CollectPickupRequest(
        idempotency_key=key(), shipment_id=waiting.shipment_id, pickup_code=get(clients, order.order_id).pickup_code))
    collected = eventually(lambda: get(clients, order.order_id), lambda o: o.HasField("dispatched_at"),
                           "the collection")
    assert (collected.status, collected.refunded_fen) == (pb.ORDER_STATUS_PARTIALLY_REFUNDED, 10_000)
    # Handed over now: cancelling is refused, a return is taken.
    err = refused(lambda o: cancel(clients, o), order.order_id)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    back = refund(clients, order.order_id, (sku.sku_id, 1), returned=True).order
    assert (back.status, back.refunded_fen) == (pb.ORDER_STATUS_REFUNDED, order.payable_fen)
    eventually(lambda: level(clients, sku.sku_id, counter.warehouse_id).on_hand, lambda n: n == 2,
               "the returned unit back on the shelf")
    assert_ledger_matches(clients, counter.warehouse_id, sku.sku_id)


# -- the pickup code ----------------------------------------------------------------------------------------
def test_a_pickup_is_locked_after_five_wrong_codes_even_guessed_at_once(clients, world):
    sku = world.new_sku(stock=0)
    order, counter = pickup_order(clients, world, sku, 1)
    code = get(clients, order.order_id).pickup_code
    [waiting] = shipments(clients, order.order_id)
    wrong = [f"{(int(code) + i) % 1_000_000:06d}" for i in range(1, 13)]
    answers: list[grpc.StatusCode] = []

    def guess(attempt: str) -> None:
        try:
            clients.warehouse.CollectPickup(wh.CollectPickupRequest(
                idempotency_key=key(), shipment_id=waiting.shipment_id, pickup_code=attempt))
        except grpc.RpcError as err:
            answers.append(err.code())

    threads = [threading.Thread(target=guess, args=(w,)) for w in wrong]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers, key=str) == sorted([grpc.StatusCode.INVALID_ARGUMENT] * 5 +
                                              [grpc.StatusCode.FAILED_PRECONDITION] * 7, key=str)
    err = refused(clients.warehouse.CollectPickup, wh.CollectPickupRequest(
        idempotency_key=key(), shipment_id=waiting.shipment_id, pickup_code=code))
    assert (err.code(), error_info(err).reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PICKUP_LOCKED")
    lv = level(clients, sku.sku_id, counter.warehouse_id)
    assert (lv.on_hand, lv.reserved) == (3, 1)  # still set aside
    # Locked is not lost: the paid order can still be cancelled and refunded.
    assert cancel(clients, order.order_id).status == pb.ORDER_STATUS_CANCELLED


def test_a_pickup_never_collected_expires_cancelled_and_refunded(stack, clients, world):
    sku = world.new_sku(stock=0, retail_fen=20_000, supply_fen=15_000)
    coupon = issue_coupon(clients, world, face_fen=2_000)
    order, counter = pickup_order(clients, world, sku, 1, coupon.code)
    expired = eventually(lambda: get(clients, order.order_id), lambda o: o.status == pb.ORDER_STATUS_CANCELLED,
                         "the uncollected pickup to expire", timeout_s=PICKUP_WINDOW_S + 20)
    assert (expired.cancel_reason, expired.refunded_fen) == ("pickup not collected in time", 18_000)
    ready_at = shipments(clients, order.order_id)[0].ready_at.ToDatetime()
    assert expired.cancelled_at.ToDatetime() - ready_at >= timedelta(seconds=PICKUP_WINDOW_S)
    [waiting] = shipments(clients, order.order_id)
    assert waiting.status == wh.SHIPMENT_STATUS_CANCELLED
    lv = level(clients, sku.sku_id, counter.warehouse_id)
    assert (lv.on_hand, lv.reserved) == (3, 0)
    assert_ledger_matches(clients, counter.warehouse_id, sku.sku_id)
    refunded = eventually(lambda: last_on(stack, "orders.order.refunded", orders_events.OrderRefunded),
                          lambda e: e.refund.order_id == order.order_id, "the refund event")
    assert refunded.refund.amount_fen == 18_000
    eventually(lambda: clients.marketing.GetCoupon(mkt.GetCouponRequest(code=coupon.code)).coupon,
               lambda c: not c.redeemed_order_id, "the coupon to be given back")
