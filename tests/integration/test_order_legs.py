"""The legs of a split order over gRPC: the order shows every location it is served from and follows each
leg's parcel; a partly shipped order is refunded, its returned goods going back where they shipped from
(only what left, at most once), money-only refunds of the waiting leg letting it still go; a dispatch seen
again changes nothing; legs leaving together are all recorded."""

from __future__ import annotations

import asyncio

import grpc
from omo.orders.v1 import orders_pb2 as pb
from omo.settlement.v1 import settlement_pb2 as stl
from omo.warehouse.v1 import events_pb2 as wh_events
from omo.warehouse.v1 import warehouse_pb2 as wh

from ..support import bad_request_fields, key
from .test_exactly_once import _find_and_republish
from .test_flow import buy_and_ship, eventually
from .test_order_lifecycle import get, pay, refund
from .test_orders import issue_coupon, place_request, refused
from .test_refund_settlement import _journal, _of_kind
from .test_routing import SHANGHAI, place, stock
from .test_split_routes import shipments
from .test_warehouse import assert_ledger_matches, ledger, level
from .test_warehouse_set_consumers import events_on

CLOUD = wh.WAREHOUSE_KIND_CLOUD


def split_order(clients, world, manual: bool, coupon_fen: int = 0):  # type: ignore[no-untyped-def]
    """SKU a: 1 unit at each of two locations near Shanghai, b: 1 at the farther one; an order of 2 a and 1 b
    is served from both: leg 0 (the nearer, by hand when `manual`) a:1, leg 1 a:1 and b:1."""
    a = world.new_sku(retail_fen=33_333, supply_fen=20_000, stock=0)
    b = world.new_sku(retail_fen=10_001, supply_fen=7_000, stock=0)
    far = place(clients, CLOUD, 31.3, 121.3)
    near = place(clients, CLOUD, 31.25, 121.45, manual_fulfilment=manual)
    for w, sku in ((far, a), (far, b), (near, a)):
        stock(clients, w, sku.sku_id, 1)
    coupon = issue_coupon(clients, world, face_fen=coupon_fen).code if coupon_fen else ""
    request = place_request(world, [(a, 2), (b, 1)], coupon_code=coupon)
    request.deliver_to.CopyFrom(pb.GeoPoint(latitude=SHANGHAI.latitude, longitude=SHANGHAI.longitude))
    return clients.orders.PlaceOrder(request).order, a.sku_id, b.sku_id, near.warehouse_id, far.warehouse_id


def legs_of(order: pb.Order) -> list[tuple[str, list[tuple[str, int, int]], bool]]:
    return [(g.warehouse_id, sorted((li.sku_id, li.quantity, li.returned_quantity) for li in g.lines),
             bool(g.shipment_id)) for g in order.legs]


def units(order: pb.Order) -> dict[str, tuple[int, int, int]]:
    """sku -> (shipped, returned, refunded) units."""
    return {li.sku_id: (li.shipped_quantity, li.returned_quantity, li.refunded_quantity) for li in order.lines}


def ship_by_hand(clients, shipment_id: str) -> None:  # type: ignore[no-untyped-def]
    clients.warehouse.PickShipment(wh.PickShipmentRequest(idempotency_key=key(), shipment_id=shipment_id))
    clients.warehouse.PackShipment(wh.PackShipmentRequest(idempotency_key=key(), shipment_id=shipment_id))
    clients.warehouse.ShipShipment(wh.ShipShipmentRequest(idempotency_key=key(), shipment_id=shipment_id,
                                                          carrier="SF Express", tracking_number="SF7"))


def returns_at(clients, warehouse_id: str, sku_id: str) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    return [(m.on_hand_delta, m.reference_id) for m in ledger(clients, warehouse_id, sku_id)
            if m.reason == wh.MOVEMENT_REASON_RETURN]


def test_a_partly_shipped_order_is_refunded_with_the_goods_that_left_and_its_waiting_leg_still_goes(
        stack, clients, world):
    order, a, b, by_hand, far = split_order(clients, world, manual=True, coupon_fen=10_007)
    assert legs_of(order) == [(by_hand, [(a, 1, 0)], False), (far, sorted([(a, 1, 0), (b, 1, 0)]), False)]
    # The first leg is what the order named before it had legs.
    assert (order.reservation_id, order.warehouse_id) == (order.legs[0].reservation_id, by_hand)
    pay(clients, order)

    partial = eventually(lambda: get(clients, order.order_id),
                         lambda o: o.status == pb.ORDER_STATUS_PARTIALLY_SHIPPED, "the first leg to leave")
    waiting, left = partial.legs
    assert legs_of(partial) == [(by_hand, [(a, 1, 0)], False), (far, sorted([(a, 1, 0), (b, 1, 0)]), True)]
    by_status = {s.status: s for s in shipments(clients, order.order_id)}
    assert left.shipment_id == by_status[wh.SHIPMENT_STATUS_DISPATCHED].shipment_id == partial.shipment_id
    assert left.dispatched_at == partial.dispatched_at and not waiting.HasField("dispatched_at")
    assert units(partial) == {a: (1, 0, 0), b: (1, 0, 0)}

    # The leg's dispatch seen again (a new event id, past the inbox): its units do not count twice.
    asyncio.run(_find_and_republish(stack.nats_url, "warehouse.shipment.dispatched", wh_events.ShipmentDispatched,
                                    order.order_id, fresh_id=True))
    buy_and_ship(clients, world, [(world.new_sku(), 1)])  # the marker, behind the duplicate
    assert get(clients, order.order_id) == partial

    # Only what left comes back: a line returns at most its units handed over, naming the line.
    for lines, field in ([((a, 2),), "lines[0].quantity"], [((b, 1), (a, 2)), "lines[1].quantity"],
                         [(), "lines"]):
        err = refused(lambda ls: refund(clients, order.order_id, *ls, returned=True), lines)
        assert (err.code(), bad_request_fields(err)) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
    back = refund(clients, order.order_id, (a, 1), (b, 1), returned=True)
    assert back.order.status == pb.ORDER_STATUS_PARTIALLY_REFUNDED
    assert sorted((li.sku_id, [(g.reservation_id, g.warehouse_id, g.quantity) for g in li.legs])
                  for li in back.refund.lines) == [(s, [(left.reservation_id, far, 1)]) for s in sorted([a, b])]
    assert units(back.order) == {a: (1, 1, 1), b: (1, 1, 1)}
    assert get(clients, order.order_id) == back.order
    err = refused(lambda o: refund(clients, o, (a, 1), returned=True), order.order_id)  # returned already
    assert (err.code(), bad_request_fields(err)) == (grpc.StatusCode.INVALID_ARGUMENT, ["lines[0].quantity"])

    # Back in stock where they shipped from, as return movements of the refund; the waiting leg keeps its hold.
    rid = back.refund.provider_refund_id
    eventually(lambda: [level(clients, s, far).on_hand for s in (a, b)], lambda n: n == [1, 1],
               "the returned goods in stock")
    assert returns_at(clients, far, a) == returns_at(clients, far, b) == [(1, rid)]
    lv = level(clients, a, by_hand)
    assert (lv.on_hand, lv.reserved) == (1, 1) and returns_at(clients, by_hand, a) == []

    # Money only for the waiting leg's unit: accepted, and the goods still go.
    money = refund(clients, order.order_id, (a, 1))
    assert [li.legs for li in money.refund.lines] == [[]]
    assert money.order.status == pb.ORDER_STATUS_REFUNDED
    assert back.refund.amount_fen + money.refund.amount_fen == order.payable_fen == money.order.refunded_fen
    assert sum(li.discount_fen for r in (back.refund, money.refund) for li in r.lines) == order.discount_fen
    sid = {s.status: s for s in shipments(clients, order.order_id)}[wh.SHIPMENT_STATUS_CREATED].shipment_id
    ship_by_hand(clients, sid)
    done = eventually(lambda: get(clients, order.order_id), lambda o: o.legs[0].shipment_id == sid,
                      "the waiting leg to leave")
    assert done.status == pb.ORDER_STATUS_REFUNDED  # the refund stands
    assert legs_of(done) == [(by_hand, [(a, 1, 0)], True), (far, sorted([(a, 1, 1), (b, 1, 1)]), True)]
    assert units(done) == {a: (2, 1, 2), b: (1, 1, 1)}
    assert (done.shipment_id, done.dispatched_at) == (sid, done.legs[0].dispatched_at)
    assert (done.legs[1].shipment_id, done.legs[1].dispatched_at) == (left.shipment_id, left.dispatched_at)
    lv = level(clients, a, by_hand)
    assert (lv.on_hand, lv.reserved) == (0, 0)
    for w, sku in ((far, a), (far, b), (by_hand, a)):
        assert_ledger_matches(clients, w, sku)

    # Settlement paid both refunds back exactly, and its ledger holds.
    dealer = stl.Party(type=stl.PARTY_TYPE_DEALER, id=order.dealer_id)
    refunds = eventually(lambda: _of_kind(_journal(clients, dealer, order.order_id), stl.JOURNAL_KIND_REFUND),
                         lambda es: len({e.journal_id for e in es}) == 2, "both refunds in the dealer's journal")
    assert sorted(e.amount_fen for e in refunds if e.purpose == stl.ACCOUNT_PURPOSE_MERCHANT_AVAILABLE) == sorted(
        [-back.refund.amount_fen, -money.refund.amount_fen])
    check = clients.settlement.VerifyLedger(stl.VerifyLedgerRequest())
    assert check.ok, check.breaks


def test_legs_leaving_together_are_all_recorded_and_a_line_split_over_them_returns_to_both(stack, clients, world):
    order, a, b, near, far = split_order(clients, world, manual=False)
    pay(clients, order)
    # Both parcels leave in one go, and each event says the order is shipped in full: each leg still gets its own.
    done = eventually(lambda: get(clients, order.order_id), lambda o: all(g.shipment_id for g in o.legs),
                      "both legs to be recorded")
    assert done.status == pb.ORDER_STATUS_DISPATCHED
    parcels = {s.warehouse_id: s.shipment_id for s in shipments(clients, order.order_id)}
    assert [(g.warehouse_id, g.shipment_id) for g in done.legs] == [(near, parcels[near]), (far, parcels[far])]
    assert units(done) == {a: (2, 0, 0), b: (1, 0, 0)}
    events = events_on(stack, "warehouse.shipment.dispatched", wh_events.ShipmentDispatched, {order.order_id})
    assert sorted((e.shipment_id, e.reservation_id, e.order_fully_dispatched) for e in events) == sorted(
        (g.shipment_id, g.reservation_id, True) for g in done.legs)

    back = refund(clients, order.order_id, returned=True)  # everything, with the goods
    assert back.order.status == pb.ORDER_STATUS_REFUNDED
    by_sku = {li.sku_id: [(g.warehouse_id, g.quantity) for g in li.legs] for li in back.refund.lines}
    assert by_sku == {a: [(near, 1), (far, 1)], b: [(far, 1)]}
    eventually(lambda: [level(clients, s, w).on_hand for s, w in ((a, near), (a, far), (b, far))],
               lambda n: n == [1, 1, 1], "the returned goods in stock")
    for w, sku in ((near, a), (far, a), (far, b)):
        assert returns_at(clients, w, sku) == [(1, back.refund.provider_refund_id)]
        assert_ledger_matches(clients, w, sku)
