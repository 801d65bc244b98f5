"""A split as the API and the OrderSplitSettled event carry it: every leg, journal, debt and figure."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from omo.settlement.v1 import settlement_pb2 as pb

from services.settlement import domain, messages
from services.settlement.domain import LegState, PaidLine, PaidOrder, SplitRates, SplitRole, SplitState


def completed_split() -> domain.Split:
    order = PaidOrder(order_id="ord_1", brand_id="brd_1", dealer_id="dlr_1", store_id="str_1", payable_fen=10_000,
                      lines=(PaidLine(1, 8_000),), brand_funded_discount_fen=0, provider_txn_id="wx_1",
                      attributed_guide_id="gd_1")
    split = domain.settle(order, SplitRates(guide_commission_bp=100), cap_bp=3_000).split
    split = domain.with_leg(split, SplitRole.COST_TO_BRAND, state=LegState.SUCCESS)
    return dataclasses.replace(split, state=SplitState.COMPLETED, settled_at=datetime(2026, 11, 30, 8, tzinfo=UTC))


def test_a_split_message_carries_every_leg_journal_and_debt():
    split = completed_split()
    message = messages.split_pb(split)
    brand = pb.Party(type=pb.PARTY_TYPE_BRAND, id="brd_1")
    guide = pb.Party(type=pb.PARTY_TYPE_GUIDE, id="gd_1")
    dealer = pb.Party(type=pb.PARTY_TYPE_DEALER, id="dlr_1")
    assert message == pb.OrderSplit(
        order_id="ord_1", paid_fen=10_000, cost_fen=8_000, brand_funded_discount_fen=0, cap_fen=3_000,
        state=pb.SPLIT_STATE_COMPLETED, settled_at=messages.timestamps.to_proto(split.settled_at),
        legs=[pb.SplitLeg(receiver=brand, role=pb.SPLIT_ROLE_COST_TO_BRAND, amount_fen=8_000, shared_fen=3_000,
                          deferred_fen=5_000, state=pb.LEG_STATE_SUCCESS),
              pb.SplitLeg(receiver=guide, role=pb.SPLIT_ROLE_GUIDE_COMMISSION, amount_fen=100, shared_fen=0,
                          deferred_fen=100, state=pb.LEG_STATE_SUCCESS),
              pb.SplitLeg(receiver=dealer, role=pb.SPLIT_ROLE_PROFIT_TO_DEALER, amount_fen=1_900,
                          state=pb.LEG_STATE_SUCCESS)],
        journal_ids=[split.payment_journal_id, domain.share_journal_id("ord_1", SplitRole.COST_TO_BRAND),
                     split.split_journal_id],
        receivables=[pb.Receivable(creditor=brand, debtor=dealer, amount_fen=5_000,
                                   reason=pb.RECEIVABLE_REASON_OVER_SHARING_CAP),
                     pb.Receivable(creditor=guide, debtor=dealer, amount_fen=100,
                                   reason=pb.RECEIVABLE_REASON_OVER_SHARING_CAP)])
    event = messages.split_settled(split)
    assert (event.order_id, event.brand_id, event.dealer_id, event.store_id) == ("ord_1", "brd_1", "dlr_1", "str_1")
    assert event.split == message


def test_a_split_not_yet_settled_has_no_settled_time():
    split = dataclasses.replace(completed_split(), settled_at=None, state=SplitState.SCHEDULED)
    assert not messages.split_pb(split).HasField("settled_at")
