"""A refund recorded by orders reaches the ledger: the dealer's merchant account pays the consumer back exactly
what each refund says, once per provider refund id, and the receivers are asked for their share back."""

from __future__ import annotations

from omo.orders.v1 import orders_pb2 as pb
from omo.settlement.v1 import settlement_pb2 as stl

from .test_flow import eventually
from .test_order_lifecycle import dispatched, pay, refund
from .test_orders import place_request
from .test_settlement import wait_split


def _journal(clients, party: stl.Party, order_id: str) -> list[stl.JournalEntry]:
    entries, token = [], ""
    while True:
        page = clients.settlement.ListJournal(stl.ListJournalRequest(party=party, page_size=1000, page_token=token))
        entries += [e for e in page.entries if e.order_id == order_id]
        if not page.next_page_token:
            return entries
        token = page.next_page_token


def _of_kind(entries: list[stl.JournalEntry], kind: int) -> list[stl.JournalEntry]:
    return [e for e in entries if e.kind == kind]


def test_refunds_are_paid_back_from_the_dealers_account_once_each(clients, world):
    sku = world.new_sku(retail_fen=20_001, supply_fen=15_000, stock=5)
    order = clients.orders.PlaceOrder(place_request(world, [(sku, 3)])).order
    pay(clients, order)
    dispatched(clients, order.order_id)
    wait_split(clients, order.order_id)
    dealer = stl.Party(type=stl.PARTY_TYPE_DEALER, id=order.dealer_id)
    brand = stl.Party(type=stl.PARTY_TYPE_BRAND, id=order.brand_id)

    first = refund(clients, order.order_id, (sku.sku_id, 1), rid="rf-" + order.order_id)
    # The provider's notification arrives again: one refund, one journal.
    assert refund(clients, order.order_id, (sku.sku_id, 1), rid="rf-" + order.order_id).refund == first.refund
    rest = refund(clients, order.order_id)
    assert rest.order.status == pb.ORDER_STATUS_REFUNDED
    assert first.refund.amount_fen + rest.refund.amount_fen == order.payable_fen

    refunds = eventually(lambda: _of_kind(_journal(clients, dealer, order.order_id), stl.JOURNAL_KIND_REFUND),
                         lambda es: len({e.journal_id for e in es}) == 2, "both refunds in the dealer's journal")
    paid_back = [e for e in refunds if e.purpose == stl.ACCOUNT_PURPOSE_MERCHANT_AVAILABLE]
    assert sorted(e.amount_fen for e in paid_back) == sorted([-first.refund.amount_fen, -rest.refund.amount_fen])

    # The brand received its cost share through profit sharing; refunding everything asks it back.
    returned = eventually(lambda: _of_kind(_journal(clients, brand, order.order_id), stl.JOURNAL_KIND_SPLIT_RETURN),
                          lambda es: len(es) > 0, "the brand's split returns")
    assert all(e.order_id == order.order_id for e in returned)
    check = clients.settlement.VerifyLedger(stl.VerifyLedgerRequest())
    assert check.ok, check.breaks
