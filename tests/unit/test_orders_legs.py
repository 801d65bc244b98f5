"""The legs of an order without I/O: each shipment marks its own leg once, whatever order its events come in
or how often; a split order partly shipped is refunded, goods coming back only from legs that left and to
them; refunds never pay back more than a line's paid amount, returns never more than left, amounts exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.orders import domain
from services.orders.domain import Leg, LegLine, Status
from services.runtime.errors import FailedPrecondition, InvalidArgument

from .test_orders_domain import STORE, quote

NOW = datetime(2020, 12, 8, 20, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=3)
# a: one unit at the hand-fulfilment location (leg 0), one with b at the farther cloud warehouse (leg 1).
LEGS = (Leg("rsv_0", "whs_hand", (LegLine("a", 1),)), Leg("rsv_1", "whs_far", (LegLine("a", 1), LegLine("b", 1))))


def split(legs: tuple[Leg, ...] = LEGS, discount: int = 0) -> domain.Order:
    lines = domain.price_lines([domain.LineInput("a", 2), domain.LineInput("b", 1)],
                               {"a": quote("a", 33_333, 20_000), "b": quote("b", 10_001, 7_000)})
    coupon = domain.Coupon("CPN", "BRAND", discount) if discount else None
    placed = domain.new_order("ord_1", STORE, "c_1", domain.Attribution(), lines, coupon, legs[0].reservation_id,
                              NOW, warehouse_id=legs[0].warehouse_id, legs=legs)
    return domain.pay(placed, "txn_1", placed.payable_fen, NOW)


def ship(order: domain.Order, leg: int, complete: bool, at: datetime = NOW) -> domain.Order | None:
    g = order.legs[leg]
    return domain.dispatch(order, f"shp_{leg}", at, complete, reservation_id=g.reservation_id,
                           warehouse_id=g.warehouse_id)


def fields(err: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [f for f, _ in err.value.violations]


def test_the_legs_must_hold_exactly_the_lines():
    with pytest.raises(RuntimeError):
        split((LEGS[0],))
    with pytest.raises(RuntimeError):
        split((LEGS[1], LEGS[1]))
    one = domain.new_order("o", STORE, "c", domain.Attribution(), split().lines, None, "rsv_9", NOW, warehouse_id="w")
    assert one.legs == (domain.one_leg("rsv_9", "w", split().lines),)


def test_each_shipment_marks_its_own_leg_once():
    paid = split()
    partial = ship(paid, 1, complete=False)
    assert partial is not None
    assert (partial.status, partial.shipment_id, partial.dispatched_at) == (Status.PARTIALLY_SHIPPED, "shp_1", NOW)
    assert [g.shipment_id for g in partial.legs] == ["", "shp_1"]
    assert [domain.shipped_quantity(partial, s) for s in "ab"] == [1, 1]
    assert ship(partial, 1, complete=False) is None  # redelivered, or the same shipment under another event id
    # From before shipments named their reservation: matched by location.
    assert domain.dispatch(partial, "shp_1", NOW, False, warehouse_id="whs_far") is None
    full = ship(partial, 0, complete=True, at=LATER)
    assert full is not None
    assert (full.status, full.shipment_id, full.dispatched_at) == (Status.DISPATCHED, "shp_0", LATER)
    assert [domain.shipped_quantity(full, s) for s in "ab"] == [2, 1]
    assert ship(full, 0, complete=True) is None and ship(full, 1, complete=False) is None


def test_legs_leaving_together_all_say_complete_and_each_is_recorded_once():
    first = ship(split(), 0, complete=True)
    assert first is not None and first.status == Status.DISPATCHED
    # The warehouse says every leg left: the other is out before its own event arrives.
    assert [(g.shipment_id, g.dispatched_at) for g in first.legs] == [("shp_0", NOW), ("", NOW)]
    assert [domain.shipped_quantity(first, s) for s in "ab"] == [2, 1]
    second = ship(first, 1, complete=True, at=LATER)
    assert second is not None
    assert (second.status, second.shipment_id, second.dispatched_at) == (Status.DISPATCHED, "shp_0", NOW)
    assert [(g.shipment_id, g.dispatched_at) for g in second.legs] == [("shp_0", NOW), ("shp_1", LATER)]
    assert [domain.shipped_quantity(second, s) for s in "ab"] == [2, 1]
    assert ship(second, 1, complete=True) is None


def test_a_partly_shipped_order_returns_only_what_left_and_its_waiting_leg_still_goes():
    paid = split(discount=10_007)
    with pytest.raises(InvalidArgument) as err:  # nothing handed over yet
        domain.refund(paid, "rf_0", [("a", 1)], True, NOW)
    assert fields(err) == ["goods_returned"]
    partial = ship(paid, 1, complete=False)
    assert partial is not None
    for requested, field in (([("a", 2)], "lines[0].quantity"), ([("b", 1), ("a", 2)], "lines[1].quantity"),
                             ([], "lines")):
        with pytest.raises(InvalidArgument) as err:
            domain.refund(partial, "rf_1", requested, True, NOW)
        assert fields(err) == [field]
    back, returned = domain.refund(partial, "rf_1", [("a", 1), ("b", 1)], True, NOW)
    assert returned.status == Status.PARTIALLY_REFUNDED
    assert [li.legs for li in back.lines] == [(domain.LegReturn("rsv_1", "whs_far", 1),)] * 2
    assert [(domain.shipped_quantity(returned, s), domain.returned_quantity(returned, s)) for s in "ab"] == [
        (1, 1), (1, 1)]
    with pytest.raises(InvalidArgument) as err:  # came back already
        domain.refund(returned, "rf_2", [("a", 1)], True, NOW)
    assert fields(err) == ["lines[0].quantity"]
    money, refunded = domain.refund(returned, "rf_2", [("a", 1)], False, NOW)  # the waiting leg's unit
    assert refunded.status == Status.REFUNDED and money.lines[0].legs == ()
    assert back.amount_fen + money.amount_fen == paid.payable_fen == refunded.refunded_fen

    # The goods still go: the refund stands, the order records the parcel and when it shipped in full.
    gone = ship(refunded, 0, complete=True, at=LATER)
    assert gone is not None
    assert (gone.status, gone.shipment_id, gone.dispatched_at) == (Status.REFUNDED, "shp_0", LATER)
    assert [domain.shipped_quantity(gone, s) for s in "ab"] == [2, 1]
    assert ship(gone, 0, complete=True) is None
    delivered = domain.deliver(gone, LATER, complete=True)
    assert delivered is not None and (delivered.status, delivered.delivered_at) == (Status.REFUNDED, LATER)


def test_a_partly_refunded_partly_shipped_order_follows_its_last_parcel_into_after_sales():
    partial = ship(split(), 1, complete=False)
    assert partial is not None
    _, partly = domain.refund(partial, "rf_1", [("b", 1)], True, NOW)
    assert ship(partly, 1, complete=False) is None
    assert domain.deliver(partly, NOW, complete=False) is None  # the first parcel arrived, one is on its way
    with pytest.raises(FailedPrecondition):
        domain.complete(partly, NOW + timedelta(days=30), 60)
    gone = ship(partly, 0, complete=True, at=LATER)
    assert gone is not None and (gone.status, gone.dispatched_at) == (Status.PARTIALLY_REFUNDED, LATER)
    delivered = domain.deliver(gone, LATER, complete=True)
    assert delivered is not None
    assert domain.complete(delivered, LATER + timedelta(seconds=60), 60).status == Status.COMPLETED


def test_a_money_only_refund_before_hand_over_then_a_first_parcel_makes_it_handed_over():
    _, partly = domain.refund(split(), "rf_1", [("b", 1)], False, NOW)
    assert domain.awaiting_hand_over(partly)
    out = ship(partly, 1, complete=False)
    assert out is not None and (out.status, out.shipment_id, out.dispatched_at) == (
        Status.PARTIALLY_REFUNDED, "shp_1", NOW)
    assert not domain.awaiting_hand_over(out)
    with pytest.raises(FailedPrecondition) as err:
        domain.cancel_paid(out, "too late", NOW, "cancel-ord_1")
    assert err.value.reason == "HANDED_OVER"
    # A later leg that is not the last records itself only.
    assert ship(out, 1, complete=False) is None


def test_a_line_shipped_from_two_locations_returns_to_the_first_legs_first():
    both = ship(ship(split(), 0, complete=False) or split(), 1, complete=True)
    assert both is not None
    first, after = domain.refund(both, "rf_1", [("a", 1)], True, NOW)
    assert first.lines[0].legs == (domain.LegReturn("rsv_0", "whs_hand", 1),)
    second, _ = domain.refund(after, "rf_2", [("a", 1)], True, NOW)
    assert second.lines[0].legs == (domain.LegReturn("rsv_1", "whs_far", 1),)
    whole, _ = domain.refund(both, "rf_3", [], True, NOW)
    assert [li.legs for li in whole.lines] == [
        (domain.LegReturn("rsv_0", "whs_hand", 1), domain.LegReturn("rsv_1", "whs_far", 1)),
        (domain.LegReturn("rsv_1", "whs_far", 1),)]


def test_an_order_stored_before_legs_is_one_leg_shipped_if_it_was_dispatched():
    paid = split()
    assert not domain.legacy_leg(paid).shipped
    dispatched = ship(paid, 0, complete=True)
    assert dispatched is not None and domain.legacy_leg(dispatched).shipment_id == "shp_0"
    partial = ship(paid, 1, complete=False)
    assert partial is not None and not domain.legacy_leg(partial).shipped


# -- properties ---------------------------------------------------------------------------------------------

@st.composite
def split_orders(draw) -> domain.Order:  # type: ignore[no-untyped-def]
    """1-3 lines spread over 1-3 legs (every leg holds something), with any discount."""
    quantities = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    legs_n = draw(st.sampled_from([1, 2, 2, 3, 3]))
    held: list[list[LegLine]] = [[] for _ in range(legs_n)]
    for n, quantity in enumerate(quantities):
        cuts = sorted(draw(st.lists(st.integers(0, quantity), min_size=legs_n - 1, max_size=legs_n - 1)))
        for leg, part in enumerate(b - a for a, b in zip([0, *cuts], [*cuts, quantity], strict=True)):
            if part:
                held[leg].append(LegLine(f"sku_{n}", part))
    held = [h for h in held if h]
    prices = draw(st.lists(st.integers(1, 200_000), min_size=len(quantities), max_size=len(quantities)))
    lines = domain.price_lines([domain.LineInput(f"sku_{n}", q) for n, q in enumerate(quantities)],
                               {f"sku_{n}": quote(f"sku_{n}", p) for n, p in enumerate(prices)})
    legs = tuple(Leg(f"rsv_{i}", f"whs_{i}", tuple(h)) for i, h in enumerate(held))
    discount = draw(st.integers(0, domain.totals(lines).subtotal_fen))
    coupon = domain.Coupon("CPN", "BRAND", discount) if discount else None
    placed = domain.new_order("ord_1", STORE, "c_1", domain.Attribution(), lines, coupon, "rsv_0", NOW,
                              warehouse_id="whs_0", legs=legs)
    return domain.pay(placed, "txn_1", placed.payable_fen, NOW)


@settings(max_examples=300)
@given(split_orders(), st.randoms(use_true_random=False))
def test_shipments_in_any_order_and_refunds_in_any_cut_stay_within_what_was_paid_and_what_left(order, rnd):
    paid, out, refunds = order, set(), []
    shares = dict(zip((li.sku_id for li in order.lines), domain.line_discounts(order), strict=True))
    for step in range(12):
        if rnd.random() < 0.4:
            # The warehouse ships a leg (or its event comes again): complete once every leg is out.
            leg = rnd.randrange(len(order.legs))
            out.add(leg)
            before = order
            after = ship(order, leg, complete=len(out) == len(order.legs), at=NOW + timedelta(minutes=step))
            order = after or order
            if after is None:
                assert [domain.shipped_quantity(before, li.sku_id) for li in before.lines] == [
                    domain.shipped_quantity(order, li.sku_id) for li in order.lines]
        else:
            goods = rnd.random() < 0.5
            cut = [(li.sku_id, rnd.randint(1, li.quantity)) for li in rnd.sample(order.lines,
                                                                                rnd.randint(1, len(order.lines)))]
            lines = {li.sku_id: li for li in order.lines}
            allowed = order.status != Status.REFUNDED and all(
                q <= lines[s].quantity - lines[s].refunded_quantity and (not goods or (
                    out and q <= domain.shipped_quantity(order, s) - domain.returned_quantity(order, s)))
                for s, q in cut)
            try:
                r, order = domain.refund(order, f"rf_{step}", cut, goods, NOW)
            except (InvalidArgument, FailedPrecondition):
                assert not allowed
                continue
            assert allowed
            refunds.append(r)
            for li in r.lines:
                assert li.amount_fen == li.gross_fen - li.discount_fen >= 0
                assert sum(g.quantity for g in li.legs) == (li.quantity if goods else 0)
                assert all(order.legs[int(g.reservation_id[4:])].shipped for g in li.legs)
        # What left is what the legs that shipped hold, never counted twice; returns within it and within
        # the refunds; refunds within each line's paid amount, and the order's total their sum.
        for li in order.lines:
            shipped = sum(line.quantity for i in out for line in order.legs[i].lines if line.sku_id == li.sku_id)
            assert domain.shipped_quantity(order, li.sku_id) == shipped
            assert 0 <= domain.returned_quantity(order, li.sku_id) <= min(shipped, li.refunded_quantity)
            assert 0 <= li.refunded_fen <= li.line_total_fen - shares[li.sku_id]
        assert order.refunded_fen == sum(r.amount_fen for r in refunds) <= paid.payable_fen
    if order.status == Status.REFUNDED:
        assert sum(r.amount_fen for r in refunds) == paid.payable_fen
        assert sum(li.discount_fen for r in refunds for li in r.lines) == paid.discount_fen
