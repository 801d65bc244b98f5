"""Domain <-> protobuf for settlement's RPC responses and the events it publishes."""

from __future__ import annotations

from omo.settlement.v1 import events_pb2
from omo.settlement.v1 import settlement_pb2 as pb

from services.runtime import timestamps

from . import domain, reconciliation

PARTY_TYPE = {t: pb.PartyType.Value(f"PARTY_TYPE_{t.value}") for t in domain.PartyType}
PARTY_TYPE_OF = {v: k for k, v in PARTY_TYPE.items()}
PURPOSE = {p: pb.AccountPurpose.Value(f"ACCOUNT_PURPOSE_{p.value}") for p in domain.Purpose}
ROLE = {r: pb.SplitRole.Value(f"SPLIT_ROLE_{r.value}") for r in domain.SplitRole}
BREAK_KIND = {k: pb.LedgerBreakKind.Value(f"LEDGER_BREAK_KIND_{k.value}") for k in domain.BreakKind}
LEG_STATE = {s: pb.LegState.Value(f"LEG_STATE_{s.value}") for s in domain.LegState}
SPLIT_STATE = {s: pb.SplitState.Value(f"SPLIT_STATE_{s.value}") for s in domain.SplitState}
JOURNAL_KIND = {k: pb.JournalKind.Value(f"JOURNAL_KIND_{k.value}") for k in domain.JournalKind}
BILL_TYPE = {t: pb.BillLineType.Value(f"BILL_LINE_TYPE_{t.value}") for t in reconciliation.BillLineType}
BILL_TYPE_OF = {v: k for k, v in BILL_TYPE.items()}
RECON_BREAK = {k: pb.ReconciliationBreakKind.Value(f"RECONCILIATION_BREAK_KIND_{k.value}")
               for k in reconciliation.BreakKind}
REASON = {r: pb.ReceivableReason.Value(f"RECEIVABLE_REASON_{r.value}") for r in domain.ReceivableReason}


def party_pb(party: domain.Party) -> pb.Party:
    return pb.Party(type=PARTY_TYPE[party.type], id=party.id)


def party_of(message: pb.Party) -> domain.Party:
    return domain.Party(PARTY_TYPE_OF[message.type], message.id)


def split_pb(split: domain.Split) -> pb.OrderSplit:
    message = pb.OrderSplit()
    _fill_split(message, split)
    return message


def _fill_split(message: pb.OrderSplit, split: domain.Split) -> None:
    # Fields are set in place: nested messages passed as constructor arguments are built and then copied, which
    # made this twice as slow, and it runs for every split the sharing job completes.
    message.order_id = split.order_id
    message.paid_fen = split.paid_fen
    for leg in split.legs:
        out = message.legs.add()
        _set_party(out.receiver, leg.receiver)
        out.role = ROLE[leg.role]
        out.amount_fen = leg.amount_fen
        out.shared_fen = leg.shared_fen
        out.deferred_fen = leg.deferred_fen
        out.state = LEG_STATE[leg_state(split, leg)]
        out.close_reason = leg.close_reason
    message.journal_ids.extend(split.journal_ids)
    if split.settled_at is not None:
        message.settled_at.CopyFrom(timestamps.to_proto(split.settled_at))
    message.cost_fen = split.cost_fen
    message.brand_funded_discount_fen = split.brand_funded_discount_fen
    for r in split.owed:
        out = message.receivables.add()
        _set_party(out.creditor, r.creditor)
        _set_party(out.debtor, r.debtor)
        out.amount_fen = r.amount_fen
        out.reason = REASON[r.reason]
    message.state = SPLIT_STATE[split.state]
    message.cap_fen = split.cap_fen


def _set_party(message: pb.Party, party: domain.Party) -> None:
    message.type = PARTY_TYPE[party.type]
    message.id = party.id


def leg_state(split: domain.Split, leg: domain.SplitLeg) -> domain.LegState:
    """The dealer's leg is received when the rest is unfrozen, i.e. when the split completes."""
    if leg.role is domain.SplitRole.PROFIT_TO_DEALER:
        return domain.LegState.SUCCESS if split.state is domain.SplitState.COMPLETED else domain.LegState.PLANNED
    return leg.state


def split_settled(split: domain.Split) -> events_pb2.OrderSplitSettled:
    event = events_pb2.OrderSplitSettled(order_id=split.order_id, brand_id=split.brand_id,
                                         dealer_id=split.dealer_id, store_id=split.store_id)
    _fill_split(event.split, split)
    return event


def ledger_check_pb(check: domain.LedgerCheck) -> pb.VerifyLedgerResponse:
    return pb.VerifyLedgerResponse(
        ok=check.ok, journals_checked=check.journals, postings_checked=check.postings,
        accounts_checked=check.accounts, splits_checked=check.splits,
        breaks=[pb.LedgerBreak(kind=BREAK_KIND[b.kind], subject=b.subject, expected_fen=b.expected_fen,
                               actual_fen=b.actual_fen) for b in check.breaks],
    )


def statement_pb(s: domain.Statement) -> pb.Statement:
    return pb.Statement(party=party_pb(s.party), day=s.day, orders=s.orders, gross_fen=s.gross_fen,
                        brand_coupon_fen=s.brand_coupon_fen, cost_to_brand_fen=s.cost_to_brand_fen,
                        commissions_fen=s.commissions_fen, refunds_fen=s.refunds_fen, net_fen=s.net_fen,
                        frozen_fen=s.frozen_fen, available_fen=s.available_fen)


def journal_entry_pb(row) -> pb.JournalEntry:  # type: ignore[no-untyped-def]
    return pb.JournalEntry(journal_id=row.journal_id, kind=JOURNAL_KIND[domain.JournalKind(row.kind)],
                           business_key=row.business_key, order_id=row.order_id,
                           purpose=PURPOSE[domain.Purpose(row.purpose)], amount_fen=row.amount_fen,
                           posted_at=timestamps.to_proto(row.created_at))


def reconciliation_pb(rec: reconciliation.Reconciliation) -> pb.Reconciliation:
    return pb.Reconciliation(
        day=rec.day, bill_lines=rec.bill_lines, ledger_lines=rec.ledger_lines, matched=rec.matched,
        breaks=[pb.ReconciliationBreak(kind=RECON_BREAK[b.kind], type=BILL_TYPE[b.type], reference=b.reference,
                                       bill_fen=b.bill_fen, ledger_fen=b.ledger_fen) for b in rec.breaks],
        reconciled_at=timestamps.to_proto(rec.reconciled_at))
