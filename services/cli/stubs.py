"""Synchronous client stubs for every service, for the CLI."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from omo.catalog.v1 import catalog_pb2_grpc
from omo.marketing.v1 import marketing_pb2_grpc
from omo.orders.v1 import orders_pb2_grpc
from omo.settlement.v1 import settlement_pb2_grpc
from omo.warehouse.v1 import warehouse_pb2_grpc

from services.runtime import config


def default_address(service: str) -> str:
    import os

    return os.environ.get(f"OMO_{service.upper()}_ADDR") or f"127.0.0.1:{config.grpc_port(service)}"


@dataclass
class Stubs:
    channels: list[grpc.Channel]
    catalog: catalog_pb2_grpc.CatalogServiceStub
    orders: orders_pb2_grpc.OrderServiceStub
    warehouse: warehouse_pb2_grpc.WarehouseServiceStub
    settlement: settlement_pb2_grpc.SettlementServiceStub
    marketing: marketing_pb2_grpc.MarketingServiceStub

    @classmethod
    def connect(cls, address=default_address) -> Stubs:  # type: ignore[no-untyped-def]
        ch = {s: grpc.insecure_channel(address(s)) for s in config.SERVICES}
        return cls(list(ch.values()), catalog_pb2_grpc.CatalogServiceStub(ch["catalog"]),
                   orders_pb2_grpc.OrderServiceStub(ch["orders"]),
                   warehouse_pb2_grpc.WarehouseServiceStub(ch["warehouse"]),
                   settlement_pb2_grpc.SettlementServiceStub(ch["settlement"]),
                   marketing_pb2_grpc.MarketingServiceStub(ch["marketing"]))

    def close(self) -> None:
        for ch in self.channels:
            ch.close()
