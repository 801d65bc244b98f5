"""Order rules without I/O: pricing at the unified price, the coupon discount, attribution, the state machine
and the payment check."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.orders import domain
from services.orders.domain import Status
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

NOW = datetime(2020, 12, 8, 20, 0, tzinfo=UTC)
STORE = domain.StoreRef("str_1", "dlr_1", "brd_1")


def quote(sku_id: str, price: int = 599_900, supply: int = 480_000) -> domain.Quote:
    return domain.Quote(sku_id, f"name of {sku_id}", price, supply)


def order(*, payable_lines: tuple[tuple[int, int], ...] = ((599_900, 1),), discount: int = 0,
          status: Status = Status.PENDING_PAYMENT) -> domain.Order:
    requested = [domain.LineInput(f"sku_{i}", qty) for i, (_, qty) in enumerate(payable_lines)]
    quotes = {f"sku_{i}": quote(f"sku_{i}", price) for i, (price, _) in enumerate(payable_lines)}
    lines = domain.price_lines(requested, quotes)
    coupon = domain.Coupon("CPN", "BRAND", discount) if discount else None
    placed = domain.new_order("ord_1", STORE, "c_1", domain.Attribution(), lines, coupon, "rsv_1", NOW)
    if status == Status.PENDING_PAYMENT:
        return placed
    paid = domain.pay(placed, "txn_1", placed.payable_fen, NOW)
    if status == Status.PAID:
        return paid
    dispatched = domain.dispatch(paid, "shp_1", NOW)
    assert dispatched is not None
    return dispatched


# -- pricing ----------------------------------------------------------------------------------------------

def test_lines_are_priced_at_the_quote_and_keep_the_supply_price():
    lines = domain.price_lines([domain.LineInput("a", 2), domain.LineInput("b", 1)],
                               {"a": quote("a", 100, 70), "b": quote("b", 250, 200)})
    assert [(li.sku_id, li.unit_price_fen, li.unit_supply_price_fen, li.line_total_fen) for li in lines] == [
        ("a", 100, 70, 200), ("b", 250, 200, 250)]
    assert domain.totals(lines) == domain.Totals(450, 0, 450)


def test_an_unquoted_sku_is_not_found():
    with pytest.raises(NotFound):
        domain.price_lines([domain.LineInput("a", 1)], {})


def test_a_repeated_sku_is_refused_naming_the_repeating_line():
    with pytest.raises(InvalidArgument) as err:
        domain.check_lines([domain.LineInput("a", 1), domain.LineInput("b", 1), domain.LineInput("a", 2)])
    assert [f for f, _ in err.value.violations] == ["lines[2].sku_id"]


def test_a_discount_larger_than_the_basket_is_capped():
    lines = domain.price_lines([domain.LineInput("a", 1)], {"a": quote("a", 100)})
    assert domain.totals(lines, 150) == domain.Totals(100, 100, 0)
    placed = domain.new_order("o", STORE, "c", domain.Attribution(), lines, domain.Coupon("C", "BRAND", 150), "r", NOW)
    assert placed.coupon is not None and placed.coupon.discount_fen == placed.discount_fen == 100


def test_a_negative_discount_is_a_bug():
    with pytest.raises(ValueError):
        domain.totals([], -1)


@given(
    items=st.lists(st.tuples(st.integers(1, 10**9), st.integers(1, 10_000)), min_size=1, max_size=50),
    discount=st.integers(0, 10**14),
)
def test_payable_is_subtotal_less_a_discount_that_never_exceeds_it(items, discount):
    requested = [domain.LineInput(f"s{i}", qty) for i, (_, qty) in enumerate(items)]
    quotes = {f"s{i}": quote(f"s{i}", price) for i, (price, _) in enumerate(items)}
    lines = domain.price_lines(requested, quotes)
    sums = domain.totals(lines, discount)
    assert sums.subtotal_fen == sum(price * qty for price, qty in items)
    assert 0 <= sums.discount_fen <= sums.subtotal_fen
    assert sums.discount_fen == min(discount, sums.subtotal_fen)
    assert sums.payable_fen == sums.subtotal_fen - sums.discount_fen >= 0
    assert all(isinstance(v, int) for v in (sums.subtotal_fen, sums.discount_fen, sums.payable_fen))


@given(skus=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=10))
def test_check_lines_refuses_exactly_the_repeats(skus):
    lines = [domain.LineInput(s, 1) for s in skus]
    repeats = [f"lines[{i}].sku_id" for i, s in enumerate(skus) if s in skus[:i]]
    if not repeats:
        domain.check_lines(lines)
        return
    with pytest.raises(InvalidArgument) as err:
        domain.check_lines(lines)
    assert [f for f, _ in err.value.violations] == repeats


# -- attribution ------------------------------------------------------------------------------------------

def test_an_empty_attribution_credits_the_ordering_store_and_its_dealer():
    credited = domain.attribute(domain.Attribution(scene="live-1208", guide_id="g_7"), STORE, None)
    assert credited == domain.Attribution("live-1208", "dlr_1", "str_1", "g_7")


def test_another_store_of_the_same_dealer_may_be_credited():
    sister = domain.StoreRef("str_2", "dlr_1", "brd_1")
    credited = domain.attribute(domain.Attribution(store_id="str_2"), STORE, sister)
    assert (credited.store_id, credited.dealer_id) == ("str_2", "dlr_1")


@pytest.mark.parametrize(("requested", "credited_store", "field"), [
    (domain.Attribution(store_id="str_9"), domain.StoreRef("str_9", "dlr_2", "brd_1"), "attribution.store_id"),
    (domain.Attribution(store_id="str_9"), None, "attribution.store_id"),
    (domain.Attribution(dealer_id="dlr_2"), None, "attribution.dealer_id"),
])
def test_crediting_another_dealer_or_an_unknown_store_is_refused(requested, credited_store, field):
    with pytest.raises(InvalidArgument) as err:
        domain.attribute(requested, STORE, credited_store)
    assert [f for f, _ in err.value.violations] == [field]


# -- state machine ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("current", list(Status))
@pytest.mark.parametrize("target", list(Status))
def test_only_the_listed_transitions_are_allowed(current, target):
    if (current, target) in domain.ALLOWED_TRANSITIONS:
        domain.check_transition(current, target)
    else:
        with pytest.raises(FailedPrecondition):
            domain.check_transition(current, target)


def test_paying_the_payable_amount_marks_the_order_paid():
    paid = domain.pay(order(discount=100), "txn_9", 599_800, NOW)
    assert (paid.status, paid.payment_txn_id, paid.paid_at) == (Status.PAID, "txn_9", NOW)


def test_a_wrong_amount_is_refused_naming_amount_fen():
    with pytest.raises(InvalidArgument) as err:
        domain.pay(order(), "txn_9", 599_899, NOW)
    assert [f for f, _ in err.value.violations] == ["amount_fen"]


@pytest.mark.parametrize("status", [Status.PAID, Status.DISPATCHED])
def test_an_order_is_paid_only_once(status):
    with pytest.raises(FailedPrecondition):
        domain.pay(order(status=status), "txn_2", 599_900, NOW)


def test_a_repeated_notification_changes_nothing_but_must_claim_the_same_amount():
    paid = order(status=Status.PAID)
    assert domain.is_repeated_notification(paid, "txn_1", paid.payable_fen)
    assert not domain.is_repeated_notification(paid, "txn_2", paid.payable_fen)
    assert not domain.is_repeated_notification(order(), "txn_1", 599_900)
    with pytest.raises(InvalidArgument) as err:
        domain.is_repeated_notification(paid, "txn_1", 1)
    assert err.value.violations[0][0] == "amount_fen"


def test_dispatch_moves_a_paid_order_and_ignores_the_same_shipment_again():
    dispatched = domain.dispatch(order(status=Status.PAID), "shp_1", NOW)
    assert dispatched is not None
    assert (dispatched.status, dispatched.shipment_id) == (Status.DISPATCHED, "shp_1")
    assert domain.dispatch(dispatched, "shp_1", NOW) is None


def test_dispatch_of_an_unpaid_order_is_refused_a_shipment_of_no_leg_after_it_left_changes_nothing():
    with pytest.raises(FailedPrecondition):
        domain.dispatch(order(), "shp_1", NOW)
    # Several legs leaving together all say the order is complete; one the order cannot place is no leg of
    # its own, and the order stays as it is.
    assert domain.dispatch(order(status=Status.DISPATCHED), "shp_2", NOW, reservation_id="rsv_9") is None


def test_a_split_order_is_partially_shipped_until_its_last_shipment_leaves():
    partial = domain.dispatch(order(status=Status.PAID), "shp_1", NOW, complete=False)
    assert partial is not None
    assert (partial.status, partial.shipment_id, partial.dispatched_at) == (Status.PARTIALLY_SHIPPED, "shp_1", NOW)
    assert domain.dispatch(partial, "shp_1", NOW, complete=False) is None  # redelivered
    assert domain.dispatch(partial, "shp_2", NOW, complete=False) is None  # a third location's parcel
    later = NOW + timedelta(hours=2)
    full = domain.dispatch(partial, "shp_3", later)
    assert full is not None
    assert (full.status, full.shipment_id, full.dispatched_at) == (Status.DISPATCHED, "shp_3", later)
    # An earlier parcel's event arriving after the last one changes nothing.
    assert domain.dispatch(full, "shp_2", NOW, complete=False) is None
    with pytest.raises(FailedPrecondition):
        domain.dispatch(order(), "shp_1", NOW, complete=False)  # never paid
    with pytest.raises(FailedPrecondition):
        domain.dispatch(domain.cancel(order(), "changed my mind", NOW), "shp_1", NOW, complete=False)


def test_a_split_order_is_delivered_with_its_last_parcel():
    shipped = order(status=Status.DISPATCHED)
    assert domain.deliver(shipped, NOW, complete=False) is None
    delivered = domain.deliver(shipped, NOW)
    assert delivered is not None and delivered.status == Status.DELIVERED
    with pytest.raises(FailedPrecondition):  # the last parcel cannot arrive before it left
        domain.deliver(domain.dispatch(order(status=Status.PAID), "shp_1", NOW, complete=False), NOW)
    with pytest.raises(FailedPrecondition):
        domain.deliver(order(status=Status.PAID), NOW, complete=False)


def test_an_order_completes_once_its_consumer_had_everything_for_the_after_sales_window():
    window = 7 * 24 * 3600
    delivered = domain.deliver(order(status=Status.DISPATCHED), NOW)
    assert delivered is not None
    with pytest.raises(FailedPrecondition) as err:
        domain.complete(delivered, NOW + timedelta(days=7) - timedelta(seconds=1), window)
    assert err.value.reason == "AFTER_SALES_OPEN"
    done = domain.complete(delivered, NOW + timedelta(days=7), window)
    assert (done.status, done.completed_at) == (Status.COMPLETED, NOW + timedelta(days=7))
    with pytest.raises(FailedPrecondition) as err:  # final: no refund after the window
        domain.refund(done, "rf_1", [], False, NOW + timedelta(days=8))
    assert err.value.reason == "AFTER_SALES_CLOSED"
    with pytest.raises(FailedPrecondition):
        domain.complete(done, NOW + timedelta(days=9), window)
    # A parcel on its way, an unpaid or a paid order never completes, however long it waits.
    for waiting in (order(status=Status.DISPATCHED), order(), order(status=Status.PAID)):
        with pytest.raises(FailedPrecondition):
            domain.complete(waiting, NOW + timedelta(days=365), window)


def test_a_partly_refunded_order_completes_a_fully_refunded_one_stays_refunded():
    delivered = domain.deliver(order(payable_lines=((1_000, 2),), status=Status.DISPATCHED), NOW)
    assert delivered is not None
    _, partly = domain.refund(delivered, "rf_1", [("sku_0", 1)], True, NOW)
    assert domain.complete(partly, NOW + timedelta(seconds=60), 60).status == Status.COMPLETED
    _, fully = domain.refund(partly, "rf_2", [], True, NOW)
    with pytest.raises(FailedPrecondition):
        domain.complete(fully, NOW + timedelta(days=30), 60)


def test_a_pickup_completes_from_its_collection_at_the_counter():
    collected = replace(order(status=Status.DISPATCHED), fulfilment_mode=domain.Fulfilment.STORE_PICKUP)
    assert domain.received_at(collected) == NOW
    assert domain.complete(collected, NOW + timedelta(seconds=60), 60).status == Status.COMPLETED


# -- visibility -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "ident", "visible"), [
    ("brand", "brd_1", True), ("dealer", "dlr_1", True), ("store", "str_1", True),
    ("dealer", "dlr_2", False), ("store", "str_2", False), ("guide", "g_1", False), ("consumer", "c_1", False),
])
def test_a_tenant_reads_only_its_own_orders(kind, ident, visible):
    if visible:
        domain.check_visible(order(), kind, ident)
    else:
        with pytest.raises(PermissionDenied):
            domain.check_visible(order(), kind, ident)
