"""Warehouse rules without a database: warehouse choice, the short SKU, reservation state changes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.runtime.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from services.warehouse import domain
from services.warehouse.domain import Line, ReservationStatus, ShipAction

T0 = datetime(2020, 12, 8, 20, 0, tzinfo=UTC)


def reservation(status: ReservationStatus = ReservationStatus.RESERVED, lines=(Line("sku_a", 1),),
                key: str = "k1", digest: bytes = b"h1", order_id: str = "ord_1") -> domain.Reservation:
    return domain.Reservation("rsv_1", order_id, "whs_1", status, tuple(lines), T0, key, digest)


# -- lines ----------------------------------------------------------------------------------------------
def test_lines_are_merged_per_sku_in_sku_order():
    assert domain.merge_lines([("sku_b", 2), ("sku_a", 1), ("sku_b", 3)]) == (Line("sku_a", 1), Line("sku_b", 5))


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 10_000)), min_size=1))
def test_merging_keeps_every_unit_and_sorts(lines):
    merged = domain.merge_lines(lines)
    assert [line.sku_id for line in merged] == sorted({sku for sku, _ in lines})
    assert sum(line.quantity for line in merged) == sum(q for _, q in lines)


# -- warehouse choice -----------------------------------------------------------------------------------
def test_the_first_warehouse_by_id_that_covers_every_line_is_chosen():
    lines = (Line("a", 2), Line("b", 1))
    available = {"whs_3": {"a": 5, "b": 5}, "whs_1": {"a": 5, "b": 0}, "whs_2": {"a": 2, "b": 1}}
    assert domain.choose_warehouse(available, lines) == "whs_2"


def test_no_warehouse_is_chosen_when_none_covers_all_lines_alone():
    lines = (Line("a", 2), Line("b", 1))
    available = {"whs_1": {"a": 5}, "whs_2": {"b": 5}}
    assert domain.choose_warehouse(available, lines) is None


@given(st.dictionaries(st.sampled_from(["w1", "w2", "w3"]),
                       st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 5)), max_size=3),
       st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 5)), min_size=1, max_size=4))
def test_choice_is_the_smallest_covering_warehouse_or_a_named_shortage(available, raw_lines):
    lines = domain.merge_lines(raw_lines)
    chosen = domain.choose_warehouse(available, lines)
    covering = sorted(w for w, stock in available.items() if domain.covers(stock, lines))
    assert chosen == (covering[0] if covering else None)
    if chosen is None:
        sku = domain.short_sku(available, lines)
        assert sku in {line.sku_id for line in lines}


def test_the_short_sku_is_the_first_line_nobody_has_enough_of():
    lines = (Line("a", 1), Line("b", 9), Line("c", 9))
    available = {"whs_1": {"a": 5, "b": 1, "c": 1}, "whs_2": {"a": 5, "b": 2}}
    assert domain.short_sku(available, lines) == "b"


def test_when_every_line_fits_somewhere_the_first_warehouse_names_the_short_sku():
    lines = (Line("a", 1), Line("b", 1))
    available = {"whs_2": {"a": 1}, "whs_1": {"b": 1}}
    assert domain.short_sku(available, lines) == "a"


def test_a_sku_held_nowhere_is_short():
    assert domain.short_sku({}, (Line("a", 1),)) == "a"


def test_shortage_is_resource_exhausted_naming_the_sku():
    err = domain.shortage({"whs_1": {"a": 1}}, (Line("a", 2),))
    assert isinstance(err, ResourceExhausted)
    assert err.metadata["sku_id"] == "a"
    assert "'a'" in err.message


# -- state changes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("start", "to", "allowed"), [
    (ReservationStatus.RESERVED, ReservationStatus.RELEASED, True),
    (ReservationStatus.RESERVED, ReservationStatus.SHIPPED, True),
    (ReservationStatus.RELEASED, ReservationStatus.SHIPPED, True),
    (ReservationStatus.RELEASED, ReservationStatus.RELEASED, False),
    (ReservationStatus.SHIPPED, ReservationStatus.RELEASED, False),
    (ReservationStatus.SHIPPED, ReservationStatus.SHIPPED, False),
    (ReservationStatus.RELEASED, ReservationStatus.RESERVED, False),
])
def test_reservation_transitions(start, to, allowed):
    if allowed:
        domain.check_transition(reservation(start), to)
    else:
        with pytest.raises(FailedPrecondition) as err:
            domain.check_transition(reservation(start), to)
        assert err.value.reason == f"RESERVATION_{start}"
        assert err.value.metadata["reservation_id"] == "rsv_1"


def test_a_paid_order_ships_its_hold_or_retakes_a_released_one():
    assert domain.ship_action(reservation(ReservationStatus.RESERVED), shipped=False) is ShipAction.SHIP_HELD
    assert domain.ship_action(reservation(ReservationStatus.RELEASED), shipped=False) is ShipAction.RETAKE
    assert domain.ship_action(reservation(ReservationStatus.SHIPPED), shipped=True) is ShipAction.ALREADY_SHIPPED


def test_a_released_order_is_sought_in_its_own_warehouse_first():
    assert domain.retake_order(reservation(), ["whs_0", "whs_1", "whs_2"]) == ["whs_1", "whs_0", "whs_2"]


# -- replays and second reservations of one order ---------------------------------------------------------
def test_same_key_replays_the_first_response():
    prior = reservation(ReservationStatus.RELEASED)
    replay = domain.replay_or_conflict([prior], "k1", b"h1", "ord_1", prior.lines)
    assert replay.reservation_id == "rsv_1" and replay.status is ReservationStatus.RESERVED


def test_same_key_for_another_request_is_invalid():
    with pytest.raises(InvalidArgument) as err:
        domain.replay_or_conflict([reservation()], "k1", b"other", "ord_1", (Line("sku_a", 1),))
    assert err.value.violations[0][0] == "idempotency_key"


def test_another_key_for_the_same_order_and_lines_returns_the_hold():
    prior = reservation()
    assert domain.replay_or_conflict([prior], "k2", b"h2", "ord_1", prior.lines) == prior


@pytest.mark.parametrize("prior", [
    reservation(lines=(Line("sku_a", 2),)),
    reservation(ReservationStatus.RELEASED),
])
def test_another_key_for_the_same_order_with_other_lines_or_a_released_hold_is_refused(prior):
    with pytest.raises(FailedPrecondition) as err:
        domain.replay_or_conflict([prior], "k2", b"h2", "ord_1", (Line("sku_a", 1),))
    assert err.value.reason == "ORDER_ALREADY_RESERVED"


# -- paging -------------------------------------------------------------------------------------------------
def test_page_tokens():
    assert domain.page_after("") == 0
    assert domain.page_after("42") == 42
    for bad in ("-1", "x", "1" * 19):
        with pytest.raises(InvalidArgument):
            domain.page_after(bad)


# -- locations and adjustments ------------------------------------------------------------------------------
def test_a_location_gets_its_kinds_usual_modes_and_only_modes_it_can_offer():
    Kind, Mode = domain.Kind, domain.Mode
    forward = domain.location("w", "c", "n", Kind.FORWARD, "East", 31, 121, [], "", 0)
    assert (forward.modes, forward.express_radius_km) == (("CLOUD_SHIPPING", "EXPRESS_3H"), 30)
    store = domain.location("w", "c", "n", Kind.STORE, "East", 31, 121, [], "sto_1", 0)
    assert (store.modes, store.store_id) == (("STORE_PICKUP",), "sto_1")
    for kind, modes, store_id, radius, field in [
        (Kind.STORE, [], "", 0, "store_id"),
        (Kind.CLOUD, [], "sto_1", 0, "store_id"),
        (Kind.FORWARD, [Mode.STORE_PICKUP], "", 0, "modes"),
        (Kind.CLOUD, [Mode.EXPRESS_3H], "", 0, "express_radius_km"),
        (Kind.CLOUD, [Mode.CLOUD_SHIPPING], "", 10, "express_radius_km"),
    ]:
        with pytest.raises(InvalidArgument) as err:
            domain.location("w", "c", "n", kind, "East", 31, 121, modes, store_id, radius)
        assert [f for f, _ in err.value.violations] == [field]


@given(st.integers(0, 50), st.integers(0, 50), st.integers(-100, 100))
def test_an_adjustment_never_takes_reserved_units(on_hand, reserved, delta):
    level = domain.StockLevel("w", "s", max(on_hand, reserved), reserved)
    if level.on_hand + delta >= reserved:
        domain.check_adjustment(level, "s", delta)
    else:
        with pytest.raises(FailedPrecondition) as err:
            domain.check_adjustment(level, "s", delta)
        assert err.value.metadata["sku_id"] == "s"


# -- split routes: one reservation per location ------------------------------------------------------------
def split(status: ReservationStatus = ReservationStatus.RESERVED) -> list[domain.Reservation]:
    first = reservation(status, lines=(Line("sku_a", 1),))
    second = replace(reservation(status, lines=(Line("sku_a", 1), Line("sku_b", 1))), reservation_id="rsv_2",
                     warehouse_id="whs_2", leg=1)
    return [second, first]  # as the database returns them: any order


def test_a_split_hold_is_replayed_leg_by_leg_and_matched_on_its_summed_lines():
    whole = (Line("sku_a", 2), Line("sku_b", 1))
    legs = domain.replay_legs(split(), "k1", b"h1", "ord_1", whole)
    assert [r.reservation_id for r in legs] == ["rsv_1", "rsv_2"]
    assert [r.reservation_id for r in domain.replay_legs(split(), "k2", b"h2", "ord_1", whole)] == ["rsv_1", "rsv_2"]
    for lines in ((Line("sku_a", 1),), (Line("sku_a", 2),)):  # a leg's lines are not the order's
        with pytest.raises(FailedPrecondition):
            domain.replay_legs(split(), "k2", b"h2", "ord_1", lines)
    with pytest.raises(FailedPrecondition):
        domain.replay_legs(split(ReservationStatus.RELEASED), "k2", b"h2", "ord_1", whole)


def test_a_split_leg_is_retaken_only_where_it_was():
    assert domain.retake_order(reservation(), ["whs_0", "whs_1", "whs_2"], split=True) == ["whs_1"]


def shipment(status: str, where: str = "whs_1") -> domain.Shipment:
    return domain.Shipment(f"shp_{where}", "ord_1", where, "rsv_1", (Line("sku_a", 1),), T0, status)


def test_an_order_is_shipped_and_delivered_in_full_only_when_every_leg_is():
    assert domain.progress(1, [shipment("DISPATCHED")]) == domain.Progress(True, False)
    assert domain.progress(1, [shipment("DELIVERED")]) == domain.Progress(True, True)
    assert domain.progress(2, [shipment("DISPATCHED")]) == domain.Progress(False, False)
    assert domain.progress(2, [shipment("DELIVERED"), shipment("CREATED", "whs_2")]) == domain.Progress(False, False)
    assert domain.progress(2, [shipment("DELIVERED"), shipment("DISPATCHED", "whs_2")]) == \
        domain.Progress(True, False)
    assert domain.progress(2, [shipment("READY_FOR_PICKUP"), shipment("PACKED", "whs_2")]) == \
        domain.Progress(False, False)
    # The batch consumer reads only the statuses, one statement for all its split orders.
    assert domain.progress_of(2, ["DELIVERED", "DISPATCHED"]) == domain.Progress(True, False)
    assert domain.progress_of(2, ["DISPATCHED", "CREATED"]) == domain.Progress(False, False)
    assert domain.progress_of(1, ["DISPATCHED"]) == domain.progress(1, [shipment("DISPATCHED")])


def test_a_pickup_takes_five_wrong_codes_then_is_locked_even_for_the_right_one():
    ready = replace(shipment("DISPATCHED"), status="READY_FOR_PICKUP")
    domain.check_collect(ready, "123456", "123456", wrong_codes=4)
    with pytest.raises(InvalidArgument) as err:
        domain.check_collect(ready, "654321", "123456", wrong_codes=3)
    assert err.value.violations[0] == ("pickup_code", "does not match the shipment's pickup code (1 tries left)")
    for code in ("123456", "654321"):
        with pytest.raises(FailedPrecondition) as locked:
            domain.check_collect(ready, code, "123456", wrong_codes=domain.MAX_WRONG_CODES)
        assert locked.value.reason == "PICKUP_LOCKED"
    with pytest.raises(FailedPrecondition):
        domain.check_collect(shipment("DISPATCHED"), "123456", "123456")


# -- returns --------------------------------------------------------------------------------------------
def _parcel(where: str, status: str, *lines: tuple[str, int]) -> domain.Shipment:
    return domain.Shipment(f"shp_{where}", "ord_1", where, f"rsv_{where}", tuple(Line(s, q) for s, q in lines),
                           T0, status)


def test_returned_goods_go_back_where_their_leg_left_never_to_a_leg_still_waiting():
    left = _parcel("far", "DELIVERED", ("sku_a", 1), ("sku_b", 1))
    waiting = _parcel("hand", "CREATED", ("sku_a", 1))
    parcels = [waiting, left]
    named = [domain.Return("sku_a", 1, (("rsv_far", "far", 1),)), domain.Return("sku_b", 1, (("rsv_far", "far", 1),))]
    assert domain.return_bookings("ord_1", named, parcels) == [("sku_a", "far", 1), ("sku_b", "far", 1)]
    # A refund from before orders named legs: the first shipment that left with the SKU, not the waiting one.
    assert domain.return_bookings("ord_1", [domain.Return("sku_a", 1)], parcels) == [("sku_a", "far", 1)]
    # Matched by location when the reservation is not the shipment's (taken again elsewhere); units beyond the
    # named legs go to the first that left.
    both = [_parcel("near", "DISPATCHED", ("sku_a", 1)), left]
    assert domain.return_bookings("ord_1", [domain.Return("sku_a", 2, (("rsv_x", "far", 1),))], both) == [
        ("sku_a", "far", 1), ("sku_a", "near", 1)]
    with pytest.raises(FailedPrecondition) as err:
        domain.return_bookings("ord_1", [domain.Return("sku_a", 1)], [waiting])
    assert err.value.reason == "RETURN_NOT_SHIPPED"
