"""NATS JetStream: the connection and the streams of domain events.

Each service publishes on subjects under its own name (`orders.order.paid`) into its own stream. Every
process ensures all streams exist at start-up, so a consumer never races the publisher's first boot."""

from __future__ import annotations

from collections.abc import Callable

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from . import log

STREAMS: dict[str, list[str]] = {
    "CATALOG": ["catalog.>"],
    "ORDERS": ["orders.>"],
    "WAREHOUSE": ["warehouse.>"],
    "SETTLEMENT": ["settlement.>"],
    "MARKETING": ["marketing.>"],
    # Messages a consumer gave up on, one subject per consumer: dlq.<durable>.
    "DLQ": ["dlq.>"],
}
DUPLICATE_WINDOW_S = 120.0
_log = log.get(__name__)
# Told when the connection drops and when it is back: whatever a process derives from core-NATS
# subscriptions (which keep no backlog) can stop trusting it while away and start over after.
_on_disconnect: list[Callable[[], None]] = []
_on_reconnect: list[Callable[[], None]] = []


def on_connection_change(*, lost: Callable[[], None], back: Callable[[], None]) -> None:
    _on_disconnect.append(lost)
    _on_reconnect.append(back)


async def connect(url: str, name: str) -> Client:
    async def on_error(exc: Exception) -> None:
        _log.warning("nats error", error=str(exc))

    async def on_disconnect() -> None:
        _log.warning("nats disconnected")
        for callback in _on_disconnect:
            callback()

    async def on_reconnect() -> None:
        _log.info("nats reconnected")
        for callback in _on_reconnect:
            callback()

    return await nats.connect(
        servers=[url],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=3,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        pending_size=64 * 1024 * 1024,
    )


async def ensure_streams(js: JetStreamContext) -> None:
    for name, subjects in STREAMS.items():
        config = StreamConfig(
            name=name,
            subjects=subjects,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=7 * 24 * 3600.0,
            duplicate_window=DUPLICATE_WINDOW_S,
        )
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
