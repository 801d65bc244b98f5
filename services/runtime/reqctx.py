"""Per-request context carried in contextvars: request id, the caller's deadline and principal. The server
interceptor sets them; outbound gRPC calls and the outbox read them."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)
_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)

REQUEST_ID_HEADER = "x-request-id"
PRINCIPAL_HEADER = "x-omo-principal"


@dataclass(frozen=True)
class Principal:
    """Who is calling, as asserted by the edge (API gateway) in `x-omo-principal: <kind>:<id>`.

    kinds: `brand`, `dealer`, `store`, `guide`. No header means a trusted internal caller (another service
    or an operator), which may act for any tenant."""

    kind: str
    ident: str

    @classmethod
    def parse(cls, value: str) -> Principal | None:
        kind, sep, ident = value.partition(":")
        if not sep or not kind or not ident:
            return None
        return cls(kind.strip().lower(), ident.strip())

    def header(self) -> str:
        return f"{self.kind}:{self.ident}"


def request_id() -> str:
    return _request_id.get()


def principal() -> Principal | None:
    return _principal.get()


def remaining_s() -> float | None:
    """Seconds left before the current request's deadline, or None outside a request with a deadline."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def bind(rid: str, time_remaining: float | None, who: Principal | None) -> None:
    _request_id.set(rid)
    _deadline.set(None if time_remaining is None else time.monotonic() + time_remaining)
    _principal.set(who)
