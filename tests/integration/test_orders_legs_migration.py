"""Orders stored before legs existed, on a private copy of the orders schema migrated to 0005: after the
legs migration each is one leg from its own columns, shipped if it was dispatched (not a split order caught
partly shipped), with the goods its refunds returned; the next shipment event carries it on."""

from __future__ import annotations

import asyncio
import pathlib
from datetime import UTC, datetime

import asyncpg
import pytest
from omo.orders.v1 import orders_pb2 as pb
from sqlalchemy import text

from services.orders import domain
from services.orders.store import OrderStore
from services.runtime import db, migrate

MIGRATIONS = pathlib.Path(domain.__file__).parent / "migrations"
AT = datetime(2020, 12, 8, 20, 0, tzinfo=UTC)


LEGACY = (("ord_shipped", "PARTIALLY_REFUNDED", True, 2), ("ord_partial", "PARTIALLY_SHIPPED", True, 0),
          ("ord_paid", "PAID", False, 0))


async def _insert_legacy(url: str, schema: str, orders=LEGACY) -> None:  # type: ignore[no-untyped-def]
    """Orders as a process from before legs wrote them: the row and its lines."""
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        for order_id, status, dispatched, refunded in orders:
            await conn.execute(
                "INSERT INTO orders (order_id, idempotency_key, request_hash, status, store_id, dealer_id, brand_id, "
                "consumer_id, attribution_dealer_id, attribution_store_id, subtotal_fen, discount_fen, payable_fen, "
                "reservation_id, payment_txn_id, shipment_id, created_at, paid_at, dispatched_at, refunded_fen, "
                "warehouse_id) VALUES ($1, $1, '\\x00', $2, 's', 'd', 'b', 'c', 'd', 's', 3000, 0, 3000, "
                "'rsv_' || $1, 'txn_' || $1, $3, $4, $4, $5, $6, 'whs_1')",
                order_id, status, "shp_" + order_id if dispatched else None, AT, AT if dispatched else None,
                1000 * refunded)
            for n, (sku, quantity) in enumerate((("sku_a", 2), ("sku_b", 1)), start=1):
                await conn.execute(
                    "INSERT INTO order_lines (order_id, line_no, sku_id, name, quantity, unit_price_fen, "
                    "unit_supply_price_fen, line_total_fen, refunded_quantity, refunded_fen) "
                    "VALUES ($1, $2, $3, $3, $4, 1000, 800, $5, $6, $7)",
                    order_id, n, sku, quantity, 1000 * quantity, 1 if refunded and sku == "sku_a" else 0,
                    1000 if refunded and sku == "sku_a" else 0)
        if orders is not LEGACY:
            return
        # ord_shipped: a unit of sku_a back with its goods, another (of sku_b) money only.
        for rid, sku, goods in (("rf_goods", "sku_a", True), ("rf_money", "sku_b", False)):
            refund = pb.Refund(provider_refund_id=rid, order_id="ord_shipped", goods_returned=goods, amount_fen=1000,
                               lines=[pb.RefundedLine(sku_id=sku, quantity=1, gross_fen=1000, amount_fen=1000)])
            await conn.execute("INSERT INTO refunds (provider_refund_id, order_id, request_hash, amount_fen, refund, "
                               "refunded_at) VALUES ($1, 'ord_shipped', '\\x00', 1000, $2, $3)",
                               rid, refund.SerializeToString(), AT)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def legacy(stack):  # type: ignore[no-untyped-def]
    schema = asyncio.run(migrate.private_schema(stack.admin_url, "orders_legs", MIGRATIONS, "0005"))
    asyncio.run(_insert_legacy(stack.admin_url, schema))
    migrate.upgrade(schema, MIGRATIONS, stack.admin_url)
    return stack.admin_url, schema


async def test_orders_from_before_legs_are_one_leg_each_and_follow_their_next_shipment(legacy):
    engine = db.create_engine(*legacy, pool_size=2)
    store = OrderStore()
    try:
        async with engine.connect() as conn:
            shipped, partial, paid = [await store.order(conn, o) for o in ("ord_shipped", "ord_partial", "ord_paid")]
            stored = (await conn.execute(text("SELECT count(*) FROM order_legs"))).scalar_one()
        assert stored == 3
        assert shipped is not None and partial is not None and paid is not None
        [leg] = shipped.legs
        assert (leg.reservation_id, leg.warehouse_id, leg.shipment_id, leg.dispatched_at) == (
            "rsv_ord_shipped", "whs_1", "shp_ord_shipped", AT)
        assert [(li.sku_id, li.quantity, li.returned_quantity) for li in leg.lines] == [("sku_a", 2, 1),
                                                                                        ("sku_b", 1, 0)]
        assert domain.shipped_quantity(shipped, "sku_a") == 2 and domain.returned_quantity(shipped, "sku_a") == 1
        # Which leg of the split order left is unknown: none is counted until the warehouse says all have.
        assert not partial.legs[0].shipped and not paid.legs[0].shipped
        assert partial.legs[0].lines == paid.legs[0].lines

        # The other location's parcel, a leg the order does not know: the order ships in full with it.
        later = datetime(2020, 12, 9, 9, 0, tzinfo=UTC)
        done = domain.dispatch(partial, "shp_other", later, reservation_id="rsv_unknown", warehouse_id="whs_2")
        assert done is not None and done.status == domain.Status.DISPATCHED
        async with engine.begin() as conn:
            await store.record_dispatches(conn, [(partial, done)])
        async with engine.connect() as conn:
            again = await store.order(conn, "ord_partial")
        assert again == done and domain.shipped_quantity(again, "sku_a") == 2

        # An order a process from before legs writes after the migration reads as one leg too, stored once it
        # ships.
        await _insert_legacy(*legacy, orders=(("ord_late", "PAID", False, 0),))
        async with engine.begin() as conn:
            late = await store.order(conn, "ord_late", lock=True)
            assert late is not None and late.legs == (domain.legacy_leg(late),)
            shipped_late = domain.dispatch(late, "shp_late", later, reservation_id="rsv_ord_late")
            assert shipped_late is not None and shipped_late.legs[0].shipment_id == "shp_late"
            await store.record_dispatches(conn, [(late, shipped_late)])
        async with engine.connect() as conn:
            assert await store.order(conn, "ord_late") == shipped_late
            assert (await conn.execute(text("SELECT shipment_id FROM order_legs WHERE order_id = 'ord_late'"))
                    ).scalar_one() == "shp_late"
    finally:
        await engine.dispose()
