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
from .refunds import Refund, RefundOutcome
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
    """orders.order.paid -> each order's split decided and its payment booked frozen, once per order.

    Set-based (the consumer's batch_handler): a batch's splits are claimed in one statement and the payments
    of those claimed now posted in one more, whatever the batch's size. A malformed event fails the batch
    before anything is written; the runtime then retries the batch's messages one by one, which dead-letters
    that one alone."""

    def __init__(self, store: LedgerStore, config: SettlementConfig):
        self.store = store
        self.config = config

    def settlement(self, event: events_pb2.OrderPaid) -> domain.Settlement:
        try:
            return domain.settle(paid_order(event), self.config.rates, self.config.cap_bp(event.order.dealer_id))
        except InvalidArgument as exc:
            # A malformed event never becomes valid by retrying: dead-letter it at once.
            raise PermanentError(f"cannot settle order {event.order.order_id!r}: {exc.message}") from exc

    async def __call__(self, conn: Connection, items: list[tuple[events_pb2.OrderPaid, Delivery]]) -> None:
        settlements = [self.settlement(event) for event, _ in items]
        claimed = await self.store.record_splits(conn, settlements, self.config.sharing_delay_s)
        payments = []
        for s, (_, delivery) in zip(settlements, items, strict=True):
            if claimed.pop(s.split.order_id, None) is None:
                # Another event (a fresh event id for the same payment) split this order already.
                _log.info("order already split", order_id=s.split.order_id, message_id=delivery.message_id)
                continue
            payments.append(s.payment_journal)
        # The payments land frozen; the sharing job carries the splits out after the configured delay.
        await self.store.book(conn, payments)


class RefundHandler:
    """orders.order.refunded -> claw-backs on the order's split, the refund journal and the split returns to
    request, once per refund id (the provider's). A refund that can never apply (more than is left to refund)
    is dead-lettered; one that arrives while the provider is mid-way through the split waits and is applied by
    the split-return job once the split completes.

    Set-based: a batch's refunds are applied in order_id order (each split row locked before its legs, in the
    same order as the sharing job locks them), and everything they move is booked once at the end."""

    def __init__(self, store: LedgerStore):
        self.store = store

    async def __call__(self, conn: Connection, items: list[tuple[events_pb2.OrderRefunded, Delivery]]) -> None:
        refunds = sorted((Refund(e.refund.order_id, e.refund.provider_refund_id, e.refund.amount_fen)
                          for e, _ in items), key=lambda r: r.order_id)
        journals, owed = [], []
        for refund in refunds:
            outcome, applied = await self._apply(conn, refund)
            if applied is not None:
                journals.append(applied.journal)
                owed += applied.owed
            _log.info("refund booked", order_id=refund.order_id, refund_id=refund.refund_id, outcome=outcome)
        await self.store.book(conn, journals, owed)

    async def apply(self, conn: Connection, refund: Refund) -> str:
        """`applied`, `replayed` (recorded before: no effect) or `waiting` (applied once the split completes).
        Every check runs before anything is written, so a refused refund leaves the transaction clean."""
        outcome, applied = await self._apply(conn, refund)
        if applied is not None:
            await self.store.book(conn, [applied.journal], applied.owed)
        return outcome

    async def _apply(self, conn: Connection, refund: Refund) -> tuple[str, RefundOutcome | None]:
        try:
            applied = await self.store.apply_refund(conn, refund)
        except InvalidArgument as exc:
            raise PermanentError(f"cannot refund order {refund.order_id!r}: {exc.message}") from exc
        except FailedPrecondition:
            await self.store.wait_refund(conn, refund)
            return "waiting", None
        return ("applied" if applied is not None else "replayed"), applied


class CounterRedemptionHandler:
    """marketing.coupon.redeemed_at_counter -> the brand reimburses the store, once per voucher (set-based: a
    batch's vouchers claimed and booked in two statements)."""

    def __init__(self, store: LedgerStore):
        self.store = store

    async def __call__(self, conn: Connection,
                       items: list[tuple[marketing_events.CouponRedeemedAtCounter, Delivery]]) -> None:
        redemptions = []
        for event, _ in items:
            if event.coupon.funder != marketing_pb2.FUNDER_BRAND:
                _log.info("voucher not funded by the brand: nothing to reimburse", code=event.coupon.code)
                continue
            redemption = domain.CounterRedemption(event.coupon.code, event.coupon.brand_id, event.store_id,
                                                  event.reimbursement_fen)
            try:
                domain.reimbursement_journal(redemption)  # the checks, before anything is written
            except InvalidArgument as exc:
                raise PermanentError(f"cannot reimburse voucher {event.coupon.code!r}: {exc.message}") from exc
            redemptions.append(redemption)
        if not redemptions:
            return
        booked = {r.code for r in await self.store.reimburse_many(conn, redemptions)}
        for r in redemptions:
            if r.code in booked:
                booked.discard(r.code)
            else:
                _log.info("voucher already reimbursed", code=r.code)
