"""SQL for the marketing schema."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from services.runtime.db import Connection
from services.runtime.errors import InvalidArgument

from .domain import Coupon, CouponStatus, Funder, Redemption

_COUPON_COLS = ("code, brand_id, consumer_id, funder, face_value_fen, min_order_fen, status, redeemed_order_id, "
                "issued_at, redeemed_at, redeemed_store_id")
_REDEMPTION_COLS = "code, order_id, discount_fen, order_subtotal_fen, idempotency_key, request_hash, redeemed_at"

_ADD_COUPON = text(
    f"INSERT INTO coupons ({_COUPON_COLS}) VALUES (:code, :brand_id, :consumer_id, :funder, :face_value_fen, "
    ":min_order_fen, :status, :redeemed_order_id, :issued_at, :redeemed_at, :redeemed_store_id) "
    "ON CONFLICT (code) DO NOTHING"
)
_COUPON = text(f"SELECT {_COUPON_COLS} FROM coupons WHERE code = :code")
# The lock serializes every redemption attempt on one coupon. The key lookup rides along in the same round
# trip; its snapshot predates the lock, which is fine on the path that uses it (an ISSUED coupon): a key
# committed meanwhile by another redemption makes our insert fail on the key's unique constraint instead.
_LOCK_COUPON = text(
    f"SELECT {_COUPON_COLS}, (SELECT request_hash FROM redemptions WHERE idempotency_key = :key) AS key_hash "
    "FROM coupons WHERE code = :code FOR UPDATE"
)
_REDEMPTIONS = text(
    f"SELECT {_REDEMPTION_COLS} FROM redemptions WHERE code = :code OR idempotency_key = :key"
)
# One statement for the transition and its record; `status = 'ISSUED'` restates what the lock guarantees.
_REDEEM = text(
    """
    WITH redeemed AS (
        UPDATE coupons SET status = :status, redeemed_order_id = :order_id, redeemed_at = :redeemed_at
        WHERE code = :code AND status = 'ISSUED'
        RETURNING code
    )
    INSERT INTO redemptions (code, order_id, discount_fen, order_subtotal_fen, idempotency_key, request_hash,
                             redeemed_at)
    SELECT code, :order_id, :discount_fen, :order_subtotal_fen, :idempotency_key, :request_hash, :redeemed_at
    FROM redeemed
    """
)


_REDEEM_AT_COUNTER = text(
    """
    WITH redeemed AS (
        UPDATE coupons SET status = 'REDEEMED', redeemed_store_id = :store_id, redeemed_at = :redeemed_at
        WHERE code = :code AND status = 'ISSUED'
        RETURNING code
    )
    INSERT INTO counter_redemptions (code, store_id, reimbursement_fen, redeemed_at)
    SELECT code, :store_id, :reimbursement_fen, :redeemed_at FROM redeemed
    """
)


def _coupon(row: Any) -> Coupon:
    return Coupon(row.code, row.brand_id, row.consumer_id, Funder(row.funder), row.face_value_fen,
                  row.min_order_fen, CouponStatus(row.status), row.redeemed_order_id, row.issued_at,
                  row.redeemed_at, row.redeemed_store_id)


def _redemption(row: Any) -> Redemption:
    return Redemption(row.code, row.order_id, row.discount_fen, row.order_subtotal_fen, row.idempotency_key,
                      bytes(row.request_hash), row.redeemed_at)


class MarketingStore:
    async def add_coupon(self, conn: Connection, coupon: Coupon) -> bool:
        """False if the code is taken (a 2^-60 event per existing coupon): the caller draws another."""
        result = await conn.execute(_ADD_COUPON, {**vars(coupon), "funder": coupon.funder.value,
                                                  "status": coupon.status.value})
        return result.rowcount == 1

    async def coupon(self, conn: Connection, code: str) -> Coupon | None:
        row = (await conn.execute(_COUPON, {"code": code})).first()
        return _coupon(row) if row else None

    async def lock_coupon(self, conn: Connection, code: str, key: str) -> tuple[Coupon | None, bytes | None]:
        """The coupon, locked until the transaction ends, and the request fingerprint a redemption with
        `key` was made for, if any (only meaningful while the coupon is ISSUED, see _LOCK_COUPON)."""
        row = (await conn.execute(_LOCK_COUPON, {"code": code, "key": key})).first()
        if row is None:
            return None, None
        return _coupon(row), (bytes(row.key_hash) if row.key_hash is not None else None)

    async def redemption_and_key(self, conn: Connection, code: str,
                                 key: str) -> tuple[Redemption | None, bytes | None]:
        """The coupon's redemption and the fingerprint `key` was used for. Call after lock_coupon: a statement
        that starts after the lock sees every redemption committed before it."""
        rows = (await conn.execute(_REDEMPTIONS, {"code": code, "key": key})).all()
        found = [_redemption(r) for r in rows]
        prior = next((r for r in found if r.code == code), None)
        by_key = next((r.request_hash for r in found if r.idempotency_key == key), None)
        return prior, by_key

    async def record_redemption(self, conn: Connection, coupon: Coupon, redemption: Redemption) -> None:
        """Write the REDEEMED coupon and its redemption. The coupon must be locked by this transaction."""
        try:
            result = await conn.execute(_REDEEM, {**vars(redemption), "status": coupon.status.value})
        except IntegrityError as err:
            # Only a concurrent redemption of another coupon with the same key gets here (see _LOCK_COUPON).
            if "redemptions_idempotency_key" in str(err.orig):
                raise InvalidArgument.field("idempotency_key", "was already used for a different request") from err
            raise
        if result.rowcount != 1:
            raise RuntimeError(f"coupon {coupon.code!r} was not ISSUED under its lock")

    async def record_counter_redemption(self, conn: Connection, coupon: Coupon) -> None:
        """Write a voucher redeemed at a counter. The coupon must be locked by this transaction."""
        result = await conn.execute(_REDEEM_AT_COUNTER, {
            "code": coupon.code, "store_id": coupon.redeemed_store_id, "redeemed_at": coupon.redeemed_at,
            "reimbursement_fen": coupon.face_value_fen})
        if result.rowcount != 1:
            raise RuntimeError(f"coupon {coupon.code!r} was not ISSUED under its lock")

    async def give_back(self, conn: Connection, code: str, order_id: str) -> bool:
        """REDEEMED by `order_id` -> ISSUED, its redemption removed (the order never paid, so nothing was
        consumed). Locks the coupon before the redemption, like a redemption does. False if there was
        nothing to give back."""
        await conn.execute(text("SELECT 1 FROM coupons WHERE code = :code FOR UPDATE"), {"code": code})
        # `c.code = :code` repeats what the join implies so that the coupon is found by its key: a plan made
        # on an empty table joined the freed redemption to a scan of every coupon.
        freed = (await conn.execute(
            text("WITH freed AS (DELETE FROM redemptions WHERE code = :code AND order_id = :o RETURNING code) "
                 "UPDATE coupons c SET status = 'ISSUED', redeemed_order_id = NULL, redeemed_at = NULL "
                 "FROM freed WHERE c.code = freed.code AND c.code = :code AND c.redeemed_order_id = :o RETURNING 1"),
            {"code": code, "o": order_id})).first()
        return freed is not None
