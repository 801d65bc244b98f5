"""Group commit for every reservation held at one location: `reserve_calls` takes a batch of ReserveStock
calls with any number of lines each and, per call, the location routing chose (NULL: the first cloud
warehouse by id that covers every line), and holds each all lines or none in one statement, so that the
whole batch shares one commit.

reserve_one and reserve_batch (0002) stay for replicas still running the code before this revision; nothing
in this revision calls them.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# One statement for many calls, in the order they arrived:
#   1. which calls already have a reservation for their key or order (they get `prior`, nothing else);
#   2. lock every stock row any other call may take from (cloud rows of unrouted calls' SKUs, the named
#      location's rows of routed calls) in (sku_id, warehouse_id) order, the order every other statement's
#      rows are a subsequence of, and read what is available on the newest row versions;
#   3. call after call, the first warehouse (by id) among its candidates that still covers every line takes
#      them: reserve_one's choice, applied one call after the other on what earlier calls left. A line finds
#      its SKU's rows through the range `first_row..last_row` (the rows are sorted by SKU), so a call costs
#      its lines times its SKUs' locations, never the whole batch's rows;
#   4. write the stock levels (one UPDATE per row), the reservations, their lines and their movements.
# Steps 1-2 and step 4 are one SQL statement each (with the final SELECT, three per batch), since every
# statement inside the function costs its own executor start-up whatever the batch's size.
# A refused call comes back with the availability it was refused on (its candidates' rows at its turn).
# The caller never puts two calls for one key or order in a batch; a unique-key race with a concurrent
# statement fails the whole batch, and the caller then runs its calls one by one (batching.py).
_RESERVE_CALLS = """
CREATE FUNCTION reserve_calls(p_rids text[], p_order_ids text[], p_keys text[], p_hashes bytea[],
                              p_hold_s double precision[], p_warehouses text[],
                              p_line_calls integer[], p_skus text[], p_qtys bigint[])
RETURNS TABLE (ord integer, prior boolean, warehouse_id text, created_at timestamptz, expires_at timestamptz,
               level_warehouses text[], level_skus text[], level_available bigint[])
LANGUAGE plpgsql
-- Every statement here takes arrays whose length the planner only knows per call: left to itself it plans
-- them again for every call (measured: more than half the function's cost for a batch of one), and their
-- plans do not depend on the lengths.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_calls integer := coalesce(cardinality(p_rids), 0);
    v_lines integer := coalesce(cardinality(p_skus), 0);
    v_had boolean[];
    v_chosen text[] := array_fill(NULL::text, ARRAY[v_calls]);
    -- Per line: where it is held (NULL: not held) and, while its call is decided, which row it takes.
    v_line_w text[] := array_fill(NULL::text, ARRAY[v_lines]);
    v_pick integer[] := array_fill(NULL::integer, ARRAY[v_lines]);
    -- The locked rows, in (sku_id, warehouse_id) order, and per line the range of its SKU's rows.
    v_row_w text[];
    v_row_sku text[];
    v_row_free bigint[];
    v_row_cloud boolean[];
    v_first integer[];
    v_last integer[];
    -- What refused calls were refused on: flat, call after call, with each call's slice.
    v_lev_w text[] := '{}';
    v_lev_sku text[] := '{}';
    v_lev_free bigint[] := '{}';
    v_lev_from integer[] := array_fill(NULL::integer, ARRAY[v_calls]);
    v_lev_to integer[] := array_fill(NULL::integer, ARRAY[v_calls]);
    v_held integer := 0;
    v_at timestamptz := clock_timestamp();
    v_next integer := 1;
    v_lo integer;
    v_hi integer;
    v_w text;
    v_fits boolean;
BEGIN
    -- Two probes of one unique index each rather than one with OR: the generic plan made while the table
    -- was still small then stays an index lookup (with OR it became a scan of every reservation per call,
    -- measured at ~190 buffers a call and most of a flash sale's Postgres time).
    WITH calls AS (
        SELECT t.i, EXISTS (SELECT 1 FROM reservations r WHERE r.idempotency_key = t.k)
                    OR EXISTS (SELECT 1 FROM reservations r WHERE r.order_id = t.o) AS had
        FROM unnest(p_keys, p_order_ids) WITH ORDINALITY AS t(k, o, i)
    ),
    wanted AS (
        SELECT p_warehouses[l.c] AS w, l.sku FROM unnest(p_line_calls, p_skus) AS l(c, sku)
        JOIN calls ON calls.i = l.c WHERE NOT calls.had
    ),
    locked AS MATERIALIZED (
        SELECT s.warehouse_id, s.sku_id, s.on_hand - s.reserved AS free, h.kind = 'CLOUD' AS cloud
        FROM stock s JOIN warehouses h ON h.warehouse_id = s.warehouse_id
        WHERE (h.kind = 'CLOUD' AND s.sku_id IN (SELECT wanted.sku FROM wanted WHERE wanted.w IS NULL))
           OR (s.warehouse_id, s.sku_id) IN (SELECT wanted.w, wanted.sku FROM wanted WHERE wanted.w IS NOT NULL)
        ORDER BY s.sku_id, s.warehouse_id
        FOR UPDATE OF s
    ),
    numbered AS (
        SELECT k.*, row_number() OVER (ORDER BY k.sku_id, k.warehouse_id) AS i FROM locked k
    ),
    ranges AS (
        SELECT n.sku_id, min(n.i) AS lo, max(n.i) AS hi FROM numbered n GROUP BY n.sku_id
    )
    SELECT (SELECT array_agg(c.had ORDER BY c.i) FROM calls c),
           (SELECT coalesce(array_agg(n.warehouse_id ORDER BY n.i), '{}') FROM numbered n),
           (SELECT coalesce(array_agg(n.sku_id ORDER BY n.i), '{}') FROM numbered n),
           (SELECT coalesce(array_agg(n.free ORDER BY n.i), '{}') FROM numbered n),
           (SELECT coalesce(array_agg(n.cloud ORDER BY n.i), '{}') FROM numbered n),
           (SELECT coalesce(array_agg(coalesce(r.lo, 1) ORDER BY l.n), '{}')
            FROM unnest(p_skus) WITH ORDINALITY AS l(sku, n) LEFT JOIN ranges r ON r.sku_id = l.sku),
           (SELECT coalesce(array_agg(coalesce(r.hi, 0) ORDER BY l.n), '{}')
            FROM unnest(p_skus) WITH ORDINALITY AS l(sku, n) LEFT JOIN ranges r ON r.sku_id = l.sku)
    INTO v_had, v_row_w, v_row_sku, v_row_free, v_row_cloud, v_first, v_last;

    FOR c IN 1 .. v_calls LOOP
        v_lo := v_next;
        WHILE v_next <= v_lines AND p_line_calls[v_next] = c LOOP
            v_next := v_next + 1;
        END LOOP;
        v_hi := v_next - 1;
        CONTINUE WHEN v_had[c] OR v_hi < v_lo;
        -- The first line's rows come in warehouse_id order: the first location that covers every line wins.
        FOR a IN v_first[v_lo] .. v_last[v_lo] LOOP
            v_w := v_row_w[a];
            CONTINUE WHEN v_row_free[a] < p_qtys[v_lo]
                       OR (p_warehouses[c] IS NULL AND NOT v_row_cloud[a])
                       OR (p_warehouses[c] IS NOT NULL AND v_w <> p_warehouses[c]);
            v_pick[v_lo] := a;
            v_fits := true;
            FOR j IN v_lo + 1 .. v_hi LOOP
                v_pick[j] := NULL;
                FOR b IN v_first[j] .. v_last[j] LOOP
                    IF v_row_w[b] = v_w THEN
                        v_pick[j] := b;
                        EXIT;
                    END IF;
                END LOOP;
                IF v_pick[j] IS NULL OR v_row_free[v_pick[j]] < p_qtys[j] THEN
                    v_fits := false;
                    EXIT;
                END IF;
            END LOOP;
            IF v_fits THEN
                v_chosen[c] := v_w;
                v_held := v_held + 1;
                FOR j IN v_lo .. v_hi LOOP
                    v_row_free[v_pick[j]] := v_row_free[v_pick[j]] - p_qtys[j];
                    v_line_w[j] := v_w;
                END LOOP;
                EXIT;
            END IF;
        END LOOP;
        IF v_chosen[c] IS NULL THEN
            v_lev_from[c] := cardinality(v_lev_w) + 1;
            FOR j IN v_lo .. v_hi LOOP
                FOR b IN v_first[j] .. v_last[j] LOOP
                    IF (p_warehouses[c] IS NULL AND v_row_cloud[b]) OR v_row_w[b] = p_warehouses[c] THEN
                        v_lev_w := v_lev_w || v_row_w[b];
                        v_lev_sku := v_lev_sku || v_row_sku[b];
                        v_lev_free := v_lev_free || v_row_free[b];
                    END IF;
                END LOOP;
            END LOOP;
            v_lev_to[c] := cardinality(v_lev_w);
        END IF;
    END LOOP;

    IF v_held > 0 THEN
        WITH held AS (
            SELECT l.c, l.w, l.sku, l.q, l.n
            FROM unnest(p_line_calls, v_line_w, p_skus, p_qtys) WITH ORDINALITY AS l(c, w, sku, q, n)
            WHERE l.w IS NOT NULL
        ),
        levels AS (
            UPDATE stock s SET reserved = s.reserved + t.q, updated_at = now()
            FROM (SELECT h.w, h.sku, sum(h.q) AS q FROM held h GROUP BY h.w, h.sku) t
            WHERE s.warehouse_id = t.w AND s.sku_id = t.sku
        ),
        made AS (
            INSERT INTO reservations (reservation_id, order_id, warehouse_id, status, idempotency_key, request_hash,
                                      created_at, expires_at)
            SELECT p_rids[k], p_order_ids[k], v_chosen[k], 'RESERVED', p_keys[k], p_hashes[k], v_at,
                   v_at + make_interval(secs => p_hold_s[k])
            FROM generate_series(1, v_calls) AS k WHERE v_chosen[k] IS NOT NULL ORDER BY k
        ),
        made_lines AS (
            INSERT INTO reservation_lines (reservation_id, sku_id, quantity)
            SELECT p_rids[h.c], h.sku, h.q FROM held h
        )
        INSERT INTO movements (warehouse_id, sku_id, on_hand_delta, reserved_delta, reason, reference_id)
        SELECT h.w, h.sku, 0, h.q, 'reservation', p_rids[h.c] FROM held h ORDER BY h.n;
    END IF;

    RETURN QUERY
    SELECT k, v_had[k], v_chosen[k],
           CASE WHEN v_chosen[k] IS NULL THEN NULL ELSE v_at END,
           CASE WHEN v_chosen[k] IS NULL THEN NULL ELSE v_at + make_interval(secs => p_hold_s[k]) END,
           coalesce(v_lev_w[v_lev_from[k] : v_lev_to[k]], '{}'),
           coalesce(v_lev_sku[v_lev_from[k] : v_lev_to[k]], '{}'),
           coalesce(v_lev_free[v_lev_from[k] : v_lev_to[k]], '{}')
    FROM generate_series(1, v_calls) AS k;
END $$"""


def upgrade() -> None:
    op.execute(_RESERVE_CALLS)


def downgrade() -> None:
    op.execute("DROP FUNCTION reserve_calls(text[], text[], text[], bytea[], double precision[], text[], integer[], "
               "text[], bigint[])")
