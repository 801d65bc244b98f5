"""Marketing over gRPC: brand-funded coupons issued to a consumer and redeemed by exactly one order."""

from __future__ import annotations

import asyncio

import grpc
import nats
import pytest
from omo.marketing.v1 import events_pb2, marketing_pb2_grpc
from omo.marketing.v1 import marketing_pb2 as mk

from ..support import bad_request_fields, error_info, key


def ids() -> tuple[str, str]:
    """A made-up brand and consumer of our own, so tests never share a coupon owner."""
    return f"brd_{key()[:12]}", f"csm_{key()[:12]}"


def issue(clients, brand_id: str, consumer_id: str, face: int = 5_000, min_order: int = 0) -> mk.Coupon:
    return clients.marketing.IssueCoupon(mk.IssueCouponRequest(
        idempotency_key=key(), brand_id=brand_id, consumer_id=consumer_id, funder=mk.FUNDER_BRAND,
        face_value_fen=face, min_order_fen=min_order)).coupon


def redeem_request(coupon: mk.Coupon, order_id: str, subtotal: int = 599_900, **changes) -> mk.RedeemCouponRequest:
    fields = dict(idempotency_key=key(), code=coupon.code, order_id=order_id, consumer_id=coupon.consumer_id,
                  brand_id=coupon.brand_id, order_subtotal_fen=subtotal)
    fields.update(changes)
    return mk.RedeemCouponRequest(**fields)


def failure(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kwargs)
    return err.value


def test_issue_then_get(clients):
    brand_id, consumer_id = ids()
    coupon = issue(clients, brand_id, consumer_id, face=5_000, min_order=100_000)
    assert coupon.code.startswith("CPN-") and len(coupon.code) == 16
    assert (coupon.brand_id, coupon.consumer_id, coupon.funder) == (brand_id, consumer_id, mk.FUNDER_BRAND)
    assert (coupon.face_value_fen, coupon.min_order_fen) == (5_000, 100_000)
    assert coupon.status == mk.COUPON_STATUS_ISSUED
    assert coupon.HasField("issued_at") and not coupon.HasField("redeemed_at")

    assert clients.marketing.GetCoupon(mk.GetCouponRequest(code=coupon.code)).coupon == coupon
    # Read out at a store counter and typed back in lower case, with a space.
    typed = f"cpn-{coupon.code[4:10].lower()} {coupon.code[10:]}"
    assert clients.marketing.GetCoupon(mk.GetCouponRequest(code=typed)).coupon == coupon


def test_issue_is_idempotent_by_key(clients):
    brand_id, consumer_id = ids()
    req = mk.IssueCouponRequest(idempotency_key=key(), brand_id=brand_id, consumer_id=consumer_id,
                                funder=mk.FUNDER_BRAND, face_value_fen=1_000)
    assert clients.marketing.IssueCoupon(req).coupon == clients.marketing.IssueCoupon(req).coupon
    req.face_value_fen = 2_000
    err = failure(clients.marketing.IssueCoupon, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err) == ["idempotency_key"]


def test_codes_are_distinct(clients):
    brand_id, consumer_id = ids()
    codes = {issue(clients, brand_id, consumer_id).code for _ in range(20)}
    assert len(codes) == 20


def test_only_the_brand_itself_may_issue_its_coupons(clients):
    brand_id, consumer_id = ids()
    req = mk.IssueCouponRequest(idempotency_key=key(), brand_id=brand_id, consumer_id=consumer_id,
                                funder=mk.FUNDER_BRAND, face_value_fen=1_000)
    err = failure(clients.marketing.IssueCoupon, req, metadata=[("x-omo-principal", "dealer:dlr_1")])
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    coupon = clients.marketing.IssueCoupon(req, metadata=[("x-omo-principal", f"brand:{brand_id}")]).coupon
    assert coupon.brand_id == brand_id


def test_unknown_coupon_is_not_found(clients):
    err = failure(clients.marketing.GetCoupon, mk.GetCouponRequest(code="CPN-000000000000"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    brand_id, consumer_id = ids()
    err = failure(clients.marketing.RedeemCoupon, mk.RedeemCouponRequest(
        idempotency_key=key(), code="CPN-000000000000", order_id="ord_x", consumer_id=consumer_id,
        brand_id=brand_id, order_subtotal_fen=100))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_redeem_once_then_retries_of_that_order_get_the_same_discount(clients):
    brand_id, consumer_id = ids()
    coupon = issue(clients, brand_id, consumer_id, face=5_000)
    req = redeem_request(coupon, "ord_a", subtotal=599_900)
    first = clients.marketing.RedeemCoupon(req)
    assert first.discount_fen == 5_000
    assert first.coupon.status == mk.COUPON_STATUS_REDEEMED
    assert first.coupon.redeemed_order_id == "ord_a" and first.coupon.HasField("redeemed_at")

    # The same request again, and the same order retried under a new key: the first redemption, unchanged.
    assert clients.marketing.RedeemCoupon(req) == first
    assert clients.marketing.RedeemCoupon(redeem_request(coupon, "ord_a", subtotal=599_900)) == first
    assert clients.marketing.GetCoupon(mk.GetCouponRequest(code=coupon.code)).coupon == first.coupon


def test_a_key_reused_for_another_request_is_invalid(clients):
    brand_id, consumer_id = ids()
    coupon, other = issue(clients, brand_id, consumer_id), issue(clients, brand_id, consumer_id)
    req = redeem_request(coupon, "ord_a")
    clients.marketing.RedeemCoupon(req)
    for changed in (redeem_request(coupon, "ord_a", subtotal=1, idempotency_key=req.idempotency_key),
                    redeem_request(other, "ord_b", idempotency_key=req.idempotency_key)):
        err = failure(clients.marketing.RedeemCoupon, changed)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_fields(err) == ["idempotency_key"]
    assert clients.marketing.GetCoupon(mk.GetCouponRequest(code=other.code)).coupon.status == \
        mk.COUPON_STATUS_ISSUED


def test_a_second_order_cannot_redeem_the_coupon(clients):
    brand_id, consumer_id = ids()
    coupon = issue(clients, brand_id, consumer_id)
    clients.marketing.RedeemCoupon(redeem_request(coupon, "ord_a"))
    err = failure(clients.marketing.RedeemCoupon, redeem_request(coupon, "ord_b"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "COUPON_ALREADY_REDEEMED"
    assert clients.marketing.GetCoupon(mk.GetCouponRequest(code=coupon.code)).coupon.redeemed_order_id == "ord_a"


def test_discount_is_capped_at_the_subtotal(clients):
    brand_id, consumer_id = ids()
    coupon = issue(clients, brand_id, consumer_id, face=5_000)
    assert clients.marketing.RedeemCoupon(redeem_request(coupon, "ord_a", subtotal=3_999)).discount_fen == 3_999


def test_only_the_owner_on_the_brands_orders_may_redeem(clients):
    brand_id, consumer_id = ids()
    coupon = issue(clients, brand_id, consumer_id)
    err = failure(clients.marketing.RedeemCoupon, redeem_request(coupon, "ord_a", consumer_id="csm_someone_else"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "COUPON_NOT_OWNED"
    err = failure(clients.marketing.RedeemCoupon, redeem_request(coupon, "ord_a", brand_id="brd_other"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "COUPON_WRONG_BRAND"
    assert clients.marketing.GetCoupon(mk.GetCouponRequest(code=coupon.code)).coupon.status == \
        mk.COUPON_STATUS_ISSUED


def test_min_order_must_be_met(clients):
    brand_id, consumer_id = ids()
    coupon = issue(clients, brand_id, consumer_id, face=20_000, min_order=300_000)
    err = failure(clients.marketing.RedeemCoupon, redeem_request(coupon, "ord_a", subtotal=299_999))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err)
    assert info.reason == "MIN_ORDER_NOT_MET" and info.metadata["min_order_fen"] == "300000"
    # The rejected attempt consumed nothing: the same order with a larger basket succeeds.
    assert clients.marketing.RedeemCoupon(redeem_request(coupon, "ord_a", subtotal=300_000)).discount_fen == 20_000


async def _race(address: str, requests: list[mk.RedeemCouponRequest]) -> list[object]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = marketing_pb2_grpc.MarketingServiceStub(channel)
        return await asyncio.gather(*(stub.RedeemCoupon(r) for r in requests), return_exceptions=True)


def test_many_orders_racing_for_one_coupon_exactly_one_wins(clients, stack):
    brand_id, consumer_id = ids()
    coupon = issue(clients, brand_id, consumer_id, face=5_000)
    orders = [f"ord_{i}" for i in range(24)]
    results = asyncio.run(_race(stack.address("marketing"), [redeem_request(coupon, o) for o in orders]))

    won = [r for r in results if isinstance(r, mk.RedeemCouponResponse)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == len(orders) - 1
    assert {e.code() for e in lost} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert {error_info(e).reason for e in lost} == {"COUPON_ALREADY_REDEEMED"}
    stored = clients.marketing.GetCoupon(mk.GetCouponRequest(code=coupon.code)).coupon
    assert stored.redeemed_order_id == won[0].coupon.redeemed_order_id


def test_one_order_retrying_concurrently_redeems_once(clients, stack):
    brand_id, consumer_id = ids()
    coupon = issue(clients, brand_id, consumer_id, face=5_000)
    results = asyncio.run(_race(stack.address("marketing"),
                                [redeem_request(coupon, "ord_a", subtotal=4_000) for _ in range(12)]))
    assert all(isinstance(r, mk.RedeemCouponResponse) for r in results), results
    assert {r.discount_fen for r in results} == {4_000}
    assert len({r.SerializeToString(deterministic=True) for r in results}) == 1


def test_one_key_racing_over_many_coupons_redeems_one(clients, stack):
    brand_id, consumer_id = ids()
    coupons = [issue(clients, brand_id, consumer_id) for _ in range(8)]
    shared = key()
    results = asyncio.run(_race(stack.address("marketing"), [
        redeem_request(c, f"ord_{i}", idempotency_key=shared) for i, c in enumerate(coupons)]))

    won = [r for r in results if isinstance(r, mk.RedeemCouponResponse)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == len(coupons) - 1
    assert {e.code() for e in lost} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert all(bad_request_fields(e) == ["idempotency_key"] for e in lost)
    statuses = [clients.marketing.GetCoupon(mk.GetCouponRequest(code=c.code)).coupon.status for c in coupons]
    assert statuses.count(mk.COUPON_STATUS_REDEEMED) == 1


def test_redemption_is_announced(clients, stack):
    brand_id, consumer_id = ids()
    coupon = issue(clients, brand_id, consumer_id, face=5_000)
    redeemed = clients.marketing.RedeemCoupon(redeem_request(coupon, "ord_a", subtotal=4_321))

    async def announced() -> events_pb2.CouponRedeemed:
        nc = await nats.connect(stack.nats_url)
        try:
            sub = await nc.jetstream().subscribe("marketing.coupon.redeemed", ordered_consumer=True)
            while True:
                event = events_pb2.CouponRedeemed.FromString((await sub.next_msg(timeout=10)).data)
                if event.coupon.code == coupon.code:
                    return event
        finally:
            await nc.close()

    event = asyncio.run(announced())
    assert (event.order_id, event.discount_fen) == ("ord_a", 4_321)
    assert event.coupon == redeemed.coupon
    assert event.redeemed_at == redeemed.coupon.redeemed_at


def test_bad_input_names_the_fields(clients):
    err = failure(clients.marketing.IssueCoupon, mk.IssueCouponRequest(
        idempotency_key=key(), brand_id="brd_1", consumer_id="", funder=mk.FUNDER_BRAND, face_value_fen=0))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(bad_request_fields(err)) == {"consumer_id", "face_value_fen"}

    err = failure(clients.marketing.IssueCoupon, mk.IssueCouponRequest(
        idempotency_key=key(), brand_id="brd_1", consumer_id="csm_1", face_value_fen=100, min_order_fen=-1))
    assert set(bad_request_fields(err)) == {"funder", "min_order_fen"}

    err = failure(clients.marketing.RedeemCoupon, mk.RedeemCouponRequest(
        idempotency_key="", code="CPN-000000000000", order_id="", consumer_id="csm_1", brand_id="brd_1",
        order_subtotal_fen=0))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(bad_request_fields(err)) == {"idempotency_key", "order_id", "order_subtotal_fen"}
