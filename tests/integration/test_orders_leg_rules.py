"""The rule on every leg row, `returns_within`: each returned quantity between 0 and its line's quantity.
It is a PL/pgSQL loop since migration 0007 (an SQL function was re-planned by every statement writing legs);
these pin the rule it must keep, on a private copy of the orders schema."""

from __future__ import annotations

import asyncpg
import pytest

from .plan_probe import schema_fixture

schema = schema_fixture("orders")


@pytest.mark.parametrize(("quantities", "returned", "within"), [
    ([2, 1], [0, 0], True),
    ([2, 1], [2, 1], True),
    ([2, 1], [3, 0], False),
    ([2, 1], [0, 2], False),
    ([2, 1], [-1, 0], False),
    ([5], [5], True),
    ([], [], True),
    ([2, 1], [0], True),  # positions beyond the shorter array are the cardinality constraint's to refuse
])
async def test_returns_within_judges_each_line_against_its_quantity(stack, schema, quantities, returned, within):
    conn = await asyncpg.connect(stack.admin_url, server_settings={"search_path": schema})
    try:
        assert await conn.fetchval("SELECT returns_within($1::bigint[], $2::bigint[])", quantities, returned) is within
    finally:
        await conn.close()


async def test_a_leg_returning_more_than_it_shipped_is_refused(stack, schema):
    conn = await asyncpg.connect(stack.admin_url, server_settings={"search_path": schema})
    try:
        await conn.execute(
            "INSERT INTO orders (order_id, idempotency_key, request_hash, status, store_id, dealer_id, brand_id, "
            "consumer_id, attribution_dealer_id, attribution_store_id, subtotal_fen, discount_fen, payable_fen, "
            "reservation_id, payment_txn_id, shipment_id, created_at, paid_at, dispatched_at, warehouse_id) "
            "VALUES ('ord_1', 'k1', '\\x00', 'DISPATCHED', 's', 'd', 'b', 'c', 'd', 's', 3000, 0, 3000, 'rsv_1', "
            "'txn_1', 'shp_1', now(), now(), now(), 'whs_1')")
        leg = ("INSERT INTO order_legs (order_id, leg, reservation_id, warehouse_id, sku_ids, quantities, returned, "
               "shipment_id, dispatched_at) VALUES ('ord_1', $1, 'rsv_1', 'whs_1', '{sku_a,sku_b}', '{2,1}', $2, "
               "'shp_1', now())")
        await conn.execute(leg, 0, [1, 1])
        with pytest.raises(asyncpg.CheckViolationError, match="returns_within_leg"):
            await conn.execute(leg, 1, [0, 2])
        with pytest.raises(asyncpg.CheckViolationError, match="returns_within_leg"):
            await conn.execute("UPDATE order_legs SET returned = '{3,0}' WHERE order_id = 'ord_1' AND leg = 0")
    finally:
        await conn.close()
