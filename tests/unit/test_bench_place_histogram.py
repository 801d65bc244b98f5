"""The benchmark's reading of orders' PlaceOrder histogram: the calls within 100 ms come from the le=0.1
bucket, and a histogram without that bucket is an error, not "no call was that fast"."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench.orders_flow import _place_order_histogram


@contextmanager
def _serving(buckets: tuple[float, ...]) -> Iterator[str]:
    registry = CollectorRegistry()
    latency = Histogram("omo_rpc_latency_seconds", "gRPC handling time", ["service", "method"], buckets=buckets,
                        registry=registry)
    for seconds in (0.02, 0.09, 0.3):
        latency.labels("orders", "PlaceOrder").observe(seconds)
    latency.labels("orders", "RecordPayment").observe(0.01)
    body = generate_latest(registry)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_counts_placeorder_calls_within_100ms() -> None:
    with _serving((0.05, 0.1, 0.5)) as url:
        seen = _place_order_histogram(url)
    assert seen["count"] == 3
    assert seen["within_100ms"] == 2
    assert seen["sum"] == pytest.approx(0.41)


def test_a_histogram_without_a_100ms_bucket_is_an_error() -> None:
    with _serving((0.05, 0.5)) as url, pytest.raises(RuntimeError, match=r"le=0\.1"):
        _place_order_histogram(url)
