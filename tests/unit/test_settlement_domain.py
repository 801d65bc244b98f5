"""Split settlement rules: the cost goes to the brand, the profit stays with the dealer, and every journal
balances — for any order, including coupons larger than the cost and payments below cost."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.runtime.errors import InvalidArgument
from services.settlement import domain
from services.settlement.domain import (
    AccountKey,
    Journal,
    JournalKind,
    PaidLine,
    PaidOrder,
    Party,
    PartyType,
    Posting,
    Purpose,
    ReceivableReason,
    SplitRole,
    UnbalancedJournal,
)

BRAND = Party(PartyType.BRAND, "brd_1")
DEALER = Party(PartyType.DEALER, "dlr_1")


STORE = Party(PartyType.STORE, "str_9")
GUIDE = Party(PartyType.GUIDE, "gd_7")


def order(payable: int, lines: list[tuple[int, int]], brand_discount: int = 0, order_id: str = "ord_1",
          store: str = "", guide: str = "") -> PaidOrder:
    return PaidOrder(order_id=order_id, brand_id=BRAND.id, dealer_id=DEALER.id, store_id="str_1",
                     payable_fen=payable, lines=tuple(PaidLine(q, p) for q, p in lines),
                     brand_funded_discount_fen=brand_discount, provider_txn_id="txn_1",
                     attributed_store_id=store, attributed_guide_id=guide)


def leg(settlement: domain.Settlement, role: SplitRole) -> int:
    return next(x.amount_fen for x in settlement.split.legs if x.role is role)


def changes(settlement: domain.Settlement) -> dict[tuple[Party, Purpose], int]:
    return {(k.party, k.purpose): v for k, v in domain.net_changes(settlement.journals)}


def test_cost_to_brand_and_profit_to_dealer():
    s = domain.settle(order(payable=259_800, lines=[(2, 100_000)]))
    assert leg(s, SplitRole.COST_TO_BRAND) == 200_000
    assert leg(s, SplitRole.PROFIT_TO_DEALER) == 59_800
    assert s.split.receivables == ()
    assert changes(s) == {
        (domain.PAYMENT_PROVIDER, Purpose.PAYMENTS_CLEARING): -259_800,
        (DEALER, Purpose.MERCHANT_FROZEN): 0,
        (BRAND, Purpose.COST_SHARE): 200_000,
        (DEALER, Purpose.MERCHANT_AVAILABLE): 59_800,
    }
    payment, share, done = s.journals
    assert [(p.account.purpose, p.amount_fen) for p in payment.postings] == [
        (Purpose.PAYMENTS_CLEARING, -259_800), (Purpose.MERCHANT_FROZEN, 259_800)]
    assert share.postings == (Posting(AccountKey(DEALER, Purpose.MERCHANT_FROZEN), -200_000),
                              Posting(AccountKey(BRAND, Purpose.COST_SHARE), 200_000))
    assert done.postings == (Posting(AccountKey(DEALER, Purpose.MERCHANT_FROZEN), -59_800),
                             Posting(AccountKey(DEALER, Purpose.MERCHANT_AVAILABLE), 59_800))


def test_brand_funded_coupon_lowers_the_brand_share_only():
    s = domain.settle(order(payable=249_800, lines=[(2, 100_000)], brand_discount=10_000))
    assert leg(s, SplitRole.COST_TO_BRAND) == 190_000
    assert leg(s, SplitRole.PROFIT_TO_DEALER) == 59_800


def test_paid_below_cost_caps_the_brand_leg_and_the_dealer_owes_the_rest():
    s = domain.settle(order(payable=80_000, lines=[(1, 100_000)]))
    assert leg(s, SplitRole.COST_TO_BRAND) == 80_000
    assert leg(s, SplitRole.PROFIT_TO_DEALER) == 0
    [r] = s.split.receivables
    assert (r.creditor, r.debtor, r.amount_fen, r.reason) == (BRAND, DEALER, 20_000, ReceivableReason.PAID_BELOW_COST)
    c = changes(s)
    assert c[(DEALER, Purpose.PAYABLE)] == -20_000
    assert c[(BRAND, Purpose.RECEIVABLE)] == 20_000
    # A clamped leg moves no money, so it has no posting.
    assert (DEALER, Purpose.MERCHANT_AVAILABLE) not in c


def test_brand_coupon_above_cost_leaves_the_brand_leg_at_zero_and_the_brand_owes_the_dealer():
    s = domain.settle(order(payable=1_000, lines=[(1, 3_000)], brand_discount=5_000))
    assert leg(s, SplitRole.COST_TO_BRAND) == 0
    assert leg(s, SplitRole.PROFIT_TO_DEALER) == 1_000
    [r] = s.split.receivables
    assert (r.creditor, r.debtor, r.amount_fen, r.reason) == (
        DEALER, BRAND, 2_000, ReceivableReason.BRAND_COUPON_ABOVE_COST)


def test_journals_are_derived_from_the_order_so_a_duplicate_derives_the_same_ones():
    a, b = domain.settle(order(1_000, [(1, 500)])), domain.settle(order(1_000, [(1, 500)]))
    assert [j.journal_id for j in a.journals] == [j.journal_id for j in b.journals]
    assert a.split.journal_ids == (a.payment_journal.journal_id,)  # nothing shared yet
    assert [j.business_key for j in a.journals] == [
        "ORDER_PAYMENT/ord_1", "SHARE/ord_1/COST_TO_BRAND", "ORDER_SPLIT/ord_1"]
    assert a.journals[-1].journal_id == a.split.split_journal_id
    other = domain.settle(order(1_000, [(1, 500)], order_id="ord_2"))
    assert not set(a.split.journal_ids) & set(other.split.journal_ids)


def test_an_unbalanced_journal_cannot_be_built():
    acct = AccountKey(DEALER, Purpose.MERCHANT_AVAILABLE)
    with pytest.raises(UnbalancedJournal):
        Journal("jnl_x", JournalKind.ORDER_SPLIT, "k", "ord", (Posting(acct, 5), Posting(acct, -4)))
    with pytest.raises(UnbalancedJournal):
        Journal("jnl_x", JournalKind.ORDER_SPLIT, "k", "ord", (Posting(acct, 0), Posting(acct, 0)))


def test_provider_clearing_is_locked_first():
    s = domain.settle(order(1_000, [(1, 500)]))
    first, *_ = domain.net_changes(s.journals)
    assert first[0] == AccountKey(domain.PAYMENT_PROVIDER, Purpose.PAYMENTS_CLEARING)


@pytest.mark.parametrize(("bad", "field"), [
    ({"payable_fen": 0}, "order.payable_fen"),
    ({"dealer_id": ""}, "order.dealer_id"),
    ({"lines": ()}, "order.lines"),
    ({"lines": (PaidLine(0, 100),)}, "order.lines[0].quantity"),
    ({"lines": (PaidLine(1, 1), PaidLine(1, -1))}, "order.lines[1].unit_supply_price_fen"),
    ({"brand_funded_discount_fen": -1}, "order.coupon.discount_fen"),
    ({"lines": (PaidLine(10_000, 2**62),)}, "order.lines"),
])
def test_an_unsettleable_order_names_the_field(bad, field):
    with pytest.raises(InvalidArgument) as err:
        domain.settle(dataclasses.replace(order(1_000, [(1, 500)]), **bad))
    assert [f for f, _ in err.value.violations] == [field]


RATES = domain.SplitRates(store_commission_bp=250, guide_commission_bp=120, platform_fee_bp=30)


def test_commissions_are_floored_on_the_net_and_the_dealer_takes_the_remainder():
    # net = 99_999 + 1_000 brand coupon = 100_999: store ⌊2.5%⌋ = 2_524, guide ⌊1.2%⌋ = 1_211, fee ⌊0.3%⌋ = 302
    s = domain.settle(order(99_999, [(1, 60_000)], brand_discount=1_000, store=STORE.id, guide=GUIDE.id), RATES)
    assert [(x.receiver, x.role, x.amount_fen) for x in s.split.legs] == [
        (BRAND, SplitRole.COST_TO_BRAND, 59_000),
        (STORE, SplitRole.STORE_COMMISSION, 2_524),
        (GUIDE, SplitRole.GUIDE_COMMISSION, 1_211),
        (domain.PLATFORM, SplitRole.PLATFORM_FEE, 302),
        (DEALER, SplitRole.PROFIT_TO_DEALER, 99_999 - 59_000 - 2_524 - 1_211 - 302),
    ]
    c = changes(s)
    assert c[(STORE, Purpose.COMMISSION)] == 2_524
    assert c[(GUIDE, Purpose.COMMISSION)] == 1_211
    assert c[(domain.PLATFORM, Purpose.PLATFORM_FEE)] == 302


def test_no_commission_without_attribution_or_without_a_rate():
    s = domain.settle(order(10_000, [(1, 5_000)]), RATES)
    assert [x.role for x in s.split.legs] == [SplitRole.COST_TO_BRAND, SplitRole.PLATFORM_FEE,
                                              SplitRole.PROFIT_TO_DEALER]
    s = domain.settle(order(10_000, [(1, 5_000)], store=STORE.id, guide=GUIDE.id), domain.SplitRates())
    assert [x.role for x in s.split.legs] == [SplitRole.COST_TO_BRAND, SplitRole.PROFIT_TO_DEALER]


def test_a_dealer_funded_coupon_lowers_the_dealer_profit():
    rates = domain.SplitRates(store_commission_bp=1_000)
    full = domain.settle(order(10_000, [(1, 6_000)], store=STORE.id), rates)
    # The dealer funds 2,000 off: the consumer pays 8,000, the brand still gets the cost, the store's
    # commission follows the lower net (1,000 -> 800), the dealer's profit falls by 2,000 - 200.
    coupon = domain.settle(order(8_000, [(1, 6_000)], store=STORE.id), rates)
    assert leg(coupon, SplitRole.COST_TO_BRAND) == leg(full, SplitRole.COST_TO_BRAND) == 6_000
    assert (leg(full, SplitRole.STORE_COMMISSION), leg(coupon, SplitRole.STORE_COMMISSION)) == (1_000, 800)
    assert (leg(full, SplitRole.PROFIT_TO_DEALER), leg(coupon, SplitRole.PROFIT_TO_DEALER)) == (3_000, 1_200)


def test_commissions_beyond_the_margin_are_owed_by_the_dealer_never_a_negative_leg():
    rates = domain.SplitRates(store_commission_bp=1_000, guide_commission_bp=500)
    # Paid 10,000 for goods costing 9,500: 500 left after the cost; store is owed 1,000, guide 500.
    s = domain.settle(order(10_000, [(1, 9_500)], store=STORE.id, guide=GUIDE.id), rates)
    assert [(x.role, x.amount_fen) for x in s.split.legs] == [
        (SplitRole.COST_TO_BRAND, 9_500), (SplitRole.STORE_COMMISSION, 500), (SplitRole.GUIDE_COMMISSION, 0),
        (SplitRole.PROFIT_TO_DEALER, 0)]
    assert [(r.creditor, r.debtor, r.amount_fen, r.reason) for r in s.split.receivables] == [
        (STORE, DEALER, 500, ReceivableReason.COMMISSION_ABOVE_MARGIN),
        (GUIDE, DEALER, 500, ReceivableReason.COMMISSION_ABOVE_MARGIN)]
    assert changes(s)[(DEALER, Purpose.PAYABLE)] == -1_000


@pytest.mark.parametrize("rates", [(-1, 0, 0), (5_000, 5_000, 1)])
def test_split_rates_must_be_a_share_of_the_net(rates):
    with pytest.raises(ValueError):
        domain.SplitRates(*rates)


# -- properties ---------------------------------------------------------------------------------------------

lines_st = st.lists(st.tuples(st.integers(1, 100), st.integers(0, 2_000_000)), min_size=1, max_size=8)


@st.composite
def orders(draw):  # type: ignore[no-untyped-def]
    lines = draw(lines_st)
    cost = sum(q * p for q, p in lines)
    # Payable anywhere from 1 fen to well above cost (below cost = zero or negative margin).
    payable = draw(st.integers(1, max(1, cost * 2 + 1_000)))
    # Coupons up to twice the cost: larger than the cost is allowed.
    discount = draw(st.one_of(st.just(0), st.integers(0, cost * 2 + 1_000)))
    return order(payable, lines, discount, store=draw(st.sampled_from(["", STORE.id])),
                 guide=draw(st.sampled_from(["", GUIDE.id])))


@st.composite
def split_rates(draw):  # type: ignore[no-untyped-def]
    store = draw(st.integers(0, 3_000))
    guide = draw(st.integers(0, 3_000))
    return domain.SplitRates(store, guide, draw(st.integers(0, 10_000 - store - guide)))


def unclamped(o: PaidOrder, rates: domain.SplitRates) -> dict[Party, int]:
    """Each party's figure straight from the rules, with no clamping."""
    net = o.payable_fen + o.brand_funded_discount_fen
    figures = {BRAND: domain.cost_of(o) - o.brand_funded_discount_fen, STORE: 0, GUIDE: 0, domain.PLATFORM: 0}
    if o.attributed_store_id:
        figures[STORE] = net * rates.store_commission_bp // 10_000
    if o.attributed_guide_id:
        figures[GUIDE] = net * rates.guide_commission_bp // 10_000
    figures[domain.PLATFORM] = net * rates.platform_fee_bp // 10_000
    figures[DEALER] = o.payable_fen - sum(figures.values())
    return figures


@settings(deadline=None)
@given(orders(), split_rates())
def test_with_commissions_every_party_nets_its_unclamped_figure_and_no_leg_is_negative(o, rates):
    s = domain.settle(o, rates)
    assert all(leg.amount_fen >= 0 for leg in s.split.legs)
    assert sum(leg.amount_fen for leg in s.split.legs) == o.payable_fen
    for journal in s.journals:
        assert sum(p.amount_fen for p in journal.postings) == 0
    c = changes(s)
    for party, figure in unclamped(o, rates).items():
        assert sum(v for (p, _), v in c.items() if p == party) == figure, party
    # A brand-funded coupon is the brand's business: with the coupon removed (the consumer paying its value
    # instead) every commission and the dealer's figure stay the same.
    if o.brand_funded_discount_fen:
        plain = dataclasses.replace(o, payable_fen=o.payable_fen + o.brand_funded_discount_fen,
                                    brand_funded_discount_fen=0)
        a, b = changes(s), changes(domain.settle(plain, rates))
        for party in (DEALER, STORE, GUIDE, domain.PLATFORM):
            assert sum(v for (p, _), v in a.items() if p == party) == sum(v for (p, _), v in b.items() if p == party)


# No deadline: a loaded machine must not turn speed into a failure.
@settings(deadline=None)
@given(orders())
def test_every_journal_balances_and_no_leg_is_negative(o):
    s = domain.settle(o)
    for journal in s.journals:
        assert sum(p.amount_fen for p in journal.postings) == 0
        assert all(p.amount_fen != 0 for p in journal.postings)
    assert all(leg.amount_fen >= 0 for leg in s.split.legs)
    assert sum(leg.amount_fen for leg in s.split.legs) == o.payable_fen == s.split.paid_fen
    assert all(r.amount_fen > 0 for r in s.split.receivables)
    assert len(s.split.receivables) <= 1


@settings(deadline=None)
@given(orders())
def test_money_lands_where_the_legs_say_and_nothing_stays_frozen(o):
    s = domain.settle(o)
    c = changes(s)
    assert c[(domain.PAYMENT_PROVIDER, Purpose.PAYMENTS_CLEARING)] == -o.payable_fen
    assert c[(DEALER, Purpose.MERCHANT_FROZEN)] == 0
    assert c.get((BRAND, Purpose.COST_SHARE), 0) == leg(s, SplitRole.COST_TO_BRAND)
    assert c.get((DEALER, Purpose.MERCHANT_AVAILABLE), 0) == leg(s, SplitRole.PROFIT_TO_DEALER)
    assert sum(c.values()) == 0


@settings(deadline=None)
@given(orders())
def test_with_its_receivable_each_party_ends_with_the_unclamped_figure(o):
    s = domain.settle(o)
    cost = domain.cost_of(o)
    brand_share = cost - o.brand_funded_discount_fen
    c = changes(s)
    brand_net = sum(v for (party, _), v in c.items() if party == BRAND)
    dealer_net = sum(v for (party, _), v in c.items() if party == DEALER)
    assert brand_net == brand_share
    assert dealer_net == o.payable_fen - brand_share


@settings(deadline=None)
@given(lines_st, st.data())
def test_a_brand_funded_coupon_never_changes_the_dealer_profit(lines, data):
    cost = sum(q * p for q, p in lines)
    discount = data.draw(st.integers(0, cost))
    # Without the coupon the consumer pays `discount` more; the margin over cost is the same.
    margin = data.draw(st.integers(0, 5_000_000))
    without = order(cost + margin, lines)
    with_coupon = order(cost + margin - discount, lines, brand_discount=discount)
    if with_coupon.payable_fen <= 0:
        return
    a, b = domain.settle(without), domain.settle(with_coupon)
    assert not a.split.receivables and not b.split.receivables
    assert leg(a, SplitRole.PROFIT_TO_DEALER) == leg(b, SplitRole.PROFIT_TO_DEALER) == margin
    assert leg(b, SplitRole.COST_TO_BRAND) == leg(a, SplitRole.COST_TO_BRAND) - discount


def test_a_counter_redeemed_voucher_moves_the_brand_subsidy_to_the_store_once_per_voucher():
    j = domain.reimbursement_journal(domain.CounterRedemption("CPN-1", BRAND.id, "str_9", 8_800))
    assert j.business_key == "VOUCHER_REIMBURSEMENT/CPN-1"
    assert [(p.account.party, p.account.purpose, p.amount_fen) for p in j.postings] == [
        (BRAND, Purpose.COUPON_SUBSIDY, -8_800),
        (Party(PartyType.STORE, "str_9"), Purpose.VOUCHER_REIMBURSEMENT, 8_800)]
    with pytest.raises(InvalidArgument) as err:
        domain.reimbursement_journal(domain.CounterRedemption("CPN-1", BRAND.id, "", 0))
    assert [f for f, _ in err.value.violations] == ["store_id", "reimbursement_fen"]


@settings(deadline=None)
@given(orders(), split_rates(), st.integers(0, 10_000))
def test_no_more_than_the_cap_is_shared_and_the_rest_of_each_leg_is_owed(o, rates, cap_bp):
    s = domain.settle(o, rates, cap_bp)
    receivers = [leg for leg in s.split.legs if leg.role is not SplitRole.PROFIT_TO_DEALER]
    assert s.split.cap_fen == o.payable_fen * cap_bp // 10_000
    assert sum(leg.shared_fen for leg in receivers) <= s.split.cap_fen
    assert all(0 <= leg.shared_fen <= leg.amount_fen for leg in receivers)
    if sum(leg.amount_fen for leg in receivers) <= s.split.cap_fen:
        assert all(leg.deferred_fen == 0 for leg in receivers)
    # Carried out in full, every party still ends with its unclamped figure: what the cap held back is owed.
    c = changes(s)
    for party, figure in unclamped(o, rates).items():
        assert sum(v for (p, _), v in c.items() if p == party) == figure
    assert c[(DEALER, Purpose.MERCHANT_FROZEN)] == 0


def test_journal_ids_are_the_derived_ids_of_their_business_keys_however_often_asked():
    from services.runtime.ids import derived_id

    for _ in range(2):  # the second time from the cache
        assert domain.journal_id(JournalKind.SHARE, "ord_9", "GUIDE_COMMISSION") == derived_id(
            "jnl", "SHARE/ord_9/GUIDE_COMMISSION")
        assert domain.journal_id(JournalKind.ORDER_PAYMENT, "ord_9") == derived_id("jnl", "ORDER_PAYMENT/ord_9")
    j = Journal.of(JournalKind.REFUND, "ord_9", [Posting(AccountKey(DEALER, Purpose.MERCHANT_FROZEN), -5),
                                                   Posting(AccountKey(DEALER, Purpose.MERCHANT_AVAILABLE), 5)], "rf_1")
    assert (j.journal_id, j.business_key) == (derived_id("jnl", "REFUND/ord_9/rf_1"), "REFUND/ord_9/rf_1")


@settings(deadline=None)
@given(orders(), split_rates(), st.integers(0, 10_000))
def test_what_a_split_leaves_owed_and_its_completion_are_worked_out_once_and_never_go_stale(o, rates, cap_bp):
    split = domain.settle(o, rates, cap_bp).split
    for leg in split.legs:
        if leg.is_receiver:
            split = domain.with_leg(split, leg.role, state=domain.LegState.SUCCESS)
    done = dataclasses.replace(split, state=domain.SplitState.COMPLETED)
    assert done.owed == tuple(domain.owed_after_sharing(done))
    assert done.completion == domain.completion_journal(done)
    assert done.completion is done.completion
    # A split is never changed but replaced: a replaced one works its figures out afresh.
    receivers = [leg for leg in done.legs if leg.is_receiver]
    if receivers:
        closed = domain.with_leg(done, receivers[0].role, state=domain.LegState.CLOSED)
        assert closed.owed == tuple(domain.owed_after_sharing(closed)) != done.owed
        assert closed.completion == domain.completion_journal(closed)
