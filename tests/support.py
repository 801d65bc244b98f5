"""Test support: stubs for every service and a seeded world (brand, dealer, stores, SKUs, stock)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from omo.catalog.v1 import catalog_pb2 as cat
from omo.catalog.v1 import catalog_pb2_grpc
from omo.marketing.v1 import marketing_pb2_grpc
from omo.orders.v1 import orders_pb2_grpc
from omo.settlement.v1 import settlement_pb2_grpc
from omo.warehouse.v1 import warehouse_pb2 as wh
from omo.warehouse.v1 import warehouse_pb2_grpc


def key() -> str:
    return uuid.uuid4().hex


@dataclass
class Clients:
    channels: dict[str, grpc.Channel]
    catalog: catalog_pb2_grpc.CatalogServiceStub
    orders: orders_pb2_grpc.OrderServiceStub
    warehouse: warehouse_pb2_grpc.WarehouseServiceStub
    settlement: settlement_pb2_grpc.SettlementServiceStub
    marketing: marketing_pb2_grpc.MarketingServiceStub

    @classmethod
    def connect(cls, stack) -> Clients:  # type: ignore[no-untyped-def]
        chans = {s: grpc.insecure_channel(stack.address(s)) for s in
                 ("catalog", "orders", "warehouse", "settlement", "marketing")}
        return cls(
            channels=chans,
            catalog=catalog_pb2_grpc.CatalogServiceStub(chans["catalog"]),
            orders=orders_pb2_grpc.OrderServiceStub(chans["orders"]),
            warehouse=warehouse_pb2_grpc.WarehouseServiceStub(chans["warehouse"]),
            settlement=settlement_pb2_grpc.SettlementServiceStub(chans["settlement"]),
            marketing=marketing_pb2_grpc.MarketingServiceStub(chans["marketing"]),
        )

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()


def bad_request_fields(err: grpc.RpcError) -> list[str]:
    """The field names of the google.rpc.BadRequest detail of a failed call."""
    status = rpc_status.from_call(err)
    fields: list[str] = []
    if status is None:
        return fields
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            fields += [v.field for v in br.field_violations]
    return fields


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    status = rpc_status.from_call(err)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


@dataclass
class World:
    """One brand with a dealer, a store, a cloud warehouse and a few listed SKUs in stock."""

    clients: Clients
    brand: cat.Brand
    dealer: cat.Dealer
    store: cat.Store
    warehouse: wh.Warehouse
    skus: list[cat.Sku] = field(default_factory=list)

    @classmethod
    def create(cls, c: Clients) -> World:
        brand = c.catalog.CreateBrand(cat.CreateBrandRequest(idempotency_key=key(), name="Lenovo")).brand
        dealer = c.catalog.CreateDealer(cat.CreateDealerRequest(
            idempotency_key=key(), brand_id=brand.brand_id, name="Shanghai Digital Co.",
            merchant_id=f"mch-{key()[:10]}")).dealer
        store = c.catalog.CreateStore(cat.CreateStoreRequest(
            idempotency_key=key(), dealer_id=dealer.dealer_id, name="Xujiahui flagship", region="East",
            latitude=31.19, longitude=121.43)).store
        warehouse = c.warehouse.CreateWarehouse(wh.CreateWarehouseRequest(
            idempotency_key=key(), code=f"CW-{key()[:6]}", name="Kunshan cloud warehouse",
            kind=wh.WAREHOUSE_KIND_CLOUD, region="East", latitude=31.38, longitude=120.98)).warehouse
        world = cls(c, brand, dealer, store, warehouse)
        return world

    def new_sku(self, retail_fen: int = 599_900, supply_fen: int = 480_000, stock: int = 100,
                listed: bool = True) -> cat.Sku:
        c = self.clients
        sku = c.catalog.CreateSku(cat.CreateSkuRequest(
            idempotency_key=key(), brand_id=self.brand.brand_id, code=f"SKU-{key()[:8]}", name="ThinkPad X1",
            retail_price_fen=retail_fen, supply_price_fen=supply_fen)).sku
        if listed:
            c.catalog.ListSkuInStore(cat.ListSkuInStoreRequest(
                idempotency_key=key(), store_id=self.store.store_id, sku_id=sku.sku_id))
        if stock:
            c.warehouse.ReceiveStock(wh.ReceiveStockRequest(
                idempotency_key=key(), warehouse_id=self.warehouse.warehouse_id, sku_id=sku.sku_id,
                quantity=stock))
        self.skus.append(sku)
        return sku
