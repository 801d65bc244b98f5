"""Orders this process placed and that are still waiting for payment, kept in memory for the payment
notification that normally follows within minutes, so that RecordPayment need not read them back.

Safe without invalidation: while an order is PENDING_PAYMENT nothing about it changes but its status (a
cancel, the unpaid sweeper), and the payment's write is conditional on PENDING_PAYMENT in the database. A
stale entry therefore makes the write change nothing, and RecordPayment then reads the order and decides
again. Another replica's orders are simply not here (read as before)."""

from __future__ import annotations

from collections import OrderedDict

from .domain import Order, Status


class UnpaidOrders:
    def __init__(self, capacity: int = 10_000):
        self.capacity = capacity
        self._orders: OrderedDict[str, Order] = OrderedDict()

    def placed(self, order: Order) -> None:
        if order.status is not Status.PENDING_PAYMENT:
            return
        self._orders[order.order_id] = order
        while len(self._orders) > self.capacity:
            self._orders.popitem(last=False)

    def take(self, order_id: str) -> Order | None:
        """The order as placed, once: a second notification for it reads the database."""
        return self._orders.pop(order_id, None)
