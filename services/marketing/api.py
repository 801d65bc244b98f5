"""gRPC <-> domain translation for MarketingService."""

from __future__ import annotations

import os

from omo.marketing.v1 import events_pb2, marketing_pb2_grpc
from omo.marketing.v1 import marketing_pb2 as pb

from services.runtime import outbox, timestamps
from services.runtime.db import Connection, Database
from services.runtime.errors import NotFound
from services.runtime.idempotency import request_hash, run_idempotent
from services.runtime.tenancy import require_party

from . import domain
from .store import MarketingStore

COUPON_REDEEMED = "marketing.coupon.redeemed"
COUPON_REDEEMED_AT_COUNTER = "marketing.coupon.redeemed_at_counter"
# Drawing a taken code is a 2^-60 event per coupon; a handful of draws makes failing practically impossible.
_CODE_DRAWS = 5

_FUNDER_FROM_PB = {pb.FUNDER_BRAND: domain.Funder.BRAND}
_FUNDER_TO_PB = {v: k for k, v in _FUNDER_FROM_PB.items()}
_STATUS_TO_PB = {
    domain.CouponStatus.ISSUED: pb.COUPON_STATUS_ISSUED,
    domain.CouponStatus.REDEEMED: pb.COUPON_STATUS_REDEEMED,
}


def coupon_pb(c: domain.Coupon) -> pb.Coupon:
    return pb.Coupon(
        code=c.code, brand_id=c.brand_id, consumer_id=c.consumer_id, funder=_FUNDER_TO_PB[c.funder],
        face_value_fen=c.face_value_fen, min_order_fen=c.min_order_fen, status=_STATUS_TO_PB[c.status],
        redeemed_order_id=c.redeemed_order_id or "", issued_at=timestamps.to_proto(c.issued_at),
        redeemed_at=timestamps.to_proto(c.redeemed_at), redeemed_store_id=c.redeemed_store_id or "",
    )


class MarketingApi(marketing_pb2_grpc.MarketingServiceServicer):
    def __init__(self, engine: Database, store: MarketingStore):
        self.engine = engine
        self.store = store

    async def IssueCoupon(self, request: pb.IssueCouponRequest, context) -> pb.IssueCouponResponse:
        # The brand pays for what it issues: only the brand itself (or an internal caller) may issue.
        require_party("brand", request.brand_id)

        async def effect(conn: Connection) -> pb.IssueCouponResponse:
            for _ in range(_CODE_DRAWS):
                coupon = domain.issue(
                    domain.coupon_code(os.urandom(domain.CODE_ENTROPY_BYTES)), request.brand_id,
                    request.consumer_id, _FUNDER_FROM_PB[request.funder], request.face_value_fen,
                    request.min_order_fen, timestamps.now(),
                )
                if await self.store.add_coupon(conn, coupon):
                    return pb.IssueCouponResponse(coupon=coupon_pb(coupon))
            raise RuntimeError(f"no unused coupon code in {_CODE_DRAWS} draws")

        return await run_idempotent(self.engine, "IssueCoupon", request.idempotency_key, request,
                                    pb.IssueCouponResponse, effect)

    async def GetCoupon(self, request: pb.GetCouponRequest, context) -> pb.GetCouponResponse:
        async with self.engine.connect() as conn:
            coupon = await self.store.coupon(conn, domain.normalize_code(request.code))
        if coupon is None:
            raise NotFound("coupon", request.code)
        return pb.GetCouponResponse(coupon=coupon_pb(coupon))

    async def RedeemCoupon(self, request: pb.RedeemCouponRequest, context) -> pb.RedeemCouponResponse:
        """On the order-placing hot path: one transaction; for an ISSUED coupon, three statements (lock, redeem,
        outbox). The idempotency key is kept on the redemption itself rather than through run_idempotent, which
        would add a lock, a read and a write of its own."""
        req = domain.RedeemRequest(
            code=domain.normalize_code(request.code), order_id=request.order_id,
            consumer_id=request.consumer_id, brand_id=request.brand_id,
            order_subtotal_fen=request.order_subtotal_fen, idempotency_key=request.idempotency_key,
            request_hash=request_hash(request),
        )
        async with self.engine.begin() as conn:
            coupon, key_used_by = await self.store.lock_coupon(conn, req.code, req.idempotency_key)
            prior = None
            if coupon is None or coupon.status is domain.CouponStatus.REDEEMED:
                prior, key_used_by = await self.store.redemption_and_key(conn, req.code, req.idempotency_key)
            domain.check_idempotency_key(req, key_used_by)
            if coupon is None:
                raise NotFound("coupon", request.code)
            decision = domain.redeem(coupon, req, prior, timestamps.now())
            if decision.new:
                await self.store.record_redemption(conn, decision.coupon, decision.redemption)
                await outbox.add(conn, COUPON_REDEEMED, events_pb2.CouponRedeemed(
                    coupon=coupon_pb(decision.coupon), order_id=decision.redemption.order_id,
                    discount_fen=decision.redemption.discount_fen,
                    redeemed_at=timestamps.to_proto(decision.redemption.redeemed_at),
                ))
        return pb.RedeemCouponResponse(coupon=coupon_pb(decision.coupon),
                                       discount_fen=decision.redemption.discount_fen)

    async def RedeemAtCounter(self, request: pb.RedeemAtCounterRequest, context) -> pb.RedeemAtCounterResponse:
        require_party("store", request.store_id)

        async def effect(conn: Connection) -> pb.RedeemAtCounterResponse:
            code = domain.normalize_code(request.code)
            coupon, _ = await self.store.lock_coupon(conn, code, request.idempotency_key)
            if coupon is None:
                raise NotFound("coupon", request.code)
            coupon = domain.redeem_at_counter(coupon, request.consumer_id, request.store_id, timestamps.now())
            await self.store.record_counter_redemption(conn, coupon)
            await outbox.add(conn, COUPON_REDEEMED_AT_COUNTER, events_pb2.CouponRedeemedAtCounter(
                coupon=coupon_pb(coupon), store_id=request.store_id, reimbursement_fen=coupon.face_value_fen,
                redeemed_at=timestamps.to_proto(coupon.redeemed_at)))
            return pb.RedeemAtCounterResponse(coupon=coupon_pb(coupon), reimbursement_fen=coupon.face_value_fen)

        return await run_idempotent(self.engine, "RedeemAtCounter", request.idempotency_key, request,
                                    pb.RedeemAtCounterResponse, effect)
