"""Reconciling against the provider's bill: yuan converted exactly, every difference listed, deterministic."""

from __future__ import annotations

import pytest

from services.runtime.errors import InvalidArgument
from services.settlement.reconciliation import BillLine, BillLineType, BreakKind, bill_line, reconcile

PAY, SHARE = BillLineType.PAYMENT, BillLineType.SHARE


@pytest.mark.parametrize(("yuan", "fen"), [("1299.00", 129_900), ("0.1", 10), ("0.07", 7), ("12", 1_200),
                                           ("92233720368547758.07", 9_223_372_036_854_775_807)])
def test_yuan_on_the_bill_become_fen_exactly(yuan, fen):
    assert bill_line(0, PAY, "wx1", yuan).amount_fen == fen


def test_a_third_decimal_is_refused_not_rounded():
    with pytest.raises(InvalidArgument) as err:
        bill_line(3, PAY, "wx1", "0.015")
    assert [f for f, _ in err.value.violations] == ["lines[3].amount_yuan"]


def test_every_difference_is_a_break_and_matches_are_counted():
    bill = [BillLine(PAY, "wx1", 100), BillLine(PAY, "wx2", 200), BillLine(SHARE, "s1", 50), BillLine(PAY, "wx9", 5),
            BillLine(SHARE, "s1", 50)]
    ledger = [BillLine(PAY, "wx1", 100), BillLine(PAY, "wx2", 201), BillLine(SHARE, "s1", 100),
              BillLine(SHARE, "s2", 30)]
    rec = reconcile("2026-11-25", bill, ledger)
    assert (rec.bill_lines, rec.ledger_lines, rec.matched) == (5, 4, 2)
    assert [(b.kind, b.type, b.reference, b.bill_fen, b.ledger_fen) for b in rec.breaks] == [
        (BreakKind.AMOUNT_MISMATCH, PAY, "wx2", 200, 201),
        (BreakKind.MISSING_IN_LEDGER, PAY, "wx9", 5, 0),
        (BreakKind.DUPLICATE_ON_BILL, SHARE, "s1", 50, 0),
        (BreakKind.MISSING_ON_BILL, SHARE, "s2", 0, 30),
    ]
    assert reconcile("2026-11-25", list(reversed(bill)), list(reversed(ledger))) == rec
