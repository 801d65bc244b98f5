"""The whole slice: a consumer orders through a store's entry, pays, the cloud warehouse ships, and the payment
is split — cost to the brand, profit to the dealer, a brand-funded coupon paid for out of the brand's share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import grpc
from omo.marketing.v1 import marketing_pb2 as mkt
from omo.orders.v1 import orders_pb2 as pb
from omo.settlement.v1 import settlement_pb2 as st
from omo.warehouse.v1 import warehouse_pb2 as wh

from ..support import key

T = TypeVar("T")


def eventually(fetch: Callable[[], T], done: Callable[[T], bool], what: str, timeout_s: float = 30.0) -> T:
    """Poll until `done`; NOT_FOUND counts as not yet (the event has not arrived)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = fetch()
            if done(value):
                return value
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def buy_and_ship(clients, world, lines, coupon_code=""):  # type: ignore[no-untyped-def]
    """Place, pay and wait until shipped and split; returns the dispatched order and its split."""
    order = clients.orders.PlaceOrder(pb.PlaceOrderRequest(
        idempotency_key=key(), store_id=world.store.store_id, consumer_id="consumer-flow",
        lines=[pb.OrderLineInput(sku_id=sku.sku_id, quantity=qty) for sku, qty in lines],
        coupon_code=coupon_code)).order
    clients.orders.RecordPayment(pb.RecordPaymentRequest(
        provider_txn_id=f"wx-{key()}", order_id=order.order_id, amount_fen=order.payable_fen))
    dispatched = eventually(lambda: clients.orders.GetOrder(pb.GetOrderRequest(order_id=order.order_id)).order,
                            lambda o: o.status == pb.ORDER_STATUS_DISPATCHED, "the order to be dispatched")
    split = eventually(lambda: clients.settlement.GetOrderSplit(st.GetOrderSplitRequest(order_id=order.order_id)).split,
                       lambda s: s.state == st.SPLIT_STATE_COMPLETED, "the payment to be split")
    return dispatched, split


def legs(split: st.OrderSplit) -> dict[int, st.SplitLeg]:
    by_role = {leg.role: leg for leg in split.legs}
    assert len(by_role) == len(split.legs) == 2
    return by_role


def test_an_order_is_paid_shipped_once_and_split_between_brand_and_dealer(clients, world):
    laptop = world.new_sku(retail_fen=599_900, supply_fen=480_000)
    mouse = world.new_sku(retail_fen=9_900, supply_fen=6_100)
    order, split = buy_and_ship(clients, world, [(laptop, 1), (mouse, 3)])

    assert order.payable_fen == 599_900 + 3 * 9_900
    shipments = clients.warehouse.ListShipments(wh.ListShipmentsRequest(order_id=order.order_id)).shipments
    assert len(shipments) == 1
    assert shipments[0].shipment_id == order.shipment_id
    assert sorted((li.sku_id, li.quantity) for li in shipments[0].lines) == sorted(
        [(laptop.sku_id, 1), (mouse.sku_id, 3)])
    assert order.HasField("paid_at") and order.HasField("dispatched_at")

    by_role = legs(split)
    cost = by_role[st.SPLIT_ROLE_COST_TO_BRAND]
    profit = by_role[st.SPLIT_ROLE_PROFIT_TO_DEALER]
    assert (cost.receiver.type, cost.receiver.id) == (st.PARTY_TYPE_BRAND, world.brand.brand_id)
    assert (profit.receiver.type, profit.receiver.id) == (st.PARTY_TYPE_DEALER, world.dealer.dealer_id)
    assert cost.amount_fen == 480_000 + 3 * 6_100
    assert profit.amount_fen == order.payable_fen - cost.amount_fen
    assert split.paid_fen == order.payable_fen == cost.amount_fen + profit.amount_fen


def test_a_brand_funded_coupon_lowers_the_brand_share_not_the_dealer_profit(clients, world):
    sku = world.new_sku(retail_fen=100_000, supply_fen=70_000)
    coupon = clients.marketing.IssueCoupon(mkt.IssueCouponRequest(
        idempotency_key=key(), brand_id=world.brand.brand_id, consumer_id="consumer-flow", funder=mkt.FUNDER_BRAND,
        face_value_fen=15_000, min_order_fen=100_000)).coupon

    plain, plain_split = buy_and_ship(clients, world, [(sku, 2)])
    discounted, discounted_split = buy_and_ship(clients, world, [(sku, 2)], coupon_code=coupon.code)

    assert (discounted.subtotal_fen, discounted.discount_fen) == (200_000, 15_000)
    assert discounted.payable_fen == plain.payable_fen - 15_000
    plain_legs, discounted_legs = legs(plain_split), legs(discounted_split)
    assert discounted_legs[st.SPLIT_ROLE_COST_TO_BRAND].amount_fen == \
        plain_legs[st.SPLIT_ROLE_COST_TO_BRAND].amount_fen - 15_000 == 140_000 - 15_000
    assert discounted_legs[st.SPLIT_ROLE_PROFIT_TO_DEALER].amount_fen == \
        plain_legs[st.SPLIT_ROLE_PROFIT_TO_DEALER].amount_fen == 60_000
    assert sum(leg.amount_fen for leg in discounted_split.legs) == discounted_split.paid_fen == discounted.payable_fen
