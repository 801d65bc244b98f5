"""Test support: stubs for every service and a seeded world (brand, dealer, stores, SKUs, stock)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from omo.catalog.v1 import catalog_pb2 as cat
from omo.warehouse.v1 import warehouse_pb2 as wh

from services.cli.stubs import Stubs


def key() -> str:
    return uuid.uuid4().hex


Clients = Stubs


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
    return None if status is None else error_info_of(status)


def error_info_of(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The google.rpc.ErrorInfo detail of a status (a failed call's, or one item's of a batch RPC)."""
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
