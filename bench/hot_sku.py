"""Scenario: a flash sale on one SKU. Many concurrent callers reserve one unit each of the same SKU in the
same cloud warehouse (the hottest row there is); counted are successful reservations per second."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
from omo.warehouse.v1 import warehouse_pb2 as wh
from omo.warehouse.v1 import warehouse_pb2_grpc

from . import cpu
from .stats import percentile


async def run(warehouse_addr: str, sku_id: str, *, duration_s: float, callers: int) -> dict:
    channel = grpc.aio.insecure_channel(warehouse_addr)
    stub = warehouse_pb2_grpc.WarehouseServiceStub(channel)
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
                await stub.ReserveStock(wh.ReserveStockRequest(
                    idempotency_key=order_id, order_id=order_id, lines=[wh.StockLine(sku_id=sku_id, quantity=1)]),
                    timeout=10)
                latencies.append((time.monotonic() - t0) * 1000)
            except grpc.aio.AioRpcError as err:
                errors[err.code().name] = errors.get(err.code().name, 0) + 1

    await asyncio.gather(*(caller(n) for n in range(callers)))
    elapsed = time.monotonic() - started
    cpu_after = cpu.snapshot()
    await channel.close()
    return {
        "hot_sku_reservations_per_s": round(len(latencies) / elapsed, 1),
        "hot_sku_reserved": len(latencies),
        "hot_sku_reserve_p50_ms": round(percentile(latencies, 50), 2),
        "hot_sku_reserve_p99_ms": round(percentile(latencies, 99), 2),
        "hot_sku_errors": errors,
        "hot_sku_cpu_ms_per_reservation": cpu.per_unit_ms(cpu_before, cpu_after, len(latencies)),
        "hot_sku_callers": callers,
    }
