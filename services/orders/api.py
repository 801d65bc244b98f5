"""gRPC <-> domain translation for OrderService."""

from __future__ import annotations

from dataclasses import replace

from omo.orders.v1 import events_pb2, orders_pb2_grpc
from omo.orders.v1 import orders_pb2 as pb
from omo.warehouse.v1 import warehouse_pb2 as wh

from services.runtime import outbox, reqctx, timestamps
from services.runtime.db import Connection, Database
from services.runtime.errors import InvalidArgument, NotFound
from services.runtime.idempotency import request_hash, run_idempotent

from . import domain
from .placement import Placement
from .recent import UnpaidOrders
from .store import OrderStore, Paying

SUBJECT_ORDER_PAID = "orders.order.paid"
SUBJECT_ORDER_CANCELLED = "orders.order.cancelled"
SUBJECT_ORDER_REFUNDED = "orders.order.refunded"
SUBJECT_ORDER_COMPLETED = "orders.order.completed"
PICKUP_EXPIRED = "pickup not collected in time"


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
                            unit_supply_price_fen=li.unit_supply_price_fen, line_total_fen=li.line_total_fen,
                            refunded_quantity=li.refunded_quantity, refunded_fen=li.refunded_fen,
                            shipped_quantity=domain.shipped_quantity(o, li.sku_id),
                            returned_quantity=domain.returned_quantity(o, li.sku_id))
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
        cancelled_at=timestamps.to_proto(o.cancelled_at),
        cancel_reason=o.cancel_reason,
        refunded_fen=o.refunded_fen,
        fulfilment_mode=pb.FulfilmentMode.Value(f"FULFILMENT_MODE_{o.fulfilment_mode}"),
        warehouse_id=o.warehouse_id,
        pickup_code=o.pickup_code,
        delivered_at=timestamps.to_proto(o.delivered_at),
        completed_at=timestamps.to_proto(o.completed_at),
        legs=[pb.OrderLeg(reservation_id=g.reservation_id, warehouse_id=g.warehouse_id, shipment_id=g.shipment_id,
                          dispatched_at=timestamps.to_proto(g.dispatched_at),
                          lines=[pb.OrderLegLine(sku_id=li.sku_id, quantity=li.quantity,
                                                 returned_quantity=li.returned_quantity) for li in g.lines])
              for g in o.legs],
    )


def refund_pb(r: domain.Refund) -> pb.Refund:
    return pb.Refund(
        provider_refund_id=r.provider_refund_id, order_id=r.order_id, amount_fen=r.amount_fen,
        goods_returned=r.goods_returned, refunded_at=timestamps.to_proto(r.refunded_at),
        lines=[pb.RefundedLine(sku_id=li.sku_id, quantity=li.quantity, gross_fen=li.gross_fen,
                               discount_fen=li.discount_fen, amount_fen=li.amount_fen, supply_fen=li.supply_fen,
                               legs=[pb.LegReturn(reservation_id=g.reservation_id, warehouse_id=g.warehouse_id,
                                                  quantity=g.quantity) for g in li.legs])
               for li in r.lines],
    )


def order_cancelled(o: domain.Order) -> events_pb2.OrderCancelled:
    return events_pb2.OrderCancelled(
        order_id=o.order_id, reservation_id=o.reservation_id, coupon_code=o.coupon.code if o.coupon else "",
        consumer_id=o.consumer_id, reason=o.cancel_reason, cancelled_at=timestamps.to_proto(o.cancelled_at))


async def cancel_order(conn: Connection, store: OrderStore, order: domain.Order, reason: str) -> domain.Order:
    """Cancel a locked order and announce it, in the caller's transaction (the RPC and the sweeper)."""
    cancelled = domain.cancel(order, reason, timestamps.now())
    await store.record_cancel(conn, cancelled)
    await outbox.add(conn, SUBJECT_ORDER_CANCELLED, order_cancelled(cancelled))
    return cancelled


class OrderApi(orders_pb2_grpc.OrderServiceServicer):
    def __init__(self, engine: Database, store: OrderStore, placement: Placement):
        self.engine = engine
        self.store = store
        self.placement = placement
        self.unpaid = UnpaidOrders()

    async def PlaceOrder(self, request: pb.PlaceOrderRequest, context) -> pb.PlaceOrderResponse:
        order = await self.placement.place(request)
        self.unpaid.placed(order)
        return pb.PlaceOrderResponse(order=order_pb(order))

    async def RecordPayment(self, request: pb.RecordPaymentRequest, context) -> pb.RecordPaymentResponse:
        # Read, decide, then one conditional write: if a concurrent notification or a cancel changed the
        # order in between, the write changes nothing and the order is read and judged again. A transaction
        # id can pay one order only (payments key).
        order = self.unpaid.take(request.order_id)
        while True:
            if order is None:
                async with self.engine.connect() as conn:
                    order = await self.store.order(conn, request.order_id)
                if order is None:
                    raise NotFound("order", request.order_id)
            if domain.is_repeated_notification(order, request.provider_txn_id, request.amount_fen):
                return pb.RecordPaymentResponse(order=order_pb(order))
            paid = domain.pay(order, request.provider_txn_id, request.amount_fen, timestamps.now())
            snapshot = order_pb(paid)
            event = events_pb2.OrderPaid(order=snapshot, provider_txn_id=paid.payment_txn_id,
                                         paid_at=timestamps.to_proto(paid.paid_at))
            if await self.placement.writes.pay(Paying(paid, request.amount_fen, SUBJECT_ORDER_PAID, event)):
                return pb.RecordPaymentResponse(order=snapshot)
            order = None  # it changed since it was read: read it again

    async def GetOrder(self, request: pb.GetOrderRequest, context) -> pb.GetOrderResponse:
        async with self.engine.connect() as conn:
            order = await self.store.order(conn, request.order_id)
        if order is None:
            raise NotFound("order", request.order_id)
        who = reqctx.principal()
        if who is not None:
            domain.check_visible(order, who.kind, who.ident)
        return pb.GetOrderResponse(order=order_pb(order))

    async def ListOrders(self, request: pb.ListOrdersRequest, context) -> pb.ListOrdersResponse:
        who = reqctx.principal()
        scope = domain.list_scope(request.consumer_id, request.store_id, request.dealer_id,
                                  (who.kind, who.ident) if who is not None else None)
        after = domain.page_after(request.page_token)
        size = request.page_size or domain.DEFAULT_LIST_PAGE
        async with self.engine.connect() as conn:
            orders = await self.store.list_orders(conn, scope.column, scope.value, scope.tenant, after, size + 1)
        page = orders[:size]
        token = domain.page_token(page[-1].created_at, page[-1].order_id) if len(orders) > size else ""
        return pb.ListOrdersResponse(orders=[order_pb(o) for o in page], next_page_token=token)

    async def CancelOrder(self, request: pb.CancelOrderRequest, context) -> pb.CancelOrderResponse:
        async with self.engine.connect() as conn:
            order = await self.store.order(conn, request.order_id)
        if order is None:
            raise NotFound("order", request.order_id)
        _check_principal(order)
        if domain.awaiting_hand_over(order):
            # The goods are stopped first: the warehouse cancels the order's waiting shipments and gives the
            # holds back, or refuses (FAILED_PRECONDITION, passed on) if anything left or is not set aside
            # yet. Keyed by the order: every attempt, whatever its own key, repeats the same call.
            await self.placement.warehouse.CancelFulfilment(wh.CancelFulfilmentRequest(
                idempotency_key=f"cancel-order:{order.order_id}", order_id=order.order_id, reason="order cancelled"))
        digest = request_hash(request)

        async def effect(conn: Connection) -> pb.CancelOrderResponse:
            order = await self.store.order(conn, request.order_id, lock=True)
            if order is None:
                raise NotFound("order", request.order_id)
            if not order.payment_txn_id:
                cancelled = await cancel_order(conn, self.store, order, request.reason)
                return pb.CancelOrderResponse(order=order_pb(cancelled))
            refund, cancelled = domain.cancel_paid(order, request.reason, timestamps.now(),
                                                   f"cancel-{order.order_id}")
            if refund is None:
                await self.store.record_cancel(conn, cancelled, order.status)
            else:
                published = refund_pb(refund)
                # Every unit refunded (REFUNDED), then cancelled: the row is never CANCELLED without its time.
                refunded = replace(cancelled, status=domain.Status.REFUNDED)
                await self.store.record_refund(conn, order, refunded, refund, digest, published.SerializeToString())
                await self.store.record_cancel(conn, cancelled, domain.Status.REFUNDED)
                await outbox.add(conn, SUBJECT_ORDER_REFUNDED, events_pb2.OrderRefunded(
                    order=order_pb(cancelled), refund=published, payment_txn_id=order.payment_txn_id))
            await outbox.add(conn, SUBJECT_ORDER_CANCELLED, order_cancelled(cancelled))
            return pb.CancelOrderResponse(order=order_pb(cancelled))

        return await run_idempotent(self.engine, "CancelOrder", request.idempotency_key, request,
                                    pb.CancelOrderResponse, effect)

    async def RecordRefund(self, request: pb.RecordRefundRequest, context) -> pb.RecordRefundResponse:
        digest = request_hash(request)
        # The order row lock serializes refunds of one order; the refunds key makes a provider refund id
        # count once.
        async with self.engine.begin() as conn:
            order = await self.store.order(conn, request.order_id, lock=True)
            if order is None:
                raise NotFound("order", request.order_id)
            _check_principal(order)
            prior = await self.store.prior_refund(conn, request.provider_refund_id)
            if prior is not None:
                if prior.order_id != request.order_id or prior.request_hash != digest:
                    raise InvalidArgument.field("provider_refund_id", "was already recorded for another refund")
                return pb.RecordRefundResponse(order=order_pb(order), refund=pb.Refund.FromString(prior.refund))
            refund, refunded = domain.refund(order, request.provider_refund_id,
                                             [(li.sku_id, li.quantity) for li in request.lines],
                                             request.goods_returned, timestamps.now())
            published = refund_pb(refund)
            await self.store.record_refund(conn, order, refunded, refund, digest, published.SerializeToString())
            snapshot = order_pb(refunded)
            await outbox.add(conn, SUBJECT_ORDER_REFUNDED, events_pb2.OrderRefunded(
                order=snapshot, refund=published, payment_txn_id=order.payment_txn_id))
        return pb.RecordRefundResponse(order=snapshot, refund=published)


def _check_principal(order: domain.Order) -> None:
    who = reqctx.principal()
    if who is not None:
        domain.check_visible(order, who.kind, who.ident)
