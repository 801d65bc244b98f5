"""Settlement's statements keep the plans they are written for, however small the tables were when the plans
were made and however fresh their statistics.

On a private copy of the settlement schema filled with 20,000 splits (40 % still to share, half of those due),
their legs and refunds, 2,000 split returns half of them still requested, and 5,000 debt transfers of which one
per fourth dealer is in flight: finishing or retrying split returns and finishing transfers never use the job
queues' partial indexes; the sharing job's lease and read, the refunds waiting for a split, the transfer
candidates and a dealer's day find their rows through an index for the rows they name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import DBAPIError

from services.settlement import store as st

from .plan_probe import (
    PlanProbe,
    analyze,
    assert_reads_by_index,
    indexes_used,
    prime,
    run_sql,
    schema_fixture,
)

SPLITS = 20_000
DEALERS = 200
QUEUES = frozenset({"split_returns_due", "debt_transfers_one_open"})
NOW = datetime.now(UTC)


def fill(n: int = SPLITS) -> list[str]:
    """The rows of n splits."""
    return [
        f"""INSERT INTO accounts (party_type, party_id, purpose, balance_fen)
            SELECT 'DEALER', 'dlr_' || lpad(d::text, 3, '0'), p, 100000 FROM generate_series(0, {DEALERS - 1}) d,
                   unnest(ARRAY['MERCHANT_FROZEN', 'MERCHANT_AVAILABLE']) p""",
        f"""INSERT INTO splits (order_id, brand_id, dealer_id, store_id, provider_txn_id, paid_fen, cost_fen,
                                brand_funded_discount_fen, payment_journal_id, split_journal_id, paid_at,
                                settled_at, state, cap_fen, due_at, revision)
            SELECT 'ord' || lpad(i::text, 7, '0'), 'brd_1', 'dlr_' || lpad((i % {DEALERS})::text, 3, '0'), 'sto_1',
                   'wx' || i, 10000, 6000, 0, 'jp' || i, 'js' || i, now(), now() - make_interval(secs => {n} - i),
                   CASE WHEN i % 10 < 4 THEN 'SCHEDULED' ELSE 'COMPLETED' END, 3000,
                   CASE WHEN i % 10 < 2 THEN now() - interval '1 second' ELSE now() + interval '10 minutes' END, 0
            FROM generate_series(0, {n - 1}) i""",
        f"""INSERT INTO split_legs (order_id, leg, role, receiver_type, receiver_id, amount_fen, shared_fen, state)
            SELECT 'ord' || lpad(i::text, 7, '0'), l.leg, l.role, l.t, 'x', l.amount, 0, 'PLANNED'
            FROM generate_series(0, {n - 1}) i,
                 (VALUES (1, 'COST_TO_BRAND', 'BRAND', 6000), (2, 'PROFIT_TO_DEALER', 'DEALER', 4000))
                 AS l(leg, role, t, amount)""",
        f"""INSERT INTO refunds (order_id, refund_id, amount_fen, journal_id)
            SELECT 'ord' || lpad(i::text, 7, '0'), 'rf' || i, 100, 'jr' || i FROM generate_series(0, {n - 1}) i
            WHERE i % 10 = 5""",
        f"""INSERT INTO split_returns (return_no, order_id, refund_id, role, receiver_type, receiver_id,
                                       amount_fen, state, next_attempt_at, done_at)
            SELECT 'ret' || i, 'ord' || lpad(i::text, 7, '0'), 'rf' || i, 'STORE_COMMISSION', 'STORE', 'sto_1', 10,
                   CASE WHEN i % 20 = 5 THEN 'REQUESTED' ELSE 'SUCCESS' END, now() + interval '1 minute',
                   CASE WHEN i % 20 = 5 THEN NULL ELSE now() END
            FROM generate_series(0, {n - 1}) i WHERE i % 10 = 5""",
        f"""INSERT INTO waiting_refunds (order_id, refund_id, amount_fen)
            SELECT 'ord' || lpad(i::text, 7, '0'), 'rw' || i, 100 FROM generate_series(0, {n - 1}) i
            WHERE i % 500 = 7""",
        f"""INSERT INTO debts (creditor_type, creditor_id, debtor_type, debtor_id, outstanding_fen, transfers)
            SELECT 'STORE', 'sto_' || k, 'DEALER', 'dlr_' || lpad(d::text, 3, '0'), 100, 25
            FROM generate_series(0, {DEALERS - 1}) d, generate_series(0, 1) k""",
        f"""INSERT INTO debt_transfers (transfer_no, creditor_type, creditor_id, debtor_type, debtor_id, seq,
                                        amount_fen, state, done_at)
            SELECT 'tr' || d || '-' || q, 'STORE', 'sto_0', 'DEALER', 'dlr_' || lpad(d::text, 3, '0'), q, 10,
                   CASE WHEN q = 25 AND d % 4 = 0 THEN 'REQUESTED' ELSE 'DONE' END,
                   CASE WHEN q = 25 AND d % 4 = 0 THEN NULL ELSE now() END
            FROM generate_series(0, {DEALERS - 1}) d, generate_series(1, 25) q""",
    ]


FILL = fill()


def statements() -> dict:
    due = [f"ord{i:07d}" for i in range(SPLITS - 500, SPLITS) if i % 10 < 2][:50]
    returns = [f"ret{i}" for i in range(SPLITS - 2000, SPLITS) if i % 20 == 5][:10]
    open_transfers = [f"tr{d}-25" for d in range(0, DEALERS, 4)][:10]
    day = {"i": "dlr_001", "start": NOW - timedelta(days=1), "end": NOW + timedelta(hours=1)}

    def run(sql, params):  # type: ignore[no-untyped-def]
        return lambda c: c.execute(sql, params)

    return {
        "returns_done": run(st._RETURNS_DONE, {"nos": returns}),
        "returns_retry": run(st._RETURNS_RETRY, {"nos": returns, "errors": ["x"] * len(returns), "retry_s": 5.0}),
        "finish_transfers": run(st._FINISH_TRANSFERS, {"nos": open_transfers}),
        "splits": lambda c: st.LedgerStore().splits(c, due),
        "claim_due": run(st._CLAIM_DUE, {"n": 50, "lease_s": 30.0}),
        "ready_refunds": run(st._READY_REFUNDS, {"n": 50}),
        "transfer_candidates": run(st._TRANSFER_CANDIDATES, {"n": 100}),
        "day_orders": run(st._DAY_ORDERS["dealer_id"], day),
    }


schema = schema_fixture("settlement")
# On empty tables the statements find none of their rows and fail (a missing foreign key).
TOLERATED = (DBAPIError,)


def assert_transfer_in_flight_probed(plans) -> None:  # type: ignore[no-untyped-def]
    """The open-transfer index is probed per candidate dealer, not read whole for each of them."""
    probes = [s for p in plans for s in p.scans() if s.index == "debt_transfers_one_open"]
    assert probes and all("debtor_id" in s.condition for s in probes), probes


async def test_statements_keep_their_indexes_on_empty_unanalyzed_and_analyzed_tables(stack, schema):
    hot = statements()
    async with PlanProbe(stack.admin_url, schema) as on_empty:
        await prime(on_empty, hot.values(), TOLERATED)
        await run_sql(stack.admin_url, schema, *FILL)
        async with PlanProbe(stack.admin_url, schema) as unanalyzed:
            for probe in (on_empty, unanalyzed):
                for name in ("returns_done", "returns_retry", "finish_transfers"):
                    assert_reads_by_index(await probe.plans(hot[name]), set(), avoid=QUEUES)
                assert_reads_by_index(await probe.plans(hot["splits"]), {"splits", "split_legs"})
                assert_transfer_in_flight_probed(await probe.plans(hot["transfer_candidates"]))
            # Plans made without statistics on the filled tables: the waiting refunds' splits by key.
            assert_reads_by_index(await unanalyzed.plans(hot["ready_refunds"]), {"splits"})

    await analyze(stack.admin_url, schema)
    async with PlanProbe(stack.admin_url, schema) as analyzed:
        for name in ("returns_done", "returns_retry", "finish_transfers"):
            assert_reads_by_index(await analyzed.plans(hot[name]), {"split_returns", "debt_transfers"}, avoid=QUEUES)
        for name in ("splits", "claim_due", "ready_refunds", "day_orders"):
            assert_reads_by_index(await analyzed.plans(hot[name]), {"splits", "split_legs"},
                                  walks=frozenset({"splits_due"}))
        assert "splits_dealer_day" in indexes_used(await analyzed.plans(hot["day_orders"]))
        assert_transfer_in_flight_probed(await analyzed.plans(hot["transfer_candidates"]))
        # The queues still serve the jobs that read them.
        due_returns = await analyzed.plans(lambda c: c.execute(st._DUE_RETURNS, {"n": 50}))
        assert "split_returns_due" in indexes_used(due_returns)
        open_transfers = await analyzed.plans(lambda c: c.execute(st._OPEN_TRANSFERS, {"n": 50}))
        assert "debt_transfers_one_open" in indexes_used(open_transfers)
