"""Routing without a database: mode, one location before a split, fewest locations, distance, stock, ids."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.warehouse import domain, routing
from services.warehouse.domain import Kind, Line, Mode

SHANGHAI = (31.23, 121.47)


def loc(wid: str, kind: Kind, lat: float, lon: float, radius: int = 0, store_id: str = "") -> domain.Warehouse:
    return domain.location(wid, wid, wid, kind, "East", lat, lon, [], store_id if kind == Kind.STORE else "",
                           radius)


KUNSHAN = loc("whs_ks", Kind.CLOUD, 31.38, 120.98)          # ~50 km from Shanghai
CHENGDU = loc("whs_cd", Kind.CLOUD, 30.66, 104.06)          # ~1,660 km
PUDONG = loc("whs_pd", Kind.FORWARD, 31.22, 121.54, 30)     # ~7 km, express within 30 km
STORE = loc("whs_st", Kind.STORE, 31.20, 121.44, store_id="str_1")
ALL = [KUNSHAN, CHENGDU, PUDONG, STORE]


def test_great_circle_distance():
    assert routing.great_circle_km(*SHANGHAI, *SHANGHAI) == 0
    assert 1_640 < routing.great_circle_km(*SHANGHAI, 30.66, 104.06) < 1_680


def test_the_nearest_location_covering_everything_wins():
    lines = (Line("a", 1),)
    stock = {"whs_ks": {"a": 5}, "whs_cd": {"a": 50}, "whs_pd": {"a": 5}, "whs_st": {"a": 5}}
    [leg] = routing.plan(lines, Mode.CLOUD_SHIPPING, *SHANGHAI, ALL, stock).legs
    assert leg.warehouse_id == "whs_pd"  # forward warehouses ship too, and it is nearest
    [leg] = routing.plan(lines, Mode.STORE_PICKUP, *SHANGHAI, ALL, stock).legs
    assert leg.warehouse_id == "whs_st"
    [leg] = routing.plan(lines, Mode.EXPRESS_3H, *SHANGHAI, ALL, stock).legs
    assert leg.warehouse_id == "whs_pd"
    assert routing.plan(lines, Mode.EXPRESS_3H, 39.9, 116.4, ALL, stock) is None  # Beijing: out of reach


def test_one_location_beats_a_nearer_split_and_splits_take_the_fewest_locations():
    lines = (Line("a", 2), Line("b", 1))
    stock = {"whs_pd": {"a": 2}, "whs_ks": {"b": 1}, "whs_cd": {"a": 2, "b": 1}}
    [leg] = routing.plan(lines, Mode.CLOUD_SHIPPING, *SHANGHAI, ALL, stock).legs
    assert leg.warehouse_id == "whs_cd"
    stock = {"whs_pd": {"a": 1}, "whs_ks": {"a": 1, "b": 1}, "whs_cd": {"a": 1}}
    legs = routing.plan(lines, Mode.CLOUD_SHIPPING, *SHANGHAI, ALL, stock).legs
    assert [(leg.warehouse_id, leg.lines) for leg in legs] == [
        ("whs_pd", (Line("a", 1),)), ("whs_ks", (Line("a", 1), Line("b", 1)))]


def test_equal_distance_prefers_more_stock_then_the_smaller_id():
    twins = [loc("whs_2", Kind.CLOUD, 31.38, 120.98), loc("whs_1", Kind.CLOUD, 31.38, 120.98)]
    lines = (Line("a", 1),)
    assert routing.plan(lines, Mode.CLOUD_SHIPPING, *SHANGHAI, twins,
                        {"whs_1": {"a": 1}, "whs_2": {"a": 9}}).legs[0].warehouse_id == "whs_2"
    assert routing.plan(lines, Mode.CLOUD_SHIPPING, *SHANGHAI, twins,
                        {"whs_1": {"a": 9}, "whs_2": {"a": 9}}).legs[0].warehouse_id == "whs_1"


def test_shortages_and_splits_name_a_sku():
    lines = (Line("a", 1), Line("b", 3))
    stock = {"whs_ks": {"a": 1, "b": 1}, "whs_cd": {"b": 1}}
    assert routing.plan(lines, Mode.CLOUD_SHIPPING, *SHANGHAI, ALL, stock) is None
    assert routing.no_route(lines, Mode.CLOUD_SHIPPING, *SHANGHAI, ALL, stock).metadata["sku_id"] == "b"
    stock = {"whs_ks": {"a": 1, "b": 2}, "whs_cd": {"b": 1}}
    best = routing.plan(lines, Mode.CLOUD_SHIPPING, *SHANGHAI, ALL, stock)
    assert len(best.legs) == 2


def test_pickup_is_never_split_over_counters():
    counters = [loc("whs_s1", Kind.STORE, 31.2, 121.4, store_id="str_1"),
                loc("whs_s2", Kind.STORE, 31.3, 121.5, store_id="str_2")]
    lines = (Line("a", 2), Line("b", 1))
    stock = {"whs_s1": {"a": 2}, "whs_s2": {"a": 1, "b": 1}}
    assert routing.plan(lines, Mode.CLOUD_SHIPPING, *SHANGHAI, counters, stock) is None  # counters do not ship
    assert routing.plan(lines, Mode.STORE_PICKUP, *SHANGHAI, counters, stock) is None
    assert routing.no_route(lines, Mode.STORE_PICKUP, *SHANGHAI, counters, stock).metadata["sku_id"] == "a"
    # Three of "a" are on the counters together, but no one counter has them.
    lines = (Line("a", 3),)
    assert routing.no_route(lines, Mode.STORE_PICKUP, *SHANGHAI, counters, stock).metadata["sku_id"] == "a"
    assert routing.plan(lines, Mode.STORE_PICKUP, *SHANGHAI, counters, {"whs_s1": {"a": 3}}).legs[0].warehouse_id \
        == "whs_s1"


@given(st.lists(st.tuples(st.floats(20, 45), st.floats(100, 125), st.dictionaries(
    st.sampled_from("abc"), st.integers(0, 4))), min_size=1, max_size=6),
    st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 4)), min_size=1, max_size=3),
    st.randoms(use_true_random=False))
def test_plans_are_deterministic_cover_the_order_and_never_take_more_than_there_is(sites, raw, rnd):
    locations = [loc(f"whs_{i}", Kind.CLOUD, lat, lon) for i, (lat, lon, _) in enumerate(sites)]
    stock = {f"whs_{i}": s for i, (_, _, s) in enumerate(sites)}
    lines = domain.merge_lines(raw)
    best = routing.plan(lines, Mode.CLOUD_SHIPPING, *SHANGHAI, locations, stock)
    shuffled = list(locations)
    rnd.shuffle(shuffled)
    assert routing.plan(lines, Mode.CLOUD_SHIPPING, *SHANGHAI, shuffled, stock) == best
    if best is None:
        return
    for line in lines:
        assert sum(pl.quantity for leg in best.legs for pl in leg.lines if pl.sku_id == line.sku_id) == line.quantity
    for leg in best.legs:
        for pl in leg.lines:
            assert pl.quantity <= stock[leg.warehouse_id].get(pl.sku_id, 0)
    if any(domain.covers(s, lines) for s in stock.values()):
        assert len(best.legs) == 1
    distances = [leg.distance_km for leg in best.legs]
    assert distances == sorted(distances)


@pytest.mark.parametrize("mode", list(Mode))
def test_no_candidates_means_no_plan(mode):
    assert routing.plan((Line("a", 1),), mode, *SHANGHAI, [], {}) is None
