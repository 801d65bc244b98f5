"""Timestamps cross the wire exactly: the fast conversion agrees with protobuf's own, in any time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from services.runtime.timestamps import to_proto


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
       st.integers(min_value=-12 * 60, max_value=14 * 60))
def test_to_proto_agrees_with_protobuf(naive, offset_min):
    value = naive.replace(tzinfo=timezone(timedelta(minutes=offset_min)))
    expected = Timestamp()
    expected.FromDatetime(value.astimezone(UTC))
    assert to_proto(value) == expected
    assert to_proto(value).ToDatetime(tzinfo=UTC) == value


def test_none_stays_none():
    assert to_proto(None) is None
