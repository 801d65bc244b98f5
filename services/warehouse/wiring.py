"""Wires the warehouse's parts together on the shared runtime."""

from __future__ import annotations

import os

from omo.catalog.v1 import catalog_pb2_grpc
from omo.orders.v1 import events_pb2 as orders_events
from omo.warehouse.v1 import warehouse_pb2, warehouse_pb2_grpc

from services.runtime.consumer import Subscription
from services.runtime.server import Runtime, Wiring

from . import domain
from .api import WarehouseApi
from .events import ExpirySweeper, OrderCancelledHandler, OrderPaidHandler, OrderRefundedHandler
from .store import WarehouseStore

_SET_BATCH = 64


async def wire(rt: Runtime) -> Wiring:
    store = WarehouseStore()
    hold_s = float(os.environ.get("OMO_RESERVATION_TTL_S") or domain.DEFAULT_HOLD_S)
    sweep_s = float(os.environ.get("OMO_SWEEP_INTERVAL_S") or 1.0)
    api = WarehouseApi(rt.engine, store, catalog_pb2_grpc.CatalogServiceStub(rt.channel("catalog")), hold_s)
    full_name = warehouse_pb2.DESCRIPTOR.services_by_name["WarehouseService"].full_name
    return Wiring(
        servicers=[(warehouse_pb2_grpc.add_WarehouseServiceServicer_to_server, api, full_name)],
        subscriptions=[
            # Set-based: a batch is a few statements whatever its size, and its stock rows are locked only
            # from its one shipping (or release) statement to its commit, so batches may be larger than the
            # message-by-message handler's 16 without holding ReserveStock up for longer.
            Subscription("warehouse-order-paid", "ORDERS", "orders.order.paid", orders_events.OrderPaid,
                         batch_handler=OrderPaidHandler(store), max_batch=_SET_BATCH),
            Subscription("warehouse-order-cancelled", "ORDERS", "orders.order.cancelled",
                         orders_events.OrderCancelled, batch_handler=OrderCancelledHandler(store),
                         max_batch=_SET_BATCH),
            # One message at a time, locking stock rows: small batches hold them briefly.
            Subscription("warehouse-order-refunded", "ORDERS", "orders.order.refunded",
                         orders_events.OrderRefunded, OrderRefundedHandler(store), max_batch=16),
        ],
        jobs=[ExpirySweeper(rt.engine, store, sweep_s).run],
    )
