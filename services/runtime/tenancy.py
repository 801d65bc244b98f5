"""Tenant checks: a caller identified as a dealer (or brand) may act only on its own figures."""

from __future__ import annotations

from . import reqctx
from .errors import PermissionDenied


def require_party(kind: str, ident: str) -> None:
    """Allow internal callers (no principal) and the party itself; anyone else is PERMISSION_DENIED."""
    who = reqctx.principal()
    if who is None:
        return
    if who.kind == kind and who.ident == ident:
        return
    raise PermissionDenied(
        f"{who.kind} {who.ident!r} may not act for {kind} {ident!r}",
        reason="OUTSIDE_TENANT",
        metadata={"principal": who.header(), "party": f"{kind}:{ident}"},
    )
