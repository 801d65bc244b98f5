"""The event plumbing every service relies on, driven directly against the real Postgres and NATS of the test
stack: outbox relay, inbox dedupe, batch fallback, dead letters, recovery after a NATS restart."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from omo.warehouse.v1.events_pb2 import ReservationReleased
from sqlalchemy import text

from services.runtime import bus, db, outbox
from services.runtime.consumer import Consumer, Delivery, Subscription
from services.runtime.outbox import OutboxRelay
from services.runtime.tables import create_platform_tables

SCHEMA = "rt_probe"


class _Op:
    def __init__(self) -> None:
        self.sql: list[str] = []

    def execute(self, sql: str) -> None:
        self.sql.append(sql)


@pytest.fixture(scope="module")
async def probe(stack):
    conn = await asyncpg.connect(stack.admin_url)
    await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}; SET search_path TO {SCHEMA}")
    op = _Op()
    create_platform_tables(op)
    for sql in op.sql:
        await conn.execute(sql)
    await conn.execute("CREATE TABLE effects (reservation_id text PRIMARY KEY, times int NOT NULL)")
    await conn.close()
    engine = db.create_engine(stack.admin_url, SCHEMA)
    nc = await bus.connect(stack.nats_url, "test-probe")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    yield engine, nc, js
    await nc.close()
    await engine.dispose()


async def _effect(conn, event: ReservationReleased, delivery: Delivery) -> None:
    if event.reason == "poison":
        raise RuntimeError("this message can never be handled")
    await conn.execute(
        text("INSERT INTO effects VALUES (:r, 1) ON CONFLICT (reservation_id) DO UPDATE SET times = effects.times + 1"),
        {"r": event.reservation_id},
    )


async def _effects_of_batch(conn, items: list[tuple[ReservationReleased, Delivery]]) -> None:
    """The same effect, set-based: one statement for the whole batch (as the services' batch handlers do)."""
    if any(event.reason == "poison" for event, _ in items):
        raise RuntimeError("this message can never be handled")
    await conn.execute(
        text("INSERT INTO effects SELECT r, count(*) FROM unnest(CAST(:rs AS text[])) AS r GROUP BY r "
             "ON CONFLICT (reservation_id) DO UPDATE SET times = effects.times + excluded.times"),
        {"rs": [event.reservation_id for event, _ in items]},
    )


async def _effects(engine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {r.reservation_id: r.times for r in (await conn.execute(text("SELECT * FROM effects"))).all()}


async def _until(predicate, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.fixture(params=["per_message", "set_based"])
def handling(request) -> str:
    return request.param


def _consumer(engine, nc, subject: str, durable: str, max_deliver: int = 3, handling: str = "per_message") -> Consumer:
    if handling == "set_based":
        sub = Subscription(durable, "CATALOG", subject, ReservationReleased, batch_handler=_effects_of_batch)
    else:
        sub = Subscription(durable, "CATALOG", subject, ReservationReleased, _effect)
    return Consumer(engine, nc, sub, batch=50, max_deliver=max_deliver, ack_wait_s=2)


async def test_outbox_events_reach_the_consumer_exactly_once(probe, handling):
    engine, nc, js = probe
    subject = f"catalog.probe.{uuid.uuid4().hex[:8]}"
    ids = [f"res-{i}-{uuid.uuid4().hex[:6]}" for i in range(60)]
    async with engine.begin() as conn:
        for rid in ids[:30]:
            await outbox.add(conn, subject, ReservationReleased(reservation_id=rid, reason="ok"))
        await outbox.add_many(conn, [(subject, ReservationReleased(reservation_id=rid, reason="ok"))
                                     for rid in ids[30:]])
    relay = OutboxRelay(engine, js, SCHEMA, batch=25)
    while await relay.relay_once():
        pass
    consumer = _consumer(engine, nc, subject, f"probe-{uuid.uuid4().hex[:8]}", handling=handling)
    task = asyncio.create_task(consumer.run())
    try:
        await _until(lambda: _has(engine, ids))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM outbox"))).scalar_one() == 0
    finally:
        await consumer.stop()
        await task
    effects = await _effects(engine)
    assert all(effects[rid] == 1 for rid in ids)


async def _has(engine, ids) -> bool:
    effects = await _effects(engine)
    return all(rid in effects for rid in ids)


async def test_a_redelivered_event_has_no_second_effect(probe, handling):
    engine, nc, js = probe
    subject = f"catalog.probe.{uuid.uuid4().hex[:8]}"
    rid = f"res-dup-{uuid.uuid4().hex[:6]}"
    payload = ReservationReleased(reservation_id=rid, reason="ok").SerializeToString()
    event_id = f"probe-{uuid.uuid4().hex}"
    for copy in range(3):  # the same event, three times, each past JetStream's own duplicate check
        await js.publish(subject, payload, headers={"Omo-Event-Id": event_id, "Nats-Msg-Id": f"{event_id}-{copy}",
                                                    "Omo-Event-Type": "omo.warehouse.v1.ReservationReleased"})
    consumer = _consumer(engine, nc, subject, f"probe-{uuid.uuid4().hex[:8]}", handling=handling)
    task = asyncio.create_task(consumer.run())
    try:
        await _until(lambda: _has(engine, [rid]))
        await asyncio.sleep(1.0)  # give the copies time to arrive; they must not count
    finally:
        await consumer.stop()
        await task
    assert (await _effects(engine))[rid] == 1


async def test_a_poison_message_is_dead_lettered_and_does_not_block_the_rest(probe, handling):
    engine, nc, js = probe
    subject = f"catalog.probe.{uuid.uuid4().hex[:8]}"
    durable = f"probe-{uuid.uuid4().hex[:8]}"
    good = [f"res-good-{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
    for i, rid in enumerate([good[0], good[1], "poisoned", *good[2:]]):
        reason = "poison" if rid == "poisoned" else "ok"
        await js.publish(subject, ReservationReleased(reservation_id=rid, reason=reason).SerializeToString(),
                         headers={"Omo-Event-Id": f"{durable}-{i}",
                                  "Omo-Event-Type": "omo.warehouse.v1.ReservationReleased"})
    dlq = await js.pull_subscribe(f"dlq.{durable}", stream="DLQ",
                                  config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
    consumer = _consumer(engine, nc, subject, durable, max_deliver=2, handling=handling)
    task = asyncio.create_task(consumer.run())
    try:
        await _until(lambda: _has(engine, good))
        letters = await dlq.fetch(1, timeout=20)
    finally:
        await consumer.stop()
        await task
    assert ReservationReleased.FromString(letters[0].data).reservation_id == "poisoned"
    assert letters[0].headers["Omo-Consumer"] == durable
    assert "never be handled" in letters[0].headers["Omo-Dead-Letter-Error"]
    assert "poisoned" not in await _effects(engine)


async def test_events_published_while_nats_restarts_are_still_handled(probe, stack):
    engine, nc, js = probe
    subject = f"catalog.probe.{uuid.uuid4().hex[:8]}"
    consumer = _consumer(engine, nc, subject, f"probe-{uuid.uuid4().hex[:8]}")
    task = asyncio.create_task(consumer.run())
    before, after = f"res-before-{uuid.uuid4().hex[:6]}", f"res-after-{uuid.uuid4().hex[:6]}"
    relay = OutboxRelay(engine, js, SCHEMA)
    try:
        async with engine.begin() as conn:
            await outbox.add(conn, subject, ReservationReleased(reservation_id=before, reason="ok"))
        await relay.relay_once()
        await _until(lambda: _has(engine, [before]))
        await asyncio.to_thread(stack.restart_nats)
        async with engine.begin() as conn:
            await outbox.add(conn, subject, ReservationReleased(reservation_id=after, reason="ok"))

        async def relayed() -> bool:
            try:
                await relay.relay_once()
            except Exception:
                return False  # still reconnecting: the row stays in the outbox
            return await _has(engine, [after])

        await _until(relayed, timeout_s=40)
    finally:
        await consumer.stop()
        await task
    assert (await _effects(engine))[after] == 1


async def test_committed_events_leave_at_once_and_rolled_back_ones_never(probe):
    """The direct path: the running relay publishes rows as soon as their transaction commits (no sweep
    needed) and deletes them; a rolled-back transaction's events are never handed over."""
    engine, nc, js = probe
    subject = f"catalog.probe.{uuid.uuid4().hex[:8]}"
    kept, dropped = f"res-kept-{uuid.uuid4().hex[:6]}", f"res-dropped-{uuid.uuid4().hex[:6]}"
    relay = OutboxRelay(engine, js, SCHEMA)
    relay.sweep_s = 3600.0  # only the direct path can deliver within this test
    relay_task = asyncio.create_task(relay.run())
    consumer = _consumer(engine, nc, subject, f"probe-{uuid.uuid4().hex[:8]}")
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.sleep(0.2)
        with pytest.raises(RuntimeError):
            async with engine.begin() as conn:
                await outbox.add(conn, subject, ReservationReleased(reservation_id=dropped, reason="ok"))
                raise RuntimeError("the change is abandoned")
        async with engine.begin() as conn:
            await outbox.add(conn, subject, ReservationReleased(reservation_id=kept, reason="ok"))
        await _until(lambda: _has(engine, [kept]), timeout_s=10)

        async def outbox_empty() -> bool:
            async with engine.connect() as conn:
                return (await conn.execute(text("SELECT count(*) FROM outbox"))).scalar_one() == 0

        await _until(outbox_empty, timeout_s=10)
        await asyncio.sleep(0.5)
    finally:
        await consumer.stop()
        await task
        await relay.stop()
        relay_task.cancel()
        await asyncio.gather(relay_task, return_exceptions=True)
    assert dropped not in await _effects(engine)
