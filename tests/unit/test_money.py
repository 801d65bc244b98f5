"""Money helpers: every split exact, every conversion exact."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.runtime.money import allocate, apply_rate_bp, fen_to_yuan, yuan_to_fen


@given(st.integers(0, 10**12), st.lists(st.integers(0, 10**6), min_size=1, max_size=20).filter(any))
def test_allocate_parts_add_up_and_are_fair(total, weights):
    parts = allocate(total, weights)
    assert sum(parts) == total
    assert all(p >= 0 for p in parts)
    for part, weight in zip(parts, weights, strict=True):
        exact = total * weight / sum(weights)
        assert abs(part - exact) < 1 + 1e-9  # never more than one fen from the exact share


def test_allocate_is_deterministic_and_ties_go_to_the_earlier_part():
    assert allocate(100, [1, 1, 1]) == [34, 33, 33]
    assert allocate(1, [1, 1]) == [1, 0]


@pytest.mark.parametrize("text,fen", [("0.01", 1), ("12.34", 1234), ("1000", 100000), ("-3.50", -350)])
def test_yuan_to_fen_is_exact(text, fen):
    assert yuan_to_fen(text) == fen


def test_yuan_with_fractions_of_a_fen_is_rejected():
    with pytest.raises(ValueError):
        yuan_to_fen("0.015")


@given(st.integers(-(10**15), 10**15))
def test_fen_yuan_round_trip(fen):
    assert yuan_to_fen(fen_to_yuan(fen)) == fen


@given(st.integers(0, 10**12), st.integers(0, 10_000))
def test_rates_are_floored(amount, bp):
    share = apply_rate_bp(amount, bp)
    assert 0 <= share <= amount
    assert share * 10_000 <= amount * bp < (share + 1) * 10_000
