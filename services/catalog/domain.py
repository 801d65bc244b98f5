"""Catalog rules, free of I/O."""

from __future__ import annotations

from dataclasses import dataclass

from services.runtime.errors import FailedPrecondition, NotFound


@dataclass(frozen=True)
class Brand:
    brand_id: str
    name: str


@dataclass(frozen=True)
class Dealer:
    dealer_id: str
    brand_id: str
    name: str
    merchant_id: str


@dataclass(frozen=True)
class Store:
    store_id: str
    dealer_id: str
    brand_id: str
    name: str
    region: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class Sku:
    sku_id: str
    brand_id: str
    code: str
    name: str
    retail_price_fen: int
    supply_price_fen: int


@dataclass(frozen=True)
class Quote:
    sku: Sku


def quote(store: Store, requested: list[str], skus: dict[str, Sku], listed: set[str]) -> list[Quote]:
    """Price SKUs as sold through `store`: every store sells at the brand's unified price, but only what it
    lists. A SKU of another brand is as unknown to this store as one that does not exist."""
    quotes = []
    for sku_id in requested:
        sku = skus.get(sku_id)
        if sku is None or sku.brand_id != store.brand_id:
            raise NotFound("sku", sku_id)
        if sku_id not in listed:
            raise FailedPrecondition(
                f"sku {sku_id!r} is not listed in store {store.store_id!r}",
                reason="SKU_NOT_LISTED",
                metadata={"sku_id": sku_id, "store_id": store.store_id},
            )
        quotes.append(Quote(sku))
    return quotes
