"""Group commit for reservations held at one location: every ReserveStock call but a split route's.

A reservation holds its stock rows' locks until its commit is durable, so reserving one at a time runs at
one reservation per disk flush (a few hundred a second on a hot SKU). Calls that arrive while earlier ones
are in the database wait here and then go together through `reserve_calls`: one statement, one flush, the
same all-or-nothing choice per call in arrival order. A lone call goes at once; batches form only under
load (`services.runtime.batch.Batcher`).

Each batch locks its rows in (sku_id, warehouse_id) order in one statement, the order every other statement
locks stock rows in, so batches do not deadlock each other, split reservations or the consumers."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from services.runtime.batch import Batcher
from services.runtime.db import Database, is_unique_violation, retry_conflicts

from .store import ReserveCall, ReserveResult, WarehouseStore

# Batches in the database at once: one commits while the next waits for the row lock with its calls; more
# would only make each batch smaller.
_IN_FLIGHT = 2
_MAX_BATCH = 256
_CONFLICT = ReserveResult(False, None, None, {}, conflict=True)


class ReserveBatcher(Batcher[ReserveCall, ReserveResult]):
    def __init__(self, engine: Database, store: WarehouseStore):
        # Never two calls for one key or one order in a batch: the later one waits for the next batch, and
        # then finds the first one's reservation.
        super().__init__(self._run, max_batch=_MAX_BATCH, in_flight=_IN_FLIGHT,
                         distinct=lambda call: (("key", call.key), ("order", call.order_id)))
        self.engine = engine
        self.store = store

    async def reserve(self, call: ReserveCall) -> ReserveResult:
        return await self.submit(call)

    async def _run(self, calls: list[ReserveCall]) -> list[ReserveResult]:
        try:
            return await retry_conflicts(lambda: self._once(calls))
        except DBAPIError as err:
            if not is_unique_violation(err):
                raise
            if len(calls) == 1:
                return [_CONFLICT]
        # A call of the batch raced a concurrent statement for its key or order and the whole batch was
        # undone: run them one by one so that only that call sees the race (and looks again).
        results = []
        for call in calls:
            try:
                results += await retry_conflicts(lambda call=call: self._once([call]))  # type: ignore[misc]
            except DBAPIError as err:
                if not is_unique_violation(err):
                    raise
                results.append(_CONFLICT)
        return results

    async def _once(self, calls: list[ReserveCall]) -> list[ReserveResult]:
        # One statement, outside BEGIN/COMMIT (connect() autocommits): atomic by itself, and the batch's
        # locks end with it.
        async with self.engine.connect() as conn:
            return await self.store.reserve_calls(conn, calls)
