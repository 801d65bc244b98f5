"""Wires the warehouse's parts together on the shared runtime."""

from __future__ import annotations

from omo.catalog.v1 import catalog_pb2_grpc
from omo.orders.v1 import events_pb2 as orders_events
from omo.warehouse.v1 import warehouse_pb2, warehouse_pb2_grpc

from services.runtime.consumer import Subscription
from services.runtime.server import Runtime, Wiring

from .api import WarehouseApi
from .events import OrderPaidHandler
from .store import WarehouseStore


async def wire(rt: Runtime) -> Wiring:
    store = WarehouseStore()
    api = WarehouseApi(rt.engine, store, catalog_pb2_grpc.CatalogServiceStub(rt.channel("catalog")))
    full_name = warehouse_pb2.DESCRIPTOR.services_by_name["WarehouseService"].full_name
    return Wiring(
        servicers=[(warehouse_pb2_grpc.add_WarehouseServiceServicer_to_server, api, full_name)],
        subscriptions=[
            Subscription("warehouse-order-paid", "ORDERS", "orders.order.paid", orders_events.OrderPaid,
                         OrderPaidHandler(store), max_batch=16),
        ],
    )
