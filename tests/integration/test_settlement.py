"""Settlement over NATS and gRPC: an OrderPaid event is split once into balanced journals, cost to the brand
and profit to the dealer; balances are per tenant; the ledger refuses anything unbalanced or rewritten."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import grpc
import nats
import pytest
from omo.orders.v1 import events_pb2 as order_events
from omo.orders.v1 import orders_pb2 as orders
from omo.settlement.v1 import events_pb2 as settlement_events
from omo.settlement.v1 import settlement_pb2 as pb

from ..support import bad_request_fields, error_info

CONSUMER = "settlement-order-paid"
PROVIDER = pb.Party(type=pb.PARTY_TYPE_PROVIDER, id="wechatpay")


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def paid_event(brand_id: str, dealer_id: str, lines: list[tuple[int, int, int]], *, brand_coupon: int = 0,
               discount: int = 0, store_id: str = "", guide_id: str = "") -> order_events.OrderPaid:
    """An OrderPaid for lines of (quantity, unit price, unit supply price)."""
    subtotal = sum(q * price for q, price, _ in lines)
    coupon = (orders.AppliedCoupon(code="C1", funder=orders.COUPON_FUNDER_BRAND, discount_fen=brand_coupon)
              if brand_coupon else None)
    total_discount = brand_coupon + discount
    order = orders.Order(
        order_id=uid("ord"), status=orders.ORDER_STATUS_PAID, store_id=uid("str"), dealer_id=dealer_id,
        brand_id=brand_id, consumer_id=uid("csm"),
        lines=[orders.OrderLine(sku_id=uid("sku"), name="ThinkPad", quantity=q, unit_price_fen=price,
                                unit_supply_price_fen=supply, line_total_fen=q * price)
               for q, price, supply in lines],
        attribution=orders.Attribution(scene="qr", dealer_id=dealer_id, store_id=store_id, guide_id=guide_id),
        coupon=coupon, subtotal_fen=subtotal, discount_fen=total_discount, payable_fen=subtotal - total_discount,
        payment_txn_id=uid("txn"))
    return order_events.OrderPaid(order=order, provider_txn_id=order.payment_txn_id)


def publish(stack, event: order_events.OrderPaid, event_id: str | None = None) -> str:  # type: ignore[no-untyped-def]
    event_id = event_id or uid("evt")

    async def go() -> None:
        nc = await nats.connect(stack.nats_url)
        try:
            await nc.jetstream().publish("orders.order.paid", event.SerializeToString(), headers={
                "Omo-Event-Id": event_id,
                "Nats-Msg-Id": uid("msg"),
                "Omo-Event-Type": "omo.orders.v1.OrderPaid",
                "Omo-Created-Ms": str(int(time.time() * 1000)),
            })
        finally:
            await nc.close()

    asyncio.run(go())
    return event_id


def wait_split(clients, order_id: str, timeout_s: float = 15,  # type: ignore[no-untyped-def]
               state: int = pb.SPLIT_STATE_COMPLETED) -> pb.OrderSplit:
    """The order's split once it has reached `state` (by default: carried out at the provider)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            split = clients.settlement.GetOrderSplit(pb.GetOrderSplitRequest(order_id=order_id)).split
            if split.state >= state:
                return split
            assert time.monotonic() < deadline, f"split of {order_id} still {pb.SplitState.Name(split.state)}"
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def wait_drained(stack, timeout_s: float = 15) -> None:  # type: ignore[no-untyped-def]
    """Until the settlement consumer has acknowledged everything published so far."""

    async def go() -> None:
        nc = await nats.connect(stack.nats_url)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + timeout_s
            while True:
                info = await js.consumer_info("ORDERS", CONSUMER)
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    return
                assert time.monotonic() < deadline, f"{CONSUMER} not drained: {info}"
                await asyncio.sleep(0.05)
        finally:
            await nc.close()

    asyncio.run(go())


def split_events(stack, order_id: str, timeout_s: float = 15) -> list[settlement_events.OrderSplitSettled]:  # type: ignore[no-untyped-def]
    """Every OrderSplitSettled published for the order, once at least one has been relayed."""

    async def go() -> list[settlement_events.OrderSplitSettled]:
        nc = await nats.connect(stack.nats_url)
        try:
            js = nc.jetstream()
            sub = await js.subscribe("settlement.split.settled", ordered_consumer=True)
            found: list[settlement_events.OrderSplitSettled] = []
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                last = (await js.stream_info("SETTLEMENT")).state.last_seq
                seen = 0
                while seen < last:
                    msg = await sub.next_msg(timeout=5)
                    seen = msg.metadata.sequence.stream
                    event = settlement_events.OrderSplitSettled.FromString(msg.data)
                    if event.order_id == order_id:
                        found.append(event)
                if found:
                    return found
                await asyncio.sleep(0.05)
            return found
        finally:
            await nc.close()

    return asyncio.run(go())


def db(stack, query: str, *args):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        conn = await asyncpg.connect(stack.admin_url, server_settings={"search_path": "settlement"})
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


def balances(clients, party_type: int, party_id: str, metadata=()) -> dict[int, int]:  # type: ignore[no-untyped-def]
    reply = clients.settlement.GetBalances(
        pb.GetBalancesRequest(party=pb.Party(type=party_type, id=party_id)), metadata=metadata)
    return {b.purpose: b.balance_fen for b in reply.balances}


def legs(split: pb.OrderSplit) -> dict[int, tuple[int, str, int]]:
    return {leg.role: (leg.receiver.type, leg.receiver.id, leg.amount_fen) for leg in split.legs}


def test_paid_order_is_split_cost_to_brand_profit_to_dealer(stack, clients):
    brand, dealer = uid("brd"), uid("dlr")
    event = paid_event(brand, dealer, [(2, 129_900, 100_000)], brand_coupon=10_000)
    publish(stack, event)
    split = wait_split(clients, event.order.order_id)

    assert split.paid_fen == 249_800
    assert (split.cost_fen, split.brand_funded_discount_fen) == (200_000, 10_000)
    assert legs(split) == {
        pb.SPLIT_ROLE_COST_TO_BRAND: (pb.PARTY_TYPE_BRAND, brand, 190_000),
        pb.SPLIT_ROLE_PROFIT_TO_DEALER: (pb.PARTY_TYPE_DEALER, dealer, 59_800),
    }
    assert not split.receivables
    assert split.state == pb.SPLIT_STATE_COMPLETED and split.cap_fen == 249_800  # the test stack lifts the cap
    assert [(leg.shared_fen, leg.deferred_fen, leg.state) for leg in split.legs] == [
        (190_000, 0, pb.LEG_STATE_SUCCESS), (0, 0, pb.LEG_STATE_SUCCESS)]
    assert len(split.journal_ids) == 3 and split.HasField("settled_at")  # payment, the brand's share, completion

    assert balances(clients, pb.PARTY_TYPE_DEALER, dealer) == {
        pb.ACCOUNT_PURPOSE_MERCHANT_FROZEN: 0, pb.ACCOUNT_PURPOSE_MERCHANT_AVAILABLE: 59_800}
    assert balances(clients, pb.PARTY_TYPE_BRAND, brand) == {pb.ACCOUNT_PURPOSE_COST_SHARE: 190_000}

    rows = db(stack, "SELECT j.kind, p.amount_fen, a.party_type, a.purpose FROM journals j "
                     "JOIN postings p USING (journal_id) JOIN accounts a USING (account_id) "
                     "WHERE j.order_id = $1 ORDER BY p.posting_id", event.order.order_id)
    assert [tuple(r) for r in rows] == [
        ("ORDER_PAYMENT", -249_800, "PROVIDER", "PAYMENTS_CLEARING"),
        ("ORDER_PAYMENT", 249_800, "DEALER", "MERCHANT_FROZEN"),
        ("SHARE", -190_000, "DEALER", "MERCHANT_FROZEN"),
        ("SHARE", 190_000, "BRAND", "COST_SHARE"),
        ("ORDER_SPLIT", -59_800, "DEALER", "MERCHANT_FROZEN"),
        ("ORDER_SPLIT", 59_800, "DEALER", "MERCHANT_AVAILABLE"),
    ]


def test_an_order_is_split_once_however_often_its_payment_arrives(stack, clients):
    brand, dealer = uid("brd"), uid("dlr")
    event = paid_event(brand, dealer, [(1, 5_000, 3_000), (3, 1_000, 700)])
    event_id = publish(stack, event)
    first = wait_split(clients, event.order.order_id)
    before = (balances(clients, pb.PARTY_TYPE_DEALER, dealer), balances(clients, pb.PARTY_TYPE_BRAND, brand))
    assert before == ({pb.ACCOUNT_PURPOSE_MERCHANT_FROZEN: 0, pb.ACCOUNT_PURPOSE_MERCHANT_AVAILABLE: 2_900},
                      {pb.ACCOUNT_PURPOSE_COST_SHARE: 5_100})

    publish(stack, event, event_id=event_id)  # redelivery: same event id, new NATS message id
    publish(stack, event)  # a business-level duplicate: a fresh event for the same order
    wait_drained(stack)

    again = wait_split(clients, event.order.order_id)
    assert list(again.journal_ids) == list(first.journal_ids)
    assert again.settled_at == first.settled_at
    assert (balances(clients, pb.PARTY_TYPE_DEALER, dealer), balances(clients, pb.PARTY_TYPE_BRAND, brand)) == before
    counts = db(stack, "SELECT (SELECT count(*) FROM splits WHERE order_id = $1), "
                       "(SELECT count(*) FROM journals WHERE order_id = $1)", event.order.order_id)
    assert tuple(counts[0]) == (1, 3)
    [announced] = split_events(stack, event.order.order_id)
    assert (announced.brand_id, announced.dealer_id, announced.store_id) == (brand, dealer, event.order.store_id)
    assert announced.split == first


def test_paid_below_cost_records_what_the_dealer_owes_the_brand(stack, clients):
    brand, dealer = uid("brd"), uid("dlr")
    # A dealer-side discount deeper than the margin: the consumer pays 8,000 for goods that cost 10,000.
    event = paid_event(brand, dealer, [(1, 12_000, 10_000)], discount=4_000)
    publish(stack, event)
    split = wait_split(clients, event.order.order_id)

    assert legs(split) == {
        pb.SPLIT_ROLE_COST_TO_BRAND: (pb.PARTY_TYPE_BRAND, brand, 8_000),
        pb.SPLIT_ROLE_PROFIT_TO_DEALER: (pb.PARTY_TYPE_DEALER, dealer, 0),
    }
    [owed] = split.receivables
    assert (owed.creditor.id, owed.debtor.id, owed.amount_fen, owed.reason) == (
        brand, dealer, 2_000, pb.RECEIVABLE_REASON_PAID_BELOW_COST)
    assert balances(clients, pb.PARTY_TYPE_DEALER, dealer) == {
        pb.ACCOUNT_PURPOSE_MERCHANT_FROZEN: 0, pb.ACCOUNT_PURPOSE_PAYABLE: -2_000}
    assert balances(clients, pb.PARTY_TYPE_BRAND, brand) == {
        pb.ACCOUNT_PURPOSE_COST_SHARE: 8_000, pb.ACCOUNT_PURPOSE_RECEIVABLE: 2_000}


def test_brand_coupon_above_cost_records_what_the_brand_owes_the_dealer(stack, clients):
    brand, dealer = uid("brd"), uid("dlr")
    event = paid_event(brand, dealer, [(1, 9_000, 3_000)], brand_coupon=5_000)
    publish(stack, event)
    split = wait_split(clients, event.order.order_id)

    assert legs(split)[pb.SPLIT_ROLE_COST_TO_BRAND][2] == 0
    assert legs(split)[pb.SPLIT_ROLE_PROFIT_TO_DEALER][2] == 4_000
    [owed] = split.receivables
    assert (owed.creditor.id, owed.debtor.id, owed.amount_fen, owed.reason) == (
        dealer, brand, 2_000, pb.RECEIVABLE_REASON_BRAND_COUPON_ABOVE_COST)
    assert balances(clients, pb.PARTY_TYPE_BRAND, brand) == {pb.ACCOUNT_PURPOSE_PAYABLE: -2_000}


def test_an_unsettleable_event_is_dead_lettered_not_split(stack, clients):
    event = paid_event(uid("brd"), uid("dlr"), [(1, 1_000, 500)], brand_coupon=1_000)  # payable 0
    publish(stack, event)
    wait_drained(stack)

    async def last_dead_letter() -> bytes:
        nc = await nats.connect(stack.nats_url)
        try:
            return (await nc.jetstream().get_last_msg("DLQ", f"dlq.{CONSUMER}")).data
        finally:
            await nc.close()

    assert order_events.OrderPaid.FromString(asyncio.run(last_dead_letter())).order.order_id == event.order.order_id
    with pytest.raises(grpc.RpcError) as err:
        clients.settlement.GetOrderSplit(pb.GetOrderSplitRequest(order_id=event.order.order_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_dealer_reads_only_its_own_figures(stack, clients):
    brand, dealer, other = uid("brd"), uid("dlr"), uid("dlr")
    event = paid_event(brand, dealer, [(1, 2_000, 1_500)])
    publish(stack, event)
    wait_split(clients, event.order.order_id)

    own = [("x-omo-principal", f"dealer:{dealer}")]
    assert balances(clients, pb.PARTY_TYPE_DEALER, dealer, own)[pb.ACCOUNT_PURPOSE_MERCHANT_AVAILABLE] == 500
    clients.settlement.GetOrderSplit(pb.GetOrderSplitRequest(order_id=event.order.order_id), metadata=own)
    clients.settlement.GetOrderSplit(pb.GetOrderSplitRequest(order_id=event.order.order_id),
                                     metadata=[("x-omo-principal", f"brand:{brand}")])

    stranger = [("x-omo-principal", f"dealer:{other}")]
    for call in (
        lambda: balances(clients, pb.PARTY_TYPE_DEALER, dealer, stranger),
        lambda: balances(clients, pb.PARTY_TYPE_BRAND, brand, stranger),
        lambda: balances(clients, PROVIDER.type, PROVIDER.id, own),
        lambda: clients.settlement.GetOrderSplit(pb.GetOrderSplitRequest(order_id=event.order.order_id),
                                                 metadata=stranger),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(err.value).reason == "OUTSIDE_TENANT"

    # A party without ledger activity simply has no accounts yet.
    assert balances(clients, pb.PARTY_TYPE_DEALER, other, stranger) == {}


@pytest.mark.parametrize(("call", "fields"), [
    (lambda s: s.GetOrderSplit(pb.GetOrderSplitRequest(order_id="")), ["order_id"]),
    (lambda s: s.GetBalances(pb.GetBalancesRequest()), ["party"]),
    (lambda s: s.GetBalances(pb.GetBalancesRequest(party=pb.Party(id="dlr_1"))), ["party.type"]),
    (lambda s: s.GetBalances(pb.GetBalancesRequest(party=pb.Party(type=pb.PARTY_TYPE_DEALER))), ["party.id"]),
])
def test_bad_input_names_the_field(clients, call, fields):
    with pytest.raises(grpc.RpcError) as err:
        call(clients.settlement)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == fields


def test_unknown_order_has_no_split(clients):
    with pytest.raises(grpc.RpcError) as err:
        clients.settlement.GetOrderSplit(pb.GetOrderSplitRequest(order_id=uid("ord")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_every_balance_is_the_sum_of_its_postings_and_every_journal_balances(stack, clients):
    brand, dealers = uid("brd"), [uid("dlr") for _ in range(3)]
    events = [paid_event(brand, dealers[i % 3], [(1 + i % 4, 3_000 + i, 2_000 + 7 * i)], brand_coupon=i * 300)
              for i in range(12)]
    for event in events:
        publish(stack, event)
    for event in events:
        wait_split(clients, event.order.order_id)

    drift = db(stack, """
        SELECT a.account_id, a.balance_fen, coalesce(sum(p.amount_fen), 0) AS posted
        FROM accounts a LEFT JOIN postings p USING (account_id)
        GROUP BY a.account_id HAVING a.balance_fen <> coalesce(sum(p.amount_fen), 0)""")
    assert drift == []
    assert db(stack, "SELECT count(*) AS n FROM accounts")[0]["n"] >= 1 + 1 + 3 * 2
    unbalanced = db(stack, "SELECT journal_id FROM postings GROUP BY journal_id HAVING sum(amount_fen) <> 0")
    assert unbalanced == []
    assert db(stack, "SELECT sum(balance_fen) AS total FROM accounts")[0]["total"] == 0
    # Some coupons exceed the cost: the brand's leg is then 0 and it owes the dealer the difference.
    shares = [e.order.lines[0].quantity * e.order.lines[0].unit_supply_price_fen - e.order.coupon.discount_fen
              for e in events]
    brand_accounts = balances(clients, pb.PARTY_TYPE_BRAND, brand)
    assert brand_accounts[pb.ACCOUNT_PURPOSE_COST_SHARE] == sum(max(0, s) for s in shares)
    assert brand_accounts[pb.ACCOUNT_PURPOSE_PAYABLE] == sum(min(0, s) for s in shares) < 0


def test_the_ledger_refuses_unbalanced_or_rewritten_journals(stack, clients):
    event = paid_event(uid("brd"), uid("dlr"), [(1, 2_000, 1_000)])
    publish(stack, event)
    wait_split(clients, event.order.order_id)

    async def attempt(statements: list[str]) -> str:
        conn = await asyncpg.connect(stack.admin_url, server_settings={"search_path": "public"})
        try:
            async with conn.transaction():
                for sql in statements:
                    await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            return exc.sqlstate
        finally:
            await conn.close()
        return "committed"

    jid = uid("jnl")
    account = "(SELECT account_id FROM settlement.accounts ORDER BY account_id LIMIT 1)"
    unbalanced = [
        f"INSERT INTO settlement.journals (journal_id, kind, business_key) VALUES ('{jid}', 'TEST', '{jid}')",
        f"INSERT INTO settlement.postings (journal_id, account_id, amount_fen) VALUES ('{jid}', {account}, 100)",
        f"INSERT INTO settlement.postings (journal_id, account_id, amount_fen) VALUES ('{jid}', {account}, -99)",
    ]
    assert asyncio.run(attempt(unbalanced)) == "23514"  # check_violation, raised at commit
    assert db(stack, "SELECT 1 FROM journals WHERE journal_id = $1", jid) == []
    assert asyncio.run(attempt(["UPDATE settlement.postings SET amount_fen = amount_fen + 1"])) == "23001"
    assert asyncio.run(attempt(["DELETE FROM settlement.journals"])) == "23001"


def test_a_posting_must_name_an_existing_journal_and_account_and_accounts_stay(stack, clients):
    event = paid_event(uid("brd"), uid("dlr"), [(1, 2_000, 1_000)])
    publish(stack, event)
    wait_split(clients, event.order.order_id)

    async def attempt(statements: list[str]) -> str:
        conn = await asyncpg.connect(stack.admin_url, server_settings={"search_path": "public"})
        try:
            async with conn.transaction():
                for sql in statements:
                    await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            return exc.sqlstate
        finally:
            await conn.close()
        return "committed"

    jid, missing = uid("jnl"), uid("jnl")
    accounts = "(SELECT account_id FROM settlement.accounts ORDER BY account_id LIMIT 1)"
    journal = f"INSERT INTO settlement.journals (journal_id, kind, business_key) VALUES ('{jid}', 'TEST', '{jid}')"
    # Balanced, but one leg's account does not exist; then balanced on real accounts, but no such journal.
    assert asyncio.run(attempt([journal, f"""
        INSERT INTO settlement.postings (journal_id, account_id, amount_fen)
        VALUES ('{jid}', {accounts}, 100), ('{jid}', -1, -100)"""])) == "23503"  # foreign_key_violation
    assert asyncio.run(attempt([f"""
        INSERT INTO settlement.postings (journal_id, account_id, amount_fen)
        VALUES ('{missing}', {accounts}, 100), ('{missing}', {accounts}, -100)"""])) == "23503"
    assert db(stack, "SELECT 1 FROM postings WHERE journal_id = ANY($1)", [jid, missing]) == []
    # Postings refer to accounts by id: an account is never deleted, truncated or renumbered.
    for statement in ("DELETE FROM settlement.accounts", "TRUNCATE settlement.accounts CASCADE",
                      "UPDATE settlement.accounts SET account_id = DEFAULT"):
        assert asyncio.run(attempt([statement])) == "23001", statement  # restrict_violation
    assert clients.settlement.VerifyLedger(pb.VerifyLedgerRequest()).ok
