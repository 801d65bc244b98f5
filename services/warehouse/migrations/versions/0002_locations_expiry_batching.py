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
# the why of each step). `prior` / `conflict` tell the caller to look at the existing reservation.
_RESERVE_ONE = """
CREATE FUNCTION reserve_one(p_rid text, p_order_id text, p_key text, p_hash bytea, p_skus text[],
                            p_qtys bigint[], p_hold_s double precision,
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
        WHERE h.kind = 'CLOUD'
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

# Many single-line reservations in one transaction, hence one commit (one WAL flush) for all of them: on a
# hot SKU the row lock is held until the commit is durable, so without this the flash-sale rate is one
# reservation per disk flush. Each reservation runs in its own subtransaction, so a unique-key race of one
# (a concurrent call for the same key or order) does not undo the others: it comes back as `conflict`.
_RESERVE_BATCH = """
CREATE FUNCTION reserve_batch(p_rids text[], p_order_ids text[], p_keys text[], p_hashes bytea[],
                              p_skus text[], p_qtys bigint[], p_hold_s double precision[])
RETURNS TABLE (ord integer, prior boolean, conflict boolean, warehouse_id text, created_at timestamptz,
               expires_at timestamptz, level_warehouses text[], level_skus text[], level_available bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    r record;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_rids), 0) LOOP
        BEGIN
            SELECT * INTO r FROM reserve_one(p_rids[i], p_order_ids[i], p_keys[i], p_hashes[i],
                                             ARRAY[p_skus[i]], ARRAY[p_qtys[i]], p_hold_s[i]);
            ord := i; prior := r.prior; conflict := false; warehouse_id := r.warehouse_id;
            created_at := r.created_at; expires_at := r.expires_at; level_warehouses := r.level_warehouses;
            level_skus := r.level_skus; level_available := r.level_available;
        EXCEPTION WHEN unique_violation THEN
            ord := i; prior := false; conflict := true; warehouse_id := NULL; created_at := NULL;
            expires_at := NULL; level_warehouses := '{}'; level_skus := '{}'; level_available := '{}';
        END;
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


def downgrade() -> None:
    op.execute("DROP FUNCTION reserve_batch(text[], text[], text[], bytea[], text[], bigint[], double precision[])")
    op.execute("DROP FUNCTION reserve_one(text, text, text, bytea, text[], bigint[], double precision)")
    op.execute("DROP INDEX reservations_expiring")
    op.execute("ALTER TABLE warehouses DROP CONSTRAINT store_stock_names_its_store")
    for column in ("express_radius_km", "store_id", "modes"):
        op.execute(f"ALTER TABLE warehouses DROP COLUMN {column}")
    op.execute("ALTER TABLE warehouses DROP CONSTRAINT warehouses_kind_check")
    op.execute("ALTER TABLE warehouses ADD CONSTRAINT warehouses_kind_check CHECK (kind IN ('CLOUD'))")
