"""Group commit against the real Postgres: `reserve_calls` holds a batch of calls with any number of lines,
located or not, in one statement with the same first-fit choice per call in arrival order; batches racing
each other and the service for the last units never oversell; a batch that loses a unique-key race to a
concurrent statement is run call by call. The store and the batcher run in the test process on the
warehouse's schema, beside the warehouse service working on the same rows."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest
from omo.warehouse.v1 import warehouse_pb2 as wh
from sqlalchemy import text

from services.runtime import db
from services.runtime.ids import new_id
from services.warehouse.batching import ReserveBatcher
from services.warehouse.domain import merge_lines
from services.warehouse.store import ReserveCall, WarehouseStore

from ..support import key
from .test_routing import place, stock
from .test_warehouse import assert_ledger_matches, level, new_warehouse, reserve


@pytest.fixture(scope="module")
async def engine(stack):
    database = db.create_engine(stack.admin_url, "warehouse", pool_size=4)
    yield database
    await database.dispose()


def call(*lines: tuple[str, int], at: str | None = None, order_id: str | None = None,
         k: str | None = None) -> ReserveCall:
    return ReserveCall(new_id("rsv"), order_id or f"ord-{key()}", k or key(), b"hash", merge_lines(lines), 600.0, at)


def held_lines(clients, reservation_id: str) -> list[tuple[str, int]]:
    r = clients.warehouse.GetReservation(wh.GetReservationRequest(reservation_id=reservation_id)).reservation
    return [(line.sku_id, line.quantity) for line in r.lines]


async def test_one_statement_holds_mixed_calls_first_fit_in_arrival_order(engine, clients, world):
    a, b, c = (world.new_sku(stock=0).sku_id for _ in range(3))
    w1, w2 = new_warehouse(clients), new_warehouse(clients)  # time-ordered ids: w1 sorts first
    fwd = place(clients, wh.WAREHOUSE_KIND_FORWARD, 31.22, 121.54)
    for w, sku, n in ((w1, a, 5), (w2, a, 5), (w2, b, 5), (fwd, a, 3), (fwd, b, 2), (w1, c, 1)):
        stock(clients, w, sku, n)
    before = reserve(clients, f"ord-{key()}", (c, 1))
    w1_id, w2_id, fwd_id = w1.warehouse_id, w2.warehouse_id, fwd.warehouse_id
    calls = [
        call((a, 4)),                        # w1 (a: 1 left there)
        call((a, 2), at=w1_id),              # refused: w1 has 1
        call((a, 1), (b, 1)),                # w2: w1 has no b
        call((a, 3), (b, 2), at=fwd_id),     # the forward warehouse, as routing chose
        call((a, 5)),                        # refused: w1 1, w2 4 (the forward warehouse is not a candidate)
        call((c, 1), order_id=before.order_id),  # the order holds stock already
        call((a, 4)),                        # w2
        call((b, 1), at=fwd_id),             # refused: fwd's b went to the call before
    ]
    async with engine.connect() as conn:
        results = await WarehouseStore().reserve_calls(conn, calls)
    assert [r.warehouse_id for r in results] == [w1_id, None, w2_id, fwd_id, None, None, w2_id, None]
    assert [r.prior for r in results] == [False] * 5 + [True] + [False] * 2
    assert results[1].available == {w1_id: {a: 1}}
    assert results[4].available == {w1_id: {a: 1}, w2_id: {a: 4}}
    assert results[7].available == {fwd_id: {b: 0}}
    assert results[5].available == {}
    made = [r for r in results if r.warehouse_id]
    assert len({r.created_at for r in made}) == 1
    assert all((r.expires_at - r.created_at).total_seconds() == 600 for r in made)

    for i in (0, 2, 3, 6):
        assert held_lines(clients, calls[i].reservation_id) == [(line.sku_id, line.quantity) for line in calls[i].lines]
    for i in (1, 4, 5, 7):
        with pytest.raises(grpc.RpcError) as err:
            held_lines(clients, calls[i].reservation_id)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    expected = {(w1_id, a): 4, (w2_id, a): 5, (w2_id, b): 1, (fwd_id, a): 3, (fwd_id, b): 2, (w1_id, c): 1}
    for (w, sku), reserved in expected.items():
        assert level(clients, sku, w).reserved == reserved
        assert_ledger_matches(clients, w, sku)


async def test_a_batch_refused_in_full_writes_nothing(engine, clients, world):
    a = world.new_sku(stock=2).sku_id
    w = world.warehouse.warehouse_id
    level_before = level(clients, a, w)
    calls = [call((a, 3)), call((a, 1), ("sku_never_stocked", 1)), call((a, 1), at="whs_nope")]
    async with engine.connect() as conn:
        results = await WarehouseStore().reserve_calls(conn, calls)
    assert [(r.prior, r.warehouse_id) for r in results] == [(False, None)] * 3
    assert results[0].available == {w: {a: 2}}
    assert results[1].available == {w: {a: 2}}  # the line nobody stocks has no row to show
    assert results[2].available == {}
    assert level(clients, a, w) == level_before
    assert_ledger_matches(clients, w, a)


async def test_batches_and_the_service_racing_for_the_last_units_never_oversell(engine, clients, world):
    a, b = world.new_sku(stock=0).sku_id, world.new_sku(stock=0).sku_id
    w1, w2 = new_warehouse(clients), new_warehouse(clients)
    stock(clients, w1, a, 2)
    stock(clients, w2, a, 1)
    stock(clients, w2, b, 1)
    store = WarehouseStore()
    replicas = [ReserveBatcher(engine, store), ReserveBatcher(engine, store)]
    rng = random.Random(11)
    shapes = [((a, 1),), ((a, 1), (b, 1)), ((b, 1),)]
    calls = [call(*rng.choice(shapes), at=w1.warehouse_id if rng.random() < 0.2 else None) for _ in range(60)]

    def by_grpc(i: int) -> list[tuple[str, int]]:
        lines = shapes[i % len(shapes)]
        try:
            return [(line.sku_id, line.quantity) for line in reserve(clients, f"ord-{key()}", *lines).lines]
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
            return []

    service = [asyncio.to_thread(by_grpc, i) for i in range(12)]
    ours = [replicas[i % 2].reserve(c) for i, c in enumerate(calls)]
    outcome = await asyncio.gather(*ours, *service)
    results, by_service = outcome[:len(calls)], outcome[len(calls):]
    held = [(line.sku_id, line.quantity) for c, r in zip(calls, results, strict=True) if r.warehouse_id
            for line in c.lines]
    held += [line for lines in by_service for line in lines]
    assert all(r.warehouse_id in (None, c.warehouse_id) for c, r in zip(calls, results, strict=True)
               if c.warehouse_id)
    assert sum(q for s, q in held if s == a) == 3
    assert sum(q for s, q in held if s == b) == 1
    for w, sku in ((w1, a), (w2, a), (w2, b)):
        lv = level(clients, sku, w.warehouse_id)
        assert lv.available == 0 and lv.reserved == lv.on_hand
        assert_ledger_matches(clients, w.warehouse_id, sku)


async def test_a_batch_that_loses_a_unique_key_race_is_run_call_by_call(engine, clients, world):
    a, raced_sku = world.new_sku(stock=5).sku_id, world.new_sku(stock=5).sku_id
    other = world.new_sku(stock=5).sku_id
    w = world.warehouse.warehouse_id
    order_id = f"ord-{key()}"

    class Spy(WarehouseStore):
        batches: list[list[str]] = []

        async def reserve_calls(self, conn, calls):  # type: ignore[no-untyped-def]
            self.batches.append([c.order_id for c in calls])
            return await super().reserve_calls(conn, calls)

    spy = Spy()
    batcher = ReserveBatcher(engine, spy)
    # Another replica holds the order first and has not committed yet.
    async with engine.begin() as rival:
        [first] = await WarehouseStore().reserve_calls(rival, [call((raced_sku, 1), order_id=order_id)])
        assert first.warehouse_id == w
        mine = [call((a, 1)), call((other, 2), order_id=order_id), call((a, 2))]
        pending = asyncio.gather(*(batcher.reserve(c) for c in mine))
        async with engine.connect() as watch:  # the batch waits on the order's unique key
            for _ in range(200):
                waiting = (await watch.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%reserve_calls%'"))).scalar_one()
                if waiting:
                    break
                await asyncio.sleep(0.02)
            assert waiting == 1
    results = await pending
    assert spy.batches == [[c.order_id for c in mine], *[[c.order_id] for c in mine]]
    assert [r.warehouse_id for r in results] == [w, None, w]
    assert results[1].prior  # alone, after the rival's commit, the call finds the order held
    assert level(clients, other, w).reserved == 0
    assert level(clients, a, w).reserved == 3
    for sku in (a, raced_sku, other):
        assert_ledger_matches(clients, w, sku)

