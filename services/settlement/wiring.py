"""Wires settlement's parts together on the shared runtime."""

from __future__ import annotations

from omo.marketing.v1 import events_pb2 as marketing_events
from omo.orders.v1 import events_pb2 as orders_events
from omo.settlement.v1 import settlement_pb2, settlement_pb2_grpc

from services.runtime.consumer import Subscription
from services.runtime.server import Runtime, Wiring

from .api import SettlementApi
from .config import SettlementConfig
from .events import CounterRedemptionHandler, OrderPaidHandler, RefundHandler
from .executor import DebtTransferJob, SharingExecutor, SplitReturnJob
from .provider import SimulatedProvider
from .store import LedgerStore


async def wire(rt: Runtime) -> Wiring:
    cfg = SettlementConfig.from_env()
    store = LedgerStore()
    api = SettlementApi(rt.engine, store)
    # The demo and the tests run against the simulator; a real provider implements SharingProvider.
    provider = SimulatedProvider()
    executor = SharingExecutor(rt.engine, store, provider, poll_s=cfg.sharing_poll_s, retry_s=cfg.sharing_retry_s)
    transfers = DebtTransferJob(rt.engine, store, provider)
    returns = SplitReturnJob(rt.engine, store, provider, retry_s=cfg.sharing_retry_s)
    full_name = settlement_pb2.DESCRIPTOR.services_by_name["SettlementService"].full_name
    return Wiring(
        servicers=[(settlement_pb2_grpc.add_SettlementServiceServicer_to_server, api, full_name)],
        subscriptions=[
            Subscription("settlement-order-paid", "ORDERS", "orders.order.paid", orders_events.OrderPaid,
                         batch_handler=OrderPaidHandler(store, cfg)),
            Subscription("settlement-order-refunded", "ORDERS", "orders.order.refunded", orders_events.OrderRefunded,
                         batch_handler=RefundHandler(store)),
            Subscription("settlement-counter-redemption", "MARKETING", "marketing.coupon.redeemed_at_counter",
                         marketing_events.CouponRedeemedAtCounter, batch_handler=CounterRedemptionHandler(store)),
        ],
        jobs=[executor.run, returns.run, lambda: transfers.run(cfg.transfer_interval_s)],
    )
