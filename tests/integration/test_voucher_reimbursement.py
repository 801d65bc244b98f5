"""A brand-funded voucher redeemed at a store counter: marketing consumes it once, and settlement books the
brand's reimbursement of the store once, however often the event arrives."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import nats
import pytest
from omo.marketing.v1 import events_pb2 as mkt_events
from omo.marketing.v1 import marketing_pb2 as mkt
from omo.settlement.v1 import settlement_pb2 as pb

from ..support import key


def store_balances(clients, store_id: str) -> dict[int, int]:  # type: ignore[no-untyped-def]
    reply = clients.settlement.GetBalances(pb.GetBalancesRequest(party=pb.Party(type=pb.PARTY_TYPE_STORE,
                                                                                 id=store_id)))
    return {b.purpose: b.balance_fen for b in reply.balances}


def wait_for(fetch, ok, timeout_s: float = 15):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"still {value}"
        time.sleep(0.05)


def test_a_voucher_redeemed_at_the_counter_is_reimbursed_to_the_store_once(stack, clients):
    brand_id, store_id = f"brd_{uuid.uuid4().hex[:10]}", f"str_{uuid.uuid4().hex[:10]}"
    voucher = clients.marketing.IssueCoupon(mkt.IssueCouponRequest(
        idempotency_key=key(), brand_id=brand_id, consumer_id="consumer-gift", funder=mkt.FUNDER_BRAND,
        face_value_fen=8_800, min_order_fen=0)).coupon
    at_store = [("x-omo-principal", f"store:{store_id}")]
    request = mkt.RedeemAtCounterRequest(idempotency_key=key(), code=voucher.code.lower(), store_id=store_id,
                                         consumer_id="consumer-gift")
    first = clients.marketing.RedeemAtCounter(request, metadata=at_store)
    assert (first.reimbursement_fen, first.coupon.status, first.coupon.redeemed_store_id) == (
        8_800, mkt.COUPON_STATUS_REDEEMED, store_id)
    assert clients.marketing.RedeemAtCounter(request, metadata=at_store) == first  # a retried call

    for call, code in (
        (lambda: clients.marketing.RedeemAtCounter(mkt.RedeemAtCounterRequest(
            idempotency_key=key(), code=voucher.code, store_id=store_id, consumer_id="consumer-gift"),
            metadata=at_store), grpc.StatusCode.FAILED_PRECONDITION),
        (lambda: clients.marketing.RedeemAtCounter(mkt.RedeemAtCounterRequest(
            idempotency_key=key(), code=voucher.code, store_id=store_id, consumer_id="consumer-gift"),
            metadata=[("x-omo-principal", "store:another")]), grpc.StatusCode.PERMISSION_DENIED),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == code

    reimbursed = wait_for(lambda: store_balances(clients, store_id), bool)
    assert reimbursed == {pb.ACCOUNT_PURPOSE_VOUCHER_REIMBURSEMENT: 8_800}

    # The same redemption announced again (a fresh event id): no second reimbursement.
    async def republish() -> None:
        nc = await nats.connect(stack.nats_url)
        try:
            event = mkt_events.CouponRedeemedAtCounter(coupon=first.coupon, store_id=store_id,
                                                       reimbursement_fen=8_800)
            await nc.jetstream().publish("marketing.coupon.redeemed_at_counter", event.SerializeToString(),
                                         headers={"Omo-Event-Id": f"evt-{uuid.uuid4().hex}",
                                                  "Nats-Msg-Id": f"msg-{uuid.uuid4().hex}",
                                                  "Omo-Event-Type": "omo.marketing.v1.CouponRedeemedAtCounter"})
            js = nc.jetstream()
            deadline = time.monotonic() + 15
            while True:
                info = await js.consumer_info("MARKETING", "settlement-counter-redemption")
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    return
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            await nc.close()

    asyncio.run(republish())
    assert store_balances(clients, store_id) == {pb.ACCOUNT_PURPOSE_VOUCHER_REIMBURSEMENT: 8_800}
    brand = clients.settlement.GetBalances(pb.GetBalancesRequest(party=pb.Party(type=pb.PARTY_TYPE_BRAND,
                                                                                 id=brand_id)))
    assert {b.purpose: b.balance_fen for b in brand.balances} == {pb.ACCOUNT_PURPOSE_COUPON_SUBSIDY: -8_800}
