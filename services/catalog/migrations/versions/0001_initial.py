"""Brands, dealers, stores, SKUs and store listings.

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
        CREATE TABLE brands (
            brand_id text PRIMARY KEY,
            name     text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute("""
        CREATE TABLE dealers (
            dealer_id   text PRIMARY KEY,
            brand_id    text NOT NULL REFERENCES brands,
            name        text NOT NULL,
            merchant_id text NOT NULL UNIQUE,
            created_at  timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute("""
        CREATE TABLE stores (
            store_id  text PRIMARY KEY,
            dealer_id text NOT NULL REFERENCES dealers,
            name      text NOT NULL,
            region    text NOT NULL,
            latitude  double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
            longitude double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
            created_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute("CREATE INDEX stores_dealer ON stores (dealer_id)")
    op.execute("""
        CREATE TABLE skus (
            sku_id           text PRIMARY KEY,
            brand_id         text NOT NULL REFERENCES brands,
            code             text NOT NULL,
            name             text NOT NULL,
            retail_price_fen bigint NOT NULL CHECK (retail_price_fen > 0),
            supply_price_fen bigint NOT NULL CHECK (supply_price_fen >= 0),
            created_at       timestamptz NOT NULL DEFAULT now(),
            UNIQUE (brand_id, code)
        )""")
    op.execute("""
        CREATE TABLE listings (
            store_id   text NOT NULL REFERENCES stores,
            sku_id     text NOT NULL REFERENCES skus,
            listed     boolean NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (store_id, sku_id)
        )""")


def downgrade() -> None:
    for table in ("listings", "skus", "stores", "dealers", "brands"):
        op.execute(f"DROP TABLE {table}")
    drop_platform_tables(op)
