"""Batch RPCs, both ends: many independent requests of one kind in one call, each answered on its own.

Why: a grpc.aio unary call costs ~0.35 ms of CPU on each side on this suite's 2-core target, more than the
work most calls on the order path do. A service that makes the same call for many concurrent requests of
its own (orders quoting prices and reserving stock for every PlaceOrder) sends them together through a
batch RPC (`BatchQuotePrices`, `BatchReserveStock`): one call, one message each way, and on the server one
set-based statement where the store can do that.

- `Coalescer` (client): `await coalescer.call(request)` looks like the single RPC. A call that finds the
  line idle goes at once, alone; calls that arrive while a batch is in flight wait and go together in the
  next one. No timer, so an idle system adds no latency. Each item's failure comes back as the
  `grpc.aio.AioRpcError` the single RPC would have raised (code, message, google.rpc details).
- `answer_each` (server): validates each item with its message's protovalidate rules, runs the single-item
  handler for all of them concurrently and turns each failure into the google.rpc.Status the single RPC
  would have answered with (`interceptors.status_of`)."""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import grpc
import protovalidate
from google.protobuf.message import Message
from google.rpc import status_pb2

from . import reqctx
from .interceptors import DETAILS_KEY, check, status_of

Req = TypeVar("Req", bound=Message)
Res = TypeVar("Res", bound=Message)

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def error_of(status: status_pb2.Status) -> grpc.aio.AioRpcError:
    """The exception a single call failing with `status` raises on the client."""
    trailer = grpc.aio.Metadata((DETAILS_KEY, status.SerializeToString())) if status.details else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(_CODES.get(status.code, grpc.StatusCode.UNKNOWN), grpc.aio.Metadata(), trailer,
                                details=status.message)


T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Items that arrive while earlier batches are being handled wait, and are then handled together:
    `await batcher.submit(item)` returns that item's result. At most `in_flight` batches run at once; an
    item that finds a free slot goes at once, alone, so batches form only under load and no timer adds
    latency — unless `linger_s` is set: every batch then waits that long for company before it is taken,
    also one whose items already waited behind the batch before it (up to `max_batch` items go at once),
    for steps where fewer, larger batches are worth a few milliseconds.
    `run(items)` returns one result (or exception, raised to that item's caller) per item."""

    def __init__(self, run: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]], *, max_batch: int = 128,
                 in_flight: int = 2, distinct: Callable[[T], Iterable[Hashable]] | None = None,
                 linger_s: float = 0.0):
        self.run = run
        self.linger_s = linger_s
        self.max_batch = max_batch
        self.in_flight = in_flight
        # Items sharing any of these keys never go in one batch (the later one waits for the next), e.g. two
        # attempts at one order, which one set-based statement could not tell apart.
        self.distinct = distinct
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, item: T) -> asyncio.Future[R]:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._active < self.in_flight:
            # Counted here, not when the task ends: a drainer that found the queue empty has already
            # stopped counting by the time anyone can queue again, so no item is left without one.
            self._active += 1
            # A fresh context: the drainer outlives this request and must not take on its deadline or id.
            task = asyncio.create_task(self._drain(), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    def take(self, queue: deque[tuple[T, asyncio.Future[R]]]) -> list[tuple[T, asyncio.Future[R]]]:
        """The next batch, in arrival order (subclasses may hold items back for a later batch)."""
        if self.distinct is None:
            return [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
        batch: list[tuple[T, asyncio.Future[R]]] = []
        later: list[tuple[T, asyncio.Future[R]]] = []
        seen: set[Hashable] = set()
        while queue and len(batch) < self.max_batch:
            item = queue.popleft()
            keys = set(self.distinct(item[0]))
            if keys & seen:
                later.append(item)
                continue
            seen |= keys
            batch.append(item)
        queue.extendleft(reversed(later))
        return batch

    async def _drain(self) -> None:
        try:
            while self._queue:
                if self.linger_s > 0 and len(self._queue) < self.max_batch:
                    await asyncio.sleep(self.linger_s)
                batch = self.take(self._queue)
                try:
                    results = await self.run([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"a batch of {len(batch)} got {len(results)} results")
                except BaseException as exc:  # the whole batch failed: every item failed that way
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._active -= 1


# send(requests, timeout_s) -> one answer per request, in order: its response, or the Status it failed with.
Send = Callable[[list[Req], float], Awaitable[Sequence[Res | status_pb2.Status]]]


class Coalescer(Generic[Req, Res]):
    """Concurrent calls of one RPC to one peer, sent together through its batch RPC."""

    def __init__(self, send: Send, *, max_batch: int = 128, in_flight: int = 1, default_timeout_s: float = 5.0):
        # One batch in flight by default: everything that arrives meanwhile goes in the next one. Measured on
        # the order path, two in flight halved the batch sizes and cost more CPU per order than it saved in
        # waiting.
        self.send = send
        self.default_timeout_s = default_timeout_s
        self._batcher: Batcher[tuple[Req, float | None], Res] = Batcher(self._send, max_batch=max_batch,
                                                                        in_flight=in_flight)

    async def call(self, request: Req) -> Res:
        remaining = reqctx.remaining_s()
        loop = asyncio.get_running_loop()
        future = self._batcher.submit((request, None if remaining is None else loop.time() + remaining))
        if remaining is None:
            return await future
        try:
            # The item goes with its batch whatever happens here; the caller only stops waiting for it.
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, remaining))
        except TimeoutError:
            raise error_of(status_pb2.Status(code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
                                             message="deadline exceeded waiting for a batched call")) from None

    async def _send(self, items: list[tuple[Req, float | None]]) -> list[Res | BaseException]:
        deadlines = [d for _, d in items]
        # The batch lives as long as its most patient caller; the others stop waiting on their own.
        now = asyncio.get_running_loop().time()
        timeout = self.default_timeout_s if None in deadlines else max(0.05, max(deadlines) - now)  # type: ignore[type-var]
        answers = await self.send([r for r, _ in items], timeout)
        return [error_of(a) if isinstance(a, status_pb2.Status) else a for a in answers]


def check_each(validator: protovalidate.Validator, requests: Sequence[Req]) -> list[status_pb2.Status | None]:
    """Each item's protovalidate rules, as the single RPC's interceptor would check them: None if it passes."""
    checked: list[status_pb2.Status | None] = []
    for request in requests:
        try:
            check(validator, request)
            checked.append(None)
        except Exception as exc:
            checked.append(status_of(exc))
    return checked


async def answer_each(validator: protovalidate.Validator, requests: Sequence[Req],
                      handle: Callable[[Req], Awaitable[Res]]) -> list[Res | status_pb2.Status]:
    """Every item handled as its single RPC would be, concurrently: its response or its failure's Status."""

    async def one(request: Req) -> Res | status_pb2.Status:
        try:
            check(validator, request)
            return await handle(request)
        except Exception as exc:
            return status_of(exc)

    return list(await asyncio.gather(*(one(r) for r in requests)))


def outcome(result_type: type[Any], answer: Message | status_pb2.Status) -> Any:
    """One item of a batch response: `result_type(response=...)` or `result_type(error=...)`."""
    return result_type(error=answer) if isinstance(answer, status_pb2.Status) else result_type(response=answer)


def answers(results: Sequence[Any]) -> list[Any]:
    """The items of a batch response as `send` returns them: each its response or its Status."""
    return [r.error if r.WhichOneof("outcome") == "error" else r.response for r in results]
