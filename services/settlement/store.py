"""SQL for the settlement schema: the ledger and the order splits.

Written for batches: recording any number of splits is one statement, posting any number of journals is one
statement, and a sharing pass writes the progress of all its splits in one, whatever the number of legs.
Whatever moves money goes last in its transaction and once (`LedgerStore.book`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import text

from services.runtime.db import Connection, Row
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound

from . import refunds
from .domain import (
    STATEMENT_PURPOSES,
    BreakKind,
    CounterRedemption,
    DebtTransfer,
    Journal,
    LedgerBreak,
    LedgerCheck,
    LegState,
    Party,
    PartyType,
    Progress,
    Purpose,
    Receivable,
    ReceivableReason,
    Settlement,
    Split,
    SplitLeg,
    SplitRole,
    SplitState,
    Statement,
    day_bounds,
    net_changes,
    progress_journals,
    reimbursement_journal,
    request_no,
    transfer_amount,
    transfer_journal,
)
from .reconciliation import BillLine, BillLineType, Reconciliation, ReconciliationBreak
from .reconciliation import BreakKind as ReconBreakKind
from .refunds import Refund, RefundOutcome, SplitReturn, return_journal

# The split row is the claim: ON CONFLICT DO NOTHING makes a second OrderPaid for an order a no-op, and only the
# splits this statement claimed get their legs and receivables. Splits are inserted in order_id order, so two
# batches that carry the same orders wait for each other on the first one they share instead of deadlocking.
_RECORD_SPLITS = text("""
    WITH claimed AS (
        INSERT INTO splits (order_id, brand_id, dealer_id, store_id, provider_txn_id, paid_fen, cost_fen,
                            brand_funded_discount_fen, payment_journal_id, split_journal_id, paid_at, state,
                            cap_fen, due_at)
        SELECT s.order_id, s.brand_id, s.dealer_id, s.store_id, s.provider_txn_id, s.paid_fen, s.cost_fen,
               s.brand_funded_discount_fen, s.payment_journal_id, s.split_journal_id, s.paid_at, s.state, s.cap_fen,
               clock_timestamp() + make_interval(secs => :delay_s)
        FROM unnest(CAST(:order_ids AS text[]), CAST(:brand_ids AS text[]), CAST(:dealer_ids AS text[]),
                    CAST(:store_ids AS text[]), CAST(:provider_txn_ids AS text[]), CAST(:paid AS bigint[]),
                    CAST(:cost AS bigint[]), CAST(:brand_funded AS bigint[]), CAST(:payment_journals AS text[]),
                    CAST(:split_journals AS text[]), CAST(:paid_at AS timestamptz[]), CAST(:states AS text[]),
                    CAST(:caps AS bigint[]))
                 AS s(order_id, brand_id, dealer_id, store_id, provider_txn_id, paid_fen, cost_fen,
                      brand_funded_discount_fen, payment_journal_id, split_journal_id, paid_at, state, cap_fen)
        ORDER BY s.order_id
        ON CONFLICT (order_id) DO NOTHING
        RETURNING order_id, settled_at
    ), legs AS (
        INSERT INTO split_legs (order_id, leg, role, receiver_type, receiver_id, amount_fen, shared_fen, state)
        SELECT l.order_id, l.leg, l.role, l.receiver_type, l.receiver_id, l.amount_fen, l.shared_fen, l.state
        FROM unnest(CAST(:leg_orders AS text[]), CAST(:leg_numbers AS smallint[]), CAST(:leg_roles AS text[]),
                    CAST(:leg_types AS text[]), CAST(:leg_ids AS text[]), CAST(:leg_amounts AS bigint[]),
                    CAST(:leg_shared AS bigint[]), CAST(:leg_states AS text[]))
                 AS l(order_id, leg, role, receiver_type, receiver_id, amount_fen, shared_fen, state)
        WHERE l.order_id IN (SELECT order_id FROM claimed)
    ), receivables AS (
        INSERT INTO split_receivables (order_id, reason, creditor_type, creditor_id, debtor_type, debtor_id,
                                       amount_fen, journal_id)
        SELECT r.order_id, r.reason, r.creditor_type, r.creditor_id, r.debtor_type, r.debtor_id, r.amount_fen,
               r.journal_id
        FROM unnest(CAST(:rec_orders AS text[]), CAST(:rec_reasons AS text[]), CAST(:rec_creditor_types AS text[]),
                    CAST(:rec_creditor_ids AS text[]), CAST(:rec_debtor_types AS text[]),
                    CAST(:rec_debtor_ids AS text[]), CAST(:rec_amounts AS bigint[]), CAST(:rec_journals AS text[]))
                 AS r(order_id, reason, creditor_type, creditor_id, debtor_type, debtor_id, amount_fen, journal_id)
        WHERE r.order_id IN (SELECT order_id FROM claimed)
    )
    SELECT order_id, settled_at FROM claimed
""")

# One statement posts a set of journals: the accounts are created on first use and their cached balances
# moved by each account's net change (rows locked in the domain's lock order: the order of `touched`), the
# journals are inserted, and the postings reference the accounts the upsert returned. A posting names its
# journal and its account by their place in the statement's lists (integers, cheaper to send than the three
# names of an account and a journal id per posting). The postings' statement trigger re-checks that every
# journal balances and that every journal and account exists.
_POST = text("""
    WITH touched AS (
        SELECT * FROM unnest(CAST(:acc_types AS text[]), CAST(:acc_ids AS text[]), CAST(:acc_purposes AS text[]),
                             CAST(:acc_changes AS bigint[]))
                 WITH ORDINALITY AS t(party_type, party_id, purpose, change, n)
    ), moved AS (
        INSERT INTO accounts AS a (party_type, party_id, purpose, balance_fen)
        SELECT party_type, party_id, purpose, change FROM touched ORDER BY n
        ON CONFLICT (party_type, party_id, purpose) DO UPDATE SET balance_fen = a.balance_fen + excluded.balance_fen
        RETURNING account_id, party_type, party_id, purpose
    ), journal AS (
        INSERT INTO journals (journal_id, kind, business_key, order_id)
        SELECT j.id, j.kind, j.key, nullif(j.order_id, '')
        FROM unnest(CAST(:j_ids AS text[]), CAST(:j_kinds AS text[]), CAST(:j_keys AS text[]),
                    CAST(:j_orders AS text[])) AS j(id, kind, key, order_id)
    )
    INSERT INTO postings (journal_id, account_id, amount_fen)
    SELECT j.id, m.account_id, p.amount_fen
    FROM unnest(CAST(:p_journals AS integer[]), CAST(:p_accounts AS integer[]), CAST(:p_amounts AS bigint[]))
             WITH ORDINALITY AS p(journal_n, account_n, amount_fen, n)
    JOIN unnest(CAST(:j_ids AS text[])) WITH ORDINALITY AS j(id, n) ON j.n = p.journal_n
    JOIN touched t ON t.n = p.account_n
    JOIN moved m ON (m.party_type, m.party_id, m.purpose) = (t.party_type, t.party_id, t.purpose)
    ORDER BY p.n
""")

# Splits with their legs and receivables, from one snapshot in one round trip. Each split is one probe of the
# primary key (a lateral sub-query behind OFFSET 0 is never flattened into a join): as `order_id = ANY(:ids)`,
# a plan made while `splits` was empty compared every split with every id (~200 ms for 50 ids at 100,000
# splits), because at fill factor 70 an empty table's guessed scan costs less than 50 index probes.
_SPLITS = text("""
    SELECT x.* FROM (SELECT DISTINCT i.id FROM unnest(CAST(:ids AS text[])) AS i(id)) i
    CROSS JOIN LATERAL (
        SELECT s.order_id, s.brand_id, s.dealer_id, s.store_id, s.paid_fen, s.cost_fen, s.brand_funded_discount_fen,
               s.payment_journal_id, s.split_journal_id, s.settled_at, s.state, s.provider_txn_id, s.cap_fen,
               s.revision,
               ARRAY(SELECT ROW(l.role, l.receiver_type, l.receiver_id, l.amount_fen, l.shared_fen, l.state,
                                l.close_reason, l.refunded_fen, l.frozen_refund_fen)
                     FROM split_legs l WHERE l.order_id = s.order_id ORDER BY l.leg) AS legs,
               ARRAY(SELECT ROW(r.reason, r.creditor_type, r.creditor_id, r.debtor_type, r.debtor_id, r.amount_fen)
                     FROM split_receivables r WHERE r.order_id = s.order_id
                     ORDER BY r.reason, r.creditor_type, r.creditor_id) AS receivables
        FROM splits s WHERE s.order_id = i.id
        OFFSET 0
    ) x
""")
# The sharing job leases due splits, so two replicas never work on one split at once; a crashed worker's
# lease simply runs out. The lease commits at once: a refund meanwhile sees the lease and waits, so the legs
# read right after are the ones the job works from. The leased rows are also named by their keys
# (`= ANY(ARRAY(...))`): a generic plan guesses a tenth of the due splits for `LIMIT :n`, and with fresh
# statistics joined that guess to a scan of every split (~3,400 buffers a pass at 100,000 splits).
_CLAIM_DUE = text("""
    WITH due AS MATERIALIZED (
        SELECT order_id FROM splits
        WHERE state <> 'COMPLETED' AND due_at <= clock_timestamp()
          AND (lease_until IS NULL OR lease_until <= clock_timestamp())
        ORDER BY due_at LIMIT :n FOR UPDATE SKIP LOCKED
    )
    UPDATE splits s SET lease_until = clock_timestamp() + make_interval(secs => :lease_s), attempts = s.attempts + 1
    FROM due WHERE s.order_id = due.order_id AND s.order_id = ANY(ARRAY(SELECT order_id FROM due))
    RETURNING s.order_id
""")
# Progress is written only over the state it was computed from: a split moved on by someone else meanwhile
# makes a count fall short and the whole batch roll back. The split rows are locked in order_id order first
# (refund batches lock them in the same order), and a split's legs only once its row is held.
_ADVANCE = text("""
    WITH locked AS (
        SELECT order_id FROM splits WHERE order_id = ANY(CAST(:orders AS text[])) ORDER BY order_id FOR UPDATE
    ), moved AS (
        UPDATE splits s SET state = u.state, lease_until = NULL, last_error = nullif(u.error, ''),
            completed_at = CASE WHEN u.state = 'COMPLETED' THEN clock_timestamp() END,
            due_at = clock_timestamp() + make_interval(secs => u.retry_s)
        FROM locked JOIN unnest(CAST(:orders AS text[]), CAST(:old AS text[]), CAST(:new AS text[]),
                                CAST(:errors AS text[]), CAST(:retry_s AS float8[]), CAST(:revisions AS integer[]))
                 AS u(order_id, old_state, state, error, retry_s, revision) USING (order_id)
        WHERE s.order_id = locked.order_id AND s.state = u.old_state AND s.revision = u.revision
        RETURNING s.order_id
    ), legs AS (
        UPDATE split_legs l SET state = u.state, close_reason = u.close_reason
        FROM moved JOIN unnest(CAST(:leg_orders AS text[]), CAST(:legs AS smallint[]), CAST(:leg_old AS text[]),
                               CAST(:leg_new AS text[]), CAST(:reasons AS text[]))
                 AS u(order_id, leg, old_state, state, close_reason) USING (order_id)
        WHERE l.order_id = moved.order_id AND l.leg = u.leg AND l.state = u.old_state
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM moved) AS splits, (SELECT count(*) FROM legs) AS legs
""")
# Debt rows are locked in (debtor, creditor) order by every statement that changes them.
_ADD_DEBTS = text("""
    INSERT INTO debts AS d (creditor_type, creditor_id, debtor_type, debtor_id, outstanding_fen)
    SELECT ct, ci, dt, di, sum(amount)
    FROM unnest(CAST(:ct AS text[]), CAST(:ci AS text[]), CAST(:dt AS text[]), CAST(:di AS text[]),
                CAST(:amounts AS bigint[])) AS x(ct, ci, dt, di, amount)
    GROUP BY ct, ci, dt, di
    ORDER BY dt, di, ct, ci
    ON CONFLICT (debtor_type, debtor_id, creditor_type, creditor_id)
    DO UPDATE SET outstanding_fen = d.outstanding_fen + excluded.outstanding_fen
""")
# Dealers with something owed, no transfer in flight, and an available balance to pay from: one debt each
# (the oldest creditor first), so the balance is spent once. The transfer in flight is one probe of the
# open-transfer index per candidate (a lateral sub-query with a LIMIT is always joined that way): as an
# anti-join, a plan made while that index was empty or without statistics read all of it for every
# candidate (~30,000 buffers for 300 candidates and 125 open transfers: dealers squared).
_TRANSFER_CANDIDATES = text("""
    SELECT DISTINCT ON (d.debtor_id) d.creditor_type, d.creditor_id, d.debtor_type, d.debtor_id,
           d.outstanding_fen, d.transfers, a.balance_fen AS available_fen
    FROM debts d
    JOIN accounts a ON a.party_type = d.debtor_type AND a.party_id = d.debtor_id AND a.purpose = 'MERCHANT_AVAILABLE'
    LEFT JOIN LATERAL (
        SELECT true AS open FROM debt_transfers t
        WHERE t.debtor_type = d.debtor_type AND t.debtor_id = d.debtor_id AND t.state = 'REQUESTED'
          AND t.done_at IS NULL
        LIMIT 1
    ) t ON true
    WHERE d.outstanding_fen > 0 AND d.debtor_type = 'DEALER' AND a.balance_fen > 0 AND t.open IS NULL
    ORDER BY d.debtor_id, d.creditor_type, d.creditor_id
    LIMIT :n
""")
_PLAN_TRANSFERS = text("""
    INSERT INTO debt_transfers (transfer_no, creditor_type, creditor_id, debtor_type, debtor_id, seq, amount_fen,
                                state)
    SELECT *, 'REQUESTED' FROM unnest(CAST(:nos AS text[]), CAST(:ct AS text[]), CAST(:ci AS text[]),
                                      CAST(:dt AS text[]), CAST(:di AS text[]), CAST(:seqs AS integer[]),
                                      CAST(:amounts AS bigint[]))
    ON CONFLICT DO NOTHING
""")
# `done_at IS NULL` is what the open-transfer index is keyed on (migration 0013).
_OPEN_TRANSFERS = text("""
    SELECT creditor_type, creditor_id, debtor_type, debtor_id, seq, amount_fen FROM debt_transfers
    WHERE state = 'REQUESTED' AND done_at IS NULL ORDER BY requested_at LIMIT :n
""")
_FINISH_TRANSFERS = text("""
    WITH done AS (
        UPDATE debt_transfers SET state = 'DONE', done_at = clock_timestamp()
        WHERE transfer_no = ANY(:nos) AND state = 'REQUESTED'
        RETURNING creditor_type, creditor_id, debtor_type, debtor_id, amount_fen
    ), locked AS (
        SELECT d.debtor_type, d.debtor_id, d.creditor_type, d.creditor_id FROM debts d
        JOIN done USING (debtor_type, debtor_id, creditor_type, creditor_id)
        ORDER BY d.debtor_type, d.debtor_id, d.creditor_type, d.creditor_id
        FOR UPDATE OF d
    )
    UPDATE debts d SET outstanding_fen = d.outstanding_fen - done.amount_fen, transfers = d.transfers + 1
    FROM done
    WHERE (d.creditor_type, d.creditor_id, d.debtor_type, d.debtor_id)
        = (done.creditor_type, done.creditor_id, done.debtor_type, done.debtor_id)
      AND (d.debtor_type, d.debtor_id, d.creditor_type, d.creditor_id) IN (SELECT * FROM locked)
""")
_LOCK_SPLIT = text("""
    SELECT state, lease_until > clock_timestamp() AS leased FROM splits WHERE order_id = :o FOR UPDATE
""")
_REFUND_SEEN = text("SELECT amount_fen FROM refunds WHERE order_id = :o AND refund_id = :r")
_RECORD_REFUND = text("""
    WITH refund AS (
        INSERT INTO refunds (order_id, refund_id, amount_fen, journal_id) VALUES (:o, :r, :amount, :journal_id)
    ), legs AS (
        UPDATE split_legs l SET refunded_fen = u.refunded, frozen_refund_fen = u.frozen, shared_fen = u.shared,
                                state = u.state
        FROM unnest(CAST(:legs AS smallint[]), CAST(:refunded AS bigint[]), CAST(:frozen AS bigint[]),
                    CAST(:shared AS bigint[]), CAST(:states AS text[])) AS u(leg, refunded, frozen, shared, state)
        WHERE l.order_id = :o AND l.leg = u.leg
    ), returns AS (
        INSERT INTO split_returns (return_no, order_id, refund_id, role, receiver_type, receiver_id, amount_fen,
                                   state)
        SELECT no, :o, :r, role, rt, ri, amount, 'REQUESTED'
        FROM unnest(CAST(:ret_nos AS text[]), CAST(:ret_roles AS text[]), CAST(:ret_types AS text[]),
                    CAST(:ret_ids AS text[]), CAST(:ret_amounts AS bigint[])) AS x(no, role, rt, ri, amount)
    )
    UPDATE splits SET cap_fen = :cap, revision = :revision WHERE order_id = :o
""")
# `done_at IS NULL` is what the queue's index is keyed on (migration 0013).
_DUE_RETURNS = text("""
    SELECT r.return_no, r.order_id, r.refund_id, r.role, r.receiver_type, r.receiver_id, r.amount_fen, s.dealer_id
    FROM split_returns r JOIN splits s USING (order_id)
    WHERE r.state = 'REQUESTED' AND r.done_at IS NULL AND r.next_attempt_at <= clock_timestamp()
    ORDER BY r.next_attempt_at LIMIT :n
""")
_RETURNS_DONE = text("""
    UPDATE split_returns SET state = 'SUCCESS', done_at = clock_timestamp(), attempts = attempts + 1
    WHERE return_no = ANY(:nos) AND state = 'REQUESTED'
""")
_RETURNS_RETRY = text("""
    UPDATE split_returns SET attempts = attempts + 1, last_error = u.error,
        next_attempt_at = clock_timestamp() + make_interval(secs => :retry_s)
    FROM unnest(CAST(:nos AS text[]), CAST(:errors AS text[])) AS u(no, error)
    WHERE return_no = u.no AND state = 'REQUESTED' AND return_no = ANY(CAST(:nos AS text[]))
""")
_JOURNAL_PAGE = text("""
    SELECT p.posting_id, j.journal_id, j.kind, j.business_key, coalesce(j.order_id, '') AS order_id, a.purpose,
           p.amount_fen, j.created_at
    FROM accounts a JOIN postings p USING (account_id) JOIN journals j USING (journal_id)
    WHERE a.party_type = :t AND a.party_id = :i AND p.posting_id > :after
      AND j.created_at >= :from_time AND j.created_at < :to_time
    ORDER BY p.posting_id LIMIT :n
""")
# A dealer's day or the brand's, one statement each: a party column chosen in SQL (CASE on the party type)
# is an expression no index covers, so the day was found by reading all of `splits_brand_day` (~100,000
# buffers at 100,000 splits, with fresh statistics).
_DAY_ORDERS_SQL = """
    SELECT count(*) AS orders, coalesce(sum(s.paid_fen), 0) AS gross,
           coalesce(sum(s.brand_funded_discount_fen), 0) AS coupons,
           coalesce(sum(l.cost), 0) AS cost, coalesce(sum(l.commissions), 0) AS commissions
    FROM splits s
    CROSS JOIN LATERAL (
        SELECT sum(amount_fen) FILTER (WHERE role = 'COST_TO_BRAND') AS cost,
               sum(amount_fen) FILTER (WHERE role IN ('STORE_COMMISSION', 'GUIDE_COMMISSION', 'PLATFORM_FEE'))
                   AS commissions
        FROM split_legs WHERE order_id = s.order_id) l
    WHERE s.{party} = :i AND s.settled_at >= :start AND s.settled_at < :end
"""
_DAY_REFUNDS_SQL = """
    SELECT coalesce(sum(r.amount_fen), 0) AS refunded FROM refunds r JOIN splits s USING (order_id)
    WHERE s.{party} = :i AND r.recorded_at >= :start AND r.recorded_at < :end
"""
_DAY_ORDERS = {party: text(_DAY_ORDERS_SQL.format(party=party)) for party in ("dealer_id", "brand_id")}
_DAY_REFUNDS = {party: text(_DAY_REFUNDS_SQL.format(party=party)) for party in ("dealer_id", "brand_id")}
_DAY_ACCOUNTS = text("""
    SELECT a.purpose,
           coalesce(sum(p.amount_fen) FILTER (WHERE j.created_at >= :start AND j.created_at < :end), 0) AS change,
           coalesce(sum(p.amount_fen) FILTER (WHERE j.created_at < :end), 0) AS at_end
    FROM accounts a JOIN postings p USING (account_id) JOIN journals j USING (journal_id)
    WHERE a.party_type = :t AND a.party_id = :i
    GROUP BY a.purpose
""")
_LEDGER_PAYMENTS = text("""
    SELECT s.provider_txn_id AS reference, s.paid_fen AS amount
    FROM splits s JOIN journals j ON j.journal_id = s.payment_journal_id
    WHERE j.created_at >= :start AND j.created_at < :end
""")
_LEDGER_SHARES = text("""
    SELECT j.order_id, a.party_type, a.party_id, p.amount_fen AS amount
    FROM journals j JOIN postings p USING (journal_id) JOIN accounts a USING (account_id)
    WHERE j.kind = 'SHARE' AND p.amount_fen > 0 AND j.created_at >= :start AND j.created_at < :end
""")
_LEDGER_REFUNDS = text("""
    SELECT refund_id AS reference, amount_fen AS amount FROM refunds WHERE recorded_at >= :start AND recorded_at < :end
""")
_LEDGER_RETURNS = text("""
    SELECT return_no AS reference, amount_fen AS amount FROM split_returns
    WHERE state = 'SUCCESS' AND done_at >= :start AND done_at < :end
""")
_LEDGER_TRANSFERS = text("""
    SELECT transfer_no AS reference, amount_fen AS amount FROM debt_transfers
    WHERE state = 'DONE' AND done_at >= :start AND done_at < :end
""")
# An unchanged result keeps its first reconciled_at: re-running changes nothing.
_SAVE_RECONCILIATION = text("""
    INSERT INTO reconciliations AS r (day, bill_lines, ledger_lines, matched, breaks)
    VALUES (:day, :bill_lines, :ledger_lines, :matched, CAST(:breaks AS jsonb))
    ON CONFLICT (day) DO UPDATE SET bill_lines = excluded.bill_lines, ledger_lines = excluded.ledger_lines,
        matched = excluded.matched, breaks = excluded.breaks, reconciled_at = clock_timestamp()
    WHERE (r.bill_lines, r.ledger_lines, r.matched, r.breaks)
        IS DISTINCT FROM (excluded.bill_lines, excluded.ledger_lines, excluded.matched, excluded.breaks)
""")
_LOAD_RECONCILIATION = text("""
    SELECT day, bill_lines, ledger_lines, matched, breaks, reconciled_at FROM reconciliations WHERE day = :day
""")
# The reimbursement row is the claim, once per voucher code (in code order, like the splits' claim).
_CLAIM_REIMBURSEMENTS = text("""
    INSERT INTO voucher_reimbursements (code, brand_id, store_id, amount_fen, journal_id)
    SELECT * FROM unnest(CAST(:codes AS text[]), CAST(:brand_ids AS text[]), CAST(:store_ids AS text[]),
                         CAST(:amounts AS bigint[]), CAST(:journal_ids AS text[])) AS v(code, b, s, a, j)
    ORDER BY v.code
    ON CONFLICT (code) DO NOTHING RETURNING code
""")
_WAIT_REFUND = text("""
    INSERT INTO waiting_refunds (order_id, refund_id, amount_fen) VALUES (:o, :r, :amount)
    ON CONFLICT (order_id, refund_id) DO NOTHING
""")
# Waiting refunds whose split has finished sharing, oldest first. Each waiting refund's split is one probe
# of its primary key: as a join, a plan made while `splits` was empty, or without its statistics, read every
# split (and with the waiting refunds probed once per completed split, ~63,000 buffers at 100,000 splits).
_READY_REFUNDS = text("""
    SELECT w.order_id, w.refund_id, w.amount_fen FROM waiting_refunds w
    WHERE (SELECT s.state FROM splits s WHERE s.order_id = w.order_id) = 'COMPLETED'
    ORDER BY w.received_at LIMIT :n
""")
_UNWAIT_REFUND = text("DELETE FROM waiting_refunds WHERE order_id = :o AND refund_id = :r")
_VERIFY_COUNTS = text("""
    SELECT (SELECT count(*) FROM journals) AS journals, (SELECT count(*) FROM postings) AS postings,
           (SELECT count(*) FROM accounts) AS accounts, (SELECT count(*) FROM splits) AS splits,
           (SELECT coalesce(sum(balance_fen), 0) FROM accounts) AS total
""")
_VERIFY_JOURNALS = text("""
    SELECT j.journal_id, coalesce(sum(p.amount_fen), 0) AS total, count(p.posting_id) AS legs
    FROM journals j LEFT JOIN postings p USING (journal_id)
    GROUP BY j.journal_id HAVING coalesce(sum(p.amount_fen), 0) <> 0 OR count(p.posting_id) < 2
    ORDER BY j.journal_id
""")
_VERIFY_ACCOUNTS = text("""
    SELECT a.party_type, a.party_id, a.purpose, a.balance_fen, coalesce(s.posted, 0) AS posted
    FROM accounts a LEFT JOIN (SELECT account_id, sum(amount_fen) AS posted FROM postings GROUP BY account_id) s
         USING (account_id)
    WHERE a.balance_fen <> coalesce(s.posted, 0)
    ORDER BY a.account_id
""")
_VERIFY_SPLITS = text("""
    SELECT s.order_id, s.paid_fen, coalesce(sum(l.amount_fen), 0) AS legs_total,
           coalesce(min(l.amount_fen), 0) AS smallest
    FROM splits s LEFT JOIN split_legs l USING (order_id)
    GROUP BY s.order_id HAVING coalesce(sum(l.amount_fen), 0) <> s.paid_fen OR min(l.amount_fen) < 0
    ORDER BY s.order_id
""")
_BALANCES = text("""
    SELECT purpose, balance_fen FROM accounts WHERE party_type = :party_type AND party_id = :party_id
""")


# Stored names back to the domain's enums by plain lookup: calling an enum class costs five times as much, and
# every split the sharing job reads has a dozen of them.
_PARTY_TYPE = {t.value: t for t in PartyType}
_ROLE = {r.value: r for r in SplitRole}
_LEG_STATE = {s.value: s for s in LegState}
_REASON = {r.value: r for r in ReceivableReason}
_SPLIT_STATE = {s.value: s for s in SplitState}


def _split_of(row: Row) -> Split:
    return Split(
        order_id=row.order_id, brand_id=row.brand_id, dealer_id=row.dealer_id, store_id=row.store_id,
        paid_fen=row.paid_fen, cost_fen=row.cost_fen, brand_funded_discount_fen=row.brand_funded_discount_fen,
        legs=tuple(SplitLeg(receiver=Party(_PARTY_TYPE[t], i), role=_ROLE[role], amount_fen=amount,
                            shared_fen=shared, state=_LEG_STATE[state], close_reason=reason, refunded_fen=refunded,
                            frozen_refund_fen=frozen)
                   for role, t, i, amount, shared, state, reason, refunded, frozen in row.legs),
        receivables=tuple(Receivable(creditor=Party(_PARTY_TYPE[ct], ci), debtor=Party(_PARTY_TYPE[dt], di),
                                     amount_fen=amount, reason=_REASON[reason])
                          for reason, ct, ci, dt, di, amount in row.receivables),
        payment_journal_id=row.payment_journal_id, split_journal_id=row.split_journal_id,
        settled_at=row.settled_at, state=_SPLIT_STATE[row.state], provider_txn_id=row.provider_txn_id,
        cap_fen=row.cap_fen, revision=row.revision,
    )


class ConcurrentProgress(RuntimeError):
    """Another worker advanced a split meanwhile (its lease ran out): this batch's progress is dropped."""


class LedgerStore:
    async def record_splits(self, conn: Connection, settlements: Sequence[Settlement], delay_s: float = 0.0
                            ) -> dict[str, datetime]:
        """Claim the splits of these orders and write their legs and receivables, due for profit sharing in
        `delay_s`, in one statement; the settled_at time of each split claimed now. An order split before is
        left out (the caller must post nothing for it), and so is an order's second settlement in the batch."""
        firsts: dict[str, Settlement] = {}
        for s in settlements:
            firsts.setdefault(s.split.order_id, s)
        splits = [s.split for s in firsts.values()]
        legs = [(split.order_id, n, leg) for split in splits for n, leg in enumerate(split.legs, 1)]
        rec = [(split, r) for split in splits for r in split.receivables]
        rows = await conn.execute(_RECORD_SPLITS, {
            "order_ids": [x.order_id for x in splits], "brand_ids": [x.brand_id for x in splits],
            "dealer_ids": [x.dealer_id for x in splits], "store_ids": [x.store_id for x in splits],
            "provider_txn_ids": [s.order.provider_txn_id for s in firsts.values()],
            "paid": [x.paid_fen for x in splits], "cost": [x.cost_fen for x in splits],
            "brand_funded": [x.brand_funded_discount_fen for x in splits],
            "payment_journals": [x.payment_journal_id for x in splits],
            "split_journals": [x.split_journal_id for x in splits],
            "paid_at": [s.order.paid_at for s in firsts.values()], "states": [x.state.value for x in splits],
            "caps": [x.cap_fen for x in splits], "delay_s": delay_s,
            "leg_orders": [o for o, _, _ in legs], "leg_numbers": [n for _, n, _ in legs],
            "leg_roles": [leg.role.value for _, _, leg in legs],
            "leg_types": [leg.receiver.type.value for _, _, leg in legs],
            "leg_ids": [leg.receiver.id for _, _, leg in legs],
            "leg_amounts": [leg.amount_fen for _, _, leg in legs],
            "leg_shared": [leg.shared_fen for _, _, leg in legs],
            "leg_states": [leg.state.value for _, _, leg in legs],
            "rec_orders": [x.order_id for x, _ in rec], "rec_reasons": [r.reason.value for _, r in rec],
            "rec_creditor_types": [r.creditor.type.value for _, r in rec],
            "rec_creditor_ids": [r.creditor.id for _, r in rec],
            "rec_debtor_types": [r.debtor.type.value for _, r in rec],
            "rec_debtor_ids": [r.debtor.id for _, r in rec], "rec_amounts": [r.amount_fen for _, r in rec],
            "rec_journals": [x.split_journal_id for x, _ in rec],
        })
        return {row.order_id: row.settled_at for row in rows}

    async def record_split(self, conn: Connection, settlement: Settlement, delay_s: float = 0.0
                           ) -> datetime | None:
        """`record_splits` for one order: its settled_at time, or None if it had been split already."""
        return (await self.record_splits(conn, [settlement], delay_s)).get(settlement.split.order_id)

    async def post(self, conn: Connection, journals: Sequence[Journal]) -> None:
        """Append balanced journals to the ledger and move the cached balances with them, atomically with
        the caller's transaction. A journal whose business key was posted before fails the transaction.

        Every account row the journals touch is locked here, in lock order, by this one statement: make it
        the last of the transaction (see `book`) and post once per transaction, so that no two transactions
        ever wait for each other's accounts in opposite orders and the hot ones stay locked only until the
        commit."""
        if not journals:
            return
        changes = net_changes(journals)
        account_n = {account: n for n, (account, _) in enumerate(changes, 1)}
        p_journals, p_accounts, p_amounts = [], [], []
        for journal_n, j in enumerate(journals, 1):
            for p in j.postings:
                p_journals.append(journal_n)
                p_accounts.append(account_n[p.account])
                p_amounts.append(p.amount_fen)
        result = await conn.execute(_POST, {
            "acc_types": [k.party.type.value for k, _ in changes],
            "acc_ids": [k.party.id for k, _ in changes],
            "acc_purposes": [k.purpose.value for k, _ in changes],
            "acc_changes": [change for _, change in changes],
            "j_ids": [j.journal_id for j in journals],
            "j_kinds": [j.kind.value for j in journals],
            "j_keys": [j.business_key for j in journals],
            "j_orders": [j.order_id for j in journals],
            "p_journals": p_journals, "p_accounts": p_accounts, "p_amounts": p_amounts,
        })
        if result.rowcount != len(p_amounts):
            # Every posting's account is among the upserted ones, so this is a bug, never bad input.
            raise RuntimeError(f"posted {result.rowcount} of {len(p_amounts)} postings")

    async def book(self, conn: Connection, journals: Sequence[Journal], owed: Sequence[Receivable] = ()) -> None:
        """What moves money, as the last statements of the caller's transaction: the debts the journals leave
        (debt rows in (debtor, creditor) order), then the journals themselves (account rows in lock order).
        The rows every concurrent writer shares are taken here and nowhere earlier, so they are held for these
        two statements and the commit, whatever else the transaction did before."""
        if owed:
            await self.add_debts(conn, owed)
        await self.post(conn, journals)

    async def split(self, conn: Connection, order_id: str) -> Split | None:
        found = await self.splits(conn, [order_id])
        return found[0] if found else None

    async def splits(self, conn: Connection, order_ids: Sequence[str]) -> list[Split]:
        """The splits of these orders (those that exist), in the given order, in one statement."""
        ids = list(order_ids)
        rows = {r.order_id: r for r in (await conn.execute(_SPLITS, {"ids": ids})).all()}
        return [_split_of(row) for oid in ids if (row := rows.get(oid)) is not None]

    async def claim_due(self, conn: Connection, limit: int, lease_s: float) -> list[Split]:
        """Lease up to `limit` splits whose next sharing step is due. Run it outside a transaction (`connect`):
        the lease must be committed before the splits are read (see _CLAIM_DUE)."""
        ids = [r.order_id for r in (await conn.execute(_CLAIM_DUE, {"n": limit, "lease_s": lease_s})).all()]
        return await self.splits(conn, ids) if ids else []

    async def record_progress(self, conn: Connection, progress: Sequence[Progress]
                              ) -> tuple[list[Journal], list[Receivable]]:
        """Write each split's progress over the state it was computed from, in one statement; the journals
        that progress implies (new successful shares, completions) and the debts completed splits leave, for
        the caller to `book` as the last step of its transaction."""
        ordered = sorted(progress, key=lambda p: p.after.order_id)
        legs = [(p.after.order_id, n, old.state.value, new.state.value, new.close_reason)
                for p in ordered for n, (old, new) in enumerate(zip(p.before.legs, p.after.legs, strict=True), 1)
                if old.state is not new.state]
        if ordered:
            counts = (await conn.execute(_ADVANCE, {
                "orders": [p.after.order_id for p in ordered], "old": [p.before.state.value for p in ordered],
                "new": [p.after.state.value for p in ordered], "errors": [p.error for p in ordered],
                "retry_s": [p.retry_s for p in ordered], "revisions": [p.before.revision for p in ordered],
                "leg_orders": [x[0] for x in legs], "legs": [x[1] for x in legs], "leg_old": [x[2] for x in legs],
                "leg_new": [x[3] for x in legs], "reasons": [x[4] for x in legs]})).one()
            if counts.splits != len(ordered):
                raise ConcurrentProgress(f"{len(ordered) - counts.splits} splits moved on meanwhile")
            if counts.legs != len(legs):
                raise ConcurrentProgress(f"{len(legs) - counts.legs} legs moved on meanwhile")
        journals = [j for p in progress for j in progress_journals(p.before, p.after)]
        owed = [r for p in progress if p.after.state is SplitState.COMPLETED
                and p.before.state is not SplitState.COMPLETED for r in p.after.owed]
        return journals, owed

    async def plan_transfers(self, conn: Connection, limit: int) -> int:
        """Record the next transfer for up to `limit` dealers that owe something and can pay."""
        planned = []
        for r in (await conn.execute(_TRANSFER_CANDIDATES, {"n": limit})).all():
            amount = transfer_amount(r.outstanding_fen, r.available_fen)
            if amount > 0:
                planned.append(DebtTransfer(Party(PartyType(r.creditor_type), r.creditor_id),
                                            Party(PartyType(r.debtor_type), r.debtor_id), r.transfers + 1, amount))
        if planned:
            await conn.execute(_PLAN_TRANSFERS, {
                "nos": [t.transfer_no for t in planned], "ct": [t.creditor.type.value for t in planned],
                "ci": [t.creditor.id for t in planned], "dt": [t.debtor.type.value for t in planned],
                "di": [t.debtor.id for t in planned], "seqs": [t.seq for t in planned],
                "amounts": [t.amount_fen for t in planned]})
        return len(planned)

    async def open_transfers(self, conn: Connection, limit: int) -> list[DebtTransfer]:
        return [DebtTransfer(Party(PartyType(r.creditor_type), r.creditor_id),
                             Party(PartyType(r.debtor_type), r.debtor_id), r.seq, r.amount_fen)
                for r in (await conn.execute(_OPEN_TRANSFERS, {"n": limit})).all()]

    async def finish_transfers(self, conn: Connection, transfers: Sequence[DebtTransfer]) -> None:
        """The provider made these transfers: settle the debts and post the journals, once."""
        result = await conn.execute(_FINISH_TRANSFERS, {"nos": [t.transfer_no for t in transfers]})
        if result.rowcount != len(transfers):
            raise ConcurrentProgress(f"{len(transfers) - result.rowcount} transfers finished meanwhile")
        await self.book(conn, [transfer_journal(t) for t in transfers])

    async def balances(self, conn: Connection, party: Party) -> dict[Purpose, int]:
        rows = (await conn.execute(_BALANCES, {"party_type": party.type.value, "party_id": party.id})).all()
        return {Purpose(r.purpose): r.balance_fen for r in rows}

    async def verify(self, conn: Connection) -> LedgerCheck:
        """Check the whole ledger; run it in one REPEATABLE READ snapshot so postings committed meanwhile
        cannot show up as a break."""
        counts = (await conn.execute(_VERIFY_COUNTS)).one()
        breaks = [LedgerBreak(BreakKind.UNBALANCED_JOURNAL, r.journal_id, 0, int(r.total))
                  for r in (await conn.execute(_VERIFY_JOURNALS)).all()]
        breaks += [LedgerBreak(BreakKind.BALANCE_DRIFT, f"{r.party_type}:{r.party_id}/{r.purpose}",
                               int(r.posted), r.balance_fen)
                   for r in (await conn.execute(_VERIFY_ACCOUNTS)).all()]
        if counts.total != 0:
            breaks.append(LedgerBreak(BreakKind.LEDGER_NOT_ZERO, "", 0, int(counts.total)))
        breaks += [LedgerBreak(BreakKind.SPLIT_MISMATCH, r.order_id, r.paid_fen,
                               int(r.legs_total) if r.smallest >= 0 else r.smallest)
                   for r in (await conn.execute(_VERIFY_SPLITS)).all()]
        return LedgerCheck(counts.journals, counts.postings, counts.accounts, counts.splits, tuple(breaks))

    # -- refunds -----------------------------------------------------------------------------------------

    async def record_refund(self, conn: Connection, refund: Refund) -> RefundOutcome | None:
        """Apply a refund to its order's split and book it: claw-backs on the legs, the split returns to
        request, the refund journal and what receivers now owe, in the caller's transaction. None if this
        refund id was recorded before (a replay has no second effect)."""
        outcome = await self.apply_refund(conn, refund)
        if outcome is not None:
            await self.book(conn, [outcome.journal], outcome.owed)
        return outcome

    async def apply_refund(self, conn: Connection, refund: Refund) -> RefundOutcome | None:
        """`record_refund` without the booking: the split's side only, with the split row locked first. The
        outcome's journal and debts are for the caller to `book` (once for all the refunds of a batch)."""
        lock = (await conn.execute(_LOCK_SPLIT, {"o": refund.order_id})).first()
        if lock is None:
            raise NotFound("order split", refund.order_id)
        seen = (await conn.execute(_REFUND_SEEN, {"o": refund.order_id, "r": refund.refund_id})).first()
        if seen is not None:
            if seen.amount_fen != refund.amount_fen:
                raise InvalidArgument.field("refund.amount_fen",
                                            f"refund {refund.refund_id} was recorded for {seen.amount_fen} fen")
            return None
        if lock.state == SplitState.SCHEDULED.value and lock.leased:
            raise FailedPrecondition(f"split of {refund.order_id} is being shared at the provider; retry the refund")
        [split] = await self.splits(conn, [refund.order_id])
        outcome = refunds.refund(split, refund)
        after = outcome.split
        await conn.execute(_RECORD_REFUND, {
            "o": refund.order_id, "r": refund.refund_id, "amount": refund.amount_fen,
            "journal_id": outcome.journal.journal_id,
            "legs": list(range(1, len(after.legs) + 1)), "refunded": [leg.refunded_fen for leg in after.legs],
            "frozen": [leg.frozen_refund_fen for leg in after.legs], "shared": [leg.shared_fen for leg in after.legs],
            "states": [leg.state.value for leg in after.legs],
            "ret_nos": [r.return_no for r in outcome.returns], "ret_roles": [r.role.value for r in outcome.returns],
            "ret_types": [r.receiver.type.value for r in outcome.returns],
            "ret_ids": [r.receiver.id for r in outcome.returns],
            "ret_amounts": [r.amount_fen for r in outcome.returns],
            "cap": after.cap_fen, "revision": after.revision,
        })
        return outcome

    async def wait_refund(self, conn: Connection, refund: Refund) -> None:
        """Keep a refund that cannot apply yet (the split is being shared) until the split completes."""
        await conn.execute(_WAIT_REFUND, {"o": refund.order_id, "r": refund.refund_id, "amount": refund.amount_fen})

    async def ready_refunds(self, conn: Connection, limit: int) -> list[Refund]:
        return [Refund(r.order_id, r.refund_id, r.amount_fen)
                for r in (await conn.execute(_READY_REFUNDS, {"n": limit})).all()]

    async def unwait_refund(self, conn: Connection, refund: Refund) -> None:
        await conn.execute(_UNWAIT_REFUND, {"o": refund.order_id, "r": refund.refund_id})

    async def add_debts(self, conn: Connection, owed: Sequence[Receivable]) -> None:
        await conn.execute(_ADD_DEBTS, {
            "ct": [r.creditor.type.value for r in owed], "ci": [r.creditor.id for r in owed],
            "dt": [r.debtor.type.value for r in owed], "di": [r.debtor.id for r in owed],
            "amounts": [r.amount_fen for r in owed]})

    async def due_returns(self, conn: Connection, limit: int) -> list[tuple[SplitReturn, Party]]:
        """Split returns still to obtain, each with the dealer it goes back to."""
        return [(SplitReturn(r.order_id, r.refund_id, SplitRole(r.role), Party(PartyType(r.receiver_type),
                                                                                 r.receiver_id), r.amount_fen),
                 Party(PartyType.DEALER, r.dealer_id))
                for r in (await conn.execute(_DUE_RETURNS, {"n": limit})).all()]

    async def finish_returns(self, conn: Connection, done: Sequence[tuple[SplitReturn, Party]],
                             failed: Sequence[tuple[SplitReturn, str]], retry_s: float) -> None:
        if failed:
            await conn.execute(_RETURNS_RETRY, {"nos": [r.return_no for r, _ in failed],
                                                "errors": [e[:500] for _, e in failed], "retry_s": retry_s})
        if done:
            result = await conn.execute(_RETURNS_DONE, {"nos": [r.return_no for r, _ in done]})
            if result.rowcount != len(done):
                raise ConcurrentProgress(f"{len(done) - result.rowcount} split returns finished meanwhile")
            await self.book(conn, [return_journal(r, dealer) for r, dealer in done])

    # -- reading a party's figures -----------------------------------------------------------------------

    async def journal_page(self, conn: Connection, party: Party, from_time: datetime, to_time: datetime,
                           after_posting: int, limit: int) -> list:
        """Up to `limit` of the party's postings after posting id `after_posting`, oldest first."""
        return list((await conn.execute(_JOURNAL_PAGE, {
            "t": party.type.value, "i": party.id, "after": after_posting, "from_time": from_time,
            "to_time": to_time, "n": limit})).all())

    async def statement(self, conn: Connection, party: Party, day: str) -> Statement:
        start, end = day_bounds(day)
        args = {"t": party.type.value, "i": party.id, "start": start, "end": end}
        column = "dealer_id" if party.type is PartyType.DEALER else "brand_id"
        o = (await conn.execute(_DAY_ORDERS[column], args)).one()
        refunded = (await conn.execute(_DAY_REFUNDS[column], args)).scalar_one()
        accounts = {Purpose(r.purpose): r for r in (await conn.execute(_DAY_ACCOUNTS, args)).all()}
        net = sum(int(accounts[p].change) for p in STATEMENT_PURPOSES[party.type] if p in accounts)

        def at_end(purpose: Purpose) -> int:
            return int(accounts[purpose].at_end) if purpose in accounts else 0

        if party.type is PartyType.DEALER:
            frozen, available = at_end(Purpose.MERCHANT_FROZEN), at_end(Purpose.MERCHANT_AVAILABLE)
        else:
            frozen, available = 0, at_end(Purpose.COST_SHARE)
        return Statement(party, day, o.orders, int(o.gross), int(o.coupons), int(o.cost), int(o.commissions),
                         int(refunded), net, frozen, available)

    # -- reconciliation ----------------------------------------------------------------------------------

    async def ledger_bill_lines(self, conn: Connection, day: str) -> list[BillLine]:
        """What the provider's bill for the day should list, as the ledger and its tables record it."""
        start, end = day_bounds(day)
        args = {"start": start, "end": end}
        lines = [BillLine(BillLineType.PAYMENT, r.reference, r.amount)
                 for r in (await conn.execute(_LEDGER_PAYMENTS, args)).all()]
        lines += [BillLine(BillLineType.SHARE, f"{request_no(r.order_id, 'share')}/{r.party_type}:{r.party_id}",
                           r.amount) for r in (await conn.execute(_LEDGER_SHARES, args)).all()]
        for kind, query in ((BillLineType.REFUND, _LEDGER_REFUNDS), (BillLineType.SPLIT_RETURN, _LEDGER_RETURNS),
                            (BillLineType.TRANSFER, _LEDGER_TRANSFERS)):
            lines += [BillLine(kind, r.reference, r.amount) for r in (await conn.execute(query, args)).all()]
        return lines

    async def save_reconciliation(self, conn: Connection, rec: Reconciliation) -> None:
        await conn.execute(_SAVE_RECONCILIATION, {
            "day": rec.day, "bill_lines": rec.bill_lines, "ledger_lines": rec.ledger_lines, "matched": rec.matched,
            "breaks": json.dumps([{"kind": b.kind.value, "type": b.type.value, "reference": b.reference,
                                   "bill_fen": b.bill_fen, "ledger_fen": b.ledger_fen} for b in rec.breaks])})

    async def reconciliation(self, conn: Connection, day: str) -> Reconciliation | None:
        row = (await conn.execute(_LOAD_RECONCILIATION, {"day": day})).first()
        if row is None:
            return None
        breaks = row.breaks if isinstance(row.breaks, list) else json.loads(row.breaks)
        return Reconciliation(row.day, row.bill_lines, row.ledger_lines, row.matched, tuple(
            ReconciliationBreak(ReconBreakKind(b["kind"]), BillLineType(b["type"]), b["reference"], b["bill_fen"],
                                b["ledger_fen"]) for b in breaks), row.reconciled_at)

    # -- vouchers ----------------------------------------------------------------------------------------

    async def reimburse(self, conn: Connection, redemption: CounterRedemption) -> bool:
        """Book the brand's reimbursement of a counter-redeemed voucher; False if it was booked before."""
        return bool(await self.reimburse_many(conn, [redemption]))

    async def reimburse_many(self, conn: Connection, redemptions: Sequence[CounterRedemption]
                             ) -> list[CounterRedemption]:
        """`reimburse` for many vouchers in two statements: the ones booked now (a voucher booked before, or
        twice in `redemptions`, is booked once)."""
        firsts: dict[str, tuple[CounterRedemption, Journal]] = {}
        for r in redemptions:
            if r.code not in firsts:
                firsts[r.code] = (r, reimbursement_journal(r))
        rows = await conn.execute(_CLAIM_REIMBURSEMENTS, {
            "codes": list(firsts), "brand_ids": [r.brand_id for r, _ in firsts.values()],
            "store_ids": [r.store_id for r, _ in firsts.values()],
            "amounts": [r.reimbursement_fen for r, _ in firsts.values()],
            "journal_ids": [j.journal_id for _, j in firsts.values()]})
        claimed = [firsts[code] for code in sorted(row.code for row in rows)]
        await self.book(conn, [j for _, j in claimed])
        return [r for r, _ in claimed]
