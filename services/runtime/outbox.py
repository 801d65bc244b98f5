"""The transactional outbox: events are written in the same transaction as the state change they announce,
then relayed to JetStream in batches. `Nats-Msg-Id` is the outbox id, so JetStream drops a duplicate that a
relay crash between publish and delete would send again; consumers' inboxes catch anything older."""

from __future__ import annotations

import asyncio
import time

from google.protobuf.message import Message
from nats.js import JetStreamContext
from sqlalchemy import text

from . import log, metrics, reqctx
from .db import Connection, Database

_INSERT = text(
    "INSERT INTO outbox (subject, event_type, payload, request_id) VALUES (:subject, :type, :payload, :rid)"
)
_INSERT_MANY = text(
    "INSERT INTO outbox (subject, event_type, payload, request_id) "
    "SELECT e.s, e.t, e.p, e.r FROM unnest(CAST(:subjects AS text[]), CAST(:types AS text[]), "
    "CAST(:payloads AS bytea[]), CAST(:rids AS text[])) WITH ORDINALITY AS e(s, t, p, r, n) ORDER BY e.n"
)
_CLAIM = text(
    """
    SELECT id, subject, event_type, payload, request_id,
           (extract(epoch FROM created_at) * 1000)::bigint AS created_ms, attempts
    FROM outbox WHERE next_attempt_at <= clock_timestamp()
    ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED
    """
)
_DONE = text("DELETE FROM outbox WHERE id = ANY(:ids)")
_RETRY = text(
    """
    UPDATE outbox SET attempts = attempts + 1, last_error = :error,
        next_attempt_at = clock_timestamp() + make_interval(secs => least(30, 0.2 * power(2, attempts)))
    WHERE id = ANY(:ids)
    """
)
_BACKLOG = text("SELECT count(*) FROM outbox")

HEADER_EVENT_ID = "Omo-Event-Id"
HEADER_TYPE = "Omo-Event-Type"
HEADER_CREATED_MS = "Omo-Created-Ms"
HEADER_REQUEST_ID = "Omo-Request-Id"

_log = log.get(__name__)
_wake = asyncio.Event()


async def add(conn: Connection, subject: str, event: Message) -> None:
    """Queue `event` for publication; call inside the transaction that makes the change it announces."""
    await conn.execute(
        _INSERT,
        {
            "subject": subject,
            "type": event.DESCRIPTOR.full_name,
            "payload": event.SerializeToString(),
            "rid": reqctx.request_id(),
        },
    )
    # The relay runs in this process: nudge it so the event leaves right after commit, not at the next poll.
    asyncio.get_running_loop().call_soon(_wake.set)


async def add_many(conn: Connection, events: list[tuple[str, Message]]) -> None:
    """`add` for many events in one statement (batch handlers)."""
    if not events:
        return
    rid = reqctx.request_id()
    await conn.execute(_INSERT_MANY, {
        "subjects": [subject for subject, _ in events],
        "types": [event.DESCRIPTOR.full_name for _, event in events],
        "payloads": [event.SerializeToString() for _, event in events],
        "rids": [rid] * len(events),
    })
    asyncio.get_running_loop().call_soon(_wake.set)


# For a statement that announces its own change in the same breath: `WITH changed AS (UPDATE ... RETURNING
# ...), announced AS (INSERT_ONE + " FROM changed") SELECT ...` writes the event only if the change happened,
# in one round trip and without an explicit transaction. Parameters: `one(subject, event)`; after the
# statement, `nudge()`.
INSERT_ONE = ("INSERT INTO outbox (subject, event_type, payload, request_id) "
              "SELECT :outbox_subject, :outbox_type, CAST(:outbox_payload AS bytea), :outbox_rid")


def one(subject: str, event: Message) -> dict[str, object]:
    return {"outbox_subject": subject, "outbox_type": event.DESCRIPTOR.full_name,
            "outbox_payload": event.SerializeToString(), "outbox_rid": reqctx.request_id()}


def nudge() -> None:
    """Wake the relay: an event was committed outside `add`."""
    asyncio.get_running_loop().call_soon(_wake.set)


class OutboxRelay:
    def __init__(self, engine: Database, js: JetStreamContext, schema: str, batch: int = 500):
        self.engine = engine
        self.js = js
        self.schema = schema
        self.batch = batch
        self.poll_s = 0.25
        self.ack_timeout_s = 5.0
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        last_gauge = 0.0
        while not self._stopping.is_set():
            try:
                sent = await self.relay_once()
            except Exception as exc:  # DB or NATS down: keep the rows, try again shortly.
                _log.warning("outbox relay failed", error=str(exc))
                sent = 0
                await asyncio.sleep(1.0)
            now = time.monotonic()
            if now - last_gauge > 2.0:
                last_gauge = now
                await self._update_backlog()
            if sent >= self.batch:
                continue
            _wake.clear()
            try:
                await asyncio.wait_for(_wake.wait(), timeout=self.poll_s)
            except TimeoutError:
                pass
            # Let a burst of commits accumulate into one batch.
            await asyncio.sleep(0.002)

    async def stop(self) -> None:
        """Stop after one last flush, so events committed before shutdown are not left behind."""
        self._stopping.set()
        _wake.set()
        try:
            await self.relay_once()
        except Exception as exc:
            _log.warning("final outbox flush failed", error=str(exc))

    async def relay_once(self) -> int:
        async with self.engine.begin() as conn:
            rows = (await conn.execute(_CLAIM, {"n": self.batch})).all()
            if not rows:
                return 0
            futures = []
            for row in rows:
                event_id = f"{self.schema}-{row.id}"
                headers = {
                    # JetStream drops a re-publish within its duplicate window; the inbox catches the rest.
                    "Nats-Msg-Id": event_id,
                    HEADER_EVENT_ID: event_id,
                    HEADER_TYPE: row.event_type,
                    HEADER_CREATED_MS: str(row.created_ms),
                    HEADER_REQUEST_ID: row.request_id,
                }
                futures.append(await self.js.publish_async(row.subject, bytes(row.payload), headers=headers))
            done, failed, error = [], [], ""
            results = await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True), timeout=self.ack_timeout_s
            )
            for row, result in zip(rows, results, strict=True):
                if isinstance(result, BaseException):
                    failed.append(row.id)
                    error = repr(result)
                else:
                    done.append(row.id)
            if done:
                await conn.execute(_DONE, {"ids": done})
            if failed:
                await conn.execute(_RETRY, {"ids": failed, "error": error[:500]})
                _log.warning("outbox publish failed", count=len(failed), error=error)
            metrics.EVENTS_PUBLISHED.labels(metrics.SERVICE.name).inc(len(done))
            return len(rows)

    async def _update_backlog(self) -> None:
        try:
            async with self.engine.connect() as conn:
                backlog = (await conn.execute(_BACKLOG)).scalar_one()
            metrics.OUTBOX_BACKLOG.labels(metrics.SERVICE.name).set(backlog)
        except Exception:
            pass
