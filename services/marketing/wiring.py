"""Wires marketing's parts together on the shared runtime."""

from __future__ import annotations

from omo.marketing.v1 import marketing_pb2, marketing_pb2_grpc
from omo.orders.v1 import events_pb2 as orders_events

from services.runtime.consumer import Subscription
from services.runtime.server import Runtime, Wiring

from . import events
from .api import MarketingApi
from .store import MarketingStore


async def wire(rt: Runtime) -> Wiring:
    store = MarketingStore()
    api = MarketingApi(rt.engine, store)
    full_name = marketing_pb2.DESCRIPTOR.services_by_name["MarketingService"].full_name
    return Wiring(
        servicers=[(marketing_pb2_grpc.add_MarketingServiceServicer_to_server, api, full_name)],
        subscriptions=[
            Subscription("marketing-order-cancelled", "ORDERS", "orders.order.cancelled",
                         orders_events.OrderCancelled, events.on_order_cancelled(store)),
        ],
    )
