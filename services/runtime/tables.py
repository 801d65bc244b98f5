"""DDL for the platform tables every service has in its own schema: the transactional outbox, the consumer
inbox and the idempotency record. Each service's first migration calls `create_platform_tables(op)`."""

from __future__ import annotations

from typing import Any


def create_platform_tables(op: Any) -> None:
    op.execute(
        """
        CREATE TABLE outbox (
            id              bigserial PRIMARY KEY,
            subject         text        NOT NULL,
            event_type      text        NOT NULL,
            payload         bytea       NOT NULL,
            request_id      text        NOT NULL DEFAULT '',
            created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            attempts        integer     NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            last_error      text
        )
        """
    )
    op.execute("CREATE INDEX outbox_due ON outbox (next_attempt_at, id)")
    op.execute(
        """
        CREATE TABLE inbox (
            consumer     text        NOT NULL,
            message_id   text        NOT NULL,
            subject      text        NOT NULL,
            processed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (consumer, message_id)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE idempotency (
            scope        text        NOT NULL,
            key          text        NOT NULL,
            request_hash bytea       NOT NULL,
            response     bytea       NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (scope, key)
        )
        """
    )


def drop_platform_tables(op: Any) -> None:
    for table in ("idempotency", "inbox", "outbox"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
