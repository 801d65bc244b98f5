"""The batching primitives without I/O: items handled together only while earlier batches run, each item's
own result or failure back to its own caller, nothing left waiting."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from services.runtime import reqctx
from services.runtime.batch import Batcher, Coalescer, error_of
from services.runtime.errors import ResourceExhausted
from services.runtime.interceptors import status_of


async def test_a_lone_item_goes_at_once_and_later_ones_wait_for_the_next_batch() -> None:
    sizes: list[int] = []
    release = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        if len(sizes) == 1:
            await release.wait()  # the first batch is slow: the rest queue behind it
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(run, in_flight=1)
    first = batcher.submit(1)
    await asyncio.sleep(0)
    later = [batcher.submit(i) for i in range(2, 7)]
    await asyncio.sleep(0)
    release.set()
    assert await first == 10
    assert [await f for f in later] == [20, 30, 40, 50, 60]
    assert sizes == [1, 5]


async def test_a_lingering_batch_waits_for_company_but_never_beyond_its_size() -> None:
    sizes: list[int] = []

    async def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    batcher: Batcher[int, int] = Batcher(run, in_flight=1, max_batch=4, linger_s=0.05)
    first = batcher.submit(0)
    await asyncio.sleep(0.01)  # within the linger: these join the first item's batch
    rest = [batcher.submit(i) for i in range(1, 6)]
    assert [await first, *[await f for f in rest]] == [0, 1, 2, 3, 4, 5]
    assert sizes == [4, 2]


async def test_each_item_gets_its_own_failure_and_a_failed_batch_fails_every_item() -> None:
    async def run(items: list[int]) -> list[int | BaseException]:
        if 0 in items:
            raise RuntimeError("the whole batch broke")
        return [ValueError(i) if i % 2 else i for i in items]

    batcher: Batcher[int, int] = Batcher(run, in_flight=1)
    futures = [batcher.submit(i) for i in (2, 3, 4)]
    assert await futures[0] == 2
    with pytest.raises(ValueError):
        await futures[1]
    assert await futures[2] == 4
    broken = [batcher.submit(i) for i in (0, 5)]
    for f in broken:
        with pytest.raises(RuntimeError):
            await f


async def test_no_item_is_stranded_when_it_arrives_as_the_last_batch_finishes() -> None:
    async def run(items: list[int]) -> list[int]:
        await asyncio.sleep(0)
        return items

    batcher: Batcher[int, int] = Batcher(run, in_flight=2, max_batch=3)
    for round_ in range(50):
        futures = [batcher.submit(i) for i in range(round_ % 7)]
        await asyncio.sleep(0)
        futures += [batcher.submit(99)]
        assert (await asyncio.wait_for(asyncio.gather(*futures), 1))[-1] == 99


async def test_a_coalesced_call_fails_as_the_single_rpc_would() -> None:
    refused = status_of(ResourceExhausted("sku 'x' is sold out", reason="OUT_OF_STOCK", metadata={"sku_id": "x"}))

    async def send(requests: list[str], timeout_s: float) -> list[str | status_pb2.Status]:
        return [refused if r == "x" else r.upper() for r in requests]

    coalescer: Coalescer = Coalescer(send)
    assert await coalescer.call("a") == "A"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await coalescer.call("x")
    err = caught.value
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    details = dict(err.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert (status.code, info.reason, info.metadata["sku_id"]) == (code_pb2.RESOURCE_EXHAUSTED, "OUT_OF_STOCK", "x")


async def test_a_caller_stops_waiting_at_its_own_deadline_and_the_batch_gets_the_longest() -> None:
    timeouts: list[float] = []
    gate = asyncio.Event()

    async def send(requests: list[str], timeout_s: float) -> list[str]:
        timeouts.append(timeout_s)
        await gate.wait()
        return requests

    coalescer: Coalescer = Coalescer(send, in_flight=1)

    async def within(seconds: float, request: str) -> str:
        reqctx.bind("req", seconds, None)
        return await coalescer.call(request)

    patient = asyncio.ensure_future(within(5.0, "patient"))
    hasty = asyncio.ensure_future(within(0.05, "hasty"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await hasty
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    gate.set()
    assert await patient == "patient"
    assert 4.5 < timeouts[0] <= 5.0


def test_error_of_keeps_code_and_message_without_details() -> None:
    err = error_of(status_pb2.Status(code=code_pb2.NOT_FOUND, message="store 's' not found"))
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "store 's' not found")
