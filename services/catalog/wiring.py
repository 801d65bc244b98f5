"""Wires the catalog's parts together on the shared runtime."""

from __future__ import annotations

from omo.catalog.v1 import catalog_pb2, catalog_pb2_grpc

from services.runtime.server import Runtime, Wiring

from .api import CatalogApi
from .store import CatalogStore


async def wire(rt: Runtime) -> Wiring:
    api = CatalogApi(rt.engine, CatalogStore())
    full_name = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name
    return Wiring(servicers=[(catalog_pb2_grpc.add_CatalogServiceServicer_to_server, api, full_name)])
