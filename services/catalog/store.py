"""SQL for the catalog schema."""

from __future__ import annotations

from sqlalchemy import text

from services.runtime.db import Connection

from .domain import Brand, Dealer, Sku, Store

_SKU_COLS = "sku_id, brand_id, code, name, retail_price_fen, supply_price_fen"
_STORE_COLS = "s.store_id, s.dealer_id, d.brand_id, s.name, s.region, s.latitude, s.longitude"

# One row per requested (store, SKU) pair; an unknown store has no row, an unknown SKU a row without it.
# Stores, SKUs and listings are also restricted by the requested keys themselves (`= ANY(...)`), so whatever
# join a cached plan picks, each is read through its primary key for these rows only: a plan made on empty
# tables joined all of `listings`, `skus` and `stores` by hashing (~3,800 buffers a quote with 5,000 stores
# listing 100 SKUs each), and even with fresh statistics read all of `skus`.
_QUOTE_INPUTS = text("""
    SELECT r.store_id, s.dealer_id, d.brand_id, s.name, s.region, s.latitude, s.longitude,
           k.sku_id, k.brand_id AS sku_brand_id, k.code, k.name AS sku_name,
           k.retail_price_fen, k.supply_price_fen, coalesce(l.listed, false) AS listed
    FROM unnest(CAST(:stores AS text[]), CAST(:skus AS text[])) AS r(store_id, sku_id)
    JOIN stores s ON s.store_id = r.store_id JOIN dealers d ON d.dealer_id = s.dealer_id
    LEFT JOIN skus k ON k.sku_id = r.sku_id AND k.sku_id = ANY(CAST(:skus AS text[]))
    LEFT JOIN listings l ON l.store_id = r.store_id AND l.sku_id = r.sku_id
         AND l.store_id = ANY(CAST(:stores AS text[])) AND l.sku_id = ANY(CAST(:skus AS text[]))
    WHERE s.store_id = ANY(CAST(:stores AS text[]))""")


class CatalogStore:
    async def add_brand(self, conn: Connection, brand: Brand) -> None:
        await conn.execute(text("INSERT INTO brands (brand_id, name) VALUES (:brand_id, :name)"), vars(brand))

    async def brand(self, conn: Connection, brand_id: str) -> Brand | None:
        row = (await conn.execute(text("SELECT brand_id, name FROM brands WHERE brand_id = :id"),
                                  {"id": brand_id})).first()
        return Brand(*row) if row else None

    async def add_dealer(self, conn: Connection, dealer: Dealer) -> None:
        await conn.execute(
            text("INSERT INTO dealers (dealer_id, brand_id, name, merchant_id) "
                 "VALUES (:dealer_id, :brand_id, :name, :merchant_id)"),
            vars(dealer),
        )

    async def dealer(self, conn: Connection, dealer_id: str) -> Dealer | None:
        row = (await conn.execute(text("SELECT dealer_id, brand_id, name, merchant_id FROM dealers "
                                       "WHERE dealer_id = :id"), {"id": dealer_id})).first()
        return Dealer(*row) if row else None

    async def add_store(self, conn: Connection, store: Store) -> None:
        await conn.execute(
            text("INSERT INTO stores (store_id, dealer_id, name, region, latitude, longitude) "
                 "VALUES (:store_id, :dealer_id, :name, :region, :latitude, :longitude)"),
            {k: v for k, v in vars(store).items() if k != "brand_id"},
        )

    async def store(self, conn: Connection, store_id: str) -> Store | None:
        row = (await conn.execute(
            text(f"SELECT {_STORE_COLS} FROM stores s JOIN dealers d USING (dealer_id) WHERE s.store_id = :id"),
            {"id": store_id},
        )).first()
        return Store(*row) if row else None

    async def add_sku(self, conn: Connection, sku: Sku) -> None:
        await conn.execute(
            text(f"INSERT INTO skus ({_SKU_COLS}) VALUES "
                 "(:sku_id, :brand_id, :code, :name, :retail_price_fen, :supply_price_fen)"),
            vars(sku),
        )

    async def sku_by_code(self, conn: Connection, brand_id: str, code: str) -> Sku | None:
        row = (await conn.execute(text(f"SELECT {_SKU_COLS} FROM skus WHERE brand_id = :b AND code = :c"),
                                  {"b": brand_id, "c": code})).first()
        return Sku(*row) if row else None

    async def skus(self, conn: Connection, sku_ids: list[str]) -> dict[str, Sku]:
        rows = (await conn.execute(text(f"SELECT {_SKU_COLS} FROM skus WHERE sku_id = ANY(:ids)"),
                                   {"ids": sku_ids})).all()
        return {r.sku_id: Sku(*r) for r in rows}

    async def set_listed(self, conn: Connection, store_id: str, sku_id: str, listed: bool) -> None:
        await conn.execute(
            text("INSERT INTO listings (store_id, sku_id, listed) VALUES (:s, :k, :l) "
                 "ON CONFLICT (store_id, sku_id) DO UPDATE SET listed = :l, updated_at = now()"),
            {"s": store_id, "k": sku_id, "l": listed},
        )

    async def quote_inputs(
        self, conn: Connection, requests: list[tuple[str, list[str]]]
    ) -> tuple[dict[str, Store], dict[str, Sku], dict[str, set[str]]]:
        """For (store, SKUs) requests: the stores, the SKUs and which of them each store lists, in one round
        trip however many requests there are (PlaceOrder's hot path quotes many orders at once)."""
        pairs = sorted({(store_id, sku_id) for store_id, sku_ids in requests for sku_id in sku_ids})
        rows = (await conn.execute(_QUOTE_INPUTS, {"stores": [p[0] for p in pairs],
                                                   "skus": [p[1] for p in pairs]})).all()
        stores: dict[str, Store] = {}
        skus: dict[str, Sku] = {}
        listed: dict[str, set[str]] = {}
        for r in rows:
            stores.setdefault(r.store_id, Store(*r[:7]))
            if r.sku_id is not None:
                skus.setdefault(r.sku_id, Sku(r.sku_id, r.sku_brand_id, r.code, r.sku_name, r.retail_price_fen,
                                              r.supply_price_fen))
                if r.listed:
                    listed.setdefault(r.store_id, set()).add(r.sku_id)
        return stores, skus, listed

    async def listings(self, conn: Connection, store_id: str, after: str, limit: int) -> list[Sku]:
        rows = (await conn.execute(
            text(f"SELECT {', '.join('k.' + c.strip() for c in _SKU_COLS.split(','))} FROM listings l "
                 "JOIN skus k USING (sku_id) WHERE l.store_id = :s AND l.listed AND l.sku_id > :after "
                 "ORDER BY l.sku_id LIMIT :n"),
            {"s": store_id, "after": after, "n": limit},
        )).all()
        return [Sku(*r) for r in rows]
