"""The transactional outbox: events are written in the same transaction as the state change they announce,
and published to JetStream only once that transaction has committed.

Two ways out, the same rows:
- straight after the commit (the common case): the process that wrote the rows hands them to its relay,
  which publishes them, waits for JetStream's acks and deletes them, many at a time — one round trip to the
  database per batch. Measured on the order path, the claim-publish-delete transaction this replaced cost
  four round trips per relay pass, ~2 per event.
- the sweep: whatever is still in the table a little later (the process died between commit and publish,
  NATS was away, another replica wrote it) is claimed `FOR UPDATE SKIP LOCKED`, published and deleted, with
  back-off for rows that keep failing.

`Nats-Msg-Id` is the outbox id, so JetStream drops the duplicate when both ways publish one row (the sweep
racing a slow direct publish, or a crash between publish and delete); consumers' inboxes catch anything
older than JetStream's duplicate window."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from google.protobuf.message import Message
from nats.js import JetStreamContext
from sqlalchemy import text

from . import log, metrics, reqctx
from .db import Connection, Database

_INSERT = text(
    "INSERT INTO outbox (subject, event_type, payload, request_id) VALUES (:subject, :type, :payload, :rid) "
    "RETURNING id, (extract(epoch FROM created_at) * 1000)::bigint AS created_ms"
)
_INSERT_MANY = text(
    "INSERT INTO outbox (subject, event_type, payload, request_id) "
    "SELECT e.s, e.t, e.p, e.r FROM unnest(CAST(:subjects AS text[]), CAST(:types AS text[]), "
    "CAST(:payloads AS bytea[]), CAST(:rids AS text[])) WITH ORDINALITY AS e(s, t, p, r, n) ORDER BY e.n "
    "RETURNING id, (extract(epoch FROM created_at) * 1000)::bigint AS created_ms"
)
# The sweep: rows older than :age_s (the direct path had its chance), or all with :age_s = 0.
_CLAIM = text(
    """
    SELECT id, subject, event_type, payload, request_id,
           (extract(epoch FROM created_at) * 1000)::bigint AS created_ms, attempts
    FROM outbox WHERE next_attempt_at <= clock_timestamp()
      AND created_at <= clock_timestamp() - make_interval(secs => :age_s)
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


def _forget_published(ids: list[int]) -> str:
    """The direct path's delete, as one simple-protocol round trip that does not wait for its WAL flush: a
    delete lost in a database crash only means those rows are published again, which JetStream's duplicate
    check and the consumers' inboxes absorb. Measured on the order path, waiting for the flush of every relay
    batch's delete was a large share of all commit waits. The ids are integers from our own table."""
    listed = ",".join(str(int(i)) for i in ids)
    return (f"BEGIN; SET LOCAL synchronous_commit = off; DELETE FROM outbox WHERE id = ANY('{{{listed}}}'::bigint[]); "
            "COMMIT;")


_log = log.get(__name__)
_wake = asyncio.Event()
# Committed rows waiting for this process's relay (the direct path); none if no relay runs here.
_committed: list[Outgoing] = []
_relay_running = False


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One outbox row as the relay publishes it."""

    id: int
    subject: str
    event_type: str
    payload: bytes
    request_id: str
    created_ms: int


def _hand_over(rows: list[Outgoing]) -> None:
    if _relay_running:
        _committed.extend(rows)
        _wake.set()


async def add(conn: Connection, subject: str, event: Message) -> None:
    """Queue `event` for publication; call inside the transaction that makes the change it announces."""
    payload, event_type, rid = event.SerializeToString(), event.DESCRIPTOR.full_name, reqctx.request_id()
    row = (await conn.execute(_INSERT, {"subject": subject, "type": event_type, "payload": payload,
                                        "rid": rid})).one()
    conn.after_commit(lambda: _hand_over([Outgoing(row.id, subject, event_type, payload, rid, row.created_ms)]))


async def add_many(conn: Connection, events: list[tuple[str, Message]]) -> None:
    """`add` for many events in one statement (batch handlers)."""
    if not events:
        return
    rid = reqctx.request_id()
    types = [event.DESCRIPTOR.full_name for _, event in events]
    payloads = [event.SerializeToString() for _, event in events]
    rows = (await conn.execute(_INSERT_MANY, {
        "subjects": [subject for subject, _ in events], "types": types, "payloads": payloads,
        "rids": [rid] * len(events),
    })).all()
    out = [Outgoing(row.id, subject, t, p, rid, row.created_ms)
           for row, (subject, _), t, p in zip(rows, events, types, payloads, strict=True)]
    conn.after_commit(lambda: _hand_over(out))


class Announcement:
    """An event that a set-based statement writes to the outbox itself, beside the change it announces (the
    orders' payment statement, one row per order paid): the columns it inserts, and `written` to hand the
    row it made to the relay once it is committed, as `add` does."""

    def __init__(self, subject: str, event: Message):
        self.subject = subject
        self.event_type = event.DESCRIPTOR.full_name
        self.payload = event.SerializeToString()
        self.request_id = reqctx.request_id()

    def written(self, conn: Connection, outbox_id: int, created_ms: int) -> None:
        row = Outgoing(outbox_id, self.subject, self.event_type, self.payload, self.request_id, created_ms)
        conn.after_commit(lambda: _hand_over([row]))


class OutboxRelay:
    def __init__(self, engine: Database, js: JetStreamContext, schema: str, batch: int = 500):
        self.engine = engine
        self.js = js
        self.schema = schema
        self.batch = batch
        self.sweep_s = 1.0  # how often the table is swept for rows the direct path did not deliver
        self.sweep_age_s = 2.0  # rows younger than this are the direct path's
        self.ack_timeout_s = 5.0
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        global _relay_running
        _relay_running = True
        last_sweep = last_gauge = 0.0
        try:
            while not self._stopping.is_set():
                try:
                    if _committed:
                        await self.publish_committed()
                    now = time.monotonic()
                    if now - last_sweep >= self.sweep_s:
                        last_sweep = now
                        while await self.relay_once(age_s=self.sweep_age_s) >= self.batch:
                            pass
                except Exception as exc:  # DB or NATS down: the rows stay, the sweep tries again.
                    _log.warning("outbox relay failed", error=str(exc))
                    await asyncio.sleep(1.0)
                now = time.monotonic()
                if now - last_gauge > 2.0:
                    last_gauge = now
                    await self._update_backlog()
                if _committed:
                    continue
                _wake.clear()
                try:
                    await asyncio.wait_for(_wake.wait(), timeout=self.sweep_s)
                except TimeoutError:
                    pass
        finally:
            _relay_running = False

    async def stop(self) -> None:
        """Stop after one last flush, so events committed before shutdown are not left behind."""
        self._stopping.set()
        _wake.set()
        try:
            await self.publish_committed()
            await self.relay_once()
        except Exception as exc:
            _log.warning("final outbox flush failed", error=str(exc))

    async def _publish(self, rows: list[Outgoing]) -> tuple[list[int], list[int], str]:
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
            futures.append(await self.js.publish_async(row.subject, row.payload, headers=headers))
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True),
                                         timeout=self.ack_timeout_s)
        done, failed, error = [], [], ""
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(row.id)
                error = repr(result)
            else:
                done.append(row.id)
        metrics.EVENTS_PUBLISHED.labels(metrics.SERVICE.name).inc(len(done))
        return done, failed, error

    async def publish_committed(self) -> int:
        """The direct path: rows committed in this process, published, then deleted in one statement. A row
        whose publish failed stays for the sweep."""
        rows = _committed[: self.batch]
        del _committed[: len(rows)]
        if not rows:
            return 0
        done, failed, error = await self._publish(rows)
        if done:
            async with self.engine.connect() as conn:
                await conn.run_script(_forget_published(done))
        if failed:
            _log.warning("outbox publish failed; the sweep retries", count=len(failed), error=error)
        return len(rows)

    async def relay_once(self, age_s: float = 0.0) -> int:
        """The sweep: claim rows at least `age_s` old, publish them, delete what JetStream acknowledged and
        back off the rest, in one transaction."""
        async with self.engine.begin() as conn:
            claimed = (await conn.execute(_CLAIM, {"n": self.batch, "age_s": age_s})).all()
            if not claimed:
                return 0
            rows = [Outgoing(r.id, r.subject, r.event_type, bytes(r.payload), r.request_id, r.created_ms)
                    for r in claimed]
            done, failed, error = await self._publish(rows)
            if done:
                await conn.execute(_DONE, {"ids": done})
            if failed:
                await conn.execute(_RETRY, {"ids": failed, "error": error[:500]})
                _log.warning("outbox publish failed", count=len(failed), error=error)
            return len(rows)

    async def _update_backlog(self) -> None:
        try:
            async with self.engine.connect() as conn:
                backlog = (await conn.execute(_BACKLOG)).scalar_one()
            metrics.OUTBOX_BACKLOG.labels(metrics.SERVICE.name).set(backlog)
        except Exception:
            pass
