"""Commissions to the attributed guide, and verifying the whole ledger over gRPC and with
`omo ledger verify`."""

from __future__ import annotations

import grpc
import pytest
from omo.settlement.v1 import settlement_pb2 as pb
from typer.testing import CliRunner

from services.cli.main import app

from ..support import bad_request_fields
from .test_settlement import balances, db, legs, paid_event, publish, uid, wait_split

# The service's default rates (services/settlement/config.py): guide 1%; no store commission (an attributed
# store is the dealer's own by default) and no platform fee.
GUIDE_BP = 100


def test_an_attributed_guide_earns_a_floored_commission_on_the_net(stack, clients):
    brand, dealer, store, guide = uid("brd"), uid("dlr"), uid("str"), uid("gd")
    # Paid 2 × 12,345 − 1,000 brand coupon = 23,690; net 24,690 → guide ⌊246.9⌋ = 246.
    event = paid_event(brand, dealer, [(2, 12_345, 8_000)], brand_coupon=1_000, store_id=store, guide_id=guide)
    publish(stack, event)
    split = wait_split(clients, event.order.order_id)

    assert legs(split) == {
        pb.SPLIT_ROLE_COST_TO_BRAND: (pb.PARTY_TYPE_BRAND, brand, 15_000),
        pb.SPLIT_ROLE_GUIDE_COMMISSION: (pb.PARTY_TYPE_GUIDE, guide, 246),
        pb.SPLIT_ROLE_PROFIT_TO_DEALER: (pb.PARTY_TYPE_DEALER, dealer, 23_690 - 15_000 - 246),
    }
    assert balances(clients, pb.PARTY_TYPE_GUIDE, guide, [("x-omo-principal", f"guide:{guide}")]) == {
        pb.ACCOUNT_PURPOSE_COMMISSION: 246}
    with pytest.raises(grpc.RpcError) as err:
        balances(clients, pb.PARTY_TYPE_GUIDE, guide, [("x-omo-principal", f"dealer:{dealer}")])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_commission_beyond_a_zero_margin_becomes_a_receivable_from_the_dealer(stack, clients):
    brand, dealer, guide = uid("brd"), uid("dlr"), uid("gd")
    event = paid_event(brand, dealer, [(1, 10_000, 10_000)], guide_id=guide)  # margin 0
    publish(stack, event)
    split = wait_split(clients, event.order.order_id)

    assert legs(split)[pb.SPLIT_ROLE_GUIDE_COMMISSION][2] == legs(split)[pb.SPLIT_ROLE_PROFIT_TO_DEALER][2] == 0
    [owed] = split.receivables
    assert (owed.creditor.type, owed.creditor.id, owed.debtor.id, owed.amount_fen, owed.reason) == (
        pb.PARTY_TYPE_GUIDE, guide, dealer, 10_000 * GUIDE_BP // 10_000, pb.RECEIVABLE_REASON_COMMISSION_ABOVE_MARGIN)
    assert balances(clients, pb.PARTY_TYPE_DEALER, dealer)[pb.ACCOUNT_PURPOSE_PAYABLE] == -100
    assert balances(clients, pb.PARTY_TYPE_GUIDE, guide) == {pb.ACCOUNT_PURPOSE_RECEIVABLE: 100}


def test_the_whole_ledger_verifies_and_a_drifted_balance_is_reported(stack, clients, monkeypatch):
    dealer = uid("dlr")
    event = paid_event(uid("brd"), dealer, [(3, 2_000, 1_100)], store_id=uid("str"))
    publish(stack, event)
    wait_split(clients, event.order.order_id)
    for svc, addr in (("settlement", stack.address("settlement")),):
        monkeypatch.setenv(f"OMO_{svc.upper()}_ADDR", addr)

    reply = clients.settlement.VerifyLedger(pb.VerifyLedgerRequest())
    assert reply.ok and not reply.breaks
    assert reply.journals_checked >= 2 and reply.postings_checked >= 5 and reply.splits_checked >= 1
    result = CliRunner().invoke(app, ["ledger", "verify"])
    assert result.exit_code == 0, result.output
    assert "ledger OK" in result.output

    with pytest.raises(grpc.RpcError) as err:
        clients.settlement.VerifyLedger(pb.VerifyLedgerRequest(), metadata=[("x-omo-principal", f"dealer:{dealer}")])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # Someone edits a cached balance behind the ledger's back: the check names the account and both figures.
    drift = "UPDATE accounts SET balance_fen = balance_fen + $2 WHERE party_id = $1 AND purpose = 'MERCHANT_AVAILABLE'"
    db(stack, drift, dealer, 7)
    try:
        reply = clients.settlement.VerifyLedger(pb.VerifyLedgerRequest())
        profit = 6_000 - 3_300
        assert not reply.ok
        assert [(b.kind, b.subject, b.expected_fen, b.actual_fen) for b in reply.breaks] == [
            (pb.LEDGER_BREAK_KIND_BALANCE_DRIFT, f"DEALER:{dealer}/MERCHANT_AVAILABLE", profit, profit + 7),
            (pb.LEDGER_BREAK_KIND_LEDGER_NOT_ZERO, "", 0, 7)]
        result = CliRunner().invoke(app, ["ledger", "verify"])
        assert result.exit_code == 1
        assert "BALANCE_DRIFT" in result.output and dealer in result.output
    finally:
        db(stack, drift, dealer, -7)
    assert clients.settlement.VerifyLedger(pb.VerifyLedgerRequest()).ok


def test_a_dealer_at_the_default_cap_shares_30_percent_and_owes_the_rest(stack, clients):
    from ..conftest import CAPPED_DEALER

    brand = uid("brd")
    event = paid_event(brand, CAPPED_DEALER, [(2, 129_900, 100_000)], brand_coupon=10_000)  # paid 249,800
    publish(stack, event)
    split = wait_split(clients, event.order.order_id)

    assert split.cap_fen == 249_800 * 3_000 // 10_000 == 74_940
    cost = split.legs[0]
    assert (cost.role, cost.amount_fen, cost.shared_fen, cost.deferred_fen, cost.state) == (
        pb.SPLIT_ROLE_COST_TO_BRAND, 190_000, 74_940, 115_060, pb.LEG_STATE_SUCCESS)
    assert split.legs[1].state == pb.LEG_STATE_SUCCESS  # the dealer's rest is unfrozen
    [owed] = split.receivables
    assert (owed.creditor.id, owed.debtor.id, owed.amount_fen, owed.reason) == (
        brand, CAPPED_DEALER, 115_060, pb.RECEIVABLE_REASON_OVER_SHARING_CAP)
    assert balances(clients, pb.PARTY_TYPE_BRAND, brand) == {
        pb.ACCOUNT_PURPOSE_COST_SHARE: 74_940, pb.ACCOUNT_PURPOSE_RECEIVABLE: 115_060}


def test_a_party_journal_pages_through_every_posting_and_the_day_statement_adds_up(stack, clients):
    from datetime import UTC, datetime, timedelta, timezone

    brand, dealer, guide = uid("brd"), uid("dlr"), uid("gd")
    events = [paid_event(brand, dealer, [(1, 10_000 + i, 6_000)], guide_id=guide) for i in range(3)]
    for e in events:
        publish(stack, e)
    splits = [wait_split(clients, e.order.order_id) for e in events]
    own = [("x-omo-principal", f"dealer:{dealer}")]

    entries, token, pages = [], "", 0
    while True:
        page = clients.settlement.ListJournal(pb.ListJournalRequest(
            party=pb.Party(type=pb.PARTY_TYPE_DEALER, id=dealer), page_size=4, page_token=token), metadata=own)
        entries += page.entries
        pages += 1
        token = page.next_page_token
        if not token:
            break
    # Per order: paid into frozen, the brand's and the guide's shares out of it, the rest unfrozen.
    assert (len(entries), pages) == (15, 4)
    assert len({(e.journal_id, e.purpose) for e in entries}) == 15
    assert sorted(e.kind for e in entries) == sorted(
        [pb.JOURNAL_KIND_ORDER_PAYMENT] * 3 + [pb.JOURNAL_KIND_SHARE] * 6 + [pb.JOURNAL_KIND_ORDER_SPLIT] * 6)
    totals: dict[int, int] = {}
    for e in entries:
        totals[e.purpose] = totals.get(e.purpose, 0) + e.amount_fen
    assert totals == balances(clients, pb.PARTY_TYPE_DEALER, dealer)
    later = datetime.now(UTC) + timedelta(hours=1)
    from google.protobuf.timestamp_pb2 import Timestamp

    empty = clients.settlement.ListJournal(pb.ListJournalRequest(
        party=pb.Party(type=pb.PARTY_TYPE_DEALER, id=dealer), from_time=Timestamp(seconds=int(later.timestamp()))))
    assert list(empty.entries) == [] and empty.next_page_token == ""
    for bad, code in ((pb.ListJournalRequest(party=pb.Party(type=pb.PARTY_TYPE_DEALER, id=dealer), page_token="x!"),
                       grpc.StatusCode.INVALID_ARGUMENT),):
        with pytest.raises(grpc.RpcError) as err:
            clients.settlement.ListJournal(bad)
        assert err.value.code() == code
        assert bad_request_fields(err.value) == ["page_token"]
    with pytest.raises(grpc.RpcError) as err:
        clients.settlement.ListJournal(pb.ListJournalRequest(party=pb.Party(type=pb.PARTY_TYPE_DEALER, id=dealer)),
                                       metadata=[("x-omo-principal", f"dealer:{uid('dlr')}")])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    day = datetime.fromtimestamp(splits[0].settled_at.seconds, timezone(timedelta(hours=8))).date().isoformat()
    st = clients.settlement.GetStatement(pb.GetStatementRequest(
        party=pb.Party(type=pb.PARTY_TYPE_DEALER, id=dealer), day=day), metadata=own).statement
    gross = sum(s.paid_fen for s in splits)
    commissions = sum((10_000 + i) * GUIDE_BP // 10_000 for i in range(3))
    assert (st.orders, st.gross_fen, st.brand_coupon_fen, st.cost_to_brand_fen, st.commissions_fen,
            st.refunds_fen) == (3, gross, 0, 18_000, commissions, 0)
    assert (st.net_fen, st.frozen_fen, st.available_fen) == (gross - 18_000 - commissions, 0,
                                                             gross - 18_000 - commissions)
    brand_st = clients.settlement.GetStatement(pb.GetStatementRequest(
        party=pb.Party(type=pb.PARTY_TYPE_BRAND, id=brand), day=day)).statement
    assert (brand_st.orders, brand_st.net_fen, brand_st.available_fen) == (3, 18_000, 18_000)
    for request, field in ((pb.GetStatementRequest(party=pb.Party(type=pb.PARTY_TYPE_GUIDE, id=guide), day=day),
                            "party.type"),
                           (pb.GetStatementRequest(party=pb.Party(type=pb.PARTY_TYPE_DEALER, id=dealer),
                                                   day="2026-13-45"), "day"),
                           (pb.GetStatementRequest(party=pb.Party(type=pb.PARTY_TYPE_DEALER, id=dealer),
                                                   day="yesterday"), "day")):
        with pytest.raises(grpc.RpcError) as err:
            clients.settlement.GetStatement(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_fields(err.value) == [field]


def test_reconciling_with_the_provider_bill_lists_every_break_and_rerunning_changes_nothing(stack, clients):
    from datetime import timedelta, timezone

    from services.settlement.domain import request_no

    brand, dealer = uid("brd"), uid("dlr")
    event = paid_event(brand, dealer, [(1, 12_999, 8_000)])
    publish(stack, event)
    split = wait_split(clients, event.order.order_id)
    day = __import__("datetime").datetime.fromtimestamp(split.settled_at.seconds,
                                                        timezone(timedelta(hours=8))).date().isoformat()
    txn, share = event.provider_txn_id, f"{request_no(event.order.order_id, 'share')}/BRAND:{brand}"
    bill = [pb.BillLine(type=pb.BILL_LINE_TYPE_PAYMENT, reference=txn, amount_yuan="129.99"),
            pb.BillLine(type=pb.BILL_LINE_TYPE_SHARE, reference=share, amount_yuan="80.01"),
            pb.BillLine(type=pb.BILL_LINE_TYPE_REFUND, reference=f"rf-{dealer}", amount_yuan="1.5")]
    request = pb.ReconcileProviderBillRequest(idempotency_key=uid("k"), day=day, lines=bill)
    first = clients.settlement.ReconcileProviderBill(request).reconciliation

    ours = [(b.kind, b.type, b.reference, b.bill_fen, b.ledger_fen) for b in first.breaks
            if b.reference in (txn, share, f"rf-{dealer}")]
    assert ours == [
        (pb.RECONCILIATION_BREAK_KIND_MISSING_IN_LEDGER, pb.BILL_LINE_TYPE_REFUND, f"rf-{dealer}", 150, 0),
        (pb.RECONCILIATION_BREAK_KIND_AMOUNT_MISMATCH, pb.BILL_LINE_TYPE_SHARE, share, 8_001, 8_000),
    ]
    assert first.bill_lines == 3 and first.matched >= 1  # the payment matched to the fen
    # The rest of the day's ledger (other tests' orders) is not on this bill: each is a break of its own.
    assert len(first.breaks) == 2 + (first.ledger_lines - 2)

    again = clients.settlement.ReconcileProviderBill(
        pb.ReconcileProviderBillRequest(idempotency_key=uid("k"), day=day, lines=bill)).reconciliation
    assert again == first  # same breaks, same reconciled_at: nothing stored twice
    assert clients.settlement.GetReconciliation(pb.GetReconciliationRequest(day=day)).reconciliation == first
    assert clients.settlement.ReconcileProviderBill(request).reconciliation == first  # a retried call

    with pytest.raises(grpc.RpcError) as err:
        clients.settlement.ReconcileProviderBill(pb.ReconcileProviderBillRequest(
            idempotency_key=uid("k"), day=day,
            lines=[pb.BillLine(type=pb.BILL_LINE_TYPE_PAYMENT, reference=txn, amount_yuan="129.999")]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == ["lines[0].amount_yuan"]
    with pytest.raises(grpc.RpcError) as err:
        clients.settlement.GetReconciliation(pb.GetReconciliationRequest(day="1999-01-01"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        clients.settlement.GetReconciliation(pb.GetReconciliationRequest(day=day),
                                             metadata=[("x-omo-principal", f"dealer:{dealer}")])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
