"""The reservation batcher without a database: what goes into one batch, that no call is left waiting, and
the fallback when a batch loses a unique-key race."""

from __future__ import annotations

import asyncio
import random
from contextlib import asynccontextmanager

from sqlalchemy.exc import IntegrityError, OperationalError

from services.warehouse.batching import ReserveBatcher
from services.warehouse.domain import Line
from services.warehouse.store import ReserveCall, ReserveResult


class _Engine:
    @asynccontextmanager
    async def connect(self):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        yield None


class _Orig(Exception):
    def __init__(self, sqlstate: str):
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _unique_violation() -> IntegrityError:
    return IntegrityError("INSERT INTO reservations ...", {}, _Orig("23505"))


def _held(call: ReserveCall) -> ReserveResult:
    return ReserveResult(False, f"whs-for-{call.order_id}", None, {})


class _Store:
    """Holds every call; records each statement's calls; `refuse(calls)` may raise instead."""

    def __init__(self, refuse=None, pause: float = 0.0):  # type: ignore[no-untyped-def]
        self.batches: list[list[str]] = []
        self.refuse = refuse
        self.pause = pause

    async def reserve_calls(self, conn, calls: list[ReserveCall]) -> list[ReserveResult]:  # type: ignore[no-untyped-def]
        self.batches.append([c.order_id for c in calls])
        await asyncio.sleep(self.pause)
        if self.refuse is not None:
            self.refuse(calls)
        return [_held(c) for c in calls]


def _call(order_id: str, key: str | None = None) -> ReserveCall:
    return ReserveCall(f"rsv-{order_id}-{key}", order_id, key or f"k-{order_id}", b"h", (Line("sku", 1),), 60.0)


def _batcher(store: _Store) -> ReserveBatcher:
    return ReserveBatcher(_Engine(), store)  # type: ignore[arg-type]


async def test_calls_that_arrive_while_a_batch_runs_go_together_never_two_for_one_key_or_order() -> None:
    store = _Store(pause=0.01)
    batcher = _batcher(store)
    first = asyncio.ensure_future(batcher.reserve(_call("o1")))
    await asyncio.sleep(0)
    # o2 twice under two keys, o3 twice under one key (a retry), k-shared used by two orders.
    later = [_call("o2"), _call("o2", "other"), _call("o3"), _call("o3"), _call("o4", "shared"),
             _call("o5", "shared"), _call("o6")]
    results = await asyncio.gather(first, *(batcher.reserve(c) for c in later))
    assert [r.warehouse_id for r in results] == [f"whs-for-{c}" for c in ["o1", *[c.order_id for c in later]]]
    assert store.batches[0] == ["o1"]
    for batch in store.batches:
        assert len(batch) == len(set(batch))
    seen = [o for batch in store.batches for o in batch]
    assert sorted(seen) == sorted(["o1", *[c.order_id for c in later]])
    # Arrival order is kept for everything that was not held back.
    assert store.batches[1] == ["o2", "o3", "o4", "o6"]
    assert store.batches[2:] == [["o2", "o3", "o5"]]


async def test_no_call_is_left_waiting_however_calls_and_batch_ends_interleave() -> None:
    rng = random.Random(3)
    store = _Store()
    batcher = _batcher(store)
    for round_ in range(60):
        futures = [asyncio.ensure_future(batcher.reserve(_call(f"r{round_}-{i}"))) for i in range(rng.randrange(6))]
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)
        futures.append(asyncio.ensure_future(batcher.reserve(_call(f"r{round_}-last"))))
        done = await asyncio.wait_for(asyncio.gather(*futures), 1)
        assert done[-1].warehouse_id == f"whs-for-r{round_}-last"


async def test_a_batch_that_loses_a_unique_key_race_is_run_call_by_call() -> None:
    def refuse(calls: list[ReserveCall]) -> None:
        # The whole batch is undone by the race; alone, only the call that raced loses.
        if len(calls) > 1 or calls[0].order_id == "raced":
            raise _unique_violation()

    store = _Store(refuse=refuse)
    batcher = _batcher(store)
    with_race = await asyncio.gather(*(batcher.reserve(_call(o)) for o in ("a", "raced", "b")))
    assert [r.conflict for r in with_race] == [False, True, False]
    assert [r.warehouse_id for r in with_race] == ["whs-for-a", None, "whs-for-b"]
    assert store.batches == [["a", "raced", "b"], ["a"], ["raced"], ["b"]]
    # A lone call that races is told to look again at once.
    assert (await batcher.reserve(_call("raced", "again"))).conflict
    assert store.batches[4:] == [["raced"]]


async def test_a_deadlock_victim_batch_is_run_again_and_other_failures_reach_every_caller() -> None:
    failures = iter([OperationalError("...", {}, _Orig("40P01"))])

    def refuse(calls: list[ReserveCall]) -> None:
        err = next(failures, None)
        if err is not None:
            raise err
        if any(c.order_id == "broken" for c in calls):
            raise RuntimeError("the database is gone")

    store = _Store(refuse=refuse)
    batcher = _batcher(store)
    assert (await batcher.reserve(_call("x"))).warehouse_id == "whs-for-x"
    assert store.batches == [["x"], ["x"]]
    broken = [asyncio.ensure_future(batcher.reserve(_call(o))) for o in ("broken", "y")]
    outcomes = await asyncio.gather(*broken, return_exceptions=True)
    assert [type(o) for o in outcomes] == [RuntimeError, RuntimeError]
    assert (await batcher.reserve(_call("z"))).warehouse_id == "whs-for-z"  # and the batcher goes on
