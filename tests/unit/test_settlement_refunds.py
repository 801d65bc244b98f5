"""Refunds clawed back from a split: exact to the fen, no leg ever negative, cumulative over partial refunds,
a full refund reverses everything — whether the refund comes before the split is shared or after."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.settlement import domain, refunds
from services.settlement.domain import (
    JournalKind,
    LegState,
    PaidLine,
    PaidOrder,
    Party,
    PartyType,
    Purpose,
    SplitRole,
    SplitState,
)
from services.settlement.refunds import Refund

DEALER = Party(PartyType.DEALER, "dlr_1")
BRAND = Party(PartyType.BRAND, "brd_1")
GUIDE = Party(PartyType.GUIDE, "gd_1")
RATES = domain.SplitRates(guide_commission_bp=500)


def order(payable: int, cost: int, guide: str = "gd_1") -> PaidOrder:
    return PaidOrder("ord_1", BRAND.id, DEALER.id, "str_1", payable, (PaidLine(1, cost),), 0, "txn_1",
                     attributed_guide_id=guide)


def complete(split: domain.Split, closed: frozenset[SplitRole] = frozenset()) -> tuple[domain.Split, list]:
    """Carry the split out as the sharing job would: each share SUCCESS (or CLOSED), then completion."""
    journals = []
    for leg in split.legs:
        if leg.is_receiver:
            state = LegState.CLOSED if leg.role in closed else LegState.SUCCESS
            split = domain.with_leg(split, leg.role, state=state)
            if state is LegState.SUCCESS:
                journals.append(domain.share_journal(split, split.leg(leg.role)))
    split = dataclasses.replace(split, state=SplitState.COMPLETED)
    done = domain.completion_journal(split)
    return split, journals + ([done] if done else [])


def party_nets(journals) -> dict[Party, int]:  # type: ignore[no-untyped-def]
    nets: dict[Party, int] = {}
    for j in journals:
        assert sum(p.amount_fen for p in j.postings) == 0
        for p in j.postings:
            nets[p.account.party] = nets.get(p.account.party, 0) + p.amount_fen
    return {k: v for k, v in nets.items() if v}


def test_a_refund_after_the_split_takes_back_each_leg_in_proportion_and_asks_the_shares_back():
    s = domain.settle(order(10_000, 6_000), RATES)  # brand 6,000, guide 500, dealer 3,500
    split, _ = complete(s.split)
    out = refunds.refund(split, Refund("ord_1", "rf_1", 2_000))
    assert [leg.refunded_fen for leg in out.split.legs] == [1_200, 100, 700]
    assert [(r.role, r.amount_fen) for r in out.returns] == [(SplitRole.COST_TO_BRAND, 1_200),
                                                            (SplitRole.GUIDE_COMMISSION, 100)]
    assert out.journal.business_key == "REFUND/ord_1/rf_1"
    c = {(p.account.party, p.account.purpose): p.amount_fen for p in out.journal.postings}
    assert c == {(DEALER, Purpose.MERCHANT_AVAILABLE): -2_000,
                 (domain.PAYMENT_PROVIDER, Purpose.PAYMENTS_CLEARING): 2_000, (BRAND, Purpose.PAYABLE): -1_200,
                 (GUIDE, Purpose.PAYABLE): -100, (DEALER, Purpose.RECEIVABLE): 1_300}
    back = refunds.return_journal(out.returns[0], DEALER)
    assert {(p.account.party, p.account.purpose): p.amount_fen for p in back.postings} == {
        (BRAND, Purpose.COST_SHARE): -1_200, (DEALER, Purpose.MERCHANT_AVAILABLE): 1_200,
        (BRAND, Purpose.PAYABLE): 1_200, (DEALER, Purpose.RECEIVABLE): -1_200}
    # Two returns for two refunds of one leg are two requests; the same refund is always the same request.
    again = refunds.refund(out.split, Refund("ord_1", "rf_2", 1_000))
    assert again.returns[0].return_no != out.returns[0].return_no
    assert refunds.refund(split, Refund("ord_1", "rf_1", 2_000)).returns[0].return_no == out.returns[0].return_no


def test_a_refund_before_the_split_comes_out_of_frozen_funds_and_shrinks_the_shares():
    s = domain.settle(order(10_000, 6_000), RATES, cap_bp=3_000)  # cap 3,000: brand shares 3,000
    out = refunds.refund(s.split, Refund("ord_1", "rf_1", 5_000))
    assert out.returns == ()
    assert [(p.account.purpose, p.amount_fen) for p in out.journal.postings] == [
        (Purpose.MERCHANT_FROZEN, -5_000), (Purpose.PAYMENTS_CLEARING, 5_000)]
    assert out.split.cap_fen == 1_500  # 30% of what is left
    assert [(leg.frozen_refund_fen, leg.shared_fen, leg.deferred_fen) for leg in out.split.legs] == [
        (3_000, 1_500, 1_500), (250, 0, 250), (1_750, 0, 0)]


def test_refunds_wait_while_the_provider_is_sharing_and_never_exceed_what_is_left():
    s = domain.settle(order(10_000, 6_000), RATES)
    with pytest.raises(FailedPrecondition):
        refunds.refund(dataclasses.replace(s.split, state=SplitState.SHARING), Refund("ord_1", "rf", 1))
    with pytest.raises(InvalidArgument) as err:
        refunds.refund(s.split, Refund("ord_1", "rf", 10_001))
    assert [f for f, _ in err.value.violations] == ["refund.amount_fen"]


@st.composite
def scenario(draw):  # type: ignore[no-untyped-def]
    cost = draw(st.integers(0, 50_000))
    payable = draw(st.integers(1, 100_000))
    cap_bp = draw(st.sampled_from([10_000, 3_000, 0]))
    rates = domain.SplitRates(guide_commission_bp=draw(st.integers(0, 2_000)))
    closed = draw(st.sampled_from([frozenset(), frozenset({SplitRole.GUIDE_COMMISSION})]))
    before = draw(st.lists(st.integers(1, 30_000), max_size=3))
    after = draw(st.lists(st.integers(1, 30_000), max_size=4))
    return order(payable, cost), rates, cap_bp, closed, before, after, draw(st.booleans())


@settings(deadline=None, max_examples=200)
@given(scenario())
def test_partial_refunds_in_a_row_claw_back_exactly_and_a_full_refund_reverses_the_split(case):
    o, rates, cap_bp, closed, before, after, finish = case
    s = domain.settle(o, rates, cap_bp)
    split, journals = s.split, [s.payment_journal]
    refunded = 0
    for i, amount in enumerate(before + ["complete"] + after + (["rest"] if finish else [])):
        if amount == "complete":
            split, done = complete(split, closed)
            journals += done
            continue
        left = o.payable_fen - refunded
        amount = left if amount == "rest" else min(amount, left)
        if amount == 0:
            continue
        out = refunds.refund(split, Refund(o.order_id, f"rf_{i}", amount))
        assert out.journal.kind is JournalKind.REFUND
        assert sum(leg.refunded_fen for leg in out.split.legs) - sum(leg.refunded_fen for leg in split.legs) == amount
        journals += [out.journal] + [refunds.return_journal(r, DEALER) for r in out.returns]
        split, refunded = out.split, refunded + amount
        assert all(0 <= leg.refunded_fen <= leg.amount_fen for leg in split.legs)
        assert all(leg.deferred_fen >= 0 and leg.shared_fen >= 0 for leg in split.legs)
        assert all(r.amount_fen > 0 for r in out.returns)

    nets = party_nets(journals)
    assert nets.pop(domain.PAYMENT_PROVIDER, 0) == -(o.payable_fen - refunded)
    if refunded == o.payable_fen:
        # Everything came back: no party keeps or owes anything.
        assert nets == {}
    else:
        # Each party nets its legs less what refunds took back, plus what the split said it is owed.
        expected: dict[Party, int] = {}
        for leg in split.legs:
            expected[leg.receiver] = expected.get(leg.receiver, 0) + leg.amount_fen - leg.refunded_fen
        for r in split.receivables:
            expected[r.creditor] = expected.get(r.creditor, 0) + r.amount_fen
            expected[r.debtor] = expected.get(r.debtor, 0) - r.amount_fen
        assert nets == {k: v for k, v in expected.items() if v}
