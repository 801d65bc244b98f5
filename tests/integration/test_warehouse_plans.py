"""The warehouse's hot statements keep index plans however small their tables were when the plans were made.

On a private copy of the warehouse schema: plans made on empty tables (a fresh deployment), made on the filled
tables before any ANALYZE, and made after one, are run against 20,000 orders' reservations, 40 % of them
RESERVED (the expiry sweeper's partial index holds those), with their lines, shipments and movements. Every
statement of the order-paid and order-cancelled batches, the group-commit reservation (the statements inside
`reserve_calls`), a split hold, a pickup set aside and handed over must find its rows through an index for the
rows it names, never by reading a growing table whole, and only the sweeper may use `reservations_expiring`."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.exc import DBAPIError

from services.warehouse.domain import Line, Reservation, ReservationStatus, Shipment
from services.warehouse.store import ReserveCall, WarehouseStore

from .plan_probe import (
    PlanProbe,
    analyze,
    assert_reads_by_index,
    indexes_used,
    prime,
    run_sql,
    schema_fixture,
)

ORDERS = 20_000
GROWING = {"reservations", "reservation_lines", "shipments", "shipment_lines", "movements", "stock"}
SWEEPERS_INDEX = frozenset({"reservations_expiring"})
NOW = datetime.now(UTC)


def fill(n: int = ORDERS) -> list[str]:
    """The rows of n orders."""
    return [
        """INSERT INTO warehouses (warehouse_id, code, name, kind, region, latitude, longitude, modes, store_id,
                                   express_radius_km, manual_fulfilment)
           SELECT 'whs_c' || i, 'C' || i, 'cloud', 'CLOUD', 'east', 31, 121, '{CLOUD_SHIPPING}'::text[], '', 0, false
           FROM generate_series(0, 2) i
           UNION ALL
           SELECT 'whs_s' || lpad(i::text, 3, '0'), 'S' || i, 'store', 'STORE', 'east', 31, 121,
                  '{STORE_PICKUP}'::text[], 'sto_' || i, 0, false
           FROM generate_series(0, 49) i""",
        """INSERT INTO stock (warehouse_id, sku_id, on_hand, reserved)
           SELECT 'whs_c' || w, 'sku' || lpad(k::text, 4, '0'), 1000000000, 1000000
           FROM generate_series(0, 2) w, generate_series(0, 499) k
           UNION ALL
           SELECT 'whs_s' || lpad(w::text, 3, '0'), 'sku' || lpad(k::text, 4, '0'), 1000000000, 1000000
           FROM generate_series(0, 49) w, generate_series(0, 49) k""",
        # i % 10 < 4 RESERVED, < 9 SHIPPED, else RELEASED; every 50th held at a store's counter, every 50th
        # CONFIRMED there with its pickup waiting.
        f"""INSERT INTO reservations (reservation_id, order_id, warehouse_id, status, idempotency_key, request_hash,
                                      created_at, updated_at, expires_at, leg)
            SELECT 'rsv' || lpad(i::text, 7, '0'), 'ord' || lpad(i::text, 7, '0'),
                   CASE WHEN i % 50 IN (1, 11) THEN 'whs_s' || lpad(((i / 50) % 50)::text, 3, '0')
                        ELSE 'whs_c' || (i % 3) END,
                   CASE WHEN i % 50 = 11 THEN 'CONFIRMED' WHEN i % 10 < 4 THEN 'RESERVED' WHEN i % 10 < 9 THEN 'SHIPPED'
                        ELSE 'RELEASED' END,
                   'key' || lpad(i::text, 7, '0'), '\\x00', now(), now(),
                   CASE WHEN i % 50 = 11 THEN NULL ELSE now() + interval '15 minutes' END, 0
            FROM generate_series(0, {n - 1}) i""",
        f"""INSERT INTO reservation_lines (reservation_id, sku_id, quantity)
            SELECT 'rsv' || lpad(i::text, 7, '0'),
                   CASE WHEN i % 50 IN (1, 11) THEN 'sku' || lpad((i % 50)::text, 4, '0')
                        ELSE 'sku' || lpad(((i * 7) % 500)::text, 4, '0') END, 1
            FROM generate_series(0, {n - 1}) i""",
        """INSERT INTO shipments (shipment_id, order_id, warehouse_id, reservation_id, status, dispatched_at,
                                  pickup_code, ready_at)
           SELECT 'shp' || substr(r.reservation_id, 4), r.order_id, r.warehouse_id, r.reservation_id,
                  CASE WHEN r.status = 'CONFIRMED' THEN 'READY_FOR_PICKUP' ELSE 'DISPATCHED' END,
                  CASE WHEN r.status = 'CONFIRMED' THEN NULL ELSE now() END,
                  CASE WHEN r.status = 'CONFIRMED' THEN '123456' END, CASE WHEN r.status = 'CONFIRMED' THEN now() END
           FROM reservations r WHERE r.status IN ('SHIPPED', 'CONFIRMED')""",
        """INSERT INTO shipment_lines (shipment_id, sku_id, quantity)
           SELECT 'shp' || substr(l.reservation_id, 4), l.sku_id, l.quantity
           FROM reservation_lines l JOIN reservations r USING (reservation_id)
           WHERE r.status IN ('SHIPPED', 'CONFIRMED')""",
        """INSERT INTO movements (warehouse_id, sku_id, on_hand_delta, reserved_delta, reason, reference_id)
           SELECT r.warehouse_id, l.sku_id, 0, l.quantity, 'reservation', r.reservation_id
           FROM reservation_lines l JOIN reservations r USING (reservation_id)""",
    ]


FILL = fill()


def lines(i: int) -> tuple[Line, ...]:
    return (Line(f"sku{i % 50:04d}", 1),) if i % 50 in (1, 11) else (Line(f"sku{i * 7 % 500:04d}", 1),)


def held(i: int, status: ReservationStatus = ReservationStatus.RESERVED) -> Reservation:
    w = f"whs_s{i // 50 % 50:03d}" if i % 50 in (1, 11) else f"whs_c{i % 3}"
    return Reservation(f"rsv{i:07d}", f"ord{i:07d}", w, status, lines(i), NOW, f"key{i:07d}", b"\x00", NOW, 0)


def shipment(r: Reservation, status: str = "DISPATCHED") -> Shipment:
    at = NOW if status == "DISPATCHED" else None
    return Shipment("shp" + r.reservation_id[3:], r.order_id, r.warehouse_id, r.reservation_id, r.lines, at, status,
                    None if at else NOW)


def hot_statements() -> dict:
    store = WarehouseStore()
    last = ORDERS - 1000
    paid = [held(i) for i in range(last, ORDERS) if i % 10 < 4 and i % 50 not in (1, 11)][:12]
    pickup = held(next(i for i in range(last, ORDERS) if i % 50 == 1))
    waiting = held(next(i for i in range(last, ORDERS) if i % 50 == 11), ReservationStatus.CONFIRMED)
    released = held(next(i for i in range(last, ORDERS) if i % 10 == 9 and i % 50 not in (1, 11)),
                    ReservationStatus.RELEASED)
    shipped = held(next(i for i in range(last, ORDERS) if 4 <= i % 10 < 9 and i % 50 not in (1, 11)),
                   ReservationStatus.SHIPPED)
    calls = [ReserveCall(f"rsv_new{j}", f"ord_new{j}", f"key_new{j}", b"h",
                         (Line(f"sku{j * 11:04d}", 1), Line(f"sku{j * 11 + 3:04d}", 1)) if j % 2 else
                         (Line(f"sku{j * 11:04d}", 1),), 900.0, None) for j in range(4)]
    calls.append(ReserveCall("rsv_new9", "ord_new9", "key_new9", b"h", (Line("sku0003", 1),), 900.0, "whs_s000"))
    split = ReserveCall("rsv_split", "ord_split", "key_split", b"h", (Line("sku0001", 1), Line("sku0002", 1)), 900.0)
    return {
        "reserve_calls": lambda c: store.reserve_calls(c, calls),
        "reservations_for_orders": lambda c: store.reservations_for_orders(c, [r.order_id for r in paid]),
        "ship_held_many": lambda c: store.ship_held_many(c, [(r, shipment(r)) for r in paid]),
        "release_many": lambda c: store.release_many(c, [(r, "order cancelled") for r in paid]),
        "set_aside": lambda c: store.set_aside(c, pickup, shipment(pickup, "READY_FOR_PICKUP"), "654321"),
        "hand_over": lambda c: store.hand_over(c, shipment(waiting, "READY_FOR_PICKUP"), shipment(waiting)),
        "retake_and_ship": lambda c: store.retake_and_ship(c, released, shipment(released)),
        "reserve_split": lambda c: store.reserve_split(c, split, ["rsv_split", "rsv_split1"],
                                                       [("whs_c0", (Line("sku0001", 1),)),
                                                        ("whs_c1", (Line("sku0002", 1),))]),
        "lock_stock": lambda c: store.lock_stock(c, [(r.warehouse_id, r.lines) for r in paid]),
        "prior_reservations": lambda c: store.prior_reservations(c, shipped.idempotency_key, shipped.order_id),
    }


schema = schema_fixture("warehouse")
# On empty tables the batches find none of their rows and fail (a broken invariant, a missing foreign key).
TOLERATED = (RuntimeError, DBAPIError)



async def test_hot_statements_keep_index_plans_made_on_empty_tables_or_before_any_analyze(stack, schema):
    statements = hot_statements()
    async with PlanProbe(stack.admin_url, schema) as on_empty:
        await prime(on_empty, statements.values(), TOLERATED)
        await run_sql(stack.admin_url, schema, *FILL)
        async with PlanProbe(stack.admin_url, schema) as unanalyzed:
            for probe in (on_empty, unanalyzed):
                for name, effect in statements.items():
                    plans = await probe.plans(effect)
                    assert plans, name
                    assert_reads_by_index(plans, GROWING, avoid=SWEEPERS_INDEX)
                    if name in ("ship_held_many", "release_many", "set_aside"):
                        assert "reservations_pkey" in indexes_used(plans), name

    await analyze(stack.admin_url, schema)
    async with PlanProbe(stack.admin_url, schema) as analyzed:
        for name, effect in statements.items():
            plans = await analyzed.plans(effect)
            assert_reads_by_index(plans, GROWING, avoid=SWEEPERS_INDEX)
            if name in ("ship_held_many", "release_many", "set_aside"):
                assert "reservations_pkey" in indexes_used(plans), name
        # The sweeper is what the partial index is for.
        sweep = await analyzed.plans(lambda c: WarehouseStore().expired_reservations(c, 1))
        assert "reservations_expiring" in indexes_used(sweep)
