"""gRPC <-> domain translation for CatalogService."""

from __future__ import annotations

import protovalidate
from omo.catalog.v1 import catalog_pb2 as pb
from omo.catalog.v1 import catalog_pb2_grpc, events_pb2

from services.runtime import batch, interceptors, outbox, timestamps
from services.runtime.db import Connection, Database
from services.runtime.errors import AlreadyExists, DomainError, NotFound
from services.runtime.idempotency import run_idempotent
from services.runtime.ids import new_id

from . import domain
from .store import CatalogStore

SUBJECT_LISTING_CHANGED = "catalog.listing.changed"


def brand_pb(b: domain.Brand) -> pb.Brand:
    return pb.Brand(brand_id=b.brand_id, name=b.name)


def dealer_pb(d: domain.Dealer) -> pb.Dealer:
    return pb.Dealer(dealer_id=d.dealer_id, brand_id=d.brand_id, name=d.name, merchant_id=d.merchant_id)


def store_pb(s: domain.Store) -> pb.Store:
    return pb.Store(store_id=s.store_id, dealer_id=s.dealer_id, brand_id=s.brand_id, name=s.name,
                    region=s.region, latitude=s.latitude, longitude=s.longitude)


def sku_pb(s: domain.Sku) -> pb.Sku:
    return pb.Sku(sku_id=s.sku_id, brand_id=s.brand_id, code=s.code, name=s.name,
                  retail_price_fen=s.retail_price_fen, supply_price_fen=s.supply_price_fen)


class CatalogApi(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, engine: Database, store: CatalogStore):
        self.engine = engine
        self.store = store
        self._validator = protovalidate.Validator()

    async def CreateBrand(self, request: pb.CreateBrandRequest, context) -> pb.CreateBrandResponse:
        async def effect(conn: Connection) -> pb.CreateBrandResponse:
            brand = domain.Brand(new_id("brd"), request.name)
            await self.store.add_brand(conn, brand)
            return pb.CreateBrandResponse(brand=brand_pb(brand))

        return await run_idempotent(self.engine, "CreateBrand", request.idempotency_key, request,
                                    pb.CreateBrandResponse, effect)

    async def CreateDealer(self, request: pb.CreateDealerRequest, context) -> pb.CreateDealerResponse:
        async def effect(conn: Connection) -> pb.CreateDealerResponse:
            if await self.store.brand(conn, request.brand_id) is None:
                raise NotFound("brand", request.brand_id)
            dealer = domain.Dealer(new_id("dlr"), request.brand_id, request.name, request.merchant_id)
            await self.store.add_dealer(conn, dealer)
            return pb.CreateDealerResponse(dealer=dealer_pb(dealer))

        return await run_idempotent(self.engine, "CreateDealer", request.idempotency_key, request,
                                    pb.CreateDealerResponse, effect)

    async def CreateStore(self, request: pb.CreateStoreRequest, context) -> pb.CreateStoreResponse:
        async def effect(conn: Connection) -> pb.CreateStoreResponse:
            dealer = await self.store.dealer(conn, request.dealer_id)
            if dealer is None:
                raise NotFound("dealer", request.dealer_id)
            store = domain.Store(new_id("str"), dealer.dealer_id, dealer.brand_id, request.name, request.region,
                                 request.latitude, request.longitude)
            await self.store.add_store(conn, store)
            return pb.CreateStoreResponse(store=store_pb(store))

        return await run_idempotent(self.engine, "CreateStore", request.idempotency_key, request,
                                    pb.CreateStoreResponse, effect)

    async def GetStore(self, request: pb.GetStoreRequest, context) -> pb.GetStoreResponse:
        async with self.engine.connect() as conn:
            store = await self.store.store(conn, request.store_id)
        if store is None:
            raise NotFound("store", request.store_id)
        return pb.GetStoreResponse(store=store_pb(store))

    async def CreateSku(self, request: pb.CreateSkuRequest, context) -> pb.CreateSkuResponse:
        async def effect(conn: Connection) -> pb.CreateSkuResponse:
            if await self.store.brand(conn, request.brand_id) is None:
                raise NotFound("brand", request.brand_id)
            if await self.store.sku_by_code(conn, request.brand_id, request.code) is not None:
                raise AlreadyExists(f"brand already has a sku with code {request.code!r}",
                                    reason="SKU_CODE_TAKEN", metadata={"code": request.code})
            sku = domain.Sku(new_id("sku"), request.brand_id, request.code, request.name,
                             request.retail_price_fen, request.supply_price_fen)
            await self.store.add_sku(conn, sku)
            return pb.CreateSkuResponse(sku=sku_pb(sku))

        return await run_idempotent(self.engine, "CreateSku", request.idempotency_key, request,
                                    pb.CreateSkuResponse, effect)

    async def GetSku(self, request: pb.GetSkuRequest, context) -> pb.GetSkuResponse:
        async with self.engine.connect() as conn:
            sku = (await self.store.skus(conn, [request.sku_id])).get(request.sku_id)
        if sku is None:
            raise NotFound("sku", request.sku_id)
        return pb.GetSkuResponse(sku=sku_pb(sku))

    async def _set_listing(self, conn: Connection, store_id: str, sku_id: str, listed: bool) -> pb.Listing:
        store = await self.store.store(conn, store_id)
        if store is None:
            raise NotFound("store", store_id)
        sku = (await self.store.skus(conn, [sku_id])).get(sku_id)
        if sku is None or sku.brand_id != store.brand_id:
            raise NotFound("sku", sku_id)
        await self.store.set_listed(conn, store_id, sku_id, listed)
        await outbox.add(conn, SUBJECT_LISTING_CHANGED, events_pb2.ListingChanged(
            store_id=store_id, sku_id=sku_id, listed=listed, changed_at=timestamps.to_proto(timestamps.now())))
        return pb.Listing(store_id=store_id, sku=sku_pb(sku), listed=listed)

    async def ListSkuInStore(self, request: pb.ListSkuInStoreRequest, context) -> pb.ListSkuInStoreResponse:
        async def effect(conn: Connection) -> pb.ListSkuInStoreResponse:
            listing = await self._set_listing(conn, request.store_id, request.sku_id, True)
            return pb.ListSkuInStoreResponse(listing=listing)

        return await run_idempotent(self.engine, "ListSkuInStore", request.idempotency_key, request,
                                    pb.ListSkuInStoreResponse, effect)

    async def DelistSkuInStore(self, request: pb.DelistSkuInStoreRequest, context) -> pb.DelistSkuInStoreResponse:
        async def effect(conn: Connection) -> pb.DelistSkuInStoreResponse:
            listing = await self._set_listing(conn, request.store_id, request.sku_id, False)
            return pb.DelistSkuInStoreResponse(listing=listing)

        return await run_idempotent(self.engine, "DelistSkuInStore", request.idempotency_key, request,
                                    pb.DelistSkuInStoreResponse, effect)

    async def ListStoreListings(self, request: pb.ListStoreListingsRequest, context) -> pb.ListStoreListingsResponse:
        size = request.page_size or 100
        async with self.engine.connect() as conn:
            if await self.store.store(conn, request.store_id) is None:
                raise NotFound("store", request.store_id)
            # The page token is the last SKU id of the previous page: stable under concurrent listing changes.
            skus = await self.store.listings(conn, request.store_id, request.page_token, size + 1)
        page = skus[:size]
        next_token = page[-1].sku_id if len(skus) > size else ""
        return pb.ListStoreListingsResponse(
            listings=[pb.Listing(store_id=request.store_id, sku=sku_pb(s), listed=True) for s in page],
            next_page_token=next_token,
        )

    async def QuotePrices(self, request: pb.QuotePricesRequest, context) -> pb.QuotePricesResponse:
        answer = (await self._quote([request]))[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def BatchQuotePrices(self, request: pb.BatchQuotePricesRequest, context) -> pb.BatchQuotePricesResponse:
        requests = list(request.requests)
        checked = batch.check_each(self._validator, requests)
        valid = [r for r, bad in zip(requests, checked, strict=True) if bad is None]
        quoted = iter(await self._quote(valid) if valid else [])
        results = []
        for bad in checked:
            answer = bad if bad is not None else next(quoted)
            results.append(batch.outcome(pb.QuotePricesResult,
                                         interceptors.status_of(answer) if isinstance(answer, Exception) else answer))
        return pb.BatchQuotePricesResponse(results=results)

    async def _quote(self, requests: list[pb.QuotePricesRequest]) -> list[pb.QuotePricesResponse | Exception]:
        """Every request's quote (or why not) from one round trip, however many there are."""
        async with self.engine.connect() as conn:
            stores, skus, listed = await self.store.quote_inputs(
                conn, [(r.store_id, list(r.sku_ids)) for r in requests])
        answers: list[pb.QuotePricesResponse | Exception] = []
        for r in requests:
            store = stores.get(r.store_id)
            try:
                if store is None:
                    raise NotFound("store", r.store_id)
                quotes = domain.quote(store, list(r.sku_ids), skus, listed.get(r.store_id, set()))
            except DomainError as err:
                answers.append(err)
                continue
            answers.append(pb.QuotePricesResponse(
                store=store_pb(store),
                quotes=[pb.PriceQuote(sku_id=q.sku.sku_id, name=q.sku.name, retail_price_fen=q.sku.retail_price_fen,
                                      supply_price_fen=q.sku.supply_price_fen) for q in quotes],
            ))
        return answers
