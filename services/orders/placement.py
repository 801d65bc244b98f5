"""Placing an order: a saga over catalog (price), warehouse (reserve stock) and marketing (redeem a coupon),
ending in one statement that records the order with its lines.

It converges when retried: the order id is derived from the idempotency key, and every downstream step is
keyed by the order id, so a retry after a crash anywhere re-runs the same steps, gets the same answers back
and inserts the same order once. No database transaction is held open across a downstream call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from omo.catalog.v1 import catalog_pb2 as cat
from omo.catalog.v1 import catalog_pb2_grpc
from omo.marketing.v1 import marketing_pb2 as mkt
from omo.marketing.v1 import marketing_pb2_grpc
from omo.orders.v1 import orders_pb2 as pb
from omo.warehouse.v1 import warehouse_pb2 as wh
from omo.warehouse.v1 import warehouse_pb2_grpc

from services.runtime import batch, timestamps
from services.runtime.batch import Coalescer
from services.runtime.db import Database
from services.runtime.errors import DomainError, InvalidArgument
from services.runtime.idempotency import request_hash
from services.runtime.ids import derived_id
from services.runtime.interceptors import DETAILS_KEY

from . import domain
from .batching import OrderWrites
from .listings import DEFAULT_MAX_AGE_S, Listings
from .store import OrderStore, Placing, Prior, Refusal

# A coupon refused for one of these reasons is refused for good: the stock held for the order is given back.
# Anything else (marketing down, a timeout) may hide a redemption that did happen, so the reservation stays for
# the caller's retry, which converges on the same redemption.
_REFUSALS = frozenset({
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
})
_FUNDERS = {mkt.FUNDER_BRAND: "BRAND"}
_HOLD_GRACE_S = 60
_MODES = {pb.FULFILMENT_MODE_CLOUD_SHIPPING: domain.Fulfilment.CLOUD_SHIPPING,
          pb.FULFILMENT_MODE_EXPRESS_3H: domain.Fulfilment.EXPRESS_3H,
          pb.FULFILMENT_MODE_STORE_PICKUP: domain.Fulfilment.STORE_PICKUP}
_WAREHOUSE_MODES = {domain.Fulfilment.CLOUD_SHIPPING: wh.FULFILMENT_MODE_CLOUD_SHIPPING,
                    domain.Fulfilment.EXPRESS_3H: wh.FULFILMENT_MODE_EXPRESS_3H,
                    domain.Fulfilment.STORE_PICKUP: wh.FULFILMENT_MODE_STORE_PICKUP}


class Placement:
    def __init__(
        self,
        engine: Database,
        store: OrderStore,
        catalog: catalog_pb2_grpc.CatalogServiceStub,
        warehouse: warehouse_pb2_grpc.WarehouseServiceStub,
        marketing: marketing_pb2_grpc.MarketingServiceStub,
        payment_window_s: float = domain.DEFAULT_PAYMENT_WINDOW_S,
        listings_max_age_s: float = DEFAULT_MAX_AGE_S,
    ):
        self.engine = engine
        self.store = store
        self.writes = OrderWrites(engine, store)
        self.catalog = catalog
        self.warehouse = warehouse
        self.marketing = marketing
        # The hold outlasts the payment window by a minute: the order sweeper cancels first and the cancel
        # releases the hold; the warehouse's own expiry is the backstop if that event were ever lost.
        self.hold_for = Duration(seconds=int(payment_window_s) + _HOLD_GRACE_S)
        # Concurrent placements quote and reserve together: one batch RPC (and on the other side one
        # statement) for all the orders that arrive while earlier batches are in flight.
        self._quotes: Coalescer[cat.QuotePricesRequest, cat.QuotePricesResponse] = Coalescer(self._send_quotes)
        self.listings = Listings(self._quotes.call, max_age_s=listings_max_age_s)
        self._holds: Coalescer[wh.ReserveStockRequest, wh.ReserveStockResponse] = Coalescer(self._send_holds)

    async def _send_quotes(self, requests: list[cat.QuotePricesRequest], timeout_s: float) -> list[Any]:
        reply = await self.catalog.BatchQuotePrices(cat.BatchQuotePricesRequest(requests=requests), timeout=timeout_s)
        return batch.answers(reply.results)

    async def _send_holds(self, requests: list[wh.ReserveStockRequest], timeout_s: float) -> list[Any]:
        reply = await self.warehouse.BatchReserveStock(wh.BatchReserveStockRequest(requests=requests),
                                                       timeout=timeout_s)
        return batch.answers(reply.results)

    async def place(self, request: pb.PlaceOrderRequest) -> domain.Order:
        """Place the order; a retry (same key, same request) answers as the first attempt did.

        Optimistic about the key: almost every call is a new order, so the key is looked up only when a step
        fails (a retry of an order placed earlier may now fail a step the first attempt passed — a SKU
        delisted since — and must still get its order back) or when the insert finds the key taken. Every
        step is keyed by the order (derived from the key), so a retry that does run them repeats the same
        calls and gets the first answers back: it holds no second reservation and redeems no coupon twice."""
        try:
            placed = await self._place(request)
        except (grpc.aio.AioRpcError, DomainError):
            prior = await self.writes.prior(request.idempotency_key)
            if prior is None:
                raise
            return await self._as_before(request, prior)
        if placed is not None:
            return placed
        prior = await self.writes.prior(request.idempotency_key)
        assert prior is not None, "the insert found the key taken, so it leads somewhere"
        return await self._as_before(request, prior)

    async def _as_before(self, request: pb.PlaceOrderRequest, prior: Prior) -> domain.Order:
        """The answer the key's first attempt got: its order, or its refusal raised again."""
        _check_same_request(prior.request_hash, request_hash(request))
        if prior.refusal is not None:
            _replay(prior.refusal)
        assert prior.order_id is not None
        async with self.engine.connect() as conn:
            order = await self.store.order(conn, prior.order_id)
        assert order is not None
        return order

    async def _place(self, request: pb.PlaceOrderRequest) -> domain.Order | None:
        key = request.idempotency_key
        digest = request_hash(request)
        requested = [domain.LineInput(li.sku_id, li.quantity) for li in request.lines]
        domain.check_lines(requested)
        route = domain.route(_MODES.get(request.fulfilment_mode),
                             (request.deliver_to.latitude, request.deliver_to.longitude)
                             if request.HasField("deliver_to") else None)

        order_id = derived_id("ord", key)
        store, quotes, credited = await self._quote(request)
        attribution = domain.attribute(_attribution(request.attribution), store, credited)
        lines = domain.price_lines(requested, quotes)
        holds = await self._reserve(order_id, lines, route)
        coupon = None
        if request.coupon_code:
            coupon = await self._redeem(request, order_id, store, domain.totals(lines).subtotal_fen,
                                        [leg.reservation_id for leg in holds], digest)
        order = domain.new_order(order_id, store, request.consumer_id, attribution, lines, coupon,
                                 holds[0].reservation_id, timestamps.now(), route.mode, holds[0].warehouse_id, holds)

        if await self.writes.place(Placing(order, key, digest)):
            return order
        return None  # the key was taken meanwhile, by a concurrent attempt or a refused one

    async def _quote(self, request: pb.PlaceOrderRequest) -> tuple[domain.StoreRef, dict[str, domain.Quote],
                                                                   domain.StoreRef | None]:
        """Prices at the store, and (only when the QR code credits another store) that store, concurrently."""
        quoting = self.listings.quote(request.store_id, [li.sku_id for li in request.lines])
        credited_id = request.attribution.store_id
        if credited_id and credited_id != request.store_id:
            (store, quotes), credited = await _both(quoting, self._store(credited_id))
        else:
            (store, quotes), credited = await quoting, None
        return store, quotes, credited

    async def _store(self, store_id: str) -> domain.StoreRef | None:
        known = self.listings.store(store_id)  # stores never change once created
        if known is not None:
            return known
        try:
            s = (await self.catalog.GetStore(cat.GetStoreRequest(store_id=store_id))).store
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        store = domain.StoreRef(s.store_id, s.dealer_id, s.brand_id)
        self.listings.remember_store(store)
        return store

    async def _reserve(self, order_id: str, lines: tuple[domain.Line, ...],
                       route: domain.Route) -> tuple[domain.Leg, ...]:
        """The holds, one per location of a split route, each with its location and lines: the order's legs
        (the first stands for the order). With the consumer's place the warehouse routes (the same ranking as
        its QuoteRoute); without, it holds at the first cloud warehouse covering every line."""
        request = wh.ReserveStockRequest(
            idempotency_key=f"{order_id}:reserve", order_id=order_id,
            lines=[wh.StockLine(sku_id=li.sku_id, quantity=li.quantity) for li in lines],
            hold_for=self.hold_for,
        )
        if route.deliver_to is not None:
            request.route.mode = _WAREHOUSE_MODES[route.mode]
            request.route.deliver_to.latitude, request.route.deliver_to.longitude = route.deliver_to
        reply = await self._holds.call(request)
        legs = reply.legs or [reply.reservation]
        return tuple(domain.Leg(r.reservation_id, r.warehouse_id,
                                tuple(domain.LegLine(li.sku_id, li.quantity) for li in r.lines)) for r in legs)

    async def _redeem(self, request: pb.PlaceOrderRequest, order_id: str, store: domain.StoreRef, subtotal_fen: int,
                      reservation_ids: list[str], digest: bytes) -> domain.Coupon:
        try:
            reply = await self.marketing.RedeemCoupon(mkt.RedeemCouponRequest(
                idempotency_key=f"{order_id}:coupon", code=request.coupon_code, order_id=order_id,
                consumer_id=request.consumer_id, brand_id=store.brand_id, order_subtotal_fen=subtotal_fen,
            ))
        except grpc.aio.AioRpcError as err:
            if err.code() not in _REFUSALS:
                raise
            for leg, reservation_id in enumerate(reservation_ids):
                await self.warehouse.ReleaseReservation(wh.ReleaseReservationRequest(
                    idempotency_key=f"{order_id}:release" + (f":{leg}" if leg else ""), reservation_id=reservation_id,
                    reason=f"coupon {request.coupon_code} refused: {err.code().name}"[:200],
                ))
            refusal = Refusal(err.code().name, err.details() or err.code().name, _status_details(err))
            async with self.engine.connect() as conn:
                await self.store.add_refusal(conn, request.idempotency_key, digest, refusal)
            raise
        funder = _FUNDERS.get(reply.coupon.funder)
        if funder is None:
            raise RuntimeError(f"marketing returned coupon funder {reply.coupon.funder}, which orders does not know")
        return domain.Coupon(request.coupon_code, funder, reply.discount_fen)


def _attribution(a: pb.Attribution) -> domain.Attribution:
    return domain.Attribution(a.scene, a.dealer_id, a.store_id, a.guide_id)


def _check_same_request(recorded: bytes, digest: bytes) -> None:
    if recorded != digest:
        raise InvalidArgument.field("idempotency_key", "was already used for a different request")


def _status_details(err: grpc.aio.AioRpcError) -> bytes:
    for k, v in err.trailing_metadata() or ():
        if k == DETAILS_KEY:
            return bytes(v)
    return b""


def _replay(refusal: Refusal) -> None:
    """Answer a retry of a refused placement as the dependency answered the first attempt (same code, same
    google.rpc details); the error interceptor passes it on like a live refusal."""
    trailer = grpc.aio.Metadata((DETAILS_KEY, refusal.status_details)) if refusal.status_details else None
    raise grpc.aio.AioRpcError(grpc.StatusCode[refusal.code], grpc.aio.Metadata(), trailer or grpc.aio.Metadata(),
                               details=refusal.message)


async def _both(first: Awaitable[Any], second: Awaitable[Any]) -> tuple[Any, Any]:
    """Await two calls concurrently; the first one's failure wins, and neither is left unobserved."""
    results = await asyncio.gather(first, second, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results[0], results[1]
