"""Settlement's own knobs, from the environment (the shared runtime's Settings hold the generic ones)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .domain import SplitRates


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from exc


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError as exc:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from exc


def _caps(raw: str) -> dict[str, int]:
    """`dlr_a=10000,dlr_b=5000` -> {dealer id: cap in basis points}."""
    caps = {}
    for item in filter(None, (x.strip() for x in raw.split(","))):
        dealer, sep, bp = item.partition("=")
        if not sep or not bp.strip().isdigit() or int(bp) > 10_000:
            raise SystemExit(f"OMO_SETTLEMENT_DEALER_SHARING_CAPS: bad entry {item!r} (want dealer=bp, bp ≤ 10000)")
        caps[dealer.strip()] = int(bp)
    return caps


@dataclass(frozen=True)
class SettlementConfig:
    rates: SplitRates
    # The share of a payment that may leave a dealer's merchant account through profit sharing (WeChat's
    # default is 30%); per-dealer overrides for dealers whose provider contract allows more.
    default_cap_bp: int = 3_000
    dealer_caps: dict[str, int] = field(default_factory=dict)
    # How long after the payment the sharing order is made.
    sharing_delay_s: float = 0.0
    # How often a split whose receivers are still PENDING is queried again, and a failed step retried.
    sharing_poll_s: float = 1.0
    sharing_retry_s: float = 5.0
    # How often what dealers owe is settled by transfers.
    transfer_interval_s: float = 60.0

    def cap_bp(self, dealer_id: str) -> int:
        return self.dealer_caps.get(dealer_id, self.default_cap_bp)

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
        cap = _int("OMO_SETTLEMENT_SHARING_CAP_BP", 3_000)
        if not 0 <= cap <= 10_000:
            raise SystemExit("OMO_SETTLEMENT_SHARING_CAP_BP must be within 0..10000")
        return cls(rates, cap, _caps(os.environ.get("OMO_SETTLEMENT_DEALER_SHARING_CAPS", "")),
                   _float("OMO_SETTLEMENT_SHARING_DELAY_S", 0.0), _float("OMO_SETTLEMENT_SHARING_POLL_S", 1.0),
                   _float("OMO_SETTLEMENT_SHARING_RETRY_S", 5.0), _float("OMO_SETTLEMENT_TRANSFER_INTERVAL_S", 60.0))
