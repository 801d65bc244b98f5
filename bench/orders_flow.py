"""Scenario: buyers place and pay orders through random store entries; every order is counted once it is
fully settled — placed, paid, dispatched by the warehouse and split by settlement — as observed from the
events the services publish.

Two ways to load the suite:
- closed loop (`buyers`): that many buyers, each placing its next order as soon as the last one is paid. It
  finds the most orders per second the suite sustains; latency then includes the queue at saturation.
- open loop (`rate`): orders arrive at a fixed rate whatever the suite does, as consumers do. This is how
  latency at a given throughput is measured (a closed loop would slow its arrivals down when the suite slows).

Figures are taken after a warm-up, over a steady window: orders settled per second during the window, and
the latencies of the calls made in it. Every order paid must settle within the drain time afterwards
(`orders_unsettled`)."""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
import uuid
from dataclasses import dataclass, field

import grpc
import nats
from omo.orders.v1 import orders_pb2 as ords
from omo.orders.v1 import orders_pb2_grpc
from omo.settlement.v1 import events_pb2 as stl_events
from omo.warehouse.v1 import events_pb2 as wh_events
from prometheus_client.parser import text_string_to_metric_families

from services.cli.seed import DemoWorld

from . import cpu
from .stats import percentile

# Open loop: beyond this many orders in flight the suite is not keeping up; further arrivals are counted as
# shed instead of piling up without bound.
MAX_IN_FLIGHT = 2000


@dataclass
class FlowStats:
    place: list[tuple[float, float]] = field(default_factory=list)  # (started, ms)
    pay_ms: list[float] = field(default_factory=list)
    paid_at: dict[str, float] = field(default_factory=dict)
    dispatched_at: dict[str, float] = field(default_factory=dict)
    split_at: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def settled(self) -> list[str]:
        return [o for o in self.paid_at if o in self.dispatched_at and o in self.split_at]

    def settled_at(self, order_id: str) -> float:
        return max(self.dispatched_at[order_id], self.split_at[order_id])

    def error(self, name: str) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1


def _place_order_histogram(metrics_url: str) -> dict[str, float]:
    """orders' own PlaceOrder latency histogram: calls, their total seconds, and calls within 100 ms."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    seen = {"count": 0.0, "sum": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name != "omo_rpc_latency_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("method") != "PlaceOrder":
                continue
            if sample.name.endswith("_count"):
                seen["count"] = sample.value
            elif sample.name.endswith("_sum"):
                seen["sum"] = sample.value
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == 0.1:
                seen["within_100ms"] = sample.value
    if seen["count"] and "within_100ms" not in seen:
        # Without a 100 ms bucket every call would count as slower: a wrong figure rather than none.
        raise RuntimeError(f"{metrics_url}: omo_rpc_latency_seconds has no le=0.1 bucket for PlaceOrder")
    seen.setdefault("within_100ms", 0.0)
    return seen


async def run(orders_addr: str, nats_url: str, world: DemoWorld, *, duration_s: float, buyers: int = 48,
              rate: float | None = None, warmup_s: float = 2.0, drain_s: float = 30.0,
              orders_metrics_url: str | None = None) -> dict:
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
    started = time.monotonic()
    window_start = started + warmup_s
    stop_at = window_start + duration_s

    async def order_once(n: int, i: int, rng: random.Random) -> None:
        store = rng.choice(world.stores)
        skus = rng.sample(world.skus, rng.choice((1, 1, 2)))
        guide = f"guide-{n % 50}"
        req = ords.PlaceOrderRequest(
            idempotency_key=f"bench-{run_id}-{n}-{i}", store_id=store.store_id,
            consumer_id=f"consumer-{n}", lines=[ords.OrderLineInput(sku_id=s.sku_id, quantity=1) for s in skus],
            attribution=ords.Attribution(scene=f"qr:{guide}", store_id=store.store_id, guide_id=guide))
        t0 = time.monotonic()
        try:
            order = (await stub.PlaceOrder(req, timeout=5)).order
            t1 = time.monotonic()
            stats.place.append((t0, (t1 - t0) * 1000))
            await stub.RecordPayment(ords.RecordPaymentRequest(
                provider_txn_id=f"wx-{run_id}-{n}-{i}", order_id=order.order_id, amount_fen=order.payable_fen),
                timeout=5)
            t2 = time.monotonic()
            if t0 >= window_start:
                stats.pay_ms.append((t2 - t1) * 1000)
            stats.paid_at[order.order_id] = t2
        except grpc.aio.AioRpcError as err:
            stats.error(err.code().name)

    async def buyer(n: int) -> None:
        rng, i = random.Random(n), 0
        while time.monotonic() < stop_at:
            i += 1
            await order_once(n, i, rng)

    async def arrivals(per_s: float) -> None:
        rng, in_flight, k = random.Random(7), set(), 0
        while (due := started + k / per_s) < stop_at:
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            k += 1
            if len(in_flight) >= MAX_IN_FLIGHT:
                stats.error("SHED")
                continue
            task = asyncio.create_task(order_once(k % 10_000, k, rng))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)

    async def server_side() -> dict[str, float]:
        """What orders itself measured of the PlaceOrder calls in the window, from its metrics: the time
        a call spent inside the server, without the client's or the transport's queueing."""
        await asyncio.sleep(max(0.0, window_start - time.monotonic()))
        before = await asyncio.to_thread(_place_order_histogram, orders_metrics_url)
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        after = await asyncio.to_thread(_place_order_histogram, orders_metrics_url)
        calls = after["count"] - before["count"]
        if calls <= 0:
            return {}
        return {"place_server_mean_ms": round((after["sum"] - before["sum"]) / calls * 1000, 2),
                "place_server_within_100ms_pct": round((after["within_100ms"] - before["within_100ms"])
                                                       / calls * 100, 2)}

    server = asyncio.create_task(server_side()) if orders_metrics_url else None
    cpu_before = cpu.snapshot()
    if rate is None:
        await asyncio.gather(*(buyer(n) for n in range(buyers)))
    else:
        await arrivals(rate)
    drain_deadline = time.monotonic() + drain_s
    # Polled: completion is spread over two subscriptions' callbacks.
    while len(stats.settled()) < len(stats.paid_at) and time.monotonic() < drain_deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    settled = stats.settled()
    cpu_after = cpu.snapshot()
    await channel.close()
    await nc.close()
    in_window = [o for o in settled if window_start <= stats.settled_at(o) <= stop_at]
    place_ms = [ms for t0, ms in stats.place if t0 >= window_start]
    measured = [o for o in settled if stats.paid_at[o] >= window_start]
    lags = [(stats.settled_at(o) - stats.paid_at[o]) * 1000 for o in measured]
    # Which of the two legs of the flow takes the time: the warehouse's dispatch or settlement's split.
    dispatch_lags = [(stats.dispatched_at[o] - stats.paid_at[o]) * 1000 for o in measured]
    split_lags = [(stats.split_at[o] - stats.paid_at[o]) * 1000 for o in measured]
    return {
        "orders_per_s": round(len(in_window) / duration_s, 1),
        "orders_placed": len(stats.place),
        "orders_paid": len(stats.paid_at),
        "orders_settled": len(settled),
        "orders_unsettled": len(stats.paid_at) - len(settled),
        "place_p50_ms": round(percentile(place_ms, 50), 2),
        "place_p95_ms": round(percentile(place_ms, 95), 2),
        "place_p99_ms": round(percentile(place_ms, 99), 2),
        "pay_p99_ms": round(percentile(stats.pay_ms, 99), 2),
        "event_lag_p50_ms": round(percentile(lags, 50), 2),
        "event_lag_p99_ms": round(percentile(lags, 99), 2),
        "dispatch_lag_p99_ms": round(percentile(dispatch_lags, 99), 2),
        "split_lag_p99_ms": round(percentile(split_lags, 99), 2),
        **(await server if server is not None else {}),
        "errors": stats.errors,
        "cpu_ms_per_order": cpu.per_unit_ms(cpu_before, cpu_after, len(settled)),
        **({"offered_per_s": rate} if rate is not None else {"buyers": buyers}),
        "duration_s": duration_s,
        "warmup_s": warmup_s,
    }
