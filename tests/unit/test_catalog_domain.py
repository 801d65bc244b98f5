"""Catalog rules: a store sells only what it lists, at the brand's unified price."""

from __future__ import annotations

import pytest

from services.catalog.domain import Sku, Store, quote
from services.runtime.errors import FailedPrecondition, NotFound

STORE = Store("str_1", "dlr_1", "brd_1", "Xujiahui", "East", 31.2, 121.4)
SKU = Sku("sku_1", "brd_1", "X1", "ThinkPad X1", 999_900, 800_000)
OTHER_BRAND = Sku("sku_2", "brd_2", "Y", "Other", 100, 50)


def test_listed_sku_is_quoted_at_the_unified_price():
    [q] = quote(STORE, ["sku_1"], {"sku_1": SKU}, {"sku_1"})
    assert (q.sku.retail_price_fen, q.sku.supply_price_fen) == (999_900, 800_000)


def test_delisted_sku_is_a_failed_precondition_naming_the_sku():
    with pytest.raises(FailedPrecondition) as err:
        quote(STORE, ["sku_1"], {"sku_1": SKU}, set())
    assert err.value.metadata["sku_id"] == "sku_1"


@pytest.mark.parametrize("skus", [{}, {"sku_2": OTHER_BRAND}])
def test_unknown_or_foreign_sku_is_not_found(skus):
    with pytest.raises(NotFound):
        quote(STORE, ["sku_2"], skus, {"sku_2"})
