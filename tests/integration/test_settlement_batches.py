"""Settlement's set-based paths on a private copy of its schema: a batch of paid orders (or refunds, or vouchers)
costs the same few statements whatever its size and has each effect once; a malformed event fails its batch
before anything is written and is dead-lettered alone; every transaction that moves money books the ledger last
and once; and the consumer, the sharing job, refunds and the other jobs run side by side on the same hot accounts
without deadlocking."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager

import asyncpg
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from omo.marketing.v1 import events_pb2 as marketing_events
from omo.marketing.v1 import marketing_pb2
from omo.orders.v1 import events_pb2 as order_events
from omo.orders.v1 import orders_pb2
from sqlalchemy import text

from services.runtime import bus, db, migrate
from services.runtime.consumer import Consumer, Delivery, PermanentError, Subscription
from services.settlement import domain
from services.settlement.config import SettlementConfig
from services.settlement.domain import Party, PartyType, Purpose, SplitState
from services.settlement.events import CounterRedemptionHandler, OrderPaidHandler, RefundHandler
from services.settlement.executor import DebtTransferJob, SharingExecutor, SplitReturnJob
from services.settlement.provider import Faults, SimulatedProvider
from services.settlement.store import LedgerStore

from .test_settlement_sharing import MIGRATIONS

# The service's defaults: a guide commission of 1% and WeChat's 30% cap, so every order leaves a debt too.
CONFIG = SettlementConfig(domain.SplitRates(guide_commission_bp=100))
PROVIDER = Party(PartyType.PROVIDER, "wechatpay")


@pytest.fixture(scope="module")
def lab_url(stack):  # type: ignore[no-untyped-def]
    schema = asyncio.run(migrate.private_schema(stack.admin_url, "settlement_batches", MIGRATIONS))
    return stack.admin_url, schema


@pytest.fixture
async def lab(lab_url):  # type: ignore[no-untyped-def]
    engine = db.create_engine(*lab_url, pool_size=8)
    yield engine
    await engine.dispose()


# -- what a transaction ran ------------------------------------------------------------------------------------


def kind_of(sql: str) -> str:
    """A statement by what it does to the ledger: `post` (account rows), `debts` (debt rows) or `other`."""
    if "INSERT INTO accounts" in sql:
        return "post"
    if "INSERT INTO debts" in sql or "UPDATE debts" in sql:
        return "debts"
    return "other"


class Recording(db.Connection):
    """A connection that notes every statement it runs."""

    __slots__ = ("statements",)

    def __init__(self, raw: asyncpg.Connection, statements: list[str]):
        super().__init__(raw)
        self.statements = statements

    async def execute(self, statement, params=None):  # type: ignore[no-untyped-def]
        self.statements.append(statement.text if hasattr(statement, "text") else statement)
        return await super().execute(statement, params)


class RecordingEngine:
    """The jobs' engine, noting the statements of each transaction (`begin`) and autocommit use (`connect`)."""

    def __init__(self, engine: db.Database):
        self.engine = engine
        self.transactions: list[list[str]] = []
        self.autocommit: list[list[str]] = []

    @asynccontextmanager
    async def begin(self, **kwargs):  # type: ignore[no-untyped-def]
        async with self.engine.begin(**kwargs) as conn:
            self.transactions.append([])
            yield Recording(conn.raw, self.transactions[-1])

    @asynccontextmanager
    async def connect(self):  # type: ignore[no-untyped-def]
        async with self.engine.connect() as conn:
            self.autocommit.append([])
            yield Recording(conn.raw, self.autocommit[-1])


@asynccontextmanager
async def recorded(engine: db.Database, into: list[list[str]]):  # type: ignore[no-untyped-def]
    async with engine.begin() as conn:
        into.append([])
        yield Recording(conn.raw, into[-1])


def assert_books_last_and_once(transactions: list[list[str]]) -> None:
    for statements in transactions:
        kinds = [kind_of(s) for s in statements]
        assert kinds.count("post") <= 1, kinds
        assert kinds.count("debts") <= 1, kinds
        ledger = [k for k in kinds if k != "other"]
        # Debts, then the posting, and nothing after them: the hot rows are taken last.
        assert kinds[len(kinds) - len(ledger):] == ledger, kinds
        assert ledger in ([], ["post"], ["debts"], ["debts", "post"]), kinds


# -- events ----------------------------------------------------------------------------------------------------


def paid_event(dealer: str, payable: int = 12_000, cost: int = 8_000, guide: str = "gd_lab",
               order_id: str | None = None) -> order_events.OrderPaid:
    order = orders_pb2.Order(
        order_id=order_id or f"ord_{uuid.uuid4().hex[:12]}", status=orders_pb2.ORDER_STATUS_PAID, store_id="str_lab",
        dealer_id=dealer, brand_id="brd_lab", consumer_id="csm_lab",
        lines=[orders_pb2.OrderLine(sku_id="sku_lab", name="ThinkPad", quantity=1, unit_price_fen=payable,
                                    unit_supply_price_fen=cost, line_total_fen=payable)],
        attribution=orders_pb2.Attribution(scene="qr", dealer_id=dealer, store_id="str_lab", guide_id=guide),
        subtotal_fen=payable, payable_fen=payable, payment_txn_id=f"wx_{uuid.uuid4().hex[:12]}")
    return order_events.OrderPaid(order=order, provider_txn_id=order.payment_txn_id)


def malformed_event(dealer: str) -> order_events.OrderPaid:
    event = paid_event(dealer)
    event.order.payable_fen = 0  # a paid order was paid something
    return event


def deliveries(events: list) -> list[tuple[object, Delivery]]:  # type: ignore[type-arg]
    return [(e, Delivery(f"evt_{uuid.uuid4().hex}", "orders.order.paid", 0, 1)) for e in events]


async def balance(engine: db.Database, party: Party, purpose: Purpose) -> int:
    async with engine.connect() as conn:
        return (await LedgerStore().balances(conn, party)).get(purpose, 0)


async def count(engine: db.Database, sql: str, **params: object) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


async def verified(engine: db.Database) -> domain.LedgerCheck:
    async with engine.begin(isolation="repeatable_read", readonly=True) as conn:
        return await LedgerStore().verify(conn)


async def share_all(executor: SharingExecutor) -> None:
    while await executor.run_once():
        pass


# -- the order-paid consumer -----------------------------------------------------------------------------------


async def test_a_batch_of_paid_orders_costs_two_statements_whatever_its_size(lab):
    handler = OrderPaidHandler(LedgerStore(), CONFIG)
    dealer = f"dlr_{uuid.uuid4().hex[:8]}"
    transactions: list[list[str]] = []
    for size in (2, 40):
        events = [paid_event(dealer, payable=10_000 + i) for i in range(size)]
        async with recorded(lab, transactions) as conn:
            await handler(conn, deliveries(events))
    assert [[kind_of(s) for s in t] for t in transactions] == [["other", "post"], ["other", "post"]]

    paid = sum(10_000 + i for i in range(2)) + sum(10_000 + i for i in range(40))
    assert await balance(lab, Party(PartyType.DEALER, dealer), Purpose.MERCHANT_FROZEN) == paid
    assert await count(lab, "SELECT count(*) FROM splits WHERE dealer_id = :d", d=dealer) == 42
    # Every split has its legs: the brand's cost, the guide's commission and the dealer's rest.
    assert await count(lab, "SELECT count(*) FROM split_legs JOIN splits USING (order_id) WHERE dealer_id = :d",
                       d=dealer) == 42 * 3
    assert (await verified(lab)).ok


async def test_an_order_split_before_or_twice_in_a_batch_is_split_and_paid_once(lab):
    store = LedgerStore()
    handler = OrderPaidHandler(store, CONFIG)
    dealer = f"dlr_{uuid.uuid4().hex[:8]}"
    first, second = paid_event(dealer, payable=10_000), paid_event(dealer, payable=20_000)
    async with lab.begin() as conn:
        await handler(conn, deliveries([first]))
    # The same payment again under fresh event ids, and the second order twice in one batch.
    async with lab.begin() as conn:
        await handler(conn, deliveries([first, second, second]))

    assert await balance(lab, Party(PartyType.DEALER, dealer), Purpose.MERCHANT_FROZEN) == 30_000
    for event in (first, second):
        order_id = event.order.order_id
        assert await count(lab, "SELECT count(*) FROM journals WHERE order_id = :o", o=order_id) == 1
        assert await count(lab, "SELECT count(*) FROM split_legs WHERE order_id = :o", o=order_id) == 3
    async with lab.connect() as conn:
        assert await store.record_split(conn, handler.settlement(first)) is None


async def test_a_malformed_event_fails_its_batch_before_anything_is_written(lab):
    handler = OrderPaidHandler(LedgerStore(), CONFIG)
    dealer = f"dlr_{uuid.uuid4().hex[:8]}"
    transactions: list[list[str]] = []
    with pytest.raises(PermanentError, match="payable_fen"):
        async with recorded(lab, transactions) as conn:
            await handler(conn, deliveries([paid_event(dealer), malformed_event(dealer), paid_event(dealer)]))
    assert transactions == [[]]
    assert await count(lab, "SELECT count(*) FROM splits WHERE dealer_id = :d", d=dealer) == 0


async def test_through_the_consumer_a_malformed_event_is_dead_lettered_and_the_rest_of_its_batch_split(lab, stack):
    nc = await bus.connect(stack.nats_url, "test-settlement-batches")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    subject = f"catalog.probe.{uuid.uuid4().hex[:8]}"  # a subject no service consumes
    durable = f"probe-{uuid.uuid4().hex[:8]}"
    dealer = f"dlr_{uuid.uuid4().hex[:8]}"
    good = [paid_event(dealer, payable=10_000 + i) for i in range(5)]
    bad = malformed_event(dealer)
    published = [*good[:2], bad, *good[2:], good[0]]  # and the first one redelivered under its event id
    for i, event in enumerate(published):
        event_id = f"{durable}-{good.index(event) if event in good else 'bad'}"
        await js.publish(subject, event.SerializeToString(),
                         headers={"Omo-Event-Id": event_id, "Nats-Msg-Id": f"{durable}-{i}",
                                  "Omo-Event-Type": "omo.orders.v1.OrderPaid"})
    dlq = await js.pull_subscribe(f"dlq.{durable}", stream="DLQ",
                                  config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
    sub = Subscription(durable, "CATALOG", subject, order_events.OrderPaid,
                       batch_handler=OrderPaidHandler(LedgerStore(), CONFIG))
    consumer = Consumer(lab, nc, sub, batch=50, max_deliver=2, ack_wait_s=2)
    task = asyncio.create_task(consumer.run())
    try:
        deadline = time.monotonic() + 20
        while await count(lab, "SELECT count(*) FROM splits WHERE dealer_id = :d", d=dealer) < len(good):
            assert time.monotonic() < deadline, "the good events were not split"
            await asyncio.sleep(0.05)
        letters = await dlq.fetch(1, timeout=20)
    finally:
        await consumer.stop()
        await task
        await nc.close()
    assert order_events.OrderPaid.FromString(letters[0].data).order.order_id == bad.order.order_id
    assert "payable_fen" in letters[0].headers["Omo-Dead-Letter-Error"]
    assert await count(lab, "SELECT count(*) FROM splits WHERE dealer_id = :d", d=dealer) == len(good)
    assert await balance(lab, Party(PartyType.DEALER, dealer), Purpose.MERCHANT_FROZEN) == sum(
        e.order.payable_fen for e in good)


# -- the sharing job -------------------------------------------------------------------------------------------


async def test_a_sharing_pass_costs_the_same_statements_for_2_or_40_splits(lab):
    store = LedgerStore()
    handler = OrderPaidHandler(store, CONFIG)
    await share_all(SharingExecutor(lab, store, SimulatedProvider(), poll_s=0, retry_s=0))  # earlier tests' splits
    passes = []
    for size in (2, 40):
        dealer = f"dlr_{uuid.uuid4().hex[:8]}"
        async with lab.begin() as conn:
            await handler(conn, deliveries([paid_event(dealer, payable=10_000 + i) for i in range(size)]))
        engine = RecordingEngine(lab)
        executor = SharingExecutor(engine, store, SimulatedProvider(), poll_s=0, retry_s=0)  # type: ignore[arg-type]
        assert await executor.run_once() == size
        passes.append(([len(s) for s in engine.autocommit], [[kind_of(s) for s in t] for t in engine.transactions]))
        assert await count(lab, "SELECT count(*) FROM splits WHERE dealer_id = :d AND state = 'COMPLETED'",
                           d=dealer) == size
        # The cap (30%) leaves the guide's commission and part of the brand's share owed by the dealer.
        assert await count(lab, "SELECT count(*) FROM debts WHERE debtor_id = :d", d=dealer) == 2
    # The lease and the read (no transaction); then progress, the events, the debts and the posting.
    assert passes[0] == passes[1] == ([2], [["other", "other", "debts", "post"]])
    assert (await verified(lab)).ok


async def test_a_split_with_nothing_to_share_asks_the_provider_only_to_unfreeze(lab):
    store = LedgerStore()
    await share_all(SharingExecutor(lab, store, SimulatedProvider(), poll_s=0, retry_s=0))
    nothing_shared = SettlementConfig(domain.SplitRates(guide_commission_bp=100), default_cap_bp=0)
    dealer = f"dlr_{uuid.uuid4().hex[:8]}"
    event = paid_event(dealer, payable=10_000, cost=6_000)
    async with lab.begin() as conn:
        await OrderPaidHandler(store, nothing_shared)(conn, deliveries([event]))
    provider = SimulatedProvider()
    assert await SharingExecutor(lab, store, provider, poll_s=0, retry_s=0).run_once() == 1

    order_id = event.order.order_id
    assert provider.effects == [("unfreeze", domain.request_no(order_id, "unfreeze"))]
    async with lab.connect() as conn:
        split = await store.split(conn, order_id)
    assert split.state is SplitState.COMPLETED
    # Everything stays in the dealer's account, owed to the brand and the guide.
    assert await balance(lab, Party(PartyType.DEALER, dealer), Purpose.MERCHANT_AVAILABLE) == 10_000
    assert await balance(lab, Party(PartyType.DEALER, dealer), Purpose.PAYABLE) == -(6_000 + 100)


# -- every writer of the ledger ----------------------------------------------------------------------------------


async def test_every_transaction_that_moves_money_books_the_ledger_last_and_once(lab):
    store = LedgerStore()
    transactions: list[list[str]] = []
    dealer, guide = f"dlr_{uuid.uuid4().hex[:8]}", f"gd_{uuid.uuid4().hex[:8]}"
    events = [paid_event(dealer, payable=10_000 + i, guide=guide) for i in range(6)]
    async with recorded(lab, transactions) as conn:
        await OrderPaidHandler(store, CONFIG)(conn, deliveries(events))
    # One refund before the split is shared; the rest after it, two of them in one batch with a replay.
    early = events[0].order.order_id
    refund = RefundHandler(store)

    def refunded(order_id: str, refund_id: str, amount: int) -> order_events.OrderRefunded:
        return order_events.OrderRefunded(refund=orders_pb2.Refund(order_id=order_id, provider_refund_id=refund_id,
                                                                   amount_fen=amount))

    async with recorded(lab, transactions) as conn:
        await refund(conn, deliveries([refunded(early, "rf_early", 1_000)]))
    engine = RecordingEngine(lab)
    provider = SimulatedProvider(Faults(return_failures={f"GUIDE:{guide}": 1}))
    await share_all(SharingExecutor(engine, store, provider, poll_s=0, retry_s=0))  # type: ignore[arg-type]
    later = [e.order.order_id for e in events[1:]]
    async with recorded(lab, transactions) as conn:
        await refund(conn, deliveries([refunded(later[1], "rf_b", 2_000), refunded(later[0], "rf_a", 500),
                                       refunded(later[1], "rf_b", 2_000), refunded(later[1], "rf_c", 100)]))
    returns = SplitReturnJob(engine, store, provider, retry_s=0)  # type: ignore[arg-type]
    for _ in range(3):
        await returns.run_once()
    transfers = DebtTransferJob(engine, store, provider)  # type: ignore[arg-type]
    for _ in range(3):
        await transfers.run_once()
    voucher = marketing_events.CouponRedeemedAtCounter(
        coupon=marketing_pb2.Coupon(code=f"CPN-{uuid.uuid4().hex[:8]}", brand_id="brd_lab",
                                    funder=marketing_pb2.FUNDER_BRAND),
        store_id="str_lab", reimbursement_fen=800)
    async with recorded(lab, transactions) as conn:
        await CounterRedemptionHandler(store)(conn, deliveries([voucher, voucher]))

    assert_books_last_and_once(transactions + engine.transactions)
    assert [kind_of(s) for t in engine.autocommit for s in t].count("post") == 0
    assert await count(lab, "SELECT count(*) FROM refunds WHERE order_id = ANY(:o)", o=[early, *later]) == 4
    assert await count(lab, "SELECT count(*) FROM split_returns WHERE order_id = ANY(:o) AND state = 'SUCCESS'",
                       o=later) >= 3
    assert await count(lab, "SELECT count(*) FROM debt_transfers WHERE debtor_id = :d AND state = 'DONE'",
                       d=dealer) >= 1
    assert await balance(lab, Party(PartyType.STORE, "str_lab"), Purpose.VOUCHER_REIMBURSEMENT) == 800
    assert (await verified(lab)).ok


async def test_the_consumer_the_sharing_job_refunds_and_transfers_side_by_side_never_deadlock(lab):
    """The hot accounts of a mall with two dealers and one brand, written at once by three consumer replicas, two
    sharing jobs, refund batches and debt transfers: no transaction is ever chosen as a deadlock victim."""
    store = LedgerStore()
    dealers = [f"dlr_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    provider = SimulatedProvider()
    handler, refund = OrderPaidHandler(store, CONFIG), RefundHandler(store)
    executors = [SharingExecutor(lab, store, provider, batch=25, poll_s=0, retry_s=0) for _ in range(2)]
    transfers = DebtTransferJob(lab, store, provider)
    failures: list[BaseException] = []
    paid: list[str] = []
    stop = asyncio.Event()

    async def guarded(work) -> None:  # type: ignore[no-untyped-def]
        try:
            await work()
        except Exception as exc:  # every failure is the finding
            failures.append(exc)

    async def consumer(n: int) -> None:
        for i in range(12):
            events = [paid_event(dealers[(n + i + k) % 2], payable=10_000 + k) for k in range(8)]
            async with lab.begin() as conn:
                await handler(conn, deliveries(events))
            paid.extend(e.order.order_id for e in events)
            await asyncio.sleep(0)

    async def sharing(executor: SharingExecutor) -> None:
        while not stop.is_set():
            await executor.run_once()
            await asyncio.sleep(0.005)

    async def refunds() -> None:
        n = 0
        while not stop.is_set():
            ids = paid[-6:]
            async with lab.begin() as conn:
                await refund(conn, deliveries([order_events.OrderRefunded(refund=orders_pb2.Refund(
                    order_id=o, provider_refund_id=f"rf_{n}_{k}", amount_fen=10)) for k, o in enumerate(ids)]))
            n += 1
            await asyncio.sleep(0.01)

    async def settle_debts() -> None:
        while not stop.is_set():
            await transfers.run_once()
            await asyncio.sleep(0.02)

    background = [asyncio.create_task(guarded(w)) for w in (
        *(lambda e=e: sharing(e) for e in executors), refunds, settle_debts)]
    await asyncio.gather(*(guarded(lambda n=n: consumer(n)) for n in range(3)))
    stop.set()
    await asyncio.gather(*background)
    # What a pass skipped while a refund held its row is shared now.
    await share_all(executors[0])

    assert failures == []  # a deadlock victim (40P01) would be one
    assert await count(lab, "SELECT count(*) FROM splits WHERE order_id = ANY(:o) AND state <> 'COMPLETED'",
                       o=paid) == 0
    assert (await verified(lab)).ok
