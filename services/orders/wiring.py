"""Wires the orders service's parts together on the shared runtime: stubs for its peers are built once here
and reused by every request."""

from __future__ import annotations

import os

from omo.catalog.v1 import catalog_pb2_grpc
from omo.marketing.v1 import marketing_pb2_grpc
from omo.orders.v1 import orders_pb2, orders_pb2_grpc
from omo.warehouse.v1 import events_pb2 as wh_events
from omo.warehouse.v1 import warehouse_pb2_grpc

from services.runtime.consumer import Subscription
from services.runtime.server import Runtime, Wiring

from . import domain, events
from .api import OrderApi
from .placement import Placement
from .store import OrderStore
from .sweepers import CompletionSweeper, PickupExpirySweeper, UnpaidOrderSweeper


async def wire(rt: Runtime) -> Wiring:
    store = OrderStore()
    window_s = float(os.environ.get("OMO_PAYMENT_WINDOW_S") or domain.DEFAULT_PAYMENT_WINDOW_S)
    placement = Placement(
        rt.engine,
        store,
        catalog_pb2_grpc.CatalogServiceStub(rt.channel("catalog")),
        warehouse_pb2_grpc.WarehouseServiceStub(rt.channel("warehouse")),
        marketing_pb2_grpc.MarketingServiceStub(rt.channel("marketing")),
        window_s,
    )
    api = OrderApi(rt.engine, store, placement)
    sweep_s = float(os.environ.get("OMO_SWEEP_INTERVAL_S") or 1.0)
    pickup_s = float(os.environ.get("OMO_PICKUP_WINDOW_S") or domain.DEFAULT_PICKUP_WINDOW_S)
    after_sales_s = float(os.environ.get("OMO_AFTER_SALES_WINDOW_S") or domain.DEFAULT_AFTER_SALES_WINDOW_S)
    full_name = orders_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name
    return Wiring(
        servicers=[(orders_pb2_grpc.add_OrderServiceServicer_to_server, api, full_name)],
        subscriptions=[
            Subscription("orders-shipment-dispatched", "WAREHOUSE", "warehouse.shipment.dispatched",
                         wh_events.ShipmentDispatched, batch_handler=events.on_shipments_dispatched(store)),
            Subscription("orders-shipment-ready", "WAREHOUSE", "warehouse.shipment.ready_for_pickup",
                         wh_events.ShipmentReadyForPickup, events.on_ready_for_pickup(store)),
            Subscription("orders-shipment-delivered", "WAREHOUSE", "warehouse.shipment.delivered",
                         wh_events.ShipmentDelivered, events.on_shipment_delivered(store)),
        ],
        jobs=[UnpaidOrderSweeper(rt.engine, store, window_s, sweep_s).run,
              CompletionSweeper(rt.engine, store, after_sales_s, sweep_s).run,
              PickupExpirySweeper(rt.engine, store, api, pickup_s, sweep_s).run],
    )
