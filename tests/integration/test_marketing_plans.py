"""Marketing's redemption statements keep index plans however small its tables were when the plans were made.

On a private copy of the marketing schema: plans made on empty tables, on the filled tables before any
ANALYZE and after one, run with 50,000 coupons, 40 % of them redeemed: locking a coupon with its key's
redemption, reading a coupon's redemptions, redeeming it and giving it back (an unpaid order cancelled)
find the coupon and its redemption through their keys, never by reading the tables whole."""

from __future__ import annotations

from datetime import UTC, datetime

from services.marketing.domain import Coupon, CouponStatus, Funder, Redemption
from services.marketing.store import MarketingStore

from .plan_probe import (
    PlanProbe,
    analyze,
    assert_reads_by_index,
    prime,
    run_sql,
    schema_fixture,
)

COUPONS = 50_000
NOW = datetime.now(UTC)


def fill(n: int = COUPONS) -> list[str]:
    """The rows of n coupons."""
    return [
        f"""INSERT INTO coupons (code, brand_id, consumer_id, funder, face_value_fen, min_order_fen, status,
                                 redeemed_order_id, issued_at, redeemed_at)
            SELECT 'CP' || lpad(i::text, 8, '0'), 'brd_1', 'consumer-' || (i % 5000), 'BRAND', 500, 0,
                   CASE WHEN i % 10 < 4 THEN 'REDEEMED' ELSE 'ISSUED' END, CASE WHEN i % 10 < 4 THEN 'ord' || i END,
                   now(), CASE WHEN i % 10 < 4 THEN now() END
            FROM generate_series(0, {n - 1}) i""",
        f"""INSERT INTO redemptions (code, order_id, discount_fen, order_subtotal_fen, idempotency_key, request_hash,
                                     redeemed_at)
            SELECT 'CP' || lpad(i::text, 8, '0'), 'ord' || i, 500, 10000, 'key' || i, '\\x00', now()
            FROM generate_series(0, {n - 1}) i WHERE i % 10 < 4""",
    ]


FILL = fill()
GROWING = {"coupons", "redemptions"}


def statements() -> dict:
    store = MarketingStore()
    issued, redeemed = f"CP{COUPONS - 1:08d}", f"CP{COUPONS - 10:08d}"
    coupon = Coupon(issued, "brd_1", "consumer-1", Funder.BRAND, 500, 0, CouponStatus.REDEEMED, "ord_new", NOW, NOW,
                    None)
    redemption = Redemption(issued, "ord_new", 500, 10000, "key_new", b"\x00", NOW)
    return {
        "lock_coupon": lambda c: store.lock_coupon(c, issued, "key_new"),
        "redemption_and_key": lambda c: store.redemption_and_key(c, redeemed, "key_new"),
        "record_redemption": lambda c: store.record_redemption(c, coupon, redemption),
        "give_back": lambda c: store.give_back(c, redeemed, f"ord{COUPONS - 10}"),
    }


schema = schema_fixture("marketing")


async def test_redeeming_and_giving_back_keep_key_lookups_made_on_empty_or_unanalyzed_tables(stack, schema):
    hot = statements()
    async with PlanProbe(stack.admin_url, schema) as on_empty:
        await prime(on_empty, hot.values(), (RuntimeError,))  # nothing to redeem in empty tables
        await run_sql(stack.admin_url, schema, *FILL)
        async with PlanProbe(stack.admin_url, schema) as unanalyzed:
            for probe in (on_empty, unanalyzed):
                for effect in hot.values():
                    assert_reads_by_index(await probe.plans(effect), GROWING)
    await analyze(stack.admin_url, schema)
    async with PlanProbe(stack.admin_url, schema) as analyzed:
        for effect in hot.values():
            assert_reads_by_index(await analyzed.plans(effect), GROWING)
