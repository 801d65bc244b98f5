"""Prometheus metrics, served over HTTP on the service's metrics port."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0)

RPC_REQUESTS = Counter("omo_rpc_requests_total", "gRPC requests handled", ["service", "method", "code"])
RPC_LATENCY = Histogram(
    "omo_rpc_latency_seconds", "gRPC handling time", ["service", "method"], buckets=_LATENCY_BUCKETS
)
EVENTS_PUBLISHED = Counter("omo_events_published_total", "Outbox events acknowledged by JetStream", ["service"])
OUTBOX_BACKLOG = Gauge("omo_outbox_backlog", "Outbox rows not yet published", ["service"])
EVENTS_CONSUMED = Counter(
    "omo_events_consumed_total", "Events handled by a consumer", ["service", "consumer", "outcome"]
)
CONSUMER_LAG = Gauge(
    "omo_consumer_lag", "Messages in the stream not yet acknowledged by the consumer", ["service", "consumer"]
)
EVENT_LAG = Histogram(
    "omo_event_lag_seconds",
    "From the event's outbox write to the consumer's commit of its effect",
    ["service", "consumer"],
    buckets=_LATENCY_BUCKETS,
)


@dataclass
class _Service:
    name: str = "unknown"


SERVICE = _Service()


def start(service: str, port: int) -> None:
    SERVICE.name = service
    if port > 0:
        start_http_server(port, addr="0.0.0.0")
