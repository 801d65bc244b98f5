"""The order after placing: cancelled before payment (stock and coupon come back), cancelled by the sweeper
when unpaid too long, refunded after dispatch by line and quantity with exact amounts, returned goods back
in stock."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import nats
import pytest
from omo.marketing.v1 import marketing_pb2 as mkt
from omo.orders.v1 import events_pb2 as orders_events
from omo.orders.v1 import orders_pb2 as pb
from omo.warehouse.v1 import warehouse_pb2 as wh

from ..conftest import AFTER_SALES_WINDOW_S, PAYMENT_WINDOW_S
from ..support import bad_request_fields, error_info, key
from .test_flow import eventually
from .test_orders import available, issue_coupon, place_request, refused
from .test_warehouse import assert_ledger_matches, ledger, level


def get(clients, order_id: str) -> pb.Order:
    return clients.orders.GetOrder(pb.GetOrderRequest(order_id=order_id)).order


def cancel(clients, order_id: str, k: str | None = None) -> pb.Order:
    return clients.orders.CancelOrder(pb.CancelOrderRequest(
        idempotency_key=k or key(), order_id=order_id, reason="changed my mind")).order


def reservation(clients, reservation_id: str) -> wh.Reservation:
    return clients.warehouse.GetReservation(wh.GetReservationRequest(reservation_id=reservation_id)).reservation


def pay(clients, order: pb.Order) -> pb.Order:
    return clients.orders.RecordPayment(pb.RecordPaymentRequest(
        provider_txn_id=f"wx-{key()}", order_id=order.order_id, amount_fen=order.payable_fen)).order


def dispatched(clients, order_id: str) -> pb.Order:
    return eventually(lambda: get(clients, order_id), lambda o: o.status == pb.ORDER_STATUS_DISPATCHED,
                      "the order to be dispatched")


def refund(clients, order_id: str, *lines: tuple[str, int], rid: str | None = None,
           returned: bool = False) -> pb.RecordRefundResponse:
    return clients.orders.RecordRefund(pb.RecordRefundRequest(
        provider_refund_id=rid or f"rf-{key()}", order_id=order_id, goods_returned=returned,
        lines=[pb.RefundLineInput(sku_id=s, quantity=q) for s, q in lines]))


def last_on(stack, subject: str, message_type):  # type: ignore[no-untyped-def]
    """The last event on the subject (an empty message while there is none)."""
    async def get_last() -> bytes:
        nc = await nats.connect(stack.nats_url)
        try:
            return (await nc.jetstream().get_last_msg("ORDERS", subject)).data
        except nats.js.errors.NotFoundError:
            return b""
        finally:
            await nc.close()

    return message_type.FromString(asyncio.run(get_last()))


def last_refunded(stack) -> orders_events.OrderRefunded:
    return last_on(stack, "orders.order.refunded", orders_events.OrderRefunded)


# -- cancelling ---------------------------------------------------------------------------------------------
def test_cancelling_an_unpaid_order_gives_back_its_stock_and_coupon(clients, world):
    sku = world.new_sku(retail_fen=100_000, supply_fen=80_000, stock=5)
    coupon = issue_coupon(clients, world, face_fen=10_000)
    order = clients.orders.PlaceOrder(place_request(world, [(sku, 2)], coupon_code=coupon.code)).order
    assert available(clients, sku) == 3

    k = key()
    cancelled = cancel(clients, order.order_id, k)
    assert (cancelled.status, cancelled.cancel_reason) == (pb.ORDER_STATUS_CANCELLED, "changed my mind")
    assert cancelled.HasField("cancelled_at")
    assert cancel(clients, order.order_id, k) == cancelled  # a retry answers the same
    assert get(clients, order.order_id) == cancelled

    eventually(lambda: reservation(clients, order.reservation_id),
               lambda r: r.status == wh.RESERVATION_STATUS_RELEASED, "the hold to be released")
    assert available(clients, sku) == 5
    assert_ledger_matches(clients, world.warehouse.warehouse_id, sku.sku_id)
    back = eventually(lambda: clients.marketing.GetCoupon(mkt.GetCouponRequest(code=coupon.code)).coupon,
                      lambda c: not c.redeemed_order_id, "the coupon to be given back")
    assert back.status == mkt.COUPON_STATUS_ISSUED
    # ... and it is good for another order.
    again = clients.orders.PlaceOrder(place_request(world, [(sku, 1)], coupon_code=coupon.code)).order
    assert again.discount_fen == 10_000

    err = refused(lambda r: cancel(clients, r), order.order_id)
    assert (err.code(), error_info(err).reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ILLEGAL_ORDER_TRANSITION")
    err = refused(lambda o: pay(clients, o), order)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert get(clients, order.order_id).status == pb.ORDER_STATUS_CANCELLED


def test_a_paid_order_cannot_be_cancelled(clients, world):
    order = clients.orders.PlaceOrder(place_request(world, [(world.new_sku(), 1)])).order
    pay(clients, order)
    err = refused(lambda o: cancel(clients, o), order.order_id)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert get(clients, order.order_id).status != pb.ORDER_STATUS_CANCELLED


def test_cancelling_an_unknown_order_is_not_found_and_another_dealer_is_denied(clients, world):
    err = refused(lambda o: cancel(clients, o), "ord_nope")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    order = clients.orders.PlaceOrder(place_request(world, [(world.new_sku(), 1)])).order
    with pytest.raises(grpc.RpcError) as denied:
        clients.orders.CancelOrder(pb.CancelOrderRequest(idempotency_key=key(), order_id=order.order_id, reason="x"),
                                   metadata=[("x-omo-principal", "dealer:dlr_other")])
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert get(clients, order.order_id).status == pb.ORDER_STATUS_PENDING_PAYMENT


def test_an_order_left_unpaid_is_cancelled_by_the_sweeper(clients, world):
    sku = world.new_sku(stock=3)
    order = clients.orders.PlaceOrder(place_request(world, [(sku, 3)])).order
    assert available(clients, sku) == 0
    swept = eventually(lambda: get(clients, order.order_id), lambda o: o.status == pb.ORDER_STATUS_CANCELLED,
                       "the unpaid order to be cancelled", timeout_s=PAYMENT_WINDOW_S + 20)
    assert swept.cancel_reason == "payment window expired"
    assert swept.cancelled_at.ToDatetime() - order.created_at.ToDatetime() >= timedelta(seconds=PAYMENT_WINDOW_S)
    eventually(lambda: available(clients, sku), lambda n: n == 3, "the stock to come back")
    err = refused(lambda o: pay(clients, o), order)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


# -- refunds ------------------------------------------------------------------------------------------------
def test_partial_and_full_refunds_pay_back_exactly_what_was_paid(stack, clients, world):
    a = world.new_sku(retail_fen=33_333, supply_fen=20_000, stock=10)
    b = world.new_sku(retail_fen=10_001, supply_fen=7_000, stock=10)
    coupon = issue_coupon(clients, world, face_fen=10_007)
    order = clients.orders.PlaceOrder(place_request(world, [(a, 3), (b, 2)], coupon_code=coupon.code)).order
    assert order.discount_fen == 10_007
    pay(clients, order)
    dispatched(clients, order.order_id)

    rid = f"rf-{key()}"
    first = refund(clients, order.order_id, (a.sku_id, 1), rid=rid)
    [line] = first.refund.lines
    assert (line.sku_id, line.quantity, line.gross_fen) == (a.sku_id, 1, 33_333)
    assert line.amount_fen == line.gross_fen - line.discount_fen and 0 < line.discount_fen < 10_007
    assert line.supply_fen == 20_000
    assert first.order.status == pb.ORDER_STATUS_PARTIALLY_REFUNDED
    assert first.order.refunded_fen == first.refund.amount_fen == line.amount_fen
    assert [(li.refunded_quantity, li.refunded_fen) for li in first.order.lines] == [(1, line.amount_fen), (0, 0)]
    # The provider repeats the notification: same answer, no second refund.
    assert refund(clients, order.order_id, (a.sku_id, 1), rid=rid).refund == first.refund
    assert get(clients, order.order_id).refunded_fen == line.amount_fen
    err = refused(lambda r: refund(clients, order.order_id, (a.sku_id, 2), rid=r), rid)
    assert (err.code(), bad_request_fields(err)) == (grpc.StatusCode.INVALID_ARGUMENT, ["provider_refund_id"])

    err = refused(lambda o: refund(clients, o, (a.sku_id, 3)), order.order_id)
    assert (err.code(), bad_request_fields(err)) == (grpc.StatusCode.INVALID_ARGUMENT, ["lines[0].quantity"])
    err = refused(lambda o: refund(clients, o, ("sku_other", 1)), order.order_id)
    assert (err.code(), bad_request_fields(err)) == (grpc.StatusCode.INVALID_ARGUMENT, ["lines[0].sku_id"])

    rest = refund(clients, order.order_id)  # no lines: everything not refunded yet
    assert rest.order.status == pb.ORDER_STATUS_REFUNDED
    assert sorted((li.sku_id, li.quantity) for li in rest.refund.lines) == sorted([(a.sku_id, 2), (b.sku_id, 2)])
    assert first.refund.amount_fen + rest.refund.amount_fen == order.payable_fen == rest.order.refunded_fen
    assert sum(li.discount_fen for li in [*first.refund.lines, *rest.refund.lines]) == order.discount_fen
    event = eventually(lambda: last_refunded(stack), lambda e: e.refund.provider_refund_id ==
                       rest.refund.provider_refund_id, "OrderRefunded to be published")
    assert event.refund == rest.refund
    assert event.order == rest.order
    assert event.payment_txn_id == get(clients, order.order_id).payment_txn_id

    err = refused(lambda o: refund(clients, o), order.order_id)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_refunds_before_dispatch_are_refused(clients, world):
    order = clients.orders.PlaceOrder(place_request(world, [(world.new_sku(), 1)])).order
    err = refused(lambda o: refund(clients, o), order.order_id)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert get(clients, order.order_id).status == pb.ORDER_STATUS_PENDING_PAYMENT


def test_returned_goods_go_back_into_the_stock_they_shipped_from(clients, world):
    sku = world.new_sku(stock=5)
    w = world.warehouse.warehouse_id
    order = clients.orders.PlaceOrder(place_request(world, [(sku, 3)])).order
    pay(clients, order)
    dispatched(clients, order.order_id)
    assert level(clients, sku.sku_id, w).on_hand == 2

    money_only = refund(clients, order.order_id, (sku.sku_id, 1))
    returned = refund(clients, order.order_id, (sku.sku_id, 2), returned=True)
    eventually(lambda: level(clients, sku.sku_id, w).on_hand, lambda n: n == 4, "the returned goods in stock")
    returns = [m for m in ledger(clients, w, sku.sku_id) if m.reason == wh.MOVEMENT_REASON_RETURN]
    assert [(m.on_hand_delta, m.reference_id) for m in returns] == [(2, returned.refund.provider_refund_id)]
    assert money_only.refund.provider_refund_id not in {m.reference_id for m in returns}
    assert_ledger_matches(clients, w, sku.sku_id)


# -- delivery -----------------------------------------------------------------------------------------------
def deliver(clients, shipment_id: str, k: str | None = None) -> wh.Shipment:
    return clients.warehouse.RecordDelivery(wh.RecordDeliveryRequest(
        idempotency_key=k or key(), shipment_id=shipment_id)).shipment


def test_a_delivered_order_follows_its_shipment_and_can_still_be_refunded(clients, world):
    sku = world.new_sku(stock=5)
    order = clients.orders.PlaceOrder(place_request(world, [(sku, 2)])).order
    pay(clients, order)
    shipment_id = dispatched(clients, order.order_id).shipment_id
    k = key()
    done = deliver(clients, shipment_id, k)
    assert done.status == wh.SHIPMENT_STATUS_DELIVERED and done.HasField("delivered_at")
    assert deliver(clients, shipment_id, k) == done
    err = refused(lambda s: deliver(clients, s), shipment_id)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    delivered = eventually(lambda: get(clients, order.order_id), lambda o: o.status == pb.ORDER_STATUS_DELIVERED,
                           "the order to be delivered")
    assert delivered.delivered_at == done.delivered_at
    after = refund(clients, order.order_id, (sku.sku_id, 1))
    assert after.order.status == pb.ORDER_STATUS_PARTIALLY_REFUNDED
    assert after.order.delivered_at == done.delivered_at


def test_a_delivery_after_a_full_refund_is_recorded_without_undoing_it(clients, world):
    order = clients.orders.PlaceOrder(place_request(world, [(world.new_sku(stock=2), 1)])).order
    pay(clients, order)
    shipment_id = dispatched(clients, order.order_id).shipment_id
    assert refund(clients, order.order_id).order.status == pb.ORDER_STATUS_REFUNDED
    done = deliver(clients, shipment_id)
    got = eventually(lambda: get(clients, order.order_id), lambda o: o.HasField("delivered_at"),
                     "the delivery to be recorded")
    assert (got.status, got.delivered_at) == (pb.ORDER_STATUS_REFUNDED, done.delivered_at)


def test_delivering_an_unknown_shipment_is_not_found(clients):
    err = refused(lambda s: deliver(clients, s), "shp_nope")
    assert err.code() == grpc.StatusCode.NOT_FOUND


# -- hand fulfilment ----------------------------------------------------------------------------------------
def test_a_location_fulfilling_by_hand_picks_packs_and_ships_each_paid_order(clients, world):
    sku = world.new_sku(stock=0)
    by_hand = clients.warehouse.CreateWarehouse(wh.CreateWarehouseRequest(
        idempotency_key=key(), code=f"HW-{key()[:8]}", name="Wuxi hand-packed warehouse",
        kind=wh.WAREHOUSE_KIND_CLOUD, region="East", latitude=31.49, longitude=120.31,
        manual_fulfilment=True)).warehouse
    assert by_hand.manual_fulfilment
    clients.warehouse.ReceiveStock(wh.ReceiveStockRequest(
        idempotency_key=key(), warehouse_id=by_hand.warehouse_id, sku_id=sku.sku_id, quantity=4))
    order = clients.orders.PlaceOrder(place_request(world, [(sku, 3)])).order
    pay(clients, order)
    [created] = eventually(lambda: clients.warehouse.ListShipments(
        wh.ListShipmentsRequest(order_id=order.order_id)).shipments, lambda s: len(s) == 1, "the shipment")
    assert (created.status, created.warehouse_id) == (wh.SHIPMENT_STATUS_CREATED, by_hand.warehouse_id)
    assert reservation(clients, order.reservation_id).status == wh.RESERVATION_STATUS_CONFIRMED
    assert get(clients, order.order_id).status == pb.ORDER_STATUS_PAID
    sid = created.shipment_id

    def step(call, **extra):  # type: ignore[no-untyped-def]
        return call({"idempotency_key": key(), "shipment_id": sid, **extra})

    err = refused(lambda r: clients.warehouse.PackShipment(wh.PackShipmentRequest(**r)),
                  {"idempotency_key": key(), "shipment_id": sid})
    assert (err.code(), error_info(err).reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SHIPMENT_CREATED")
    k = key()
    picked = clients.warehouse.PickShipment(wh.PickShipmentRequest(idempotency_key=k, shipment_id=sid)).shipment
    assert picked.status == wh.SHIPMENT_STATUS_PICKED
    assert clients.warehouse.PickShipment(wh.PickShipmentRequest(idempotency_key=k, shipment_id=sid)).shipment == \
        picked
    assert step(lambda r: clients.warehouse.PackShipment(wh.PackShipmentRequest(**r))).shipment.status == \
        wh.SHIPMENT_STATUS_PACKED
    lv = level(clients, sku.sku_id, by_hand.warehouse_id)
    assert (lv.on_hand, lv.reserved) == (4, 3)  # still in the building, held
    shipped = step(lambda r: clients.warehouse.ShipShipment(wh.ShipShipmentRequest(**r)),
                   carrier="SF Express", tracking_number="SF1234567890").shipment
    assert (shipped.status, shipped.carrier, shipped.tracking_number) == (
        wh.SHIPMENT_STATUS_DISPATCHED, "SF Express", "SF1234567890")
    lv = level(clients, sku.sku_id, by_hand.warehouse_id)
    assert (lv.on_hand, lv.reserved) == (1, 0)
    assert_ledger_matches(clients, by_hand.warehouse_id, sku.sku_id)
    assert dispatched(clients, order.order_id).shipment_id == sid
    err = refused(lambda r: clients.warehouse.ShipShipment(wh.ShipShipmentRequest(**r)),
                  {"idempotency_key": key(), "shipment_id": sid, "carrier": "SF", "tracking_number": "x"})
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert deliver(clients, sid).status == wh.SHIPMENT_STATUS_DELIVERED


def test_store_stock_is_not_fulfilled_by_hand(clients, world):
    err = refused(clients.warehouse.CreateWarehouse, wh.CreateWarehouseRequest(
        idempotency_key=key(), code=f"HS-{key()[:8]}", name="x", kind=wh.WAREHOUSE_KIND_STORE, region="East",
        latitude=31, longitude=121, store_id=world.store.store_id, manual_fulfilment=True))
    assert (err.code(), bad_request_fields(err)) == (grpc.StatusCode.INVALID_ARGUMENT, ["manual_fulfilment"])


# -- completion ---------------------------------------------------------------------------------------------
def test_a_delivered_order_completes_when_its_after_sales_window_closes(stack, clients, world):
    sku = world.new_sku(stock=6)
    order = clients.orders.PlaceOrder(place_request(world, [(sku, 2)])).order
    on_its_way = clients.orders.PlaceOrder(place_request(world, [(sku, 1)])).order
    pay(clients, order)
    pay(clients, on_its_way)
    done = deliver(clients, dispatched(clients, order.order_id).shipment_id)
    dispatched(clients, on_its_way.order_id)
    assert refund(clients, order.order_id, (sku.sku_id, 1)).order.status == pb.ORDER_STATUS_PARTIALLY_REFUNDED
    completed = eventually(lambda: get(clients, order.order_id), lambda o: o.status == pb.ORDER_STATUS_COMPLETED,
                           "the order to complete", timeout_s=AFTER_SALES_WINDOW_S + 20)
    assert completed.completed_at.ToDatetime() - done.delivered_at.ToDatetime() >= \
        timedelta(seconds=AFTER_SALES_WINDOW_S)
    assert completed.refunded_fen == refund_total(completed)
    announced = eventually(lambda: last_on(stack, "orders.order.completed", orders_events.OrderCompleted),
                           lambda e: e.order_id == order.order_id, "the completion event")
    assert (announced.completed_at, announced.dealer_id) == (completed.completed_at, world.dealer.dealer_id)
    err = refused(lambda o: refund(clients, o, (sku.sku_id, 1)), order.order_id)
    assert (err.code(), error_info(err).reason) == (grpc.StatusCode.FAILED_PRECONDITION, "AFTER_SALES_CLOSED")
    assert get(clients, order.order_id) == completed
    # Never delivered: still in after-sales, however long it has been.
    assert get(clients, on_its_way.order_id).status == pb.ORDER_STATUS_DISPATCHED


def refund_total(order: pb.Order) -> int:
    return sum(line.refunded_fen for line in order.lines)


def test_a_cancelled_order_cannot_be_paid_and_a_paid_one_cannot_be_paid_by_another_transaction(clients, world):
    """RecordPayment judges the order as it is in the database, even right after placing it (when the order
    service still holds the placed order in memory)."""
    sku = world.new_sku(stock=5)
    order = clients.orders.PlaceOrder(place_request(world, [(sku, 1)])).order
    cancel(clients, order.order_id)
    with pytest.raises(grpc.RpcError) as err:
        pay(clients, order)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert get(clients, order.order_id).status == pb.ORDER_STATUS_CANCELLED

    second = clients.orders.PlaceOrder(place_request(world, [(sku, 1)])).order
    txn = f"wx-{key()}"
    paid = clients.orders.RecordPayment(pb.RecordPaymentRequest(
        provider_txn_id=txn, order_id=second.order_id, amount_fen=second.payable_fen)).order
    again = clients.orders.RecordPayment(pb.RecordPaymentRequest(
        provider_txn_id=txn, order_id=second.order_id, amount_fen=second.payable_fen)).order
    assert (paid.status, again.paid_at) == (pb.ORDER_STATUS_PAID, paid.paid_at)
    with pytest.raises(grpc.RpcError) as err:
        pay(clients, second)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
