"""Test session plumbing. Integration tests share one real stack — embedded Postgres, NATS and the five
service processes — started by the same launcher as `make run`, and stopped at the end of the session."""

from __future__ import annotations

import pathlib

import pytest

from services.runtime import config

PAYMENT_WINDOW_S = 12
# After-sales window: long enough for every test that refunds a delivered order to do so, short enough to
# watch an order complete.
AFTER_SALES_WINDOW_S = 20
# How long a paid pickup waits at the counter: every pickup test collects or cancels well within it.
PICKUP_WINDOW_S = 20
# A dealer id whose sharing cap stays at WeChat's default 30% in the test stack.
CAPPED_DEALER = "dlr_wechat_default_cap"


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    for item in items:
        if "integration" in pathlib.Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)


def _available_services() -> tuple[str, ...]:
    import os

    if os.environ.get("OMO_TEST_SERVICES"):  # e.g. "catalog,warehouse" while working on one service
        return tuple(os.environ["OMO_TEST_SERVICES"].split(","))
    root = pathlib.Path(__file__).resolve().parents[1] / "services"
    return tuple(s for s in config.SERVICES if (root / s / "__main__.py").exists())


@pytest.fixture(scope="session")
def stack(tmp_path_factory):  # type: ignore[no-untyped-def]
    from services.cli.stack import Stack, StackOptions

    # Tests see each split's legs whole: the sharing cap is lifted, except for one dealer that keeps WeChat's
    # default 30% (tests/integration/test_settlement_sharing.py); the cap itself is tested at every level.
    opts = StackOptions.isolated(tmp_path_factory.mktemp("omo"), durable=False,
                                 extra_env={"OMO_LOG_LEVEL": "info", "OMO_SETTLEMENT_SHARING_CAP_BP": "10000",
                                            "OMO_SETTLEMENT_DEALER_SHARING_CAPS": f"{CAPPED_DEALER}=3000",
                                            "OMO_SETTLEMENT_SHARING_POLL_S": "0.1",
                                            # Debt transfers are driven by the tests themselves.
                                            "OMO_SETTLEMENT_TRANSFER_INTERVAL_S": "3600",
                                            # Short enough for the sweeper test to watch an order expire,
                                            # long enough for every other test to pay in time.
                                            "OMO_PAYMENT_WINDOW_S": str(PAYMENT_WINDOW_S),
                                            "OMO_AFTER_SALES_WINDOW_S": str(AFTER_SALES_WINDOW_S),
                                            "OMO_PICKUP_WINDOW_S": str(PICKUP_WINDOW_S),
                                            "OMO_SWEEP_INTERVAL_S": "0.5"})
    st = Stack(opts, services=_available_services())
    st.start()
    yield st
    st.stop()


@pytest.fixture(scope="session")
def clients(stack):  # type: ignore[no-untyped-def]
    from .support import Clients

    c = Clients.connect(stack.address)
    yield c
    c.close()


@pytest.fixture(scope="session")
def world(clients):  # type: ignore[no-untyped-def]
    from .support import World

    return World.create(clients)
