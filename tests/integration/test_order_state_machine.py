"""A hypothesis state machine over random sequences of receive / place (reserve) / expire / cancel / pay
(ship) / deliver / refund (with or without returned goods) against the real services, with the unpaid-order
and completion sweepers running. After every step: stock is conserved (the levels equal the model and the
ledger), and every order is in the state the rules allow, with refunds never exceeding what was paid."""

from __future__ import annotations

import grpc
from google.protobuf.duration_pb2 import Duration
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from omo.orders.v1 import orders_pb2 as pb
from omo.warehouse.v1 import warehouse_pb2 as wh

from ..support import key
from .test_flow import eventually
from .test_order_lifecycle import get
from .test_orders import place_request
from .test_warehouse import assert_ledger_matches, level

SWEPT = "payment window expired"
REFUNDABLE = (pb.ORDER_STATUS_DISPATCHED, pb.ORDER_STATUS_DELIVERED, pb.ORDER_STATUS_PARTIALLY_REFUNDED)
# What the completion sweeper may turn into COMPLETED once the after-sales window passed.
COMPLETABLE = (pb.ORDER_STATUS_DELIVERED, pb.ORDER_STATUS_PARTIALLY_REFUNDED)


class OrderLife(RuleBasedStateMachine):
    clients = None
    world = None

    def __init__(self) -> None:
        super().__init__()
        self.skus = [self.world.new_sku(retail_fen=12_345, supply_fen=9_000, stock=0) for _ in range(2)]
        self.w = self.world.warehouse.warehouse_id
        self.on_hand = {s.sku_id: 0 for s in self.skus}
        self.reserved = {s.sku_id: 0 for s in self.skus}
        # order_id -> [status, sku_id, quantity, refunded units, order]
        self.orders: dict[str, list] = {}

    def _with(self, *statuses: int) -> list[str]:
        return sorted(o for o, rec in self.orders.items() if rec[0] in statuses)

    def _released(self, order_id: str) -> None:
        _, sku_id, qty, _, order = self.orders[order_id]
        eventually(lambda: self.clients.warehouse.GetReservation(
            wh.GetReservationRequest(reservation_id=order.reservation_id)).reservation,
            lambda r: r.status == wh.RESERVATION_STATUS_RELEASED, "the hold to be released")
        self.reserved[sku_id] -= qty

    def _catch_up_with_the_sweeper(self) -> None:
        """The unpaid-order sweeper is part of the system: an order it cancelled gives its hold back."""
        for order_id in self._with(pb.ORDER_STATUS_PENDING_PAYMENT):
            now = get(self.clients, order_id)
            if now.status == pb.ORDER_STATUS_CANCELLED:
                assert now.cancel_reason == SWEPT
                self.orders[order_id][0] = pb.ORDER_STATUS_CANCELLED
                self._released(order_id)

    def _catch_up_with_completion(self, order_id: str) -> bool:
        """The completion sweeper is part of the system too: a delivered order whose after-sales window
        passed is COMPLETED (only then, and only from a delivered state). True if it completed."""
        rec = self.orders[order_id]
        if rec[0] not in COMPLETABLE:
            return False
        now = get(self.clients, order_id)
        if now.status != pb.ORDER_STATUS_COMPLETED:
            return False
        assert now.HasField("delivered_at") and now.completed_at.ToDatetime() >= now.delivered_at.ToDatetime()
        rec[0] = pb.ORDER_STATUS_COMPLETED
        return True

    @rule(sku=st.integers(0, 1), quantity=st.integers(1, 4))
    def receive(self, sku: int, quantity: int) -> None:
        sku_id = self.skus[sku].sku_id
        self.clients.warehouse.ReceiveStock(wh.ReceiveStockRequest(
            idempotency_key=key(), warehouse_id=self.w, sku_id=sku_id, quantity=quantity))
        self.on_hand[sku_id] += quantity

    @rule(sku=st.integers(0, 1), quantity=st.integers(1, 3))
    def place(self, sku: int, quantity: int) -> None:
        sku_id = self.skus[sku].sku_id
        try:
            order = self.clients.orders.PlaceOrder(place_request(self.world, [(self.skus[sku], quantity)])).order
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
            assert self.on_hand[sku_id] - self.reserved[sku_id] < quantity
            return
        assert self.on_hand[sku_id] - self.reserved[sku_id] >= quantity
        self.reserved[sku_id] += quantity
        self.orders[order.order_id] = [pb.ORDER_STATUS_PENDING_PAYMENT, sku_id, quantity, 0, order]

    @rule(sku=st.integers(0, 1))
    def hold_expires(self, sku: int) -> None:
        """A hold nobody pays for, straight at the warehouse with a one-second expiry."""
        sku_id = self.skus[sku].sku_id
        if self.on_hand[sku_id] - self.reserved[sku_id] < 1:
            return
        held = self.clients.warehouse.ReserveStock(wh.ReserveStockRequest(
            idempotency_key=key(), order_id=f"ord-{key()}", hold_for=Duration(seconds=1),
            lines=[wh.StockLine(sku_id=sku_id, quantity=1)])).reservation
        eventually(lambda: self.clients.warehouse.GetReservation(
            wh.GetReservationRequest(reservation_id=held.reservation_id)).reservation,
            lambda r: r.status == wh.RESERVATION_STATUS_RELEASED, "the hold to expire")

    @precondition(lambda self: self.orders)
    @rule(pick=st.integers(0, 10_000))
    def cancel(self, pick: int) -> None:
        order_id = sorted(self.orders)[pick % len(self.orders)]
        status = self.orders[order_id][0]
        try:
            self.clients.orders.CancelOrder(pb.CancelOrderRequest(idempotency_key=key(), order_id=order_id,
                                                                  reason="changed my mind"))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
            assert status != pb.ORDER_STATUS_PENDING_PAYMENT or \
                get(self.clients, order_id).cancel_reason == SWEPT
            return
        assert status == pb.ORDER_STATUS_PENDING_PAYMENT
        self.orders[order_id][0] = pb.ORDER_STATUS_CANCELLED
        self._released(order_id)

    @precondition(lambda self: self.orders)
    @rule(pick=st.integers(0, 10_000))
    def pay(self, pick: int) -> None:
        order_id = sorted(self.orders)[pick % len(self.orders)]
        status, sku_id, qty, _, order = self.orders[order_id]
        try:
            self.clients.orders.RecordPayment(pb.RecordPaymentRequest(
                provider_txn_id=f"wx-{key()}", order_id=order_id, amount_fen=order.payable_fen))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
            assert status != pb.ORDER_STATUS_PENDING_PAYMENT or \
                get(self.clients, order_id).cancel_reason == SWEPT
            return
        assert status == pb.ORDER_STATUS_PENDING_PAYMENT
        eventually(lambda: get(self.clients, order_id), lambda o: o.status == pb.ORDER_STATUS_DISPATCHED,
                   "the paid order to ship")
        self.orders[order_id][0] = pb.ORDER_STATUS_DISPATCHED
        self.on_hand[sku_id] -= qty
        self.reserved[sku_id] -= qty

    @precondition(lambda self: self.orders)
    @rule(pick=st.integers(0, 10_000))
    def deliver(self, pick: int) -> None:
        order_id = sorted(self.orders)[pick % len(self.orders)]
        status, *_ = self.orders[order_id]
        shipments = self.clients.warehouse.ListShipments(wh.ListShipmentsRequest(order_id=order_id)).shipments
        if not shipments:
            assert status in (pb.ORDER_STATUS_PENDING_PAYMENT, pb.ORDER_STATUS_CANCELLED)
            return
        try:
            self.clients.warehouse.RecordDelivery(wh.RecordDeliveryRequest(
                idempotency_key=key(), shipment_id=shipments[0].shipment_id))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
            assert shipments[0].status == wh.SHIPMENT_STATUS_DELIVERED
            return
        eventually(lambda: get(self.clients, order_id), lambda o: o.HasField("delivered_at"), "the delivery")
        if status == pb.ORDER_STATUS_DISPATCHED:
            self.orders[order_id][0] = pb.ORDER_STATUS_DELIVERED

    @precondition(lambda self: self.orders)
    @rule(pick=st.integers(0, 10_000), units=st.integers(1, 3), returned=st.booleans())
    def refund(self, pick: int, units: int, returned: bool) -> None:
        order_id = sorted(self.orders)[pick % len(self.orders)]
        status, sku_id, qty, refunded, _ = self.orders[order_id]
        try:
            reply = self.clients.orders.RecordRefund(pb.RecordRefundRequest(
                provider_refund_id=f"rf-{key()}", order_id=order_id, goods_returned=returned,
                lines=[pb.RefundLineInput(sku_id=sku_id, quantity=units)]))
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION and self._catch_up_with_completion(order_id):
                return
            refundable = status in REFUNDABLE and status != pb.ORDER_STATUS_COMPLETED
            if refundable:
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and units > qty - refunded, err.details()
            else:
                assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
            return
        assert status in REFUNDABLE
        refunded += units
        self.orders[order_id][0] = pb.ORDER_STATUS_REFUNDED if refunded == qty else \
            pb.ORDER_STATUS_PARTIALLY_REFUNDED
        self.orders[order_id][3] = refunded
        assert reply.order.status == self.orders[order_id][0]
        if returned:
            self.on_hand[sku_id] += units
            eventually(lambda: level(self.clients, sku_id, self.w).on_hand, lambda n: n == self.on_hand[sku_id],
                       "the returned goods in stock")

    @invariant()
    def stock_is_conserved(self) -> None:
        self._catch_up_with_the_sweeper()
        for sku in self.skus:
            if self.on_hand[sku.sku_id] == 0 and self.reserved[sku.sku_id] == 0:
                levels = self.clients.warehouse.GetStock(wh.GetStockRequest(sku_id=sku.sku_id)).levels
                assert all(lv.on_hand == 0 and lv.reserved == 0 for lv in levels)
                continue
            lv = level(self.clients, sku.sku_id, self.w)
            assert (lv.on_hand, lv.reserved) == (self.on_hand[sku.sku_id], self.reserved[sku.sku_id])
            assert_ledger_matches(self.clients, self.w, sku.sku_id)

    @invariant()
    def orders_follow_the_rules(self) -> None:
        for order_id in self.orders:
            self._catch_up_with_completion(order_id)
        for order_id, (status, _, qty, refunded, _) in self.orders.items():
            now = get(self.clients, order_id)
            assert now.status == status
            assert 0 <= now.refunded_fen <= now.payable_fen
            assert now.lines[0].refunded_quantity == refunded <= qty
            if status == pb.ORDER_STATUS_REFUNDED:
                assert now.refunded_fen == now.payable_fen
            if status in (pb.ORDER_STATUS_CANCELLED, pb.ORDER_STATUS_PENDING_PAYMENT):
                assert not now.payment_txn_id and not now.shipment_id


def test_order_life_state_machine(clients, world):
    OrderLife.clients, OrderLife.world = clients, world
    runner = OrderLife.TestCase()
    runner.settings = settings(max_examples=4, stateful_step_count=10, deadline=None,
                               suppress_health_check=list(HealthCheck))
    runner.runTest()
