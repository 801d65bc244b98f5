"""Identifiers: a short type prefix plus a random, time-ordered UUID (v7 layout) so primary keys insert at
the right edge of their B-tree."""

from __future__ import annotations

import os
import time
import uuid


def _uuid7_int() -> int:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return value


def uuid7() -> uuid.UUID:
    return uuid.UUID(int=_uuid7_int())


def new_id(prefix: str) -> str:
    return f"{prefix}_{_uuid7_int():032x}"


def derived_id(prefix: str, *parts: str) -> str:
    """A deterministic id from other identifiers: a retried step derives the same id again."""
    return f"{prefix}_{uuid.uuid5(uuid.NAMESPACE_URL, '/'.join(parts)).hex}"
