"""One demo order through the whole flow: a consumer scans a store guide's QR code, buys with a brand coupon,
pays; the cloud warehouse ships; settlement splits the money between brand and dealer."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from omo.orders.v1 import orders_pb2 as ords
from omo.settlement.v1 import settlement_pb2 as stl
from omo.warehouse.v1 import warehouse_pb2 as wh

from .seed import DEMO_CONSUMER, DemoWorld, issue_demo_coupon
from .stubs import Stubs


@dataclass
class DemoResult:
    order: ords.Order
    shipments: list[wh.Shipment]
    split: stl.OrderSplit


def run_demo_order(stubs: Stubs, world: DemoWorld, timeout_s: float = 30) -> DemoResult:
    run = uuid.uuid4().hex[:12]
    store = world.stores[0]
    coupon = issue_demo_coupon(stubs, world, key=f"demo-coupon-{run}")
    order = stubs.orders.PlaceOrder(ords.PlaceOrderRequest(
        idempotency_key=f"demo-order-{run}", store_id=store.store_id, consumer_id=DEMO_CONSUMER,
        lines=[ords.OrderLineInput(sku_id=world.skus[0].sku_id, quantity=1),
               ords.OrderLineInput(sku_id=world.skus[2].sku_id, quantity=2)],
        attribution=ords.Attribution(scene="qr:guide-0007", dealer_id=store.dealer_id, store_id=store.store_id,
                                     guide_id="guide-0007"),
        coupon_code=coupon.code,
    ), timeout=10).order
    stubs.orders.RecordPayment(ords.RecordPaymentRequest(
        provider_txn_id=f"wx-{run}", order_id=order.order_id, amount_fen=order.payable_fen), timeout=10)
    deadline = time.monotonic() + timeout_s
    while True:
        order = stubs.orders.GetOrder(ords.GetOrderRequest(order_id=order.order_id), timeout=5).order
        split = _split(stubs, order.order_id)
        if order.status == ords.ORDER_STATUS_DISPATCHED and split is not None:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"order {order.order_id} not dispatched and split within {timeout_s}s")
        time.sleep(0.1)
    shipments = list(stubs.warehouse.ListShipments(wh.ListShipmentsRequest(order_id=order.order_id)).shipments)
    return DemoResult(order, shipments, split)


def _split(stubs: Stubs, order_id: str) -> stl.OrderSplit | None:
    import grpc

    try:
        split = stubs.settlement.GetOrderSplit(stl.GetOrderSplitRequest(order_id=order_id), timeout=5).split
        return split if split.state == stl.SPLIT_STATE_COMPLETED else None
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
