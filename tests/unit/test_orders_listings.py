"""Orders' copy of what stores list: served from memory only while it follows catalog's events, corrected by
every event at once, and never overwritten by an answer catalog gave before a newer event."""

from __future__ import annotations

import asyncio

from omo.catalog.v1 import catalog_pb2 as cat
from omo.catalog.v1 import events_pb2 as catalog_events

from services.orders.listings import Listings


class _Catalog:
    def __init__(self) -> None:
        self.asked = 0
        self.gate: asyncio.Event | None = None

    async def quote(self, request: cat.QuotePricesRequest) -> cat.QuotePricesResponse:
        self.asked += 1
        if self.gate is not None:
            await self.gate.wait()
        return cat.QuotePricesResponse(
            store=cat.Store(store_id=request.store_id, dealer_id="dlr", brand_id="brd"),
            quotes=[cat.PriceQuote(sku_id=s, name=s, retail_price_fen=100, supply_price_fen=60)
                    for s in request.sku_ids])


def _event(sku: str, listed: bool) -> catalog_events.ListingChanged:
    return catalog_events.ListingChanged(store_id="str", sku_id=sku, listed=listed)


async def test_a_quoted_store_and_sku_are_served_from_memory_until_delisted() -> None:
    catalog = _Catalog()
    listings = Listings(catalog.quote)
    listings.follow()
    await listings.quote("str", ["a", "b"])
    store, quotes = await listings.quote("str", ["b", "a"])
    assert (catalog.asked, store.dealer_id, sorted(quotes)) == (1, "dlr", ["a", "b"])
    listings.changed(_event("a", listed=False))
    await listings.quote("str", ["a"])
    assert catalog.asked == 2  # catalog decides again about a delisted SKU
    listings.changed(_event("a", listed=True))
    await listings.quote("str", ["a"])
    assert catalog.asked == 2  # listed again: known store and SKU, served from memory


async def test_an_answer_older_than_an_event_is_not_kept() -> None:
    catalog = _Catalog()
    listings = Listings(catalog.quote)
    listings.follow()
    catalog.gate = asyncio.Event()
    asking = asyncio.ensure_future(listings.quote("str", ["a"]))
    await asyncio.sleep(0)
    listings.changed(_event("a", listed=False))  # arrives while catalog's (older) answer is on its way
    catalog.gate.set()
    await asking
    catalog.gate = None
    await listings.quote("str", ["a"])
    assert catalog.asked == 2


async def test_nothing_is_served_from_memory_while_events_may_be_missed() -> None:
    catalog = _Catalog()
    listings = Listings(catalog.quote)
    await listings.quote("str", ["a"])
    await listings.quote("str", ["a"])
    assert catalog.asked == 2  # not following yet
    listings.follow()
    await listings.quote("str", ["a"])
    await listings.quote("str", ["a"])
    assert catalog.asked == 3
    listings.lose_track()
    await listings.quote("str", ["a"])
    listings.follow()  # back, but the copy starts over
    await listings.quote("str", ["a"])
    assert catalog.asked == 5


async def test_a_listing_is_confirmed_again_after_its_maximum_age() -> None:
    catalog = _Catalog()
    listings = Listings(catalog.quote, max_age_s=0.05)
    listings.follow()
    await listings.quote("str", ["a"])
    await listings.quote("str", ["a"])
    await asyncio.sleep(0.06)
    await listings.quote("str", ["a"])
    assert catalog.asked == 2
