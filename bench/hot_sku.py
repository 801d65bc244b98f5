"""Scenario: a flash sale on one SKU. Many concurrent callers reserve one unit each of the same SKU in the
same cloud warehouse (the hottest row there is); counted are successful reservations per second.

The callers reach the warehouse the way the suite's own client (orders) does under load: through a
`Coalescer` over BatchReserveStock, so reservations that arrive while a batch is in flight travel together
(each still answered on its own). `single_call=True` sends every reservation as its own ReserveStock call
instead, for comparison."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
from omo.warehouse.v1 import warehouse_pb2 as wh
from omo.warehouse.v1 import warehouse_pb2_grpc

from services.runtime import batch

from . import cpu
from .stats import percentile


async def run(warehouse_addr: str, sku_id: str, *, duration_s: float, callers: int,
              single_call: bool = False) -> dict:
    channel = grpc.aio.insecure_channel(warehouse_addr)
    stub = warehouse_pb2_grpc.WarehouseServiceStub(channel)

    async def send(requests: list[wh.ReserveStockRequest], timeout_s: float) -> list:
        reply = await stub.BatchReserveStock(wh.BatchReserveStockRequest(requests=requests), timeout=timeout_s)
        return batch.answers(reply.results)

    coalescer: batch.Coalescer[wh.ReserveStockRequest, wh.ReserveStockResponse] = batch.Coalescer(
        send, default_timeout_s=10)
    reserve = (lambda r: stub.ReserveStock(r, timeout=10)) if single_call else coalescer.call
    run_id = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop_at = time.monotonic() + duration_s
    started = time.monotonic()
    cpu_before = cpu.snapshot()

    async def caller(n: int) -> None:
        i = 0
        while time.monotonic() < stop_at:
            i += 1
            order_id = f"hot-{run_id}-{n}-{i}"
            t0 = time.monotonic()
            try:
                await reserve(wh.ReserveStockRequest(
                    idempotency_key=order_id, order_id=order_id, lines=[wh.StockLine(sku_id=sku_id, quantity=1)]))
                latencies.append((time.monotonic() - t0) * 1000)
            except grpc.aio.AioRpcError as err:
                errors[err.code().name] = errors.get(err.code().name, 0) + 1

    await asyncio.gather(*(caller(n) for n in range(callers)))
    elapsed = time.monotonic() - started
    cpu_after = cpu.snapshot()
    await channel.close()
    prefix = "hot_sku_single_call" if single_call else "hot_sku"
    return {
        f"{prefix}_reservations_per_s": round(len(latencies) / elapsed, 1),
        f"{prefix}_reserved": len(latencies),
        f"{prefix}_reserve_p50_ms": round(percentile(latencies, 50), 2),
        f"{prefix}_reserve_p99_ms": round(percentile(latencies, 99), 2),
        f"{prefix}_errors": errors,
        f"{prefix}_callers": callers,
        f"{prefix}_cpu_ms_per_reservation": cpu.per_unit_ms(cpu_before, cpu_after, len(latencies)),
    }
