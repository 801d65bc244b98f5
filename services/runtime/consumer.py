"""Durable JetStream pull consumers with an inbox.

Each message's id is written to the `inbox` table in the same transaction as its effect, so a redelivered
message finds its id there and has no second effect. Messages are fetched and handled in batches in one
transaction; if the batch fails, each message is retried alone so one bad message cannot hold up the rest.
A message that keeps failing is published to `dlq.<durable>` after `max_deliver` attempts and terminated,
never acked as if it had succeeded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import text

from . import log, metrics
from .db import Connection, Database
from .outbox import HEADER_CREATED_MS, HEADER_EVENT_ID, HEADER_TYPE
from .pull import Pull

Handler = Callable[[Connection, Any, "Delivery"], Awaitable[None]]
# A set-based handler: every newly claimed message of a batch at once, in delivery order.
BatchHandler = Callable[[Connection, list[tuple[Any, "Delivery"]]], Awaitable[None]]

_CLAIM = text(
    "INSERT INTO inbox (consumer, message_id, subject) VALUES (:consumer, :mid, :subject) "
    "ON CONFLICT DO NOTHING RETURNING 1"
)
# A whole batch claimed in one statement; the ids that come back are the messages not handled before.
_CLAIM_MANY = text(
    "INSERT INTO inbox (consumer, message_id, subject) "
    "SELECT :consumer, m.id, m.subject FROM unnest(CAST(:mids AS text[]), CAST(:subjects AS text[])) AS m(id, subject) "
    # In key order: two replicas claiming overlapping batches then wait for each other instead of deadlocking.
    "ORDER BY m.id ON CONFLICT DO NOTHING RETURNING message_id"
)
_log = log.get(__name__)


@dataclass(frozen=True)
class Subscription:
    """One durable consumer: which subject of which stream, decoded as which event, handled how."""

    durable: str
    stream: str
    subject: str
    event_type: type[Message]
    handler: Handler | None = None
    # At most this many messages per transaction (None: the service's OMO_CONSUMER_BATCH). A handler that
    # updates rows the service's RPCs also lock (stock) wants small batches: the locks are held until commit.
    max_batch: int | None = None
    # Instead of `handler`: one call for all the batch's new messages, so that a batch costs a few
    # statements rather than a few per message. A failed batch is retried message by message through it.
    batch_handler: BatchHandler | None = None

    def __post_init__(self) -> None:
        if (self.handler is None) == (self.batch_handler is None):
            raise ValueError(f"{self.durable}: give exactly one of handler and batch_handler")


@dataclass(frozen=True)
class Delivery:
    message_id: str
    subject: str
    created_ms: int
    attempt: int


class PermanentError(Exception):
    """The message can never be handled (e.g. it does not decode): dead-letter it at once."""


class Consumer:
    def __init__(
        self,
        engine: Database,
        nc: Client,
        sub: Subscription,
        *,
        batch: int = 200,
        max_deliver: int = 5,
        ack_wait_s: float = 30.0,
    ):
        self.engine = engine
        self.nc = nc
        self.js = nc.jetstream(timeout=5.0)
        self.sub = sub
        self.batch = min(batch, sub.max_batch or batch)
        self.max_deliver = max_deliver
        self.ack_wait_s = ack_wait_s
        self._stopping = asyncio.Event()
        self._psub: Any = None
        # Metric children resolved once: these are touched for every message.
        self._ok = self._labels("ok")
        self._lag = metrics.EVENT_LAG.labels(metrics.SERVICE.name, sub.durable)

    def _labels(self, outcome: str) -> Any:
        return metrics.EVENTS_CONSUMED.labels(metrics.SERVICE.name, self.sub.durable, outcome)

    def _observe(self, deliveries: list[Delivery | None]) -> None:
        now_ms = time.time() * 1000
        duplicates = sum(1 for d in deliveries if d is None)
        if duplicates:
            self._labels("duplicate").inc(duplicates)
        if len(deliveries) > duplicates:
            self._ok.inc(len(deliveries) - duplicates)
        for d in deliveries:
            if d is not None and d.created_ms:
                self._lag.observe(max(0.0, (now_ms - d.created_ms) / 1000))

    async def _subscribe(self) -> None:
        config = ConsumerConfig(
            durable_name=self.sub.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            # The server stops redelivering after this many tries; we dead-letter on the last one first.
            max_deliver=self.max_deliver + 1,
            max_ack_pending=20_000,
            filter_subject=self.sub.subject,
        )
        try:
            await self.js.consumer_info(self.sub.stream, self.sub.durable)
        except nats.js.errors.NotFoundError:
            await self.js.add_consumer(self.sub.stream, config)
        pull = Pull(self.nc, self.sub.stream, self.sub.durable, batch=self.batch)
        await pull.start()
        self._psub = pull

    async def run(self) -> None:
        last_lag = 0.0
        while not self._stopping.is_set():
            try:
                if self._psub is None:
                    await self._subscribe()
                msgs = await self._psub.take(timeout_s=1.0)
                if msgs:
                    await self._handle_batch(msgs)
                now = time.monotonic()
                if now - last_lag > 2.0:
                    last_lag = now
                    info = await self.js.consumer_info(self.sub.stream, self.sub.durable)
                    metrics.CONSUMER_LAG.labels(metrics.SERVICE.name, self.sub.durable).set(
                        info.num_pending + info.num_ack_pending
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # NATS restarted or the connection dropped: rebuild the subscription and carry on.
                if self._stopping.is_set():
                    break
                _log.warning("consumer loop error", consumer=self.sub.durable, error=repr(exc))
                if self._psub is not None:
                    try:
                        await self._psub.stop()
                    except Exception:
                        pass
                self._psub = None
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        self._stopping.set()
        # Without this a NATS drain waits for the pull subscription's queue, which nothing empties any more.
        if self._psub is not None:
            try:
                await self._psub.stop()
            except Exception as exc:
                _log.info("consumer unsubscribe failed", consumer=self.sub.durable, error=repr(exc))

    def _delivery(self, msg: Msg) -> Delivery:
        headers = msg.headers or {}
        # The inbox key is the event's identity, not the stream sequence: the same event delivered again, or
        # published again after JetStream's duplicate window, has the same id.
        mid = (headers.get(HEADER_EVENT_ID) or headers.get("Nats-Msg-Id")
               or f"{msg.metadata.stream}:{msg.metadata.sequence.stream}")
        return Delivery(
            message_id=mid,
            subject=msg.subject,
            created_ms=int(headers.get(HEADER_CREATED_MS, "0") or 0),
            attempt=msg.metadata.num_delivered,
        )

    def _decode(self, msg: Msg) -> Message:
        expected = self.sub.event_type.DESCRIPTOR.full_name
        actual = (msg.headers or {}).get(HEADER_TYPE, expected)
        if actual != expected:
            raise PermanentError(f"event type {actual!r}, expected {expected!r}")
        try:
            return self.sub.event_type.FromString(msg.data)
        except DecodeError as exc:
            raise PermanentError(f"undecodable {expected}: {exc}") from exc

    async def _apply(self, conn: Connection, msg: Msg) -> Delivery | None:
        """Claim the message in the inbox and run the handler; None if it was handled before."""
        delivery = self._delivery(msg)
        claimed = (
            await conn.execute(
                _CLAIM, {"consumer": self.sub.durable, "mid": delivery.message_id, "subject": delivery.subject}
            )
        ).first()
        if claimed is None:
            return None
        if self.sub.batch_handler is not None:
            await self.sub.batch_handler(conn, [(self._decode(msg), delivery)])
        else:
            assert self.sub.handler is not None
            await self.sub.handler(conn, self._decode(msg), delivery)
        return delivery

    async def _apply_batch(self, conn: Connection, msgs: list[Msg]) -> list[Delivery | None]:
        """`_apply` for many messages with one inbox round trip; a message delivered twice in the batch runs once."""
        deliveries = [self._delivery(m) for m in msgs]
        rows = await conn.execute(_CLAIM_MANY, {
            "consumer": self.sub.durable,
            "mids": [d.message_id for d in deliveries],
            "subjects": [d.subject for d in deliveries],
        })
        claimed = {row.message_id for row in rows}
        handled: list[Delivery | None] = []
        new: list[tuple[Any, Delivery]] = []
        for msg, delivery in zip(msgs, deliveries, strict=True):
            if delivery.message_id not in claimed:
                handled.append(None)
                continue
            claimed.discard(delivery.message_id)
            if self.sub.batch_handler is not None:
                new.append((self._decode(msg), delivery))
            else:
                assert self.sub.handler is not None
                await self.sub.handler(conn, self._decode(msg), delivery)
            handled.append(delivery)
        if new:
            assert self.sub.batch_handler is not None
            await self.sub.batch_handler(conn, new)
        return handled

    async def _handle_batch(self, msgs: list[Msg]) -> None:
        if len(msgs) > 1:
            try:
                async with self.engine.begin() as conn:
                    deliveries = await self._apply_batch(conn, msgs)
            except Exception as exc:
                _log.info("batch failed, retrying messages one by one", consumer=self.sub.durable, error=repr(exc))
            else:
                await asyncio.gather(*(m.ack() for m in msgs))
                self._observe(deliveries)
                return
        for msg in msgs:
            await self._handle_one(msg)

    async def _handle_one(self, msg: Msg) -> None:
        try:
            async with self.engine.begin() as conn:
                delivery = await self._apply(conn, msg)
        except PermanentError as exc:
            await self._dead_letter(msg, str(exc))
            return
        except Exception as exc:
            attempt = msg.metadata.num_delivered
            if attempt >= self.max_deliver:
                await self._dead_letter(msg, repr(exc))
                return
            _log.warning("event handling failed; will retry", consumer=self.sub.durable, attempt=attempt,
                         error=repr(exc))
            self._labels("retry").inc()
            await msg.nak(delay=min(30.0, 0.5 * 2 ** (attempt - 1)))
            return
        await msg.ack()
        self._observe([delivery])

    async def _dead_letter(self, msg: Msg, error: str) -> None:
        headers = dict(msg.headers or {})
        headers.pop("Nats-Msg-Id", None)
        headers.update({
            "Omo-Dead-Letter-Error": error[:500],
            "Omo-Original-Subject": msg.subject,
            "Omo-Consumer": self.sub.durable,
        })
        # Only after the dead letter is stored do we tell the server to stop redelivering the original.
        await self.js.publish(f"dlq.{self.sub.durable}", msg.data, headers=headers)
        await msg.term()
        self._labels("dead_letter").inc()
        _log.error("event dead-lettered", consumer=self.sub.durable, subject=msg.subject, error=error)
