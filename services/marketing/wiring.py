"""Wires marketing's parts together on the shared runtime."""

from __future__ import annotations

from omo.marketing.v1 import marketing_pb2, marketing_pb2_grpc

from services.runtime.server import Runtime, Wiring

from .api import MarketingApi
from .store import MarketingStore


async def wire(rt: Runtime) -> Wiring:
    api = MarketingApi(rt.engine, MarketingStore())
    full_name = marketing_pb2.DESCRIPTOR.services_by_name["MarketingService"].full_name
    return Wiring(servicers=[(marketing_pb2_grpc.add_MarketingServiceServicer_to_server, api, full_name)])
