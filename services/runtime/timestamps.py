"""datetime <-> google.protobuf.Timestamp."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_proto(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    # Exact integer arithmetic on the timedelta (Timestamp.FromDatetime goes through a time tuple, several
    # times slower, and this runs for every timestamp of every response).
    delta = value - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


def now() -> datetime:
    return datetime.now(UTC)
