"""Prices as each store sells them, kept in memory so that placing an order needs no call to catalog once
the store and its SKUs have been quoted before.

Why it is safe to keep: a SKU's unified and supply prices and a store's dealer and brand never change once
catalog created them (catalog has no RPC that changes them). What stores list does change, and catalog
announces every change on `catalog.listing.changed`; this process follows those events on a plain NATS
subscription of its own (every replica sees every event, unlike a shared durable consumer) and applies them
at once. So a delisted SKU stops being sold here within the event's delivery — milliseconds. What could
make the copy wrong is an event missed while NATS was away: the copy is then not trusted at all (every
quote goes to catalog) until the connection is back, and is rebuilt from scratch after it. A listing is
also re-confirmed with catalog after `max_age_s`, which bounds what any other loss could cost.

A quote that misses goes to catalog's QuotePrices (through the caller's coalesced batch call) and what
catalog answered is kept, unless a listing event for the same store and SKU arrived meanwhile: catalog's
answer may predate it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from omo.catalog.v1 import catalog_pb2 as cat
from omo.catalog.v1 import events_pb2 as catalog_events

from . import domain

Fetch = Callable[[cat.QuotePricesRequest], Awaitable[cat.QuotePricesResponse]]
DEFAULT_MAX_AGE_S = 60.0


class Listings:
    def __init__(self, fetch: Fetch, *, max_age_s: float = DEFAULT_MAX_AGE_S):
        self.fetch = fetch
        self.max_age_s = max_age_s
        self._stores: dict[str, domain.StoreRef] = {}
        self._skus: dict[str, domain.Quote] = {}
        self._listed: dict[tuple[str, str], float] = {}  # (store, sku) -> when catalog last said it is listed
        self._changes: dict[tuple[str, str], int] = {}  # listing events seen per (store, sku)
        self._epoch = 0  # bumped whenever the copy is rebuilt: answers to older questions are not kept
        self.following = False  # the copy is trusted only while this process follows catalog's events

    async def quote(self, store_id: str, sku_ids: list[str]) -> tuple[domain.StoreRef, dict[str, domain.Quote]]:
        """The store and its prices for the SKUs, all listed; catalog's own refusal otherwise (NOT_FOUND for an
        unknown store or SKU, FAILED_PRECONDITION for one the store does not list)."""
        if self.following and self.max_age_s > 0:
            fresh_after = time.monotonic() - self.max_age_s
            store = self._stores.get(store_id)
            if store is not None and all(self._listed.get((store_id, s), -1.0) >= fresh_after and s in self._skus
                                         for s in sku_ids):
                return store, {s: self._skus[s] for s in sku_ids}
        epoch = self._epoch
        asked = {s: self._changes.get((store_id, s), 0) for s in sku_ids}
        reply = await self.fetch(cat.QuotePricesRequest(store_id=store_id, sku_ids=sku_ids))
        store = domain.StoreRef(reply.store.store_id, reply.store.dealer_id, reply.store.brand_id)
        quotes = {q.sku_id: domain.Quote(q.sku_id, q.name, q.retail_price_fen, q.supply_price_fen)
                  for q in reply.quotes}
        if epoch == self._epoch:
            self._stores[store_id] = store
            self._skus.update(quotes)
            now = time.monotonic()
            for sku_id in quotes:
                if self._changes.get((store_id, sku_id), 0) == asked.get(sku_id):
                    self._listed[(store_id, sku_id)] = now
        return store, quotes

    def store(self, store_id: str) -> domain.StoreRef | None:
        return self._stores.get(store_id)

    def remember_store(self, store: domain.StoreRef) -> None:
        self._stores[store.store_id] = store

    def changed(self, event: catalog_events.ListingChanged) -> None:
        """A listing event: listed or not from now on, as catalog says."""
        key = (event.store_id, event.sku_id)
        self._changes[key] = self._changes.get(key, 0) + 1
        if event.listed and event.store_id in self._stores and event.sku_id in self._skus:
            self._listed[key] = time.monotonic()
        else:
            self._listed.pop(key, None)

    def follow(self) -> None:
        """Following catalog's events (again): start from an empty copy, events may have been missed."""
        self._epoch += 1
        self._listed.clear()
        self.following = True

    def lose_track(self) -> None:
        """No longer following (NATS away): quote from catalog until follow() is called again."""
        self._epoch += 1
        self.following = False
