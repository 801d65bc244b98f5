"""Coupon rules, free of I/O: codes, who may redeem what, the discount, and the ISSUED -> REDEEMED step."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from services.runtime.errors import FailedPrecondition, InvalidArgument


class Funder(StrEnum):
    """Who pays for the discount."""

    BRAND = "BRAND"


class CouponStatus(StrEnum):
    ISSUED = "ISSUED"
    REDEEMED = "REDEEMED"


# Codes are read aloud and typed at a store counter (核销), so the alphabet is Crockford's base32: digits and
# capitals without I, L, O and U. 12 characters carry 60 random bits: unguessable, yet short enough to type.
CODE_PREFIX = "CPN-"
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 12
CODE_ENTROPY_BYTES = 8
# What people type for the letters the alphabet leaves out.
_LOOKALIKES = str.maketrans({"I": "1", "L": "1", "O": "0"})


def coupon_code(entropy: bytes) -> str:
    """A code from random bytes (os.urandom). 32 symbols are exactly 5 bits each, so no symbol is favoured."""
    if len(entropy) < CODE_ENTROPY_BYTES:
        raise ValueError(f"need {CODE_ENTROPY_BYTES} random bytes, got {len(entropy)}")
    bits = int.from_bytes(entropy[:CODE_ENTROPY_BYTES], "big") >> (8 * CODE_ENTROPY_BYTES - 5 * CODE_LENGTH)
    symbols = []
    for _ in range(CODE_LENGTH):
        symbols.append(CODE_ALPHABET[bits & 31])
        bits >>= 5
    return CODE_PREFIX + "".join(symbols)


def normalize_code(typed: str) -> str:
    """The canonical form of a code as a person typed it: any case, spaces or dashes between groups, and
    I/L/O for 1/0. Anything that is not a coupon code is only trimmed and upper-cased (it will not be found)."""
    text = typed.strip().upper()
    prefix, dash, body = text.partition("-")
    if not dash or prefix != CODE_PREFIX[:-1]:
        return text
    body = "".join(body.split()).replace("-", "")
    return CODE_PREFIX + body.translate(_LOOKALIKES)


@dataclass(frozen=True)
class Coupon:
    code: str
    brand_id: str
    consumer_id: str
    funder: Funder
    face_value_fen: int
    min_order_fen: int
    status: CouponStatus
    redeemed_order_id: str | None
    issued_at: datetime
    redeemed_at: datetime | None
    # The store whose counter redeemed it (核销 at the store); None for a coupon redeemed by an order.
    redeemed_store_id: str | None = None


def issue(code: str, brand_id: str, consumer_id: str, funder: Funder, face_value_fen: int, min_order_fen: int,
          now: datetime) -> Coupon:
    if face_value_fen <= 0:
        raise InvalidArgument.field("face_value_fen", "must be greater than 0")
    if min_order_fen < 0:
        raise InvalidArgument.field("min_order_fen", "must not be negative")
    return Coupon(code, brand_id, consumer_id, funder, face_value_fen, min_order_fen, CouponStatus.ISSUED,
                  None, now, None)


@dataclass(frozen=True)
class RedeemRequest:
    code: str
    order_id: str
    consumer_id: str
    brand_id: str
    order_subtotal_fen: int
    idempotency_key: str
    # Fingerprint of the request as sent: one idempotency key stands for one request.
    request_hash: bytes


@dataclass(frozen=True)
class Redemption:
    code: str
    order_id: str
    discount_fen: int
    order_subtotal_fen: int
    idempotency_key: str
    request_hash: bytes
    redeemed_at: datetime


@dataclass(frozen=True)
class Decision:
    """The outcome of a redemption request: the coupon afterwards and its redemption. `new` is False when the
    order had already redeemed this coupon: the caller replays the redemption and writes nothing."""

    coupon: Coupon
    redemption: Redemption
    new: bool


def discount_fen(face_value_fen: int, order_subtotal_fen: int) -> int:
    """A fixed-amount coupon takes its face value off, but never more than the order is worth: the consumer
    is never paid to buy."""
    if face_value_fen < 0 or order_subtotal_fen < 0:
        raise ValueError("amounts must not be negative")
    return min(face_value_fen, order_subtotal_fen)


def check_idempotency_key(request: RedeemRequest, used_by: bytes | None) -> None:
    """`used_by` is the fingerprint of the request that already redeemed with this key, if any. The same key
    for a different request is the caller's bug, never a second redemption."""
    if used_by is not None and used_by != request.request_hash:
        raise InvalidArgument.field("idempotency_key", "was already used for a different request")


def check_eligible(coupon: Coupon, request: RedeemRequest) -> None:
    """Only the consumer it was issued to may use a coupon, and only on an order from the brand that pays."""
    if coupon.consumer_id != request.consumer_id:
        raise FailedPrecondition(
            f"coupon {coupon.code!r} was not issued to consumer {request.consumer_id!r}",
            reason="COUPON_NOT_OWNED",
            metadata={"code": coupon.code, "consumer_id": request.consumer_id},
        )
    if coupon.brand_id != request.brand_id:
        raise FailedPrecondition(
            f"coupon {coupon.code!r} is not valid for brand {request.brand_id!r}",
            reason="COUPON_WRONG_BRAND",
            metadata={"code": coupon.code, "brand_id": request.brand_id},
        )


def redeemed(coupon: Coupon, order_id: str, at: datetime) -> Coupon:
    """The ISSUED -> REDEEMED transition. A coupon is consumed once; there is no way back."""
    if coupon.status is not CouponStatus.ISSUED:
        raise FailedPrecondition(
            f"coupon {coupon.code!r} was already redeemed",
            reason="COUPON_ALREADY_REDEEMED",
            metadata={"code": coupon.code},
        )
    return dataclasses.replace(coupon, status=CouponStatus.REDEEMED, redeemed_order_id=order_id, redeemed_at=at)


def redeem(coupon: Coupon, request: RedeemRequest, prior: Redemption | None, now: datetime) -> Decision:
    """Decide a redemption against the coupon as it is now (locked by the caller) and its redemption, if any.

    An order that redeemed the coupon and asks again (a retried PlaceOrder) gets the same redemption back,
    even if the subtotal it sends changed: the discount was fixed when the coupon was consumed."""
    check_eligible(coupon, request)
    if coupon.status is CouponStatus.REDEEMED:
        if prior is None:
            raise RuntimeError(f"coupon {coupon.code!r} is REDEEMED but has no redemption")
        if prior.order_id == request.order_id:
            return Decision(coupon, prior, new=False)
        raise FailedPrecondition(
            f"coupon {coupon.code!r} was already redeemed by another order",
            reason="COUPON_ALREADY_REDEEMED",
            metadata={"code": coupon.code},
        )
    if request.order_subtotal_fen < coupon.min_order_fen:
        raise FailedPrecondition(
            f"coupon {coupon.code!r} needs an order of at least {coupon.min_order_fen} fen",
            reason="MIN_ORDER_NOT_MET",
            metadata={"code": coupon.code, "min_order_fen": str(coupon.min_order_fen),
                      "order_subtotal_fen": str(request.order_subtotal_fen)},
        )
    redemption = Redemption(
        code=coupon.code,
        order_id=request.order_id,
        discount_fen=discount_fen(coupon.face_value_fen, request.order_subtotal_fen),
        order_subtotal_fen=request.order_subtotal_fen,
        idempotency_key=request.idempotency_key,
        request_hash=request.request_hash,
        redeemed_at=now,
    )
    return Decision(redeemed(coupon, request.order_id, now), redemption, new=True)


def redeem_at_counter(coupon: Coupon, consumer_id: str, store_id: str, now: datetime) -> Coupon:
    """A brand-funded voucher handed in at a store counter: consumed once, by the consumer it was issued
    to; the brand then owes the store its face value."""
    if coupon.consumer_id != consumer_id:
        raise FailedPrecondition(
            f"coupon {coupon.code!r} was not issued to consumer {consumer_id!r}",
            reason="COUPON_NOT_OWNED", metadata={"code": coupon.code, "consumer_id": consumer_id})
    if coupon.funder is not Funder.BRAND:
        raise FailedPrecondition(f"coupon {coupon.code!r} is not funded by the brand", reason="NOT_BRAND_FUNDED",
                                 metadata={"code": coupon.code})
    return dataclasses.replace(redeemed(coupon, "", now), redeemed_order_id=None, redeemed_store_id=store_id)
