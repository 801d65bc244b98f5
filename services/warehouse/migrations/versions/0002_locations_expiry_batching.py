"""Locations of every kind with their fulfilment modes, expiring reservations, and the reservation as a
database function so that concurrent single-line reservations can share one commit.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# One reservation, all lines or none; the logic that was the one-statement ReserveStock (see store.py for
# the why of each step). `prior` tells the caller to look at the existing reservation. p_warehouse NULL: the
# first cloud warehouse covering every line; otherwise that location only (the one routing chose).
_RESERVE_ONE = """
CREATE FUNCTION reserve_one(p_rid text, p_order_id text, p_key text, p_hash bytea, p_skus text[],
                            p_qtys bigint[], p_hold_s double precision, p_warehouse text,
                            OUT prior boolean, OUT warehouse_id text, OUT created_at timestamptz,
                            OUT expires_at timestamptz, OUT level_warehouses text[], OUT level_skus text[],
                            OUT level_available bigint[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    WITH lines AS (SELECT * FROM unnest(p_skus, p_qtys) AS l(sku_id, quantity)),
    prior_r AS (
        SELECT 1 FROM reservations r WHERE r.idempotency_key = p_key OR r.order_id = p_order_id
    ),
    level AS MATERIALIZED (
        SELECT s.warehouse_id, s.sku_id, s.on_hand - s.reserved AS available, l.quantity
        FROM stock s JOIN lines l ON l.sku_id = s.sku_id JOIN warehouses h ON h.warehouse_id = s.warehouse_id
        WHERE (p_warehouse IS NULL AND h.kind = 'CLOUD') OR h.warehouse_id = p_warehouse
    ),
    target AS (
        SELECT v.warehouse_id FROM level v
        WHERE v.available >= v.quantity AND NOT EXISTS (SELECT 1 FROM prior_r)
        GROUP BY v.warehouse_id HAVING count(*) = cardinality(p_skus)
        ORDER BY v.warehouse_id LIMIT 1
    ),
    locked AS MATERIALIZED (
        SELECT s.warehouse_id, s.sku_id, l.quantity
        FROM stock s JOIN target t ON t.warehouse_id = s.warehouse_id JOIN lines l ON l.sku_id = s.sku_id
        WHERE s.on_hand - s.reserved >= l.quantity
        ORDER BY s.sku_id
        FOR UPDATE OF s
    ),
    held AS (
        UPDATE stock s SET reserved = s.reserved + k.quantity, updated_at = now()
        FROM locked k
        WHERE (SELECT count(*) FROM locked) = cardinality(p_skus)
          AND s.warehouse_id = k.warehouse_id AND s.sku_id = k.sku_id
          AND s.on_hand - s.reserved >= k.quantity
        RETURNING s.warehouse_id, s.sku_id, k.quantity
    ),
    reservation AS (
        INSERT INTO reservations (reservation_id, order_id, warehouse_id, status, idempotency_key, request_hash,
                                  created_at, expires_at)
        SELECT p_rid, p_order_id, t.warehouse_id, 'RESERVED', p_key, p_hash, clock_timestamp(),
               clock_timestamp() + make_interval(secs => p_hold_s)
        FROM target t
        WHERE EXISTS (SELECT 1 FROM held)
        RETURNING reservations.warehouse_id, reservations.created_at, reservations.expires_at
    ),
    held_lines AS (
        INSERT INTO reservation_lines (reservation_id, sku_id, quantity)
        SELECT p_rid, h.sku_id, h.quantity FROM held h
    ),
    moved AS (
        INSERT INTO movements (warehouse_id, sku_id, on_hand_delta, reserved_delta, reason, reference_id)
        SELECT h.warehouse_id, h.sku_id, 0, h.quantity, 'reservation', p_rid FROM held h ORDER BY h.sku_id
    )
    SELECT EXISTS (SELECT 1 FROM prior_r),
           (SELECT r.warehouse_id FROM reservation r),
           (SELECT r.created_at FROM reservation r),
           (SELECT r.expires_at FROM reservation r),
           ARRAY(SELECT v.warehouse_id FROM level v ORDER BY v.warehouse_id, v.sku_id),
           ARRAY(SELECT v.sku_id FROM level v ORDER BY v.warehouse_id, v.sku_id),
           ARRAY(SELECT v.available FROM level v ORDER BY v.warehouse_id, v.sku_id)
    INTO prior, warehouse_id, created_at, expires_at, level_warehouses, level_skus, level_available;
END $$"""

# Many single-line reservations in one statement, hence one commit (one WAL flush) for all of them: on a
# hot SKU the row lock is held until the commit is durable, so without this the flash-sale rate is one
# reservation per disk flush. Set-based, so that a batch costs little more than one reservation:
#   1. which calls already have a reservation for their key or order (they get `prior`);
#   2. lock the batch's SKUs' cloud stock rows in (sku_id, warehouse_id) order and read what is available;
#   3. in call order, each call takes the first warehouse (by id) that still covers it: the same choice
#      reserve_one makes, applied one call after the other;
#   4. write the stock levels (one UPDATE per row), the reservations, their lines and their movements.
# A call that got nothing comes back with the availability it was refused on. The caller never puts two
# calls for one key or order in a batch; a unique-key race with a concurrent statement fails the whole
# batch, and the caller then runs its calls one by one (batching.py).
_RESERVE_BATCH = """
CREATE FUNCTION reserve_batch(p_rids text[], p_order_ids text[], p_keys text[], p_hashes bytea[],
                              p_skus text[], p_qtys bigint[], p_hold_s double precision[])
RETURNS TABLE (ord integer, prior boolean, conflict boolean, warehouse_id text, created_at timestamptz,
               expires_at timestamptz, level_warehouses text[], level_skus text[], level_available bigint[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n integer := coalesce(cardinality(p_rids), 0);
    had boolean[];
    w_ids text[];
    w_skus text[];
    w_avail bigint[];
    chosen text[] := array_fill(NULL::text, ARRAY[n]);
    i integer;
    j integer;
    at timestamptz := clock_timestamp();
BEGIN
    SELECT array_agg(EXISTS (SELECT 1 FROM reservations r WHERE r.idempotency_key = t.k OR r.order_id = t.o)
                     ORDER BY t.i)
    INTO had FROM unnest(p_keys, p_order_ids) WITH ORDINALITY AS t(k, o, i);

    SELECT coalesce(array_agg(x.warehouse_id ORDER BY x.sku_id, x.warehouse_id), '{}'),
           coalesce(array_agg(x.sku_id ORDER BY x.sku_id, x.warehouse_id), '{}'),
           coalesce(array_agg(x.available ORDER BY x.sku_id, x.warehouse_id), '{}')
    INTO w_ids, w_skus, w_avail
    FROM (SELECT s.warehouse_id, s.sku_id, s.on_hand - s.reserved AS available
          FROM stock s JOIN warehouses h ON h.warehouse_id = s.warehouse_id
          WHERE h.kind = 'CLOUD' AND s.sku_id = ANY (p_skus)
          ORDER BY s.sku_id, s.warehouse_id
          FOR UPDATE OF s) x;

    FOR i IN 1 .. n LOOP
        CONTINUE WHEN had[i];
        FOR j IN 1 .. cardinality(w_ids) LOOP
            IF w_skus[j] = p_skus[i] AND w_avail[j] >= p_qtys[i] THEN
                chosen[i] := w_ids[j];
                w_avail[j] := w_avail[j] - p_qtys[i];
                EXIT;
            END IF;
        END LOOP;
    END LOOP;

    UPDATE stock s SET reserved = s.reserved + t.q, updated_at = now()
    FROM (SELECT c.w, c.s, sum(c.q) AS q FROM unnest(chosen, p_skus, p_qtys) AS c(w, s, q)
          WHERE c.w IS NOT NULL GROUP BY c.w, c.s) t
    WHERE s.warehouse_id = t.w AND s.sku_id = t.s;
    INSERT INTO reservations (reservation_id, order_id, warehouse_id, status, idempotency_key, request_hash,
                              created_at, expires_at)
    SELECT p_rids[k], p_order_ids[k], chosen[k], 'RESERVED', p_keys[k], p_hashes[k], at,
           at + make_interval(secs => p_hold_s[k])
    FROM generate_series(1, n) AS k WHERE chosen[k] IS NOT NULL ORDER BY k;
    INSERT INTO reservation_lines (reservation_id, sku_id, quantity)
    SELECT p_rids[k], p_skus[k], p_qtys[k] FROM generate_series(1, n) AS k WHERE chosen[k] IS NOT NULL;
    INSERT INTO movements (warehouse_id, sku_id, on_hand_delta, reserved_delta, reason, reference_id)
    SELECT chosen[k], p_skus[k], 0, p_qtys[k], 'reservation', p_rids[k]
    FROM generate_series(1, n) AS k WHERE chosen[k] IS NOT NULL ORDER BY k;

    FOR i IN 1 .. n LOOP
        ord := i; prior := had[i]; conflict := false; warehouse_id := chosen[i];
        created_at := CASE WHEN chosen[i] IS NULL THEN NULL ELSE at END;
        expires_at := CASE WHEN chosen[i] IS NULL THEN NULL ELSE at + make_interval(secs => p_hold_s[i]) END;
        level_warehouses := '{}'; level_skus := '{}'; level_available := '{}';
        IF chosen[i] IS NULL AND NOT had[i] THEN
            FOR j IN 1 .. cardinality(w_ids) LOOP
                IF w_skus[j] = p_skus[i] THEN
                    level_warehouses := level_warehouses || w_ids[j];
                    level_skus := level_skus || w_skus[j];
                    level_available := level_available || w_avail[j];
                END IF;
            END LOOP;
        END IF;
        RETURN NEXT;
    END LOOP;
END $$"""


def upgrade() -> None:
    op.execute("ALTER TABLE warehouses DROP CONSTRAINT warehouses_kind_check")
    op.execute("ALTER TABLE warehouses ADD CONSTRAINT warehouses_kind_check "
               "CHECK (kind IN ('CLOUD', 'FORWARD', 'STORE'))")
    op.execute("ALTER TABLE warehouses ADD COLUMN modes text[] NOT NULL DEFAULT '{CLOUD_SHIPPING}'")
    op.execute("ALTER TABLE warehouses ADD COLUMN store_id text NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE warehouses ADD COLUMN express_radius_km integer NOT NULL DEFAULT 0 "
               "CHECK (express_radius_km >= 0)")
    op.execute("ALTER TABLE warehouses ADD CONSTRAINT store_stock_names_its_store "
               "CHECK ((kind = 'STORE') = (store_id <> ''))")
    # The expiry sweeper's queue: only holds still in force are in it.
    op.execute("CREATE INDEX reservations_expiring ON reservations (expires_at) WHERE status = 'RESERVED'")
    op.execute(_RESERVE_ONE)
    op.execute(_RESERVE_BATCH)
    # Store pickup: a paid order's hold is CONFIRMED (it no longer expires) and its shipment waits at the
    # counter, READY_FOR_PICKUP with a pickup code, until the consumer collects it.
    op.execute("ALTER TABLE reservations DROP CONSTRAINT reservations_status_check")
    op.execute("ALTER TABLE reservations ADD CONSTRAINT reservations_status_check "
               "CHECK (status IN ('RESERVED', 'RELEASED', 'SHIPPED', 'CONFIRMED'))")
    op.execute("ALTER TABLE shipments DROP CONSTRAINT shipments_status_check")
    op.execute("ALTER TABLE shipments ADD CONSTRAINT shipments_status_check CHECK (status IN "
               "('DISPATCHED', 'READY_FOR_PICKUP', 'DELIVERED', 'CREATED', 'PICKED', 'PACKED'))")
    # Hand fulfilment: the carrier and tracking number the parcel left with.
    op.execute("ALTER TABLE shipments ADD COLUMN carrier text NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE shipments ADD COLUMN tracking_number text NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE warehouses ADD COLUMN manual_fulfilment boolean NOT NULL DEFAULT false")
    op.execute("ALTER TABLE shipments ADD COLUMN delivered_at timestamptz")
    op.execute("ALTER TABLE shipments ALTER COLUMN dispatched_at DROP NOT NULL")
    op.execute("ALTER TABLE shipments ADD COLUMN pickup_code text")
    op.execute("ALTER TABLE shipments ADD COLUMN ready_at timestamptz")
    op.execute("ALTER TABLE shipments ADD CONSTRAINT dispatched_has_time "
               "CHECK (status NOT IN ('DISPATCHED', 'DELIVERED') OR dispatched_at IS NOT NULL)")
    op.execute("ALTER TABLE shipments ADD CONSTRAINT pickup_has_code "
               "CHECK (status <> 'READY_FOR_PICKUP' OR (pickup_code IS NOT NULL AND ready_at IS NOT NULL))")


def downgrade() -> None:
    for constraint in ("pickup_has_code", "dispatched_has_time", "shipments_status_check"):
        op.execute(f"ALTER TABLE shipments DROP CONSTRAINT {constraint}")
    op.execute("ALTER TABLE warehouses DROP COLUMN manual_fulfilment")
    op.execute("ALTER TABLE shipments DROP COLUMN tracking_number")
    op.execute("ALTER TABLE shipments DROP COLUMN carrier")
    op.execute("ALTER TABLE shipments DROP COLUMN delivered_at")
    op.execute("ALTER TABLE shipments DROP COLUMN ready_at")
    op.execute("ALTER TABLE shipments DROP COLUMN pickup_code")
    op.execute("ALTER TABLE shipments ALTER COLUMN dispatched_at SET NOT NULL")
    op.execute("ALTER TABLE shipments ADD CONSTRAINT shipments_status_check CHECK (status IN ('DISPATCHED'))")
    op.execute("ALTER TABLE reservations DROP CONSTRAINT reservations_status_check")
    op.execute("ALTER TABLE reservations ADD CONSTRAINT reservations_status_check "
               "CHECK (status IN ('RESERVED', 'RELEASED', 'SHIPPED'))")
    op.execute("DROP FUNCTION reserve_batch(text[], text[], text[], bytea[], text[], bigint[], double precision[])")
    op.execute("DROP FUNCTION reserve_one(text, text, text, bytea, text[], bigint[], double precision, text)")
    op.execute("DROP INDEX reservations_expiring")
    op.execute("ALTER TABLE warehouses DROP CONSTRAINT store_stock_names_its_store")
    for column in ("express_radius_km", "store_id", "modes"):
        op.execute(f"ALTER TABLE warehouses DROP COLUMN {column}")
    op.execute("ALTER TABLE warehouses DROP CONSTRAINT warehouses_kind_check")
    op.execute("ALTER TABLE warehouses ADD CONSTRAINT warehouses_kind_check CHECK (kind IN ('CLOUD'))")
