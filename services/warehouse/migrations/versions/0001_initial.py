"""Warehouses, stock levels, the append-only movement ledger, reservations and shipments.

Revision ID: 0001
Revises:
"""

from alembic import op

from services.runtime.tables import create_platform_tables, drop_platform_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_platform_tables(op)
    op.execute("""
        CREATE TABLE warehouses (
            warehouse_id text PRIMARY KEY,
            code         text NOT NULL UNIQUE,
            name         text NOT NULL,
            kind         text NOT NULL CHECK (kind IN ('CLOUD')),
            region       text NOT NULL,
            latitude     double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
            longitude    double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
            created_at   timestamptz NOT NULL DEFAULT now()
        )""")
    # One row per SKU a warehouse has ever held. The CHECK is the last line of defence: every write is a
    # conditional UPDATE that already refuses to go below zero.
    op.execute("""
        CREATE TABLE stock (
            warehouse_id text   NOT NULL REFERENCES warehouses,
            sku_id       text   NOT NULL,
            on_hand      bigint NOT NULL DEFAULT 0,
            reserved     bigint NOT NULL DEFAULT 0,
            updated_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (warehouse_id, sku_id),
            CONSTRAINT stock_never_negative CHECK (reserved >= 0 AND on_hand >= reserved)
        )""")
    op.execute("CREATE INDEX stock_by_sku ON stock (sku_id, warehouse_id)")
    # The ledger: every change of on_hand or reserved is written here by the same statement that makes it,
    # so both columns always equal the sums of their deltas. No foreign key to stock: the check would cost
    # a lookup per row on the hottest path and the writing statement already joins the stock row.
    op.execute("""
        CREATE TABLE movements (
            movement_id    bigserial PRIMARY KEY,
            warehouse_id   text   NOT NULL,
            sku_id         text   NOT NULL,
            on_hand_delta  bigint NOT NULL,
            reserved_delta bigint NOT NULL,
            reason         text   NOT NULL
                CHECK (reason IN ('receipt', 'reservation', 'release', 'shipment', 'adjustment', 'return')),
            reference_id   text   NOT NULL,
            created_at     timestamptz NOT NULL DEFAULT clock_timestamp()
        )""")
    op.execute("CREATE INDEX movements_by_stock ON movements (warehouse_id, sku_id, movement_id)")
    op.execute("""
        CREATE FUNCTION movements_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'movements are append-only';
        END $$""")
    op.execute("""
        CREATE TRIGGER movements_append_only BEFORE UPDATE OR DELETE ON movements
        FOR EACH STATEMENT EXECUTE FUNCTION movements_are_append_only()""")
    # idempotency_key + request_hash make the reservation itself the idempotency record of ReserveStock, so
    # the whole reservation is one statement (see store.py).
    op.execute("""
        CREATE TABLE reservations (
            reservation_id  text PRIMARY KEY,
            order_id        text NOT NULL UNIQUE,
            warehouse_id    text NOT NULL REFERENCES warehouses,
            status          text NOT NULL CHECK (status IN ('RESERVED', 'RELEASED', 'SHIPPED')),
            idempotency_key text NOT NULL UNIQUE,
            request_hash    bytea NOT NULL,
            release_reason  text,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now(),
            expires_at      timestamptz
        )""")
    op.execute("""
        CREATE TABLE reservation_lines (
            reservation_id text   NOT NULL REFERENCES reservations,
            sku_id         text   NOT NULL,
            quantity       bigint NOT NULL CHECK (quantity > 0),
            PRIMARY KEY (reservation_id, sku_id)
        )""")
    op.execute("""
        CREATE TABLE shipments (
            shipment_id    text PRIMARY KEY,
            order_id       text NOT NULL,
            warehouse_id   text NOT NULL REFERENCES warehouses,
            reservation_id text NOT NULL REFERENCES reservations,
            status         text NOT NULL CHECK (status IN ('DISPATCHED')),
            dispatched_at  timestamptz NOT NULL,
            UNIQUE (order_id, warehouse_id)
        )""")
    op.execute("""
        CREATE TABLE shipment_lines (
            shipment_id text   NOT NULL REFERENCES shipments,
            sku_id      text   NOT NULL,
            quantity    bigint NOT NULL CHECK (quantity > 0),
            PRIMARY KEY (shipment_id, sku_id)
        )""")


def downgrade() -> None:
    for table in ("shipment_lines", "shipments", "reservation_lines", "reservations", "movements", "stock",
                  "warehouses"):
        op.execute(f"DROP TABLE {table}")
    op.execute("DROP FUNCTION movements_are_append_only()")
    drop_platform_tables(op)
