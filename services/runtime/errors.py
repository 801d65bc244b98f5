"""Domain errors. Pure Python (no gRPC here) so domain code can raise them; the server's error interceptor
maps each to its gRPC status with google.rpc details."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class DomainError(Exception):
    code = "UNKNOWN"

    def __init__(self, message: str, *, reason: str = "", metadata: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(DomainError):
    """Bad input. Carries field violations: (field path, description)."""

    code = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[tuple[str, str]], message: str | None = None):
        self.violations = list(violations)
        text = message or "; ".join(f"{field}: {desc}" for field, desc in self.violations)
        super().__init__(text, reason="INVALID_ARGUMENT")

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([(field, description)])


class NotFound(DomainError):
    code = "NOT_FOUND"

    def __init__(self, kind: str, ident: str):
        super().__init__(f"{kind} {ident!r} not found", reason="NOT_FOUND", metadata={"kind": kind, "id": ident})
        self.kind = kind
        self.ident = ident


class FailedPrecondition(DomainError):
    """An illegal state change: the request is well formed but the system is not in a state to do it."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(DomainError):
    """Not enough of something (stock, prize units) to satisfy the request."""

    code = "RESOURCE_EXHAUSTED"


class PermissionDenied(DomainError):
    """The caller acts outside its tenant."""

    code = "PERMISSION_DENIED"


class AlreadyExists(DomainError):
    code = "ALREADY_EXISTS"


class Unavailable(DomainError):
    """A dependency could not be reached; safe to retry with the same idempotency key."""

    code = "UNAVAILABLE"
