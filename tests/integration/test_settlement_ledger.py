"""Commissions to the attributed guide, and verifying the whole ledger over gRPC and with
`omo ledger verify`."""

from __future__ import annotations

import grpc
import pytest
from omo.settlement.v1 import settlement_pb2 as pb
from typer.testing import CliRunner

from services.cli.main import app

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
