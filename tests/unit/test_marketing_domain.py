"""Coupon rules: codes, eligibility, the discount and the one-way ISSUED -> REDEEMED step."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.marketing import domain
from services.runtime.errors import FailedPrecondition, InvalidArgument

NOW = datetime(2020, 12, 8, 20, 0, tzinfo=UTC)
fen = st.integers(min_value=0, max_value=10**12)


def coupon(face: int = 5_000, min_order: int = 0, **changes: object) -> domain.Coupon:
    c = domain.issue("CPN-0123456789AB", "brd_1", "csm_1", domain.Funder.BRAND, face, min_order,
                     NOW - timedelta(days=1))
    return dataclasses.replace(c, **changes)


def request(subtotal: int = 599_900, order_id: str = "ord_1", key: str = "k1", **changes: object
            ) -> domain.RedeemRequest:
    r = domain.RedeemRequest("CPN-0123456789AB", order_id, "csm_1", "brd_1", subtotal, key,
                             f"{order_id}/{subtotal}/{key}".encode())
    return dataclasses.replace(r, **changes)


def reason(err: pytest.ExceptionInfo[FailedPrecondition]) -> str:
    return err.value.reason


# -- codes -------------------------------------------------------------------------------------------------

@given(st.binary(min_size=domain.CODE_ENTROPY_BYTES, max_size=domain.CODE_ENTROPY_BYTES))
def test_code_is_prefix_and_twelve_unambiguous_symbols(entropy):
    code = domain.coupon_code(entropy)
    body = code.removeprefix(domain.CODE_PREFIX)
    assert code.startswith(domain.CODE_PREFIX)
    assert len(body) == domain.CODE_LENGTH
    assert set(body) <= set(domain.CODE_ALPHABET)
    assert not set(body) & set("ILOU")


def test_code_uses_every_random_bit():
    # 60 bits of the 64 are used: flipping any of them changes the code.
    zero = bytes(domain.CODE_ENTROPY_BYTES)
    codes = {domain.coupon_code((1 << bit).to_bytes(8, "big")) for bit in range(4, 64)}
    assert len(codes) == 60
    assert domain.coupon_code(zero) not in codes


def test_code_needs_enough_randomness():
    with pytest.raises(ValueError):
        domain.coupon_code(b"\x00" * 7)


@given(st.binary(min_size=8, max_size=8))
def test_a_code_typed_sloppily_normalizes_back(entropy):
    code = domain.coupon_code(entropy)
    body = code.removeprefix(domain.CODE_PREFIX)
    typed = f"  cpn-{body[:4].lower()} {body[4:8]}-{body[8:].lower()} "
    typed = typed.replace("1", "l").replace("0", "o")
    assert domain.normalize_code(typed) == code
    assert domain.normalize_code(code) == code


def test_normalizing_leaves_other_text_alone_but_trimmed():
    assert domain.normalize_code(" nope ") == "NOPE"
    assert domain.normalize_code("XYZ-OIL") == "XYZ-OIL"


# -- discount ----------------------------------------------------------------------------------------------

@given(fen, fen)
def test_discount_never_exceeds_face_value_nor_subtotal_and_is_never_negative(face, subtotal):
    d = domain.discount_fen(face, subtotal)
    assert 0 <= d <= face
    assert d <= subtotal
    assert d == face or d == subtotal


def test_discount_rejects_negative_amounts():
    with pytest.raises(ValueError):
        domain.discount_fen(-1, 100)
    with pytest.raises(ValueError):
        domain.discount_fen(100, -1)


@given(st.integers(1, 10**8), st.integers(0, 10**9), st.integers(1, 10**10))
def test_redeem_grants_the_capped_face_value_exactly_when_the_threshold_is_met(face, min_order, subtotal):
    c = coupon(face=face, min_order=min_order)
    if subtotal < min_order:
        with pytest.raises(FailedPrecondition) as err:
            domain.redeem(c, request(subtotal), None, NOW)
        assert reason(err) == "MIN_ORDER_NOT_MET"
        return
    decision = domain.redeem(c, request(subtotal), None, NOW)
    assert decision.new
    assert decision.redemption.discount_fen == min(face, subtotal)
    assert 0 < decision.redemption.discount_fen <= subtotal


# -- issuing -----------------------------------------------------------------------------------------------

def test_issued_coupon_starts_unredeemed():
    c = coupon()
    assert c.status is domain.CouponStatus.ISSUED
    assert c.redeemed_order_id is None and c.redeemed_at is None


def test_issue_rejects_non_positive_face_value_and_negative_threshold():
    with pytest.raises(InvalidArgument) as err:
        coupon(face=0)
    assert err.value.violations[0][0] == "face_value_fen"
    with pytest.raises(InvalidArgument) as err:
        coupon(min_order=-1)
    assert err.value.violations[0][0] == "min_order_fen"


# -- redeeming ---------------------------------------------------------------------------------------------

def test_redeem_moves_the_coupon_to_redeemed_by_the_order():
    decision = domain.redeem(coupon(face=5_000), request(599_900), None, NOW)
    assert decision.new
    assert decision.coupon.status is domain.CouponStatus.REDEEMED
    assert decision.coupon.redeemed_order_id == "ord_1"
    assert decision.coupon.redeemed_at == NOW == decision.redemption.redeemed_at
    assert decision.redemption.discount_fen == 5_000
    assert decision.redemption.order_subtotal_fen == 599_900


def test_discount_is_capped_at_the_subtotal():
    assert domain.redeem(coupon(face=5_000), request(3_000), None, NOW).redemption.discount_fen == 3_000


def test_another_consumers_coupon_is_not_owned():
    with pytest.raises(FailedPrecondition) as err:
        domain.redeem(coupon(), request(consumer_id="csm_2"), None, NOW)
    assert reason(err) == "COUPON_NOT_OWNED"


def test_another_brands_order_cannot_use_the_coupon():
    with pytest.raises(FailedPrecondition) as err:
        domain.redeem(coupon(), request(brand_id="brd_2"), None, NOW)
    assert reason(err) == "COUPON_WRONG_BRAND"


def test_the_order_that_redeemed_gets_the_same_redemption_back():
    first = domain.redeem(coupon(face=5_000), request(3_000), None, NOW)
    again = domain.redeem(first.coupon, request(9_999, key="k2"), first.redemption, NOW + timedelta(seconds=5))
    assert not again.new
    assert again.redemption == first.redemption
    assert again.coupon == first.coupon


def test_another_order_cannot_redeem_a_redeemed_coupon():
    first = domain.redeem(coupon(), request(), None, NOW)
    with pytest.raises(FailedPrecondition) as err:
        domain.redeem(first.coupon, request(order_id="ord_2", key="k2"), first.redemption, NOW)
    assert reason(err) == "COUPON_ALREADY_REDEEMED"


def test_ownership_is_checked_before_replaying():
    first = domain.redeem(coupon(), request(), None, NOW)
    with pytest.raises(FailedPrecondition) as err:
        domain.redeem(first.coupon, request(consumer_id="csm_2"), first.redemption, NOW)
    assert reason(err) == "COUPON_NOT_OWNED"


def test_redeemed_is_one_way():
    once = domain.redeemed(coupon(), "ord_1", NOW)
    with pytest.raises(FailedPrecondition) as err:
        domain.redeemed(once, "ord_1", NOW)
    assert reason(err) == "COUPON_ALREADY_REDEEMED"


def test_a_redeemed_coupon_without_its_redemption_is_a_bug_not_a_replay():
    with pytest.raises(RuntimeError):
        domain.redeem(domain.redeemed(coupon(), "ord_1", NOW), request(), None, NOW)


# -- idempotency key ---------------------------------------------------------------------------------------

def test_an_unused_key_or_the_same_request_passes():
    r = request()
    domain.check_idempotency_key(r, None)
    domain.check_idempotency_key(r, r.request_hash)


def test_a_key_used_for_another_request_is_invalid():
    with pytest.raises(InvalidArgument) as err:
        domain.check_idempotency_key(request(), b"something else")
    assert [f for f, _ in err.value.violations] == ["idempotency_key"]
