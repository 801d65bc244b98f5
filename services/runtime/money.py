"""Money is an integer number of fen (1/100 CNY) everywhere. These helpers keep every split exact."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

Fen = int


def yuan_to_fen(text: str) -> Fen:
    """'12.34' -> 1234, exactly. Rejects more than two decimals instead of rounding them away."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation as exc:
        raise ValueError(f"not an amount: {text!r}") from exc
    fen = value * 100
    if fen != fen.to_integral_value():
        raise ValueError(f"amount has more than two decimals: {text!r}")
    return int(fen)


def fen_to_yuan(fen: Fen) -> str:
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole}.{cents:02d}"


def allocate(total: Fen, weights: Sequence[int]) -> list[Fen]:
    """Split `total` in proportion to non-negative integer `weights`; the parts always add up to `total`.

    Largest-remainder method: each part is floored, then the leftover fen go one each to the parts with the
    largest remainders (ties to the earlier part), so the result is deterministic."""
    if total < 0:
        raise ValueError("total must not be negative")
    if not weights or any(w < 0 for w in weights):
        raise ValueError("weights must be non-empty and non-negative")
    weight_sum = sum(weights)
    if weight_sum == 0:
        raise ValueError("weights must not all be zero")
    parts = [total * w // weight_sum for w in weights]
    remainders = [total * w % weight_sum for w in weights]
    leftover = total - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[:leftover]:
        parts[i] += 1
    return parts


def apply_rate_bp(amount: Fen, rate_bp: int) -> Fen:
    """amount × rate in basis points (1/10000), floored: commissions never exceed their rate."""
    if amount < 0 or rate_bp < 0:
        raise ValueError("amount and rate must not be negative")
    return amount * rate_bp // 10_000
