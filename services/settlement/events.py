"""Handlers for the events settlement consumes."""

from __future__ import annotations

from datetime import UTC

from omo.marketing.v1 import events_pb2 as marketing_events
from omo.marketing.v1 import marketing_pb2
from omo.orders.v1 import events_pb2, orders_pb2

from services.runtime import log
from services.runtime.consumer import Delivery, PermanentError
from services.runtime.db import Connection
from services.runtime.errors import FailedPrecondition, InvalidArgument

from . import domain
from .config import SettlementConfig
from .refunds import Refund
from .store import LedgerStore

_log = log.get(__name__)


def paid_order(event: events_pb2.OrderPaid) -> domain.PaidOrder:
    order = event.order
    # Only a brand-funded coupon changes the brand's share; any other discount (a dealer-funded coupon) is
    # already in payable_fen and so comes out of the dealer's profit.
    brand_funded = order.coupon.discount_fen if order.coupon.funder == orders_pb2.COUPON_FUNDER_BRAND else 0
    return domain.PaidOrder(
        order_id=order.order_id,
        brand_id=order.brand_id,
        dealer_id=order.dealer_id,
        store_id=order.store_id,
        payable_fen=order.payable_fen,
        lines=tuple(domain.PaidLine(line.quantity, line.unit_supply_price_fen) for line in order.lines),
        brand_funded_discount_fen=brand_funded,
        provider_txn_id=event.provider_txn_id or order.payment_txn_id,
        paid_at=event.paid_at.ToDatetime(tzinfo=UTC) if event.HasField("paid_at") else None,
        attributed_store_id=order.attribution.store_id,
        attributed_guide_id=order.attribution.guide_id,
    )


class OrderPaidHandler:
    """orders.order.paid -> the order's split decided and its payment booked frozen, once per order."""

    def __init__(self, store: LedgerStore, config: SettlementConfig):
        self.store = store
        self.config = config

    async def __call__(self, conn: Connection, event: events_pb2.OrderPaid, delivery: Delivery) -> None:
        try:
            settlement = domain.settle(paid_order(event), self.config.rates,
                                       self.config.cap_bp(event.order.dealer_id))
        except InvalidArgument as exc:
            # A malformed event never becomes valid by retrying: dead-letter it at once.
            raise PermanentError(f"cannot settle order {event.order.order_id!r}: {exc.message}") from exc
        settled_at = await self.store.record_split(conn, settlement, self.config.sharing_delay_s)
        if settled_at is None:
            # Another event (a fresh event id for the same payment) split this order already.
            _log.info("order already split", order_id=settlement.split.order_id, message_id=delivery.message_id)
            return
        # The payment lands frozen; the sharing job carries the split out after the configured delay.
        await self.store.post(conn, [settlement.payment_journal])


class RefundHandler:
    """orders.order.refunded -> claw-backs on the order's split, the refund journal and the split returns to
    request, once per refund id (the provider's). A refund that can never apply (more than is left to refund)
    is dead-lettered; one that arrives while the provider is mid-way through the split waits and is applied by
    the split-return job once the split completes."""

    def __init__(self, store: LedgerStore):
        self.store = store

    async def __call__(self, conn: Connection, event: events_pb2.OrderRefunded, delivery: Delivery) -> None:
        r = event.refund
        outcome = await self.apply(conn, Refund(r.order_id, r.provider_refund_id, r.amount_fen))
        _log.info("refund booked", order_id=r.order_id, refund_id=r.provider_refund_id, outcome=outcome)

    async def apply(self, conn: Connection, refund: Refund) -> str:
        """`applied`, `replayed` (recorded before: no effect) or `waiting` (applied once the split completes).
        Every check runs before anything is written, so a refused refund leaves the transaction clean."""
        try:
            outcome = await self.store.record_refund(conn, refund)
        except InvalidArgument as exc:
            raise PermanentError(f"cannot refund order {refund.order_id!r}: {exc.message}") from exc
        except FailedPrecondition:
            await self.store.wait_refund(conn, refund)
            return "waiting"
        return "applied" if outcome is not None else "replayed"


class CounterRedemptionHandler:
    """marketing.coupon.redeemed_at_counter -> the brand reimburses the store, once per voucher."""

    def __init__(self, store: LedgerStore):
        self.store = store

    async def __call__(self, conn: Connection, event: marketing_events.CouponRedeemedAtCounter,
                       delivery: Delivery) -> None:
        if event.coupon.funder != marketing_pb2.FUNDER_BRAND:
            _log.info("voucher not funded by the brand: nothing to reimburse", code=event.coupon.code)
            return
        redemption = domain.CounterRedemption(event.coupon.code, event.coupon.brand_id, event.store_id,
                                              event.reimbursement_fen)
        try:
            done = await self.store.reimburse(conn, redemption)
        except InvalidArgument as exc:
            raise PermanentError(f"cannot reimburse voucher {event.coupon.code!r}: {exc.message}") from exc
        if not done:
            _log.info("voucher already reimbursed", code=event.coupon.code, message_id=delivery.message_id)
