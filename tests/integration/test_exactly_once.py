"""An event delivered again has no second effect: re-publishing a paid order's OrderPaid (with its original
event id, and as a brand-new message) ships nothing more and splits nothing more; re-publishing its
ShipmentDispatched leaves the order as it is.

To know the consumers have seen the duplicate, a marker order of another brand is pushed through after it:
each durable consumer handles its subject in stream order, so once the marker is shipped and split, the
duplicate before it has been handled too. The marker's brand and dealer differ, so the first order's figures
cannot move because of it."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from omo.orders.v1 import events_pb2 as order_events
from omo.orders.v1 import orders_pb2 as pb
from omo.settlement.v1 import settlement_pb2 as st
from omo.warehouse.v1 import events_pb2 as warehouse_events
from omo.warehouse.v1 import warehouse_pb2 as wh

from ..support import World
from .test_flow import buy_and_ship


async def _find_and_republish(nats_url: str, subject: str, event_type: type, order_id: str, fresh_id: bool) -> str:
    """Find the event of `order_id` on `subject` and publish it again; returns the event id it was sent with."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(subject, ordered_consumer=True)
        try:
            while True:
                msg = await sub.next_msg(timeout=5)
                event = event_type.FromString(msg.data)
                found = event.order.order_id if hasattr(event, "order") else event.order_id
                if found == order_id:
                    break
        finally:
            await sub.unsubscribe()
        original_id = (msg.headers or {}).get("Omo-Event-Id", "")
        event_id = f"replay-{uuid.uuid4().hex}" if fresh_id or not original_id else original_id
        await js.publish(subject, msg.data, headers={
            "Nats-Msg-Id": f"replay-{uuid.uuid4().hex}",  # fresh, so JetStream's duplicate window lets it through
            "Omo-Event-Id": event_id,
            "Omo-Event-Type": event_type.DESCRIPTOR.full_name,
        })
        return event_id
    finally:
        await nc.drain()


def balances(clients, party_type: int, party_id: str) -> st.GetBalancesResponse:  # type: ignore[no-untyped-def]
    return clients.settlement.GetBalances(st.GetBalancesRequest(party=st.Party(type=party_type, id=party_id)))


@pytest.mark.parametrize("fresh_id", [False, True], ids=["same-event-id", "fresh-event-id"])
def test_a_redelivered_order_paid_ships_and_splits_nothing_more(stack, clients, world, fresh_id):
    own = World.create(clients)
    order, split = buy_and_ship(clients, own, [(own.new_sku(retail_fen=250_000, supply_fen=190_000), 2)])
    brand_before = balances(clients, st.PARTY_TYPE_BRAND, own.brand.brand_id)
    dealer_before = balances(clients, st.PARTY_TYPE_DEALER, own.dealer.dealer_id)

    for subject, event_type in [("orders.order.paid", order_events.OrderPaid),
                                ("warehouse.shipment.dispatched", warehouse_events.ShipmentDispatched)]:
        asyncio.run(_find_and_republish(stack.nats_url, subject, event_type, order.order_id, fresh_id))
    buy_and_ship(clients, world, [(world.new_sku(), 1)])  # the marker, behind the duplicates

    shipments = clients.warehouse.ListShipments(wh.ListShipmentsRequest(order_id=order.order_id)).shipments
    assert [s.shipment_id for s in shipments] == [order.shipment_id]
    assert clients.settlement.GetOrderSplit(st.GetOrderSplitRequest(order_id=order.order_id)).split == split
    assert balances(clients, st.PARTY_TYPE_BRAND, own.brand.brand_id) == brand_before
    assert balances(clients, st.PARTY_TYPE_DEALER, own.dealer.dealer_id) == dealer_before
    assert clients.orders.GetOrder(pb.GetOrderRequest(order_id=order.order_id)).order == order
