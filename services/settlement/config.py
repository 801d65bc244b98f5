"""Settlement's own knobs, from the environment (the shared runtime's Settings hold the generic ones)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .domain import SplitRates


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True)
class SettlementConfig:
    rates: SplitRates

    @classmethod
    def from_env(cls) -> SettlementConfig:
        try:
            rates = SplitRates(
                store_commission_bp=_int("OMO_SETTLEMENT_STORE_COMMISSION_BP", 0),
                guide_commission_bp=_int("OMO_SETTLEMENT_GUIDE_COMMISSION_BP", 100),
                platform_fee_bp=_int("OMO_SETTLEMENT_PLATFORM_FEE_BP", 0),
            )
        except ValueError as exc:
            raise SystemExit(str(exc)) from exc
        return cls(rates)
