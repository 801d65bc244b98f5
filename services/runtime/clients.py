"""Outbound gRPC: one long-lived channel per peer, and a client interceptor that gives every call a deadline
derived from the caller's remaining time and forwards request id and principal."""

from __future__ import annotations

import grpc

from . import reqctx
from .errors import Unavailable

_MARGIN_S = 0.02  # leave the caller time to turn a downstream failure into its own answer


class DeadlineInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, default_s: float):
        self.default_s = default_s

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        timeout = client_call_details.timeout if client_call_details.timeout is not None else self.default_s
        remaining = reqctx.remaining_s()
        if remaining is not None:
            if remaining - _MARGIN_S <= 0:
                raise Unavailable("deadline exhausted before calling a dependency", reason="DEADLINE")
            timeout = min(timeout, remaining - _MARGIN_S)
        metadata = list(client_call_details.metadata or [])
        if reqctx.request_id():
            metadata.append((reqctx.REQUEST_ID_HEADER, reqctx.request_id()))
        who = reqctx.principal()
        if who is not None:
            metadata.append((reqctx.PRINCIPAL_HEADER, who.header()))
        details = grpc.aio.ClientCallDetails(
            method=client_call_details.method,
            timeout=timeout,
            metadata=grpc.aio.Metadata(*metadata),
            credentials=client_call_details.credentials,
            wait_for_ready=client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


def channel(target: str, default_deadline_s: float = 5.0) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target,
        interceptors=[DeadlineInterceptor(default_deadline_s)],
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _RETRY_CONFIG),
        ],
    )


# Transparent retries only for UNAVAILABLE: every mutating RPC here is idempotent by key, so a retry is safe.
_RETRY_CONFIG = (
    '{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s",'
    ' "maxBackoff": "0.5s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}'
)

