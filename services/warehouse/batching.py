"""Group commit for single-line reservations: the flash-sale shape (thousands of buyers, one SKU, one unit).

A reservation holds the SKU's stock row lock until its commit is durable, so reserving one at a time runs at
one reservation per disk flush (a few hundred a second). Calls that arrive while earlier ones are in the
database wait here and then go together through `reserve_batch`: one transaction, one flush, the same
all-or-nothing conditional update per reservation. A lone call goes at once; batches form only under load.

Each batch locks its rows in sku_id order (calls are sorted), the same order every other statement locks
stock rows in, so batches do not deadlock each other or the multi-line path."""

from __future__ import annotations

import asyncio
from collections import deque

from sqlalchemy.exc import DBAPIError

from services.runtime.db import Database, is_unique_violation, retry_conflicts

from .store import ReserveCall, ReserveResult, WarehouseStore

# Batches in the database at once: one commits while the next waits for the row lock with its calls; more
# would only make each batch smaller.
_WORKERS = 2
_MAX_BATCH = 256


class ReserveBatcher:
    def __init__(self, engine: Database, store: WarehouseStore):
        self.engine = engine
        self.store = store
        self._queue: deque[tuple[ReserveCall, asyncio.Future[ReserveResult]]] = deque()
        self._workers: set[asyncio.Task[None]] = set()

    async def reserve(self, call: ReserveCall) -> ReserveResult:
        future: asyncio.Future[ReserveResult] = asyncio.get_running_loop().create_future()
        self._queue.append((call, future))
        if len(self._workers) < _WORKERS:
            worker = asyncio.create_task(self._drain())
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch = self._take()
            batch.sort(key=lambda item: item[0].lines[0].sku_id)
            calls = [call for call, _ in batch]
            try:
                results = await retry_conflicts(lambda calls=calls: self._run(calls))  # type: ignore[misc]
            except BaseException as err:  # every waiting caller gets the failure, none hangs
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                if isinstance(err, asyncio.CancelledError):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _take(self) -> list[tuple[ReserveCall, asyncio.Future[ReserveResult]]]:
        """The next batch: up to _MAX_BATCH calls in arrival order, never two for one key or order (the later
        one waits for the next batch, and then finds the first one's reservation)."""
        batch, keys, orders, later = [], set(), set(), []
        while self._queue and len(batch) < _MAX_BATCH:
            call, future = self._queue.popleft()
            if call.key in keys or call.order_id in orders:
                later.append((call, future))
                continue
            keys.add(call.key)
            orders.add(call.order_id)
            batch.append((call, future))
        self._queue.extendleft(reversed(later))
        return batch

    async def _run(self, calls: list[ReserveCall]) -> list[ReserveResult]:
        # One statement, outside BEGIN/COMMIT (connect() autocommits): atomic by itself, and the batch's
        # locks end with it.
        async with self.engine.connect() as conn:
            if len(calls) == 1:
                return [await self.store.reserve(conn, calls[0])]
            try:
                return await self.store.reserve_batch(conn, calls)
            except DBAPIError as err:
                if not is_unique_violation(err):
                    raise
            # A call of the batch raced another call for its key or order, and the whole batch was undone:
            # run them one by one so that only that call sees the race (and looks again).
            results = []
            for call in calls:
                try:
                    results.append(await self.store.reserve(conn, call))
                except DBAPIError as err:
                    if not is_unique_violation(err):
                        raise
                    results.append(ReserveResult(False, None, None, {}, conflict=True))
            return results
