"""Demo data: one brand, its dealers and stores, SKUs at the unified price, a cloud warehouse with stock and
a brand-funded coupon. Every call carries a fixed idempotency key, so seeding twice changes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

from omo.catalog.v1 import catalog_pb2 as cat
from omo.marketing.v1 import marketing_pb2 as mkt
from omo.warehouse.v1 import warehouse_pb2 as wh

from .stubs import Stubs

DEALERS = [
    ("Shanghai Digital Co.", "mch-1900000101", [("Xujiahui flagship", "East", 31.1955, 121.4365),
                                                ("Pudong Lujiazui", "East", 31.2397, 121.4998)]),
    ("Beijing Zhongguancun Tech", "mch-1900000102", [("Zhongguancun store", "North", 39.9836, 116.3164)]),
]
# (code, name, unified retail price in fen, dealer supply price in fen)
SKUS = [
    ("TP-X1C-G12", "ThinkPad X1 Carbon Gen 12", 1_299_900, 1_105_000),
    ("LG-Y9000P", "Legion Y9000P", 999_900, 859_900),
    ("XX-PRO14", "Xiaoxin Pro 14", 549_900, 470_000),
    ("TB-14-G6", "ThinkBook 14 G6", 449_900, 385_000),
]
STOCK_PER_SKU = 100_000
DEMO_CONSUMER = "consumer-demo-001"


@dataclass
class DemoWorld:
    brand: cat.Brand
    dealers: list[cat.Dealer] = field(default_factory=list)
    stores: list[cat.Store] = field(default_factory=list)
    skus: list[cat.Sku] = field(default_factory=list)
    warehouse: wh.Warehouse | None = None


def seed(stubs: Stubs, prefix: str = "demo", stock: int = STOCK_PER_SKU, range_size: int = 0) -> DemoWorld:
    """`range_size` adds that many more SKUs (a live event sells a broad range; the benchmark uses it so
    stock rows are not an artificial single point of contention)."""
    k = lambda *parts: ":".join((prefix, *parts))
    brand = stubs.catalog.CreateBrand(cat.CreateBrandRequest(idempotency_key=k("brand"), name="Lenovo")).brand
    world = DemoWorld(brand=brand)
    for d_name, merchant, stores in DEALERS:
        dealer = stubs.catalog.CreateDealer(cat.CreateDealerRequest(
            idempotency_key=k("dealer", merchant), brand_id=brand.brand_id, name=d_name,
            merchant_id=f"{prefix}-{merchant}")).dealer
        world.dealers.append(dealer)
        for s_name, region, lat, lng in stores:
            world.stores.append(stubs.catalog.CreateStore(cat.CreateStoreRequest(
                idempotency_key=k("store", s_name), dealer_id=dealer.dealer_id, name=s_name, region=region,
                latitude=lat, longitude=lng)).store)
    world.warehouse = stubs.warehouse.CreateWarehouse(wh.CreateWarehouseRequest(
        idempotency_key=k("warehouse"), code=f"{prefix.upper()}-CW-KS", name="Kunshan cloud warehouse",
        kind=wh.WAREHOUSE_KIND_CLOUD, region="East", latitude=31.3850, longitude=120.9800)).warehouse
    extra = [(f"RANGE-{i:04d}", f"Lenovo accessory {i:04d}", 19_900 + 100 * i, 12_900 + 70 * i)
             for i in range(range_size)]
    for code, name, retail, supply in SKUS + extra:
        sku = stubs.catalog.CreateSku(cat.CreateSkuRequest(
            idempotency_key=k("sku", code), brand_id=brand.brand_id, code=code, name=name,
            retail_price_fen=retail, supply_price_fen=supply)).sku
        world.skus.append(sku)
        for store in world.stores:  # every store lists the whole range: the cloud warehouse ships it
            stubs.catalog.ListSkuInStore(cat.ListSkuInStoreRequest(
                idempotency_key=k("list", store.store_id, sku.sku_id), store_id=store.store_id,
                sku_id=sku.sku_id))
        stubs.warehouse.ReceiveStock(wh.ReceiveStockRequest(
            idempotency_key=k("receipt", sku.sku_id), warehouse_id=world.warehouse.warehouse_id,
            sku_id=sku.sku_id, quantity=stock))
    return world


def issue_demo_coupon(stubs: Stubs, world: DemoWorld, key: str) -> mkt.Coupon:
    return stubs.marketing.IssueCoupon(mkt.IssueCouponRequest(
        idempotency_key=key, brand_id=world.brand.brand_id, consumer_id=DEMO_CONSUMER,
        funder=mkt.FUNDER_BRAND, face_value_fen=20_000, min_order_fen=100_000)).coupon
