"""The warehouse's set-based consumers: a burst of OrderPaid events (published by the test itself, so that
they reach the consumer together) is shipped in batches, every kind of leg as the message-by-message
handler shipped it, each order once however many times its payment arrives; a bad message in a batch
fails alone and is never acked; a burst of OrderCancelled releases every hold once."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import nats
import pytest
from google.protobuf.message import Message
from omo.orders.v1 import events_pb2 as orders_events
from omo.orders.v1 import orders_pb2 as orders
from omo.warehouse.v1 import events_pb2 as wh_events
from omo.warehouse.v1 import warehouse_pb2 as wh

from services.runtime import db
from services.runtime.consumer import Delivery
from services.runtime.errors import FailedPrecondition
from services.warehouse.events import OrderPaidHandler
from services.warehouse.store import WarehouseStore

from ..support import key
from .test_routing import SHANGHAI, place, route, stock
from .test_split_routes import reserve_request, two_sites
from .test_warehouse import assert_ledger_matches, level, release, reserve
from .test_warehouse_shipping import _dead_letter_for, reservation_status, shipments, wait_for


def paid(r: wh.Reservation) -> orders_events.OrderPaid:
    return orders_events.OrderPaid(
        order=orders.Order(order_id=r.order_id, reservation_id=r.reservation_id,
                           lines=[orders.OrderLine(sku_id=li.sku_id, quantity=li.quantity) for li in r.lines]),
        provider_txn_id=f"txn-{key()[:12]}")


def publish_burst(stack, subject: str, events: list[tuple[str, Message]]) -> None:
    """Every event as orders would publish it, (event id, event), back to back on one connection."""

    async def send() -> None:
        nc = await nats.connect(stack.nats_url)
        try:
            js = nc.jetstream()
            acks = [await js.publish_async(subject, event.SerializeToString(), headers={
                "Omo-Event-Id": event_id, "Nats-Msg-Id": uuid.uuid4().hex,
                "Omo-Event-Type": event.DESCRIPTOR.full_name, "Omo-Created-Ms": str(int(time.time() * 1000))})
                for event_id, event in events]
            await asyncio.gather(*acks)
        finally:
            await nc.close()

    asyncio.run(send())


def events_on(stack, subject: str, event_type, order_ids: set[str]) -> list:  # type: ignore[no-untyped-def]
    """Every event on a warehouse subject so far for these orders, in stream order."""

    async def read() -> list:  # type: ignore[type-arg]
        nc = await nats.connect(stack.nats_url)
        found = []
        try:
            sub = await nc.jetstream().subscribe(subject, ordered_consumer=True)
            try:
                while True:
                    try:
                        msg = await sub.next_msg(timeout=1)
                    except nats.errors.TimeoutError:
                        return found
                    event = event_type.FromString(msg.data)
                    if event.order_id in order_ids:
                        found.append(event)
            finally:
                await sub.unsubscribe()
        finally:
            await nc.close()

    return asyncio.run(read())


def event_id() -> str:
    return f"orders-test-{uuid.uuid4().hex}"


def test_a_burst_of_payments_ships_every_kind_of_leg_once(stack, clients, world):
    w = world.warehouse.warehouse_id
    a, b = world.new_sku(stock=40).sku_id, world.new_sku(stock=40).sku_id
    plain = [reserve(clients, f"ord-{key()}", *([(a, 1)] if i % 3 else [(a, 1), (b, 2)])) for i in range(24)]
    split_a, split_b, near, nearer = two_sites(clients, world)
    split = clients.warehouse.ReserveStock(reserve_request((split_a.sku_id, 2), (split_b.sku_id, 1)))
    counter = place(clients, wh.WAREHOUSE_KIND_STORE, 31.20, 121.44, store_id=world.store.store_id)
    picked_up = world.new_sku(stock=0).sku_id
    stock(clients, counter, picked_up, 2)
    pickup = clients.warehouse.ReserveStock(wh.ReserveStockRequest(
        idempotency_key=key(), order_id=f"ord-{key()}", route=route(wh.FULFILMENT_MODE_STORE_PICKUP, SHANGHAI),
        lines=[wh.StockLine(sku_id=picked_up, quantity=1)])).reservation
    by_hand = place(clients, wh.WAREHOUSE_KIND_CLOUD, 31.1, 121.2, manual_fulfilment=True)
    handmade = world.new_sku(stock=0).sku_id
    stock(clients, by_hand, handmade, 2)
    to_pick = reserve(clients, f"ord-{key()}", (handmade, 1))
    released = reserve(clients, f"ord-{key()}", (b, 1))
    release(clients, released.reservation_id)

    twice = plain[0]
    burst = [(event_id(), paid(r)) for r in [*plain, split.reservation, pickup, to_pick, released]]
    burst.insert(5, (event_id(), paid(twice)))  # the same payment under another event id, in the same burst
    burst.append(burst[1])  # and one event delivered twice
    publish_burst(stack, "orders.order.paid", burst)

    wait_for(lambda: all(shipments(clients, r.order_id) for r in [*plain, pickup, to_pick, released]) and
             len(shipments(clients, split.reservation.order_id)) == 2, timeout_s=30)
    for r in plain:
        [shipment] = shipments(clients, r.order_id)
        assert (shipment.status, shipment.warehouse_id, list(shipment.lines)) == (
            wh.SHIPMENT_STATUS_DISPATCHED, w, list(r.lines))
        assert reservation_status(clients, r.reservation_id) == wh.RESERVATION_STATUS_SHIPPED
    for sku, shipped in ((a, 24), (b, 2 * 8 + 1)):
        lv = level(clients, sku, w)
        assert (lv.on_hand, lv.reserved) == (40 - shipped, 0)
        assert_ledger_matches(clients, w, sku)
    assert sorted(s.warehouse_id for s in shipments(clients, split.reservation.order_id)) == sorted(
        [near.warehouse_id, nearer.warehouse_id])
    for site, sku in ((near, split_a), (near, split_b), (nearer, split_a)):
        assert (level(clients, sku.sku_id, site.warehouse_id).on_hand,
                level(clients, sku.sku_id, site.warehouse_id).reserved) == (0, 0)
        assert_ledger_matches(clients, site.warehouse_id, sku.sku_id)
    [waiting] = shipments(clients, pickup.order_id)
    assert waiting.status == wh.SHIPMENT_STATUS_READY_FOR_PICKUP
    assert reservation_status(clients, pickup.reservation_id) == wh.RESERVATION_STATUS_CONFIRMED
    assert level(clients, picked_up, counter.warehouse_id).reserved == 1
    [created] = shipments(clients, to_pick.order_id)
    assert (created.status, created.warehouse_id) == (wh.SHIPMENT_STATUS_CREATED, by_hand.warehouse_id)
    [retaken] = shipments(clients, released.order_id)
    assert retaken.status == wh.SHIPMENT_STATUS_DISPATCHED
    assert reservation_status(clients, released.reservation_id) == wh.RESERVATION_STATUS_SHIPPED

    dispatched_ids = {r.order_id for r in [*plain, released]} | {split.reservation.order_id}
    out = wait_for(lambda: (lambda got: got if len(got) == len(plain) + 3 else None)(
        events_on(stack, "warehouse.shipment.dispatched", wh_events.ShipmentDispatched, dispatched_ids)))
    assert sorted(e.order_id for e in out) == sorted([*(r.order_id for r in [*plain, released]),
                                                      split.reservation.order_id, split.reservation.order_id])
    assert all(e.order_fully_dispatched for e in out)
    [ready] = wait_for(lambda: events_on(stack, "warehouse.shipment.ready_for_pickup",
                                         wh_events.ShipmentReadyForPickup, {pickup.order_id}))
    assert (ready.shipment_id, ready.store_id) == (waiting.shipment_id, world.store.store_id)


def test_a_bad_payment_in_a_burst_fails_alone_and_is_never_acked(stack, clients, world):
    sku = world.new_sku(stock=10).sku_id
    good = [reserve(clients, f"ord-{key()}", (sku, 1)) for _ in range(6)]
    ghost = wh.Reservation(reservation_id="rsv_ghost", order_id=f"ord-never-reserved-{key()}",
                           lines=[wh.StockLine(sku_id=sku, quantity=1)])
    ghost_event = event_id()
    burst = [(event_id(), paid(r)) for r in good]
    burst.insert(3, (ghost_event, paid(ghost)))
    publish_burst(stack, "orders.order.paid", burst)

    wait_for(lambda: all(shipments(clients, r.order_id) for r in good))
    assert level(clients, sku, world.warehouse.warehouse_id).on_hand == 4
    assert wait_for(lambda: _dead_letter_for(stack, ghost.order_id), timeout_s=40)

    async def claimed() -> bool:
        conn = await asyncpg.connect(stack.admin_url)
        try:
            return await conn.fetchval("SELECT count(*) FROM warehouse.inbox WHERE consumer = $1 AND "
                                       "message_id = $2", "warehouse-order-paid", ghost_event) > 0
        finally:
            await conn.close()

    assert not asyncio.run(claimed())


def test_a_burst_of_cancellations_releases_every_hold_once(stack, clients, world):
    w = world.warehouse.warehouse_id
    sku = world.new_sku(stock=20).sku_id
    held = [reserve(clients, f"ord-{key()}", (sku, 2)) for _ in range(5)]
    split_a, split_b, near, nearer = two_sites(clients, world)
    split = clients.warehouse.ReserveStock(reserve_request((split_a.sku_id, 2), (split_b.sku_id, 1)))
    gone = reserve(clients, f"ord-{key()}", (sku, 1))
    release(clients, gone.reservation_id)

    def cancelled(order_id: str, reason: str = "unpaid") -> orders_events.OrderCancelled:
        return orders_events.OrderCancelled(order_id=order_id, reason=reason)

    burst = [(event_id(), cancelled(r.order_id)) for r in [*held, split.reservation, gone]]
    burst.insert(2, (event_id(), cancelled(held[0].order_id, "twice")))
    burst.append((event_id(), cancelled(f"ord-never-reserved-{key()}")))  # nothing to give back
    publish_burst(stack, "orders.order.cancelled", burst)

    wait_for(lambda: all(reservation_status(clients, r.reservation_id) == wh.RESERVATION_STATUS_RELEASED
                         for r in [*held, *split.legs]))
    lv = level(clients, sku, w)
    assert (lv.on_hand, lv.reserved) == (20, 0)
    assert_ledger_matches(clients, w, sku)
    for site, s in ((near, split_a), (near, split_b), (nearer, split_a)):
        assert level(clients, s.sku_id, site.warehouse_id).reserved == 0
        assert_ledger_matches(clients, site.warehouse_id, s.sku_id)
    order_ids = {r.order_id for r in [*held, split.reservation, gone]}
    expected = [r.reservation_id for r in [*held, *split.legs]]
    out = wait_for(lambda: (lambda got: got if len(got) >= len(expected) else None)(
        events_on(stack, "warehouse.reservation.released", wh_events.ReservationReleased, order_ids)))
    by_cancel = [e for e in out if e.reason.startswith("order cancelled")]
    assert sorted(e.reservation_id for e in by_cancel) == sorted(expected)
    assert {e.reason for e in by_cancel} == {"order cancelled: unpaid"}


class _Counting:
    """A connection that counts the statements a handler sends."""

    def __init__(self, conn):  # type: ignore[no-untyped-def]
        self.conn = conn
        self.statements = 0
        self.sql: list[str] = []

    async def execute(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.statements += 1
        self.sql.append(str(args[0]))
        return await self.conn.execute(*args, **kwargs)

    def after_commit(self, callback) -> None:  # type: ignore[no-untyped-def]
        self.conn.after_commit(callback)


def _delivery() -> Delivery:
    return Delivery(message_id=event_id(), subject="orders.order.paid", created_ms=0, attempt=1)


async def test_a_batch_of_orders_held_at_one_location_costs_four_statements_and_locks_stock_last(stack, clients, world):
    sku, other = world.new_sku(stock=50).sku_id, world.new_sku(stock=50).sku_id
    held = [reserve(clients, f"ord-{key()}", (sku, 1), *([(other, 2)] if i % 2 else [])) for i in range(20)]
    batch = [(paid(r), _delivery()) for r in held]
    batch.append((paid(held[3]), _delivery()))  # the same payment again under another event id
    engine = db.create_engine(stack.admin_url, "warehouse", pool_size=1)
    try:
        async with engine.begin() as conn:
            counting = _Counting(conn)
            await OrderPaidHandler(WarehouseStore())(counting, batch)  # type: ignore[arg-type]
        # The legs loaded and locked, every event written, every shipment recorded, every stock row taken:
        # one statement each, the stock rows (which reservations wait for) by the last one before the commit.
        assert counting.statements == 4
        assert "UPDATE stock" in counting.sql[-1] and all("stock" not in sql for sql in counting.sql[:-1])
    finally:
        await engine.dispose()
    for r in held:
        [shipment] = shipments(clients, r.order_id)
        assert list(shipment.lines) == list(r.lines)
    w = world.warehouse.warehouse_id
    assert (level(clients, sku, w).on_hand, level(clients, other, w).on_hand) == (30, 30)
    for s in (sku, other):
        assert_ledger_matches(clients, w, s)


async def test_a_batch_with_a_payment_for_no_reservation_fails_whole_and_changes_nothing(stack, clients, world):
    sku = world.new_sku(stock=5).sku_id
    good = reserve(clients, f"ord-{key()}", (sku, 1))
    ghost = wh.Reservation(reservation_id="rsv_ghost", order_id=f"ord-never-reserved-{key()}",
                           lines=[wh.StockLine(sku_id=sku, quantity=1)])
    engine = db.create_engine(stack.admin_url, "warehouse", pool_size=1)
    try:
        with pytest.raises(FailedPrecondition) as err:
            async with engine.begin() as conn:
                await OrderPaidHandler(WarehouseStore())(conn, [(paid(good), _delivery()), (paid(ghost), _delivery())])
        assert err.value.reason == "RESERVATION_NOT_FOUND"
    finally:
        await engine.dispose()
    assert shipments(clients, good.order_id) == []
    assert reservation_status(clients, good.reservation_id) == wh.RESERVATION_STATUS_RESERVED
