"""Reconciliation of the ledger against the provider's daily bill, free of I/O.

Both sides are reduced to lines (type, reference, amount in fen) — the bill's yuan converted exactly — and
matched by (type, reference). Every difference is a break; the result depends only on the two sides, so
running it again gives the same result."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from services.runtime.errors import InvalidArgument
from services.runtime.money import yuan_to_fen


class BillLineType(StrEnum):
    PAYMENT = "PAYMENT"
    SHARE = "SHARE"
    REFUND = "REFUND"
    SPLIT_RETURN = "SPLIT_RETURN"
    TRANSFER = "TRANSFER"


class BreakKind(StrEnum):
    MISSING_IN_LEDGER = "MISSING_IN_LEDGER"
    MISSING_ON_BILL = "MISSING_ON_BILL"
    AMOUNT_MISMATCH = "AMOUNT_MISMATCH"
    DUPLICATE_ON_BILL = "DUPLICATE_ON_BILL"


@dataclass(frozen=True)
class BillLine:
    type: BillLineType
    reference: str
    amount_fen: int


@dataclass(frozen=True)
class ReconciliationBreak:
    kind: BreakKind
    type: BillLineType
    reference: str
    bill_fen: int
    ledger_fen: int


@dataclass(frozen=True)
class Reconciliation:
    day: str
    bill_lines: int
    ledger_lines: int
    matched: int
    breaks: tuple[ReconciliationBreak, ...]
    reconciled_at: datetime | None = None


def bill_line(index: int, type_: BillLineType, reference: str, amount_yuan: str) -> BillLine:
    """A bill line with its yuan amount converted to fen exactly (never rounded)."""
    try:
        return BillLine(type_, reference, yuan_to_fen(amount_yuan))
    except ValueError as exc:
        raise InvalidArgument.field(f"lines[{index}].amount_yuan", str(exc)) from exc


def reconcile(day: str, bill: list[BillLine], ledger: list[BillLine]) -> Reconciliation:
    billed: dict[tuple[BillLineType, str], int] = {}
    breaks: list[ReconciliationBreak] = []
    for line in bill:
        key = (line.type, line.reference)
        if key in billed:
            breaks.append(ReconciliationBreak(BreakKind.DUPLICATE_ON_BILL, line.type, line.reference,
                                              line.amount_fen, 0))
        billed[key] = billed.get(key, 0) + line.amount_fen
    booked: dict[tuple[BillLineType, str], int] = {}
    for line in ledger:
        key = (line.type, line.reference)
        booked[key] = booked.get(key, 0) + line.amount_fen
    matched = 0
    for key in sorted(billed.keys() | booked.keys()):
        b, l_ = billed.get(key), booked.get(key)
        if l_ is None:
            breaks.append(ReconciliationBreak(BreakKind.MISSING_IN_LEDGER, *key, b or 0, 0))
        elif b is None:
            breaks.append(ReconciliationBreak(BreakKind.MISSING_ON_BILL, *key, 0, l_))
        elif b != l_:
            breaks.append(ReconciliationBreak(BreakKind.AMOUNT_MISMATCH, *key, b, l_))
        else:
            matched += 1
    breaks.sort(key=lambda x: (x.type.value, x.reference, x.kind.value))
    return Reconciliation(day, len(bill), len(ledger), matched, tuple(breaks))
