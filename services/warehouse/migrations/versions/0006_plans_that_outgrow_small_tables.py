"""Plans that stay index lookups however small the tables were when they were made.

Every statement runs as a prepared statement whose generic plan is kept until the next ANALYZE of its tables.
Made on the empty tables of a fresh deployment (or in a benchmark or test run), those plans scanned whole
tables that then grew with every order. Measured on a schema filled with 100,000 orders, 40 % of their
holds unpaid, with the plans cached while it was empty (the other fixes are in store.py):

- `reservations_expiring`, the expiry sweeper's queue, was keyed on `status = 'RESERVED'`: shipping a batch
  of paid orders and setting a pickup aside update reservations `WHERE ... status = 'RESERVED'`, which
  implies that predicate, so the planner served them with a scan of every unpaid hold's index entry (dead
  ones included): ~1,560 buffers a statement. The index now also requires `expires_at IS NOT NULL`, which
  the sweeper's `expires_at <= now()` implies and no other statement does. The sweeper finds the same rows
  in it: a hold without an expiry was never one it could take.
- `reserve_calls` looked for prior reservations with EXISTS, which a plan made on an empty table turned into
  hashing every reservation per batch (~3,100 buffers, 62 ms for 5 calls); and it found its candidate stock
  rows with an OR of two sub-queries, which no plan can serve from an index, so every batch read all of
  `stock`, with fresh statistics too (~130 buffers for 13,500 rows). Now each call's prior is a probe of one
  unique index, each candidate row (cloud warehouses times unrouted SKUs, plus the routed pairs) is locked by
  its own primary-key probe, in (sku_id, warehouse_id) order as before, and sequential scans are off inside
  the function: a plan made while `reservations` held fifty rows then still probes the index when it holds
  millions. The cloud warehouses come from their own small index (`warehouses_cloud`), not from reading every
  location.

Revision ID: 0006
Revises: 0005
"""

import importlib.util
import pathlib

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# 0005's function with three changes, each marked in its comments: the prior probes, the candidate rows, and
# the function's settings.
_RESERVE_CALLS = """
CREATE OR REPLACE FUNCTION reserve_calls(p_rids text[], p_order_ids text[], p_keys text[], p_hashes bytea[],
                                         p_hold_s double precision[], p_warehouses text[],
                                         p_line_calls integer[], p_skus text[], p_qtys bigint[])
RETURNS TABLE (ord integer, prior boolean, warehouse_id text, created_at timestamptz, expires_at timestamptz,
               level_warehouses text[], level_skus text[], level_available bigint[])
LANGUAGE plpgsql
-- Every statement here takes arrays whose length the planner only knows per call: left to itself it plans
-- them again for every call (measured: more than half the function's cost for a batch of one), and their
-- plans do not depend on the lengths. The plans are kept for the session, so they must not depend on the
-- tables' sizes either: every table here is read by key, and only grows.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
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
    -- Each call's prior is one probe of one unique index (a scalar sub-query: unlike EXISTS, a plan cannot
    -- turn it into a hash of the whole table), the key's first, the order's only if the key has none.
    WITH calls AS (
        SELECT t.i, (SELECT true FROM reservations r WHERE r.idempotency_key = t.k LIMIT 1) IS NOT NULL
                    OR (SELECT true FROM reservations r WHERE r.order_id = t.o LIMIT 1) IS NOT NULL AS had
        FROM unnest(p_keys, p_order_ids) WITH ORDINALITY AS t(k, o, i)
    ),
    wanted AS (
        SELECT p_warehouses[l.c] AS w, l.sku FROM unnest(p_line_calls, p_skus) AS l(c, sku)
        JOIN calls ON calls.i = l.c WHERE NOT calls.had
    ),
    -- Every stock row any call may take from, as (location, SKU) pairs: the cloud warehouses' rows of the
    -- unrouted calls' SKUs, and the named location's rows of the routed ones.
    candidates AS (
        SELECT DISTINCT c.w, c.sku, c.cloud FROM (
            SELECT h.warehouse_id AS w, wanted.sku, true AS cloud
            FROM wanted JOIN warehouses h ON h.kind = 'CLOUD' WHERE wanted.w IS NULL
            UNION ALL
            SELECT wanted.w, wanted.sku,
                   (SELECT h.kind = 'CLOUD' FROM warehouses h WHERE h.warehouse_id = wanted.w)
            FROM wanted WHERE wanted.w IS NOT NULL
        ) c
    ),
    -- Locked one primary-key probe per candidate, the candidates in (sku_id, warehouse_id) order (the lateral
    -- join visits them in that order, so that is the lock order); a pair without a stock row has nothing to
    -- lock.
    locked AS MATERIALIZED (
        SELECT s.warehouse_id, s.sku_id, s.free, c.cloud
        FROM (SELECT * FROM candidates ORDER BY candidates.sku, candidates.w OFFSET 0) c
        CROSS JOIN LATERAL (
            SELECT s.warehouse_id, s.sku_id, s.on_hand - s.reserved AS free FROM stock s
            WHERE s.warehouse_id = c.w AND s.sku_id = c.sku
            FOR UPDATE OF s
        ) s
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


def _previous_reserve_calls() -> str:
    """0005's definition, to put back on downgrade."""
    path = pathlib.Path(__file__).with_name("0005_reserve_calls.py")
    spec = importlib.util.spec_from_file_location("warehouse_0005", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._RESERVE_CALLS.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    op.execute("DROP INDEX reservations_expiring")
    op.execute("CREATE INDEX reservations_expiring ON reservations (expires_at) "
               "WHERE status = 'RESERVED' AND expires_at IS NOT NULL")
    op.execute("CREATE INDEX warehouses_cloud ON warehouses (warehouse_id) WHERE kind = 'CLOUD'")
    op.execute(_RESERVE_CALLS)


def downgrade() -> None:
    op.execute(_previous_reserve_calls())
    op.execute("DROP INDEX warehouses_cloud")
    op.execute("DROP INDEX reservations_expiring")
    op.execute("CREATE INDEX reservations_expiring ON reservations (expires_at) WHERE status = 'RESERVED'")
