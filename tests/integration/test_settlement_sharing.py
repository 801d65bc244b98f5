"""Profit sharing carried out at a simulated provider: crashes between any two steps, lost answers, an
unavailable provider, abnormal receivers and the sharing cap all converge to the split posted exactly once.

The executor runs in the test process on a private copy of settlement's schema (migrated from the same
migrations), so no running service works on these splits meanwhile."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import uuid

import pytest
from sqlalchemy import text

from services.runtime import db, migrate
from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.settlement import domain
from services.settlement.domain import LegState, PaidLine, PaidOrder, Purpose, SplitRole, SplitState
from services.settlement.events import RefundHandler
from services.settlement.executor import DebtTransferJob, SharingExecutor, SplitReturnJob
from services.settlement.provider import Faults, SimulatedCrash, SimulatedProvider
from services.settlement.refunds import Refund
from services.settlement.store import LedgerStore

MIGRATIONS = pathlib.Path(domain.__file__).parent / "migrations"
RATES = domain.SplitRates(guide_commission_bp=100)


@pytest.fixture(scope="module")
def lab_url(stack):  # type: ignore[no-untyped-def]
    schema = asyncio.run(migrate.private_schema(stack.admin_url, "settlement_lab", MIGRATIONS))
    return stack.admin_url, schema


@pytest.fixture
async def lab(lab_url):  # type: ignore[no-untyped-def]
    engine = db.create_engine(*lab_url)
    yield engine
    await engine.dispose()


def paid(dealer: str, payable: int, cost: int, guide: str = "") -> PaidOrder:
    return PaidOrder(order_id=f"ord_{uuid.uuid4().hex[:12]}", brand_id="brd_lab", dealer_id=dealer, store_id="str_lab",
                     payable_fen=payable, lines=(PaidLine(1, cost),), brand_funded_discount_fen=0,
                     provider_txn_id=f"wx_{uuid.uuid4().hex[:12]}", attributed_guide_id=guide)


async def record(engine, store: LedgerStore, order: PaidOrder, cap_bp: int = 10_000) -> domain.Settlement:  # type: ignore[no-untyped-def]
    s = domain.settle(order, RATES, cap_bp)
    async with engine.begin() as conn:
        assert await store.record_split(conn, s) is not None
        await store.post(conn, [s.payment_journal])
    return s


async def until_completed(executor: SharingExecutor, engine, order_id: str, passes: int = 6) -> domain.Split:  # type: ignore[no-untyped-def]
    for _ in range(passes):
        await executor.run_once()
        async with engine.connect() as conn:
            split = await executor.store.split(conn, order_id)
        if split.state is SplitState.COMPLETED:
            return split
    raise AssertionError(f"split of {order_id} still {split.state} after {passes} passes")


async def ledger_of(engine, order_id: str) -> list[tuple[str, int, str, str, str]]:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT j.business_key, p.amount_fen, a.party_type, a.party_id, a.purpose FROM journals j "
            "JOIN postings p USING (journal_id) JOIN accounts a USING (account_id) WHERE j.order_id = :o "
            "ORDER BY p.posting_id"), {"o": order_id})).all()
    return [tuple(r) for r in rows]


async def announcements(engine, order_id: str) -> int:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return (await conn.execute(text(
            "SELECT count(*) FROM outbox WHERE subject = 'settlement.split.settled' "
            "AND position(convert_to(:o, 'UTF8') in payload) > 0"), {"o": order_id})).scalar_one()


def crash_once_at(step: str):  # type: ignore[no-untyped-def]
    fired = []

    def hook(name: str) -> None:
        if name == step and not fired:
            fired.append(name)
            raise SimulatedCrash(step)

    return hook, fired


@pytest.mark.parametrize("step", ["after_create", "after_query", "after_unfreeze", "before_record"])
async def test_a_crash_between_any_two_steps_converges_to_one_split(lab, step):
    store, provider = LedgerStore(), SimulatedProvider(Faults(pending_queries=1))
    hook, fired = crash_once_at(step)
    executor = SharingExecutor(lab, store, provider, lease_s=0, poll_s=0, retry_s=0, hook=hook)
    dealer, guide = f"dlr_{uuid.uuid4().hex[:8]}", f"gd_{uuid.uuid4().hex[:8]}"
    s = await record(lab, store, paid(dealer, 10_000, 6_000, guide=guide))
    order_id = s.order.order_id

    with pytest.raises(SimulatedCrash):
        for _ in range(4):
            await executor.run_once()
    assert fired == [step]
    split = await until_completed(executor, lab, order_id)

    requests = [e for e in provider.effects if order_id in str(e) or e[1] in (
        domain.request_no(order_id, "share"), domain.request_no(order_id, "unfreeze"))]
    assert requests == [("create_order", domain.request_no(order_id, "share")),
                        ("unfreeze", domain.request_no(order_id, "unfreeze"))]
    assert [(leg.role, leg.state) for leg in split.legs] == [
        (SplitRole.COST_TO_BRAND, LegState.SUCCESS), (SplitRole.GUIDE_COMMISSION, LegState.SUCCESS),
        (SplitRole.PROFIT_TO_DEALER, LegState.PLANNED)]
    assert await ledger_of(lab, order_id) == [
        (f"ORDER_PAYMENT/{order_id}", -10_000, "PROVIDER", "wechatpay", "PAYMENTS_CLEARING"),
        (f"ORDER_PAYMENT/{order_id}", 10_000, "DEALER", dealer, "MERCHANT_FROZEN"),
        (f"SHARE/{order_id}/COST_TO_BRAND", -6_000, "DEALER", dealer, "MERCHANT_FROZEN"),
        (f"SHARE/{order_id}/COST_TO_BRAND", 6_000, "BRAND", "brd_lab", "COST_SHARE"),
        (f"SHARE/{order_id}/GUIDE_COMMISSION", -100, "DEALER", dealer, "MERCHANT_FROZEN"),
        (f"SHARE/{order_id}/GUIDE_COMMISSION", 100, "GUIDE", guide, "COMMISSION"),
        (f"ORDER_SPLIT/{order_id}", -3_900, "DEALER", dealer, "MERCHANT_FROZEN"),
        (f"ORDER_SPLIT/{order_id}", 3_900, "DEALER", dealer, "MERCHANT_AVAILABLE"),
    ]
    assert set(split.journal_ids) == {domain.journal_id(domain.JournalKind.ORDER_PAYMENT, order_id),
                                      domain.share_journal_id(order_id, SplitRole.COST_TO_BRAND),
                                      domain.share_journal_id(order_id, SplitRole.GUIDE_COMMISSION),
                                      split.split_journal_id}
    assert await announcements(lab, order_id) == 1
    # Further passes find nothing to do.
    assert await executor.run_once() == 0
    assert len(await ledger_of(lab, order_id)) == 8


async def test_lost_answers_and_an_unavailable_provider_are_retried_with_the_same_request(lab):
    store = LedgerStore()
    provider = SimulatedProvider(Faults(timeouts_after_effect=2, unavailable=1))
    executor = SharingExecutor(lab, store, provider, lease_s=0, poll_s=0, retry_s=0)
    s = await record(lab, store, paid(f"dlr_{uuid.uuid4().hex[:8]}", 5_000, 4_000))
    split = await until_completed(executor, lab, s.order.order_id, passes=8)
    assert [kind for kind, _ in provider.effects if _ in (
        domain.request_no(s.order.order_id, "share"), domain.request_no(s.order.order_id, "unfreeze"))] == [
        "create_order", "unfreeze"]
    assert split.leg(SplitRole.COST_TO_BRAND).state is LegState.SUCCESS
    assert [k for k, *_ in await ledger_of(lab, s.order.order_id)].count(
        f"SHARE/{s.order.order_id}/COST_TO_BRAND") == 2


async def test_a_closed_receiver_is_owed_by_the_dealer_who_keeps_the_money(lab):
    guide = f"gd_{uuid.uuid4().hex[:8]}"
    store = LedgerStore()
    provider = SimulatedProvider(Faults(abnormal_accounts={f"GUIDE:{guide}"}))
    executor = SharingExecutor(lab, store, provider, lease_s=0, poll_s=0, retry_s=0)
    dealer = f"dlr_{uuid.uuid4().hex[:8]}"
    s = await record(lab, store, paid(dealer, 20_000, 10_000, guide=guide))
    split = await until_completed(executor, lab, s.order.order_id)

    g = split.leg(SplitRole.GUIDE_COMMISSION)
    assert (g.state, g.close_reason, g.shared_fen) == (LegState.CLOSED, "ACCOUNT_ABNORMAL", 200)
    assert [(r.creditor.id, r.debtor.id, r.amount_fen, r.reason) for r in domain.owed_after_sharing(split)] == [
        (guide, dealer, 200, domain.ReceivableReason.RECEIVER_CLOSED)]
    order_id = s.order.order_id
    assert (await ledger_of(lab, order_id))[-4:] == [
        (f"ORDER_SPLIT/{order_id}", -10_000, "DEALER", dealer, "MERCHANT_FROZEN"),
        (f"ORDER_SPLIT/{order_id}", 10_000, "DEALER", dealer, "MERCHANT_AVAILABLE"),
        (f"ORDER_SPLIT/{order_id}", -200, "DEALER", dealer, "PAYABLE"),
        (f"ORDER_SPLIT/{order_id}", 200, "GUIDE", guide, "RECEIVABLE"),
    ]


async def test_shares_stay_within_the_dealer_cap_and_the_excess_is_owed(lab):
    store = LedgerStore()
    executor = SharingExecutor(lab, store, SimulatedProvider(), lease_s=0, poll_s=0, retry_s=0)
    dealer, guide = f"dlr_{uuid.uuid4().hex[:8]}", f"gd_{uuid.uuid4().hex[:8]}"
    # Paid 10,000: cost 8,000 and a 100 guide commission, but only 30% (3,000) may leave the account.
    s = await record(lab, store, paid(dealer, 10_000, 8_000, guide=guide), cap_bp=3_000)
    split = await until_completed(executor, lab, s.order.order_id)

    assert [(leg.role, leg.amount_fen, leg.shared_fen, leg.deferred_fen) for leg in split.legs] == [
        (SplitRole.COST_TO_BRAND, 8_000, 3_000, 5_000), (SplitRole.GUIDE_COMMISSION, 100, 0, 100),
        (SplitRole.PROFIT_TO_DEALER, 1_900, 0, 0)]
    assert split.leg(SplitRole.GUIDE_COMMISSION).state is LegState.SUCCESS  # nothing to send
    async with lab.connect() as conn:
        dealer_accounts = await store.balances(conn, domain.Party(domain.PartyType.DEALER, dealer))
    assert dealer_accounts == {Purpose.MERCHANT_FROZEN: 0, Purpose.MERCHANT_AVAILABLE: 7_000, Purpose.PAYABLE: -5_100}
    async with lab.connect() as conn:
        assert (await store.verify(conn)).ok


async def test_what_the_cap_left_owed_is_settled_by_transfers_once_despite_a_crash(lab):
    store, provider = LedgerStore(), SimulatedProvider()
    executor = SharingExecutor(lab, store, provider, lease_s=0, poll_s=0, retry_s=0)
    dealer, guide = f"dlr_{uuid.uuid4().hex[:8]}", f"gd_{uuid.uuid4().hex[:8]}"
    s = await record(lab, store, paid(dealer, 10_000, 8_000, guide=guide), cap_bp=3_000)
    await until_completed(executor, lab, s.order.order_id)

    hook, fired = crash_once_at("after_transfer")
    job = DebtTransferJob(lab, store, provider, hook=hook)
    with pytest.raises(SimulatedCrash):
        for _ in range(3):
            await job.run_once()
    assert fired == ["after_transfer"]
    for _ in range(4):  # one transfer per dealer in flight at a time: the brand's debt, then the guide's
        await job.run_once()

    brand, guide_party = domain.Party(domain.PartyType.BRAND, "brd_lab"), domain.Party(domain.PartyType.GUIDE, guide)
    debtor = domain.Party(domain.PartyType.DEALER, dealer)
    expected = [domain.DebtTransfer(brand, debtor, 1, 5_000), domain.DebtTransfer(guide_party, debtor, 1, 100)]
    assert [e for e in provider.effects if e[0] == "transfer" and e[1] in {t.transfer_no for t in expected}] == [
        ("transfer", t.transfer_no) for t in expected]
    async with lab.connect() as conn:
        assert await store.balances(conn, debtor) == {
            Purpose.MERCHANT_FROZEN: 0, Purpose.MERCHANT_AVAILABLE: 1_900, Purpose.PAYABLE: 0}
        assert await store.balances(conn, guide_party) == {Purpose.COMMISSION: 100, Purpose.RECEIVABLE: 0}
        owed = (await conn.execute(text("SELECT sum(outstanding_fen) FROM debts WHERE debtor_id = :d"),
                                   {"d": dealer})).scalar_one()
        assert owed == 0
        assert (await store.verify(conn)).ok


# -- refunds --------------------------------------------------------------------------------------------------


async def balances_of(engine, store: LedgerStore, party: domain.Party) -> dict:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return {k: v for k, v in (await store.balances(conn, party)).items() if v}


async def test_partial_refunds_after_the_split_are_returned_by_receivers_once_despite_failures(lab):
    guide = f"gd_{uuid.uuid4().hex[:8]}"
    store = LedgerStore()
    provider = SimulatedProvider(Faults(return_failures={f"GUIDE:{guide}": 2}))
    executor = SharingExecutor(lab, store, provider, lease_s=0, poll_s=0, retry_s=0)
    dealer = f"dlr_{uuid.uuid4().hex[:8]}"
    s = await record(lab, store, paid(dealer, 10_000, 6_000, guide=guide))  # brand 6,000, guide 100, dealer 3,900
    order_id = s.order.order_id
    await until_completed(executor, lab, order_id)
    handler = RefundHandler(store)

    async with lab.begin() as conn:
        assert await handler.apply(conn, Refund(order_id, "rf_1", 3_000)) == "applied"
    async with lab.begin() as conn:  # the same refund reported again
        assert await handler.apply(conn, Refund(order_id, "rf_1", 3_000)) == "replayed"
    async with lab.begin() as conn:
        with pytest.raises(InvalidArgument):
            await store.record_refund(conn, Refund(order_id, "rf_1", 2_999))
    returns = SplitReturnJob(lab, store, provider, retry_s=0)
    for _ in range(4):
        await returns.run_once()
    async with lab.begin() as conn:
        assert await handler.apply(conn, Refund(order_id, "rf_2", 7_000)) == "applied"  # the rest: a full refund
    for _ in range(4):
        await returns.run_once()

    async with lab.connect() as conn:
        split = await store.split(conn, order_id)
        rows = (await conn.execute(text("SELECT return_no, amount_fen, state, attempts FROM split_returns "
                                        "WHERE order_id = :o ORDER BY return_no"), {"o": order_id})).all()
    assert [leg.refunded_fen for leg in split.legs] == [6_000, 100, 3_900]
    assert sorted((r.amount_fen, r.state) for r in rows) == [
        (30, "SUCCESS"), (70, "SUCCESS"), (1_800, "SUCCESS"), (4_200, "SUCCESS")]
    assert max(r.attempts for r in rows) == 3  # the guide's first return failed twice, then succeeded
    assert sorted(n for kind, n in provider.effects if kind == "return") == sorted(r.return_no for r in rows)
    # Everything came back: no party keeps anything of the order.
    for party in (domain.Party(domain.PartyType.DEALER, dealer), domain.Party(domain.PartyType.GUIDE, guide)):
        assert await balances_of(lab, store, party) == {}
    async with lab.connect() as conn:
        assert (await store.verify(conn)).ok


async def test_a_refund_before_the_split_comes_out_of_frozen_funds_and_shrinks_what_is_shared(lab):
    store, provider = LedgerStore(), SimulatedProvider()
    executor = SharingExecutor(lab, store, provider, lease_s=0, poll_s=0, retry_s=0)
    dealer = f"dlr_{uuid.uuid4().hex[:8]}"
    s = await record(lab, store, paid(dealer, 10_000, 6_000))
    async with lab.begin() as conn:
        outcome = await store.record_refund(conn, Refund(s.order.order_id, "rf_early", 5_000))
    assert outcome.returns == ()
    split = await until_completed(executor, lab, s.order.order_id)

    assert [(leg.refunded_fen, leg.shared_fen) for leg in split.legs] == [(3_000, 3_000), (2_000, 0)]
    assert await balances_of(lab, store, domain.Party(domain.PartyType.DEALER, dealer)) == {
        Purpose.MERCHANT_AVAILABLE: 2_000}
    brand_share = [row for row in await ledger_of(lab, s.order.order_id) if row[2] == "BRAND"]
    assert brand_share == [(f"SHARE/{s.order.order_id}/COST_TO_BRAND", 3_000, "BRAND", "brd_lab", "COST_SHARE")]


async def test_a_refund_arriving_mid_sharing_waits_and_is_applied_once_the_split_completes(lab):
    store, provider = LedgerStore(), SimulatedProvider(Faults(pending_queries=2))
    executor = SharingExecutor(lab, store, provider, lease_s=0, poll_s=0)
    dealer = f"dlr_{uuid.uuid4().hex[:8]}"
    s = await record(lab, store, paid(dealer, 10_000, 6_000))
    order_id = s.order.order_id
    await executor.run_once()
    async with lab.begin() as conn:
        with pytest.raises(FailedPrecondition):
            await store.record_refund(conn, Refund(order_id, "rf_mid", 1_000))
    async with lab.begin() as conn:
        assert await RefundHandler(store).apply(conn, Refund(order_id, "rf_mid", 1_000)) == "waiting"
    returns = SplitReturnJob(lab, store, provider, retry_s=0)
    await returns.run_once()  # the split is still being shared: the refund keeps waiting
    assert not [row for row in await ledger_of(lab, order_id) if row[0].startswith("REFUND/")]

    await until_completed(executor, lab, order_id, passes=8)
    await returns.run_once()
    await returns.run_once()
    assert [row[:2] for row in await ledger_of(lab, order_id) if row[0].startswith(("REFUND/", "SPLIT_RETURN/"))
            and row[2] == "BRAND"] == [(f"REFUND/{order_id}/rf_mid", -600),
                                       (f"SPLIT_RETURN/{order_id}/rf_mid/COST_TO_BRAND", -600),
                                       (f"SPLIT_RETURN/{order_id}/rf_mid/COST_TO_BRAND", 600)]
    async with lab.connect() as conn:
        waiting = (await conn.execute(text("SELECT count(*) FROM waiting_refunds WHERE order_id = :o"),
                                      {"o": order_id})).scalar_one()
    assert waiting == 0


async def test_a_provider_answer_that_disagrees_parks_that_split_and_the_batch_moves_on(lab):
    class Garbled(SimulatedProvider):
        async def create_order(self, out_order_no, transaction_id, merchant, receivers):  # type: ignore[no-untyped-def]
            result = await super().create_order(out_order_no, transaction_id, merchant, receivers)
            if transaction_id == bad.order.provider_txn_id:
                return dataclasses.replace(result, receivers=tuple(
                    dataclasses.replace(r, amount_fen=r.amount_fen + 1) for r in result.receivers))
            return result

    store = LedgerStore()
    executor = SharingExecutor(lab, store, Garbled(), lease_s=0, poll_s=0, retry_s=0)
    bad = await record(lab, store, paid(f"dlr_{uuid.uuid4().hex[:8]}", 10_000, 6_000))
    good = await record(lab, store, paid(f"dlr_{uuid.uuid4().hex[:8]}", 10_000, 6_000))
    await until_completed(executor, lab, good.order.order_id)
    async with lab.connect() as conn:
        parked = await store.split(conn, bad.order.order_id)
        error = (await conn.execute(text("SELECT last_error FROM splits WHERE order_id = :o"),
                                    {"o": bad.order.order_id})).scalar_one()
    assert parked.state is SplitState.SCHEDULED
    assert "ProviderDisagrees" in error
    # Only the payment is booked: nothing was shared on an answer that does not match the request.
    assert [row[0] for row in await ledger_of(lab, bad.order.order_id)] == [f"ORDER_PAYMENT/{bad.order.order_id}"] * 2
