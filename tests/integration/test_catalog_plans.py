"""Catalog's quote keeps index plans however small its tables were when the plan was made.

On a private copy of the catalog schema: the plan of the statement every PlaceOrder quotes through, made on
empty tables (a mall before its stores open), made on the filled tables before any ANALYZE and made after
one, run with 2,000 stores listing 50 SKUs each out of 1,000: stores, SKUs and listings are read through
their primary keys for the requested pairs only."""

from __future__ import annotations

from services.catalog.store import CatalogStore

from .plan_probe import PlanProbe, analyze, assert_reads_by_index, indexes_used, run_sql, schema_fixture

STORES, SKUS, LISTED = 2_000, 1_000, 50
FILL = [
    "INSERT INTO brands (brand_id, name) VALUES ('brd_1', 'brand')",
    f"""INSERT INTO skus (sku_id, brand_id, code, name, retail_price_fen, supply_price_fen)
        SELECT 'sku' || lpad(k::text, 4, '0'), 'brd_1', 'C' || k, 'sku', 10000, 6000
        FROM generate_series(0, {SKUS - 1}) k""",
    f"""INSERT INTO dealers (dealer_id, brand_id, name, merchant_id)
        SELECT 'dlr_' || d, 'brd_1', 'dealer', 'm' || d FROM generate_series(0, {STORES // 10 - 1}) d""",
    f"""INSERT INTO stores (store_id, dealer_id, name, region, latitude, longitude)
        SELECT 'sto_' || lpad(s::text, 5, '0'), 'dlr_' || (s / 10), 'store', 'east', 31, 121
        FROM generate_series(0, {STORES - 1}) s""",
    f"""INSERT INTO listings (store_id, sku_id, listed)
        SELECT 'sto_' || lpad(s::text, 5, '0'), 'sku' || lpad(((s * 7 + k) % {SKUS})::text, 4, '0'), true
        FROM generate_series(0, {STORES - 1}) s, generate_series(0, {LISTED - 1}) k""",
]
GROWING = {"stores", "skus", "listings"}


def quote(conn):  # type: ignore[no-untyped-def]
    stores = [f"sto_{STORES - 1 - 37 * k:05d}" for k in range(12)]
    return CatalogStore().quote_inputs(conn, [(s, [f"sku{(int(s[4:]) * 7 + 1) % SKUS:04d}"]) for s in stores])


schema = schema_fixture("catalog")


async def test_the_quote_keeps_primary_key_lookups_made_on_empty_or_unanalyzed_tables(stack, schema):
    async with PlanProbe(stack.admin_url, schema) as on_empty:
        await on_empty.plans(quote)
        await run_sql(stack.admin_url, schema, *FILL)
        async with PlanProbe(stack.admin_url, schema) as unanalyzed:
            for probe in (on_empty, unanalyzed):
                plans = await probe.plans(quote)
                assert_reads_by_index(plans, GROWING)
                assert {"listings_pkey", "skus_pkey"} <= indexes_used(plans)
    await analyze(stack.admin_url, schema)
    async with PlanProbe(stack.admin_url, schema) as analyzed:
        assert_reads_by_index(await analyzed.plans(quote), GROWING)
