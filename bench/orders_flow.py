"""Scenario: many concurrent buyers place and pay orders through random store entries; every order is counted
once it is fully settled — placed, paid, dispatched by the warehouse and split by settlement — as observed
from the events the services publish."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field

import grpc
import nats
from omo.orders.v1 import orders_pb2 as ords
from omo.orders.v1 import orders_pb2_grpc
from omo.settlement.v1 import events_pb2 as stl_events
from omo.warehouse.v1 import events_pb2 as wh_events

from services.cli.seed import DemoWorld

from . import cpu
from .stats import percentile


@dataclass
class FlowStats:
    place_ms: list[float] = field(default_factory=list)
    pay_ms: list[float] = field(default_factory=list)
    paid_at: dict[str, float] = field(default_factory=dict)
    dispatched_at: dict[str, float] = field(default_factory=dict)
    split_at: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def settled(self) -> list[str]:
        return [o for o in self.paid_at if o in self.dispatched_at and o in self.split_at]


async def run(orders_addr: str, nats_url: str, world: DemoWorld, *, duration_s: float, buyers: int,
              drain_s: float = 30.0) -> dict:
    stats = FlowStats()
    nc = await nats.connect(nats_url)

    async def on_dispatched(msg):  # type: ignore[no-untyped-def]
        stats.dispatched_at[wh_events.ShipmentDispatched.FromString(msg.data).order_id] = time.monotonic()

    async def on_split(msg):  # type: ignore[no-untyped-def]
        stats.split_at[stl_events.OrderSplitSettled.FromString(msg.data).order_id] = time.monotonic()

    # Core-NATS subscriptions see every message the streams store, without adding a JetStream consumer.
    await nc.subscribe("warehouse.shipment.dispatched", cb=on_dispatched, pending_msgs_limit=1_000_000)
    await nc.subscribe("settlement.split.settled", cb=on_split, pending_msgs_limit=1_000_000)

    channel = grpc.aio.insecure_channel(orders_addr)
    stub = orders_pb2_grpc.OrderServiceStub(channel)
    run_id = uuid.uuid4().hex[:8]
    stop_at = time.monotonic() + duration_s
    started = time.monotonic()
    cpu_before = cpu.snapshot()

    async def buyer(n: int) -> None:
        rng = random.Random(n)
        i = 0
        while time.monotonic() < stop_at:
            i += 1
            store = rng.choice(world.stores)
            skus = rng.sample(world.skus, rng.choice((1, 1, 2)))
            req = ords.PlaceOrderRequest(
                idempotency_key=f"bench-{run_id}-{n}-{i}", store_id=store.store_id,
                consumer_id=f"consumer-{n}", lines=[ords.OrderLineInput(sku_id=s.sku_id, quantity=1) for s in skus],
                attribution=ords.Attribution(scene=f"qr:guide-{n % 50}", store_id=store.store_id,
                                             guide_id=f"guide-{n % 50}"))
            t0 = time.monotonic()
            try:
                order = (await stub.PlaceOrder(req, timeout=5)).order
                t1 = time.monotonic()
                stats.place_ms.append((t1 - t0) * 1000)
                await stub.RecordPayment(ords.RecordPaymentRequest(
                    provider_txn_id=f"wx-{run_id}-{n}-{i}", order_id=order.order_id, amount_fen=order.payable_fen),
                    timeout=5)
                t2 = time.monotonic()
                stats.pay_ms.append((t2 - t1) * 1000)
                stats.paid_at[order.order_id] = t2
            except grpc.aio.AioRpcError as err:
                stats.errors[err.code().name] = stats.errors.get(err.code().name, 0) + 1

    await asyncio.gather(*(buyer(n) for n in range(buyers)))
    load_end = time.monotonic()
    drain_deadline = load_end + drain_s
    # Polled: completion is spread over two subscriptions' callbacks.
    while len(stats.settled()) < len(stats.paid_at) and time.monotonic() < drain_deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    settled = stats.settled()
    cpu_after = cpu.snapshot()
    last = max((max(stats.dispatched_at[o], stats.split_at[o]) for o in settled), default=load_end)
    lags = [(max(stats.dispatched_at[o], stats.split_at[o]) - stats.paid_at[o]) * 1000 for o in settled]
    await channel.close()
    await nc.close()
    elapsed = max(last, load_end) - started
    return {
        "orders_per_s": round(len(settled) / elapsed, 1),
        "orders_placed": len(stats.place_ms),
        "orders_paid": len(stats.paid_at),
        "orders_settled": len(settled),
        "place_p50_ms": round(percentile(stats.place_ms, 50), 2),
        "place_p95_ms": round(percentile(stats.place_ms, 95), 2),
        "place_p99_ms": round(percentile(stats.place_ms, 99), 2),
        "pay_p99_ms": round(percentile(stats.pay_ms, 99), 2),
        "event_lag_p50_ms": round(percentile(lags, 50), 2),
        "event_lag_p99_ms": round(percentile(lags, 99), 2),
        "errors": stats.errors,
        "cpu_ms_per_order": cpu.per_unit_ms(cpu_before, cpu_after, len(settled)),
        "buyers": buyers,
        "duration_s": duration_s,
    }
