"""Idempotency keys for mutating RPCs: the response is stored in the same transaction as the effect, so a
retry gets the stored response back and never causes a second effect."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import text

from .db import Connection, Database
from .errors import InvalidArgument

R = TypeVar("R", bound=Message)

_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:scope || '/' || :key, 0))")
_GET = text("SELECT request_hash, response FROM idempotency WHERE scope = :scope AND key = :key")
_PUT = text(
    "INSERT INTO idempotency (scope, key, request_hash, response) VALUES (:scope, :key, :hash, :response)"
)


def request_hash(request: Message) -> bytes:
    return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


async def run_idempotent(
    engine: Database,
    scope: str,
    key: str,
    request: Message,
    response_type: type[R],
    effect: Callable[[Connection], Awaitable[R]],
) -> R:
    """Run `effect` once per (scope, key). Concurrent calls with one key are serialized by an advisory lock;
    the same key with a different request is INVALID_ARGUMENT on `idempotency_key`."""
    digest = request_hash(request)
    async with engine.begin() as conn:
        await conn.execute(_LOCK, {"scope": scope, "key": key})
        row = (await conn.execute(_GET, {"scope": scope, "key": key})).first()
        if row is not None:
            if bytes(row.request_hash) != digest:
                raise InvalidArgument.field("idempotency_key", "was already used for a different request")
            return response_type.FromString(bytes(row.response))
        response = await effect(conn)
        await conn.execute(
            _PUT, {"scope": scope, "key": key, "hash": digest, "response": response.SerializeToString()}
        )
        return response
