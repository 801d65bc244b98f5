"""Catalog over gRPC: stores list and delist SKUs of the central library and quote the unified price."""

from __future__ import annotations

import grpc
import pytest
from omo.catalog.v1 import catalog_pb2 as cat

from ..support import bad_request_fields, error_info, error_info_of, key


def test_create_brand_is_idempotent(clients):
    req = cat.CreateBrandRequest(idempotency_key=key(), name="Brand A")
    first = clients.catalog.CreateBrand(req).brand
    again = clients.catalog.CreateBrand(req).brand
    assert first.brand_id == again.brand_id


def test_same_key_different_request_is_rejected(clients):
    k = key()
    clients.catalog.CreateBrand(cat.CreateBrandRequest(idempotency_key=k, name="Brand A"))
    with pytest.raises(grpc.RpcError) as err:
        clients.catalog.CreateBrand(cat.CreateBrandRequest(idempotency_key=k, name="Brand B"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == ["idempotency_key"]


def test_quote_uses_the_unified_price_only_for_listed_skus(clients, world):
    sku = world.new_sku(retail_fen=129_900, supply_fen=100_000, stock=0, listed=False)
    req = cat.QuotePricesRequest(store_id=world.store.store_id, sku_ids=[sku.sku_id])
    with pytest.raises(grpc.RpcError) as err:
        clients.catalog.QuotePrices(req)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err.value).metadata["sku_id"] == sku.sku_id

    clients.catalog.ListSkuInStore(cat.ListSkuInStoreRequest(
        idempotency_key=key(), store_id=world.store.store_id, sku_id=sku.sku_id))
    quote = clients.catalog.QuotePrices(req)
    assert [(q.retail_price_fen, q.supply_price_fen) for q in quote.quotes] == [(129_900, 100_000)]
    assert quote.store.dealer_id == world.dealer.dealer_id

    clients.catalog.DelistSkuInStore(cat.DelistSkuInStoreRequest(
        idempotency_key=key(), store_id=world.store.store_id, sku_id=sku.sku_id))
    with pytest.raises(grpc.RpcError) as err:
        clients.catalog.QuotePrices(req)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_unknown_sku_is_not_found(clients, world):
    with pytest.raises(grpc.RpcError) as err:
        clients.catalog.QuotePrices(cat.QuotePricesRequest(store_id=world.store.store_id, sku_ids=["sku_nope"]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_store_input_names_the_fields(clients, world):
    with pytest.raises(grpc.RpcError) as err:
        clients.catalog.CreateStore(cat.CreateStoreRequest(
            idempotency_key=key(), dealer_id=world.dealer.dealer_id, name="", region="East",
            latitude=91, longitude=0))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(bad_request_fields(err.value)) == {"name", "latitude"}


def test_store_listings_page_through_listed_skus(clients, world):
    for _ in range(3):
        world.new_sku(stock=0)
    seen, token = [], ""
    while True:
        page = clients.catalog.ListStoreListings(cat.ListStoreListingsRequest(
            store_id=world.store.store_id, page_size=2, page_token=token))
        seen += [listing.sku.sku_id for listing in page.listings]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) >= 3
    assert seen == sorted(seen)


def test_a_batch_of_quotes_answers_each_as_quote_prices_would(clients, world):
    listed = world.new_sku(retail_fen=99_900, supply_fen=80_000, stock=0)
    unlisted = world.new_sku(stock=0, listed=False)
    store_id = world.store.store_id
    requests = [
        cat.QuotePricesRequest(store_id=store_id, sku_ids=[listed.sku_id]),
        cat.QuotePricesRequest(store_id=store_id, sku_ids=[listed.sku_id, unlisted.sku_id]),
        cat.QuotePricesRequest(store_id="str_nope", sku_ids=[listed.sku_id]),
        cat.QuotePricesRequest(store_id=store_id, sku_ids=[]),  # breaks QuotePrices' own rules
    ]
    results = clients.catalog.BatchQuotePrices(cat.BatchQuotePricesRequest(requests=requests)).results
    assert [r.WhichOneof("outcome") for r in results] == ["response", "error", "error", "error"]
    assert results[0].response == clients.catalog.QuotePrices(requests[0])
    for result, request in zip(results[1:], requests[1:], strict=True):
        with pytest.raises(grpc.RpcError) as single:
            clients.catalog.QuotePrices(request)
        assert result.error.code == single.value.code().value[0]
        assert result.error.message == single.value.details()
    assert error_info_of(results[1].error).metadata["sku_id"] == unlisted.sku_id


def test_an_empty_batch_is_invalid(clients):
    with pytest.raises(grpc.RpcError) as err:
        clients.catalog.BatchQuotePrices(cat.BatchQuotePricesRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == ["requests"]
