"""Handlers for the events marketing consumes."""

from __future__ import annotations

from omo.orders.v1 import events_pb2 as orders_events

from services.runtime.consumer import Delivery, Handler
from services.runtime.db import Connection

from .store import MarketingStore


def on_order_cancelled(store: MarketingStore) -> Handler:
    """An order cancelled before payment gives its coupon back: the consumer may use it on another order.
    Only a redemption by that very order is undone, so a redelivery, or a coupon that has since gone to
    another order, changes nothing."""

    async def handle(conn: Connection, event: orders_events.OrderCancelled, delivery: Delivery) -> None:
        if event.coupon_code:
            await store.give_back(conn, event.coupon_code, event.order_id)

    return handle
