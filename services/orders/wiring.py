"""Wires the orders service's parts together on the shared runtime: stubs for its peers are built once here
and reused by every request."""

from __future__ import annotations

import os

from google.protobuf.message import DecodeError
from omo.catalog.v1 import catalog_pb2_grpc
from omo.catalog.v1 import events_pb2 as catalog_events
from omo.marketing.v1 import marketing_pb2_grpc
from omo.orders.v1 import orders_pb2, orders_pb2_grpc
from omo.warehouse.v1 import events_pb2 as wh_events
from omo.warehouse.v1 import warehouse_pb2_grpc

from services.runtime import bus
from services.runtime.consumer import Subscription
from services.runtime.server import Runtime, Wiring

from . import domain, events
from .api import OrderApi
from .listings import DEFAULT_MAX_AGE_S, Listings
from .placement import Placement
from .store import OrderStore
from .sweepers import CompletionSweeper, PickupExpirySweeper, UnpaidOrderSweeper

# catalog's subject; orders names it itself rather than importing catalog (services meet only through protos).
SUBJECT_LISTING_CHANGED = "catalog.listing.changed"


async def follow_listings(rt: Runtime, listings: Listings) -> None:
    """Every orders process follows catalog's listing changes itself (a plain subscription: each replica sees
    every event), trusting its copy only while connected."""

    async def changed(msg) -> None:  # type: ignore[no-untyped-def]
        try:
            listings.changed(catalog_events.ListingChanged.FromString(msg.data))
        except DecodeError:
            listings.follow()  # an event we cannot read: start the copy over rather than keep a wrong one

    bus.on_connection_change(lost=listings.lose_track, back=listings.follow)
    await rt.nc.subscribe(SUBJECT_LISTING_CHANGED, cb=changed, pending_msgs_limit=-1, pending_bytes_limit=-1)
    listings.follow()


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
        float(os.environ.get("OMO_LISTINGS_MAX_AGE_S") or DEFAULT_MAX_AGE_S),
    )
    if rt.settings.role != "worker":  # a worker places no orders: it has no use for the listings
        await follow_listings(rt, placement.listings)
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
