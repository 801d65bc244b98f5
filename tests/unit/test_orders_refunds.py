"""Cancelling and refunding without I/O: which orders may be cancelled or refunded, and refund amounts that
add up exactly to what was paid, line by line, however the refunds are cut."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.orders import domain
from services.orders.domain import Status
from services.runtime.errors import FailedPrecondition, InvalidArgument, PermissionDenied

from .test_orders_domain import order

NOW = datetime(2020, 12, 8, 21, 0, tzinfo=UTC)


def test_only_an_unpaid_order_is_cancelled():
    cancelled = domain.cancel(order(), "changed my mind", NOW)
    assert (cancelled.status, cancelled.cancel_reason, cancelled.cancelled_at) == (
        Status.CANCELLED, "changed my mind", NOW)
    for status in (Status.PAID, Status.DISPATCHED):
        with pytest.raises(FailedPrecondition):
            domain.cancel(order(status=status), "too late", NOW)
    with pytest.raises(FailedPrecondition):
        domain.cancel(cancelled, "again", NOW)
    with pytest.raises(FailedPrecondition):
        domain.pay(cancelled, "txn_late", cancelled.payable_fen, NOW)


def test_refunds_come_after_payment_and_goods_come_back_only_once_they_left():
    with pytest.raises(FailedPrecondition):
        domain.refund(order(), "rf_1", [], False, NOW)
    paid = order(payable_lines=((10_000, 2),), status=Status.PAID)
    with pytest.raises(InvalidArgument) as err:
        domain.refund(paid, "rf_1", [("sku_0", 1)], True, NOW)
    assert [f for f, _ in err.value.violations] == ["goods_returned"]
    money, partly = domain.refund(paid, "rf_1", [("sku_0", 1)], False, NOW)
    assert (money.amount_fen, partly.status) == (10_000, Status.PARTIALLY_REFUNDED)
    # Its goods leave later: the refund stands and the time it shipped is kept.
    shipped = domain.dispatch(partly, "shp_1", NOW)
    assert shipped is not None and (shipped.status, shipped.dispatched_at) == (Status.PARTIALLY_REFUNDED, NOW)
    assert domain.dispatch(shipped, "shp_1", NOW) is None
    _, back = domain.refund(shipped, "rf_2", [("sku_0", 1)], True, NOW)
    assert back.status == Status.REFUNDED


def test_a_paid_order_not_handed_over_is_cancelled_with_everything_refunded():
    paid = order(payable_lines=((10_000, 3), (5_000, 1)), discount=1_001, status=Status.PAID)
    refund, cancelled = domain.cancel_paid(paid, "changed my mind", NOW, "cancel-ord_1")
    assert refund is not None and refund.amount_fen == paid.payable_fen == cancelled.refunded_fen
    assert (cancelled.status, cancelled.cancelled_at, cancelled.cancel_reason) == (
        Status.CANCELLED, NOW, "changed my mind")
    assert all(line.refunded_quantity == line.quantity for line in cancelled.lines)
    # After a money-only partial refund: the rest; after a full one: nothing more to pay back.
    _, partly = domain.refund(paid, "rf_1", [("sku_0", 1)], False, NOW)
    rest, cancelled = domain.cancel_paid(partly, "x", NOW, "cancel-ord_1")
    assert rest is not None and rest.amount_fen + partly.refunded_fen == paid.payable_fen
    _, fully = domain.refund(paid, "rf_1", [], False, NOW)
    assert domain.cancel_paid(fully, "x", NOW, "cancel-ord_1")[0] is None
    # Handed over, unpaid or cancelled already: refused.
    for late, reason in ((domain.dispatch(paid, "shp_1", NOW, complete=True), "HANDED_OVER"),
                         (order(), "ORDER_NOT_PAID"), (cancelled, "ILLEGAL_ORDER_TRANSITION")):
        with pytest.raises(FailedPrecondition) as err:
            domain.cancel_paid(late, "too late", NOW, "cancel-ord_1")
        assert err.value.reason == reason
    partial_ship = domain.dispatch(paid, "shp_1", NOW, complete=False)
    with pytest.raises(FailedPrecondition) as err:
        domain.cancel_paid(partial_ship, "too late", NOW, "cancel-ord_1")
    assert err.value.reason == "HANDED_OVER"


def test_a_partial_refund_carries_its_share_of_the_discount():
    placed = order(payable_lines=((10_000, 3), (5_000, 1)), discount=1_001, status=Status.DISPATCHED)
    # Line totals 30,000 and 5,000: the discount splits 858 / 143 (largest remainder).
    assert domain.line_discounts(placed) == [858, 143]
    first, after = domain.refund(placed, "rf_1", [("sku_0", 1)], False, NOW)
    [line] = first.lines
    assert (line.gross_fen, line.discount_fen, line.amount_fen, line.supply_fen) == (10_000, 286, 9_714, 480_000)
    assert after.status == Status.PARTIALLY_REFUNDED
    rest, done = domain.refund(after, "rf_2", [], True, NOW)
    assert done.status == Status.REFUNDED
    assert first.amount_fen + rest.amount_fen == placed.payable_fen == done.refunded_fen
    with pytest.raises(FailedPrecondition):
        domain.refund(done, "rf_3", [], False, NOW)


@pytest.mark.parametrize(("requested", "field"), [
    ([("sku_9", 1)], "lines[0].sku_id"),
    ([("sku_0", 1), ("sku_0", 1)], "lines[1].sku_id"),
    ([("sku_0", 4)], "lines[0].quantity"),
])
def test_refund_lines_must_name_units_the_order_still_has(requested, field):
    placed = order(payable_lines=((10_000, 3),), status=Status.DISPATCHED)
    with pytest.raises(InvalidArgument) as err:
        domain.refund(placed, "rf_1", requested, False, NOW)
    assert [f for f, _ in err.value.violations] == [field]


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(1, 200_000), st.integers(1, 6)), min_size=1, max_size=4),
       st.integers(0, 10**9), st.randoms(use_true_random=False))
def test_refunds_in_any_cut_add_up_to_the_payable_amount(lines, discount_seed, rnd):
    placed = order(payable_lines=tuple(lines), status=Status.DISPATCHED)
    discount = discount_seed % (placed.subtotal_fen + 1)
    placed = order(payable_lines=tuple(lines), discount=discount, status=Status.DISPATCHED) if discount else placed
    current, refunds = placed, []
    while current.status != Status.REFUNDED:
        left = [(li.sku_id, li.quantity - li.refunded_quantity) for li in current.lines
                if li.quantity > li.refunded_quantity]
        cut = [(sku, rnd.randint(1, n)) for sku, n in rnd.sample(left, rnd.randint(1, len(left)))]
        r, current = domain.refund(current, f"rf_{len(refunds)}", cut, False, NOW)
        refunds.append(r)
        assert all(li.amount_fen >= 0 and li.amount_fen == li.gross_fen - li.discount_fen for li in r.lines)
        assert current.refunded_fen == sum(x.amount_fen for x in refunds) <= placed.payable_fen
    assert sum(r.amount_fen for r in refunds) == placed.payable_fen
    assert sum(li.discount_fen for r in refunds for li in r.lines) == placed.discount_fen
    shares = domain.line_discounts(placed)
    for i, line in enumerate(current.lines):
        assert line.refunded_fen == line.line_total_fen - shares[i]


# -- listing ----------------------------------------------------------------------------------------------
def test_listing_names_exactly_one_party_and_stays_in_the_callers_tenant():
    assert domain.list_scope("c_1", "", "", None) == domain.ListScope("consumer_id", "c_1", None)
    with pytest.raises(InvalidArgument) as err:
        domain.list_scope("", "", "", None)
    assert [f for f, _ in err.value.violations] == ["consumer_id"]
    with pytest.raises(InvalidArgument) as err:
        domain.list_scope("c_1", "s_1", "", None)
    assert [f for f, _ in err.value.violations] == ["consumer_id", "store_id"]
    assert domain.list_scope("c_1", "", "", ("dealer", "d_1")).tenant == ("dealer_id", "d_1")
    assert domain.list_scope("", "", "d_1", ("dealer", "d_1")).tenant == ("dealer_id", "d_1")
    for principal, args in [(("dealer", "d_1"), ("", "", "d_2")), (("store", "s_1"), ("", "s_2", "")),
                            (("consumer", "c_1"), ("c_1", "", ""))]:
        with pytest.raises(PermissionDenied):
            domain.list_scope(*args, principal)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
       st.text("abcdef0123456789_.", min_size=1, max_size=40))
def test_page_tokens_round_trip_exactly(at, order_id):
    assert domain.page_after(domain.page_token(at, order_id)) == (at, order_id)


def test_a_pickup_gets_its_code_while_it_waits_even_after_a_money_only_refund():
    from dataclasses import replace

    paid = replace(order(status=Status.PAID), fulfilment_mode=domain.Fulfilment.STORE_PICKUP)
    ready = domain.ready_for_pickup(paid, "123456", NOW)
    assert ready is not None and (ready.pickup_code, ready.pickup_ready_at) == ("123456", NOW)
    assert domain.ready_for_pickup(ready, "123456", NOW) is None  # redelivered
    _, partly = domain.refund(paid, "rf_1", [], False, NOW)
    later = domain.ready_for_pickup(partly, "654321", NOW)
    assert later is not None and later.pickup_code == "654321"
    with pytest.raises(FailedPrecondition):
        domain.ready_for_pickup(order(status=Status.DISPATCHED), "123456", NOW)
