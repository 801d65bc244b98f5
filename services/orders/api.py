"""gRPC <-> domain translation for OrderService."""

from __future__ import annotations

from omo.orders.v1 import events_pb2, orders_pb2_grpc
from omo.orders.v1 import orders_pb2 as pb

from services.runtime import outbox, reqctx, timestamps
from services.runtime.db import Database
from services.runtime.errors import NotFound

from . import domain
from .placement import Placement
from .store import OrderStore

SUBJECT_ORDER_PAID = "orders.order.paid"


def order_pb(o: domain.Order) -> pb.Order:
    coupon = None
    if o.coupon is not None:
        coupon = pb.AppliedCoupon(code=o.coupon.code, funder=pb.CouponFunder.Value(f"COUPON_FUNDER_{o.coupon.funder}"),
                                  discount_fen=o.coupon.discount_fen)
    a = o.attribution
    return pb.Order(
        order_id=o.order_id,
        status=pb.OrderStatus.Value(f"ORDER_STATUS_{o.status}"),
        store_id=o.store_id,
        dealer_id=o.dealer_id,
        brand_id=o.brand_id,
        consumer_id=o.consumer_id,
        lines=[pb.OrderLine(sku_id=li.sku_id, name=li.name, quantity=li.quantity, unit_price_fen=li.unit_price_fen,
                            unit_supply_price_fen=li.unit_supply_price_fen, line_total_fen=li.line_total_fen)
               for li in o.lines],
        attribution=pb.Attribution(scene=a.scene, dealer_id=a.dealer_id, store_id=a.store_id, guide_id=a.guide_id),
        coupon=coupon,
        subtotal_fen=o.subtotal_fen,
        discount_fen=o.discount_fen,
        payable_fen=o.payable_fen,
        reservation_id=o.reservation_id,
        payment_txn_id=o.payment_txn_id,
        created_at=timestamps.to_proto(o.created_at),
        paid_at=timestamps.to_proto(o.paid_at),
        dispatched_at=timestamps.to_proto(o.dispatched_at),
        shipment_id=o.shipment_id,
    )


class OrderApi(orders_pb2_grpc.OrderServiceServicer):
    def __init__(self, engine: Database, store: OrderStore, placement: Placement):
        self.engine = engine
        self.store = store
        self.placement = placement

    async def PlaceOrder(self, request: pb.PlaceOrderRequest, context) -> pb.PlaceOrderResponse:
        return pb.PlaceOrderResponse(order=order_pb(await self.placement.place(request)))

    async def RecordPayment(self, request: pb.RecordPaymentRequest, context) -> pb.RecordPaymentResponse:
        # The order row lock serializes notifications for one order; a transaction id can pay one order only
        # (payments key).
        async with self.engine.begin() as conn:
            order = await self.store.order(conn, request.order_id, lock=True)
            if order is None:
                raise NotFound("order", request.order_id)
            if domain.is_repeated_notification(order, request.provider_txn_id, request.amount_fen):
                return pb.RecordPaymentResponse(order=order_pb(order))
            paid = domain.pay(order, request.provider_txn_id, request.amount_fen, timestamps.now())
            await self.store.record_payment(conn, paid, request.amount_fen)
            snapshot = order_pb(paid)
            await outbox.add(conn, SUBJECT_ORDER_PAID, events_pb2.OrderPaid(
                order=snapshot, provider_txn_id=paid.payment_txn_id, paid_at=timestamps.to_proto(paid.paid_at)))
        return pb.RecordPaymentResponse(order=snapshot)

    async def GetOrder(self, request: pb.GetOrderRequest, context) -> pb.GetOrderResponse:
        async with self.engine.connect() as conn:
            order = await self.store.order(conn, request.order_id)
        if order is None:
            raise NotFound("order", request.order_id)
        who = reqctx.principal()
        if who is not None:
            domain.check_visible(order, who.kind, who.ident)
        return pb.GetOrderResponse(order=order_pb(order))
