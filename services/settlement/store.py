"""SQL for the settlement schema: the ledger and the order splits.

Written for the consumer's batch transaction (many events per transaction): recording a split is one
statement and posting any number of journals is one statement, whatever the number of legs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import text

from services.runtime.db import Connection
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
    owed_after_sharing,
    progress_journals,
    reimbursement_journal,
    request_no,
    transfer_amount,
    transfer_journal,
)
from .reconciliation import BillLine, BillLineType, Reconciliation, ReconciliationBreak
from .reconciliation import BreakKind as ReconBreakKind
from .refunds import Refund, RefundOutcome, SplitReturn, return_journal

# The split row is the claim: ON CONFLICT DO NOTHING makes a second OrderPaid for the order a no-op, and the
# legs and receivables are written only if this statement claimed it.
_RECORD_SPLIT = text("""
    WITH claimed AS (
        INSERT INTO splits (order_id, brand_id, dealer_id, store_id, provider_txn_id, paid_fen, cost_fen,
                            brand_funded_discount_fen, payment_journal_id, split_journal_id, paid_at, state,
                            cap_fen, due_at)
        VALUES (:order_id, :brand_id, :dealer_id, :store_id, :provider_txn_id, :paid_fen, :cost_fen,
                :brand_funded_discount_fen, :payment_journal_id, :split_journal_id, :paid_at, :state,
                :cap_fen, clock_timestamp() + make_interval(secs => :delay_s))
        ON CONFLICT (order_id) DO NOTHING
        RETURNING order_id, settled_at
    ), legs AS (
        INSERT INTO split_legs (order_id, leg, role, receiver_type, receiver_id, amount_fen, shared_fen, state)
        SELECT c.order_id, l.leg, l.role, l.receiver_type, l.receiver_id, l.amount_fen, l.shared_fen, l.state
        FROM claimed c,
             unnest(CAST(:leg_roles AS text[]), CAST(:leg_types AS text[]), CAST(:leg_ids AS text[]),
                    CAST(:leg_amounts AS bigint[]), CAST(:leg_shared AS bigint[]), CAST(:leg_states AS text[]))
                 WITH ORDINALITY AS l(role, receiver_type, receiver_id, amount_fen, shared_fen, state, leg)
    ), receivables AS (
        INSERT INTO split_receivables (order_id, reason, creditor_type, creditor_id, debtor_type, debtor_id,
                                       amount_fen, journal_id)
        SELECT c.order_id, r.reason, r.creditor_type, r.creditor_id, r.debtor_type, r.debtor_id, r.amount_fen,
               :split_journal_id
        FROM claimed c,
             unnest(CAST(:rec_reasons AS text[]), CAST(:rec_creditor_types AS text[]),
                    CAST(:rec_creditor_ids AS text[]), CAST(:rec_debtor_types AS text[]),
                    CAST(:rec_debtor_ids AS text[]), CAST(:rec_amounts AS bigint[]))
                 AS r(reason, creditor_type, creditor_id, debtor_type, debtor_id, amount_fen)
    )
    SELECT settled_at FROM claimed
""")

# One statement posts a set of journals: the accounts are created on first use and their cached balances
# moved by each account's net change (rows locked in the domain's lock order), the journals are inserted,
# and the postings reference the accounts the upsert returned. The postings' deferred trigger re-checks at
# commit that every journal balances.
_POST = text("""
    WITH moved AS (
        INSERT INTO accounts AS a (party_type, party_id, purpose, balance_fen)
        SELECT * FROM unnest(CAST(:acc_types AS text[]), CAST(:acc_ids AS text[]),
                             CAST(:acc_purposes AS text[]), CAST(:acc_changes AS bigint[]))
        ON CONFLICT (party_type, party_id, purpose) DO UPDATE SET balance_fen = a.balance_fen + excluded.balance_fen
        RETURNING account_id, party_type, party_id, purpose
    ), journal AS (
        INSERT INTO journals (journal_id, kind, business_key, order_id)
        SELECT j.id, j.kind, j.key, nullif(j.order_id, '')
        FROM unnest(CAST(:j_ids AS text[]), CAST(:j_kinds AS text[]), CAST(:j_keys AS text[]),
                    CAST(:j_orders AS text[])) AS j(id, kind, key, order_id)
    )
    INSERT INTO postings (journal_id, account_id, amount_fen)
    SELECT p.journal_id, m.account_id, p.amount_fen
    FROM unnest(CAST(:p_journals AS text[]), CAST(:p_types AS text[]), CAST(:p_ids AS text[]),
                CAST(:p_purposes AS text[]), CAST(:p_amounts AS bigint[])) WITH ORDINALITY
             AS p(journal_id, party_type, party_id, purpose, amount_fen, n)
    JOIN moved m USING (party_type, party_id, purpose)
    ORDER BY p.n
""")

_SPLITS = text("""
    SELECT order_id, brand_id, dealer_id, store_id, paid_fen, cost_fen, brand_funded_discount_fen,
           payment_journal_id, split_journal_id, settled_at, state, provider_txn_id, cap_fen, revision
    FROM splits WHERE order_id = ANY(:ids)
""")
_LEGS = text("""
    SELECT order_id, role, receiver_type, receiver_id, amount_fen, shared_fen, state, close_reason, refunded_fen,
           frozen_refund_fen
    FROM split_legs WHERE order_id = ANY(:ids) ORDER BY order_id, leg
""")
_RECEIVABLES = text("""
    SELECT order_id, reason, creditor_type, creditor_id, debtor_type, debtor_id, amount_fen
    FROM split_receivables WHERE order_id = ANY(:ids) ORDER BY order_id, reason, creditor_type, creditor_id
""")
# The sharing job leases due splits, so two replicas never work on one split at once; a crashed worker's
# lease simply runs out.
_CLAIM_DUE = text("""
    UPDATE splits SET lease_until = clock_timestamp() + make_interval(secs => :lease_s), attempts = attempts + 1
    WHERE order_id IN (
        SELECT order_id FROM splits
        WHERE state <> 'COMPLETED' AND due_at <= clock_timestamp()
          AND (lease_until IS NULL OR lease_until <= clock_timestamp())
        ORDER BY due_at LIMIT :n FOR UPDATE SKIP LOCKED)
    RETURNING order_id
""")
# Progress is written only over the state it was computed from: a split moved on by someone else meanwhile
# makes the rowcount fall short and the whole batch roll back.
_ADVANCE_LEGS = text("""
    UPDATE split_legs l SET state = u.state, close_reason = u.close_reason
    FROM unnest(CAST(:orders AS text[]), CAST(:legs AS smallint[]), CAST(:old AS text[]), CAST(:new AS text[]),
                CAST(:reasons AS text[])) AS u(order_id, leg, old_state, state, close_reason)
    WHERE l.order_id = u.order_id AND l.leg = u.leg AND l.state = u.old_state
""")
_ADVANCE_SPLITS = text("""
    UPDATE splits s SET state = u.state, lease_until = NULL, last_error = nullif(u.error, ''),
        completed_at = CASE WHEN u.state = 'COMPLETED' THEN clock_timestamp() END,
        due_at = clock_timestamp() + make_interval(secs => u.retry_s)
    FROM unnest(CAST(:orders AS text[]), CAST(:old AS text[]), CAST(:new AS text[]), CAST(:errors AS text[]),
                CAST(:retry_s AS float8[]), CAST(:revisions AS integer[]))
             AS u(order_id, old_state, state, error, retry_s, revision)
    WHERE s.order_id = u.order_id AND s.state = u.old_state AND s.revision = u.revision
""")
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
# (the oldest creditor first), so the balance is spent once.
_TRANSFER_CANDIDATES = text("""
    SELECT DISTINCT ON (d.debtor_id) d.creditor_type, d.creditor_id, d.debtor_type, d.debtor_id,
           d.outstanding_fen, d.transfers, a.balance_fen AS available_fen
    FROM debts d
    JOIN accounts a ON a.party_type = d.debtor_type AND a.party_id = d.debtor_id AND a.purpose = 'MERCHANT_AVAILABLE'
    WHERE d.outstanding_fen > 0 AND d.debtor_type = 'DEALER' AND a.balance_fen > 0
      AND NOT EXISTS (SELECT 1 FROM debt_transfers t WHERE t.debtor_type = d.debtor_type
                      AND t.debtor_id = d.debtor_id AND t.state = 'REQUESTED')
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
_OPEN_TRANSFERS = text("""
    SELECT creditor_type, creditor_id, debtor_type, debtor_id, seq, amount_fen FROM debt_transfers
    WHERE state = 'REQUESTED' ORDER BY requested_at LIMIT :n
""")
_FINISH_TRANSFERS = text("""
    WITH done AS (
        UPDATE debt_transfers SET state = 'DONE', done_at = clock_timestamp()
        WHERE transfer_no = ANY(:nos) AND state = 'REQUESTED'
        RETURNING creditor_type, creditor_id, debtor_type, debtor_id, amount_fen
    )
    UPDATE debts d SET outstanding_fen = d.outstanding_fen - done.amount_fen, transfers = d.transfers + 1
    FROM done
    WHERE (d.creditor_type, d.creditor_id, d.debtor_type, d.debtor_id)
        = (done.creditor_type, done.creditor_id, done.debtor_type, done.debtor_id)
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
_DUE_RETURNS = text("""
    SELECT r.return_no, r.order_id, r.refund_id, r.role, r.receiver_type, r.receiver_id, r.amount_fen, s.dealer_id
    FROM split_returns r JOIN splits s USING (order_id)
    WHERE r.state = 'REQUESTED' AND r.next_attempt_at <= clock_timestamp()
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
    WHERE return_no = u.no AND state = 'REQUESTED'
""")
_JOURNAL_PAGE = text("""
    SELECT p.posting_id, j.journal_id, j.kind, j.business_key, coalesce(j.order_id, '') AS order_id, a.purpose,
           p.amount_fen, j.created_at
    FROM accounts a JOIN postings p USING (account_id) JOIN journals j USING (journal_id)
    WHERE a.party_type = :t AND a.party_id = :i AND p.posting_id > :after
      AND j.created_at >= :from_time AND j.created_at < :to_time
    ORDER BY p.posting_id LIMIT :n
""")
_DAY_ORDERS = text("""
    SELECT count(*) AS orders, coalesce(sum(s.paid_fen), 0) AS gross,
           coalesce(sum(s.brand_funded_discount_fen), 0) AS coupons,
           coalesce(sum(l.cost), 0) AS cost, coalesce(sum(l.commissions), 0) AS commissions
    FROM splits s
    CROSS JOIN LATERAL (
        SELECT sum(amount_fen) FILTER (WHERE role = 'COST_TO_BRAND') AS cost,
               sum(amount_fen) FILTER (WHERE role IN ('STORE_COMMISSION', 'GUIDE_COMMISSION', 'PLATFORM_FEE'))
                   AS commissions
        FROM split_legs WHERE order_id = s.order_id) l
    WHERE (CASE WHEN :t = 'DEALER' THEN s.dealer_id ELSE s.brand_id END) = :i
      AND s.settled_at >= :start AND s.settled_at < :end
""")
_DAY_REFUNDS = text("""
    SELECT coalesce(sum(r.amount_fen), 0) AS refunded FROM refunds r JOIN splits s USING (order_id)
    WHERE (CASE WHEN :t = 'DEALER' THEN s.dealer_id ELSE s.brand_id END) = :i
      AND r.recorded_at >= :start AND r.recorded_at < :end
""")
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
_CLAIM_REIMBURSEMENT = text("""
    INSERT INTO voucher_reimbursements (code, brand_id, store_id, amount_fen, journal_id)
    VALUES (:code, :brand_id, :store_id, :amount, :journal_id)
    ON CONFLICT (code) DO NOTHING RETURNING code
""")
_WAIT_REFUND = text("""
    INSERT INTO waiting_refunds (order_id, refund_id, amount_fen) VALUES (:o, :r, :amount)
    ON CONFLICT (order_id, refund_id) DO NOTHING
""")
# Waiting refunds whose split has finished sharing, oldest first.
_READY_REFUNDS = text("""
    SELECT w.order_id, w.refund_id, w.amount_fen FROM waiting_refunds w JOIN splits s USING (order_id)
    WHERE s.state = 'COMPLETED' ORDER BY w.received_at LIMIT :n
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


class ConcurrentProgress(RuntimeError):
    """Another worker advanced a split meanwhile (its lease ran out): this batch's progress is dropped."""


class LedgerStore:
    async def record_split(self, conn: Connection, settlement: Settlement, delay_s: float = 0.0
                           ) -> datetime | None:
        """Claim the order's split and write its legs, due for profit sharing in `delay_s`; the settled_at
        time, or None if the order had been split already (the caller must then post nothing)."""
        split = settlement.split
        rec = split.receivables
        row = (await conn.execute(_RECORD_SPLIT, {
            "order_id": split.order_id, "brand_id": split.brand_id, "dealer_id": split.dealer_id,
            "store_id": split.store_id, "provider_txn_id": settlement.order.provider_txn_id,
            "paid_fen": split.paid_fen, "cost_fen": split.cost_fen,
            "brand_funded_discount_fen": split.brand_funded_discount_fen,
            "payment_journal_id": split.payment_journal_id, "split_journal_id": split.split_journal_id,
            "paid_at": settlement.order.paid_at, "state": split.state.value, "cap_fen": split.cap_fen,
            "delay_s": delay_s,
            "leg_roles": [leg.role.value for leg in split.legs],
            "leg_types": [leg.receiver.type.value for leg in split.legs],
            "leg_ids": [leg.receiver.id for leg in split.legs],
            "leg_amounts": [leg.amount_fen for leg in split.legs],
            "leg_shared": [leg.shared_fen for leg in split.legs],
            "leg_states": [leg.state.value for leg in split.legs],
            "rec_reasons": [r.reason.value for r in rec],
            "rec_creditor_types": [r.creditor.type.value for r in rec],
            "rec_creditor_ids": [r.creditor.id for r in rec],
            "rec_debtor_types": [r.debtor.type.value for r in rec],
            "rec_debtor_ids": [r.debtor.id for r in rec],
            "rec_amounts": [r.amount_fen for r in rec],
        })).first()
        return None if row is None else row.settled_at

    async def post(self, conn: Connection, journals: Sequence[Journal]) -> None:
        """Append balanced journals to the ledger and move the cached balances with them, atomically with
        the caller's transaction. A journal whose business key was posted before fails the transaction."""
        changes = net_changes(journals)
        postings = [(j.journal_id, p) for j in journals for p in j.postings]
        result = await conn.execute(_POST, {
            "acc_types": [k.party.type.value for k, _ in changes],
            "acc_ids": [k.party.id for k, _ in changes],
            "acc_purposes": [k.purpose.value for k, _ in changes],
            "acc_changes": [change for _, change in changes],
            "j_ids": [j.journal_id for j in journals],
            "j_kinds": [j.kind.value for j in journals],
            "j_keys": [j.business_key for j in journals],
            "j_orders": [j.order_id for j in journals],
            "p_journals": [jid for jid, _ in postings],
            "p_types": [p.account.party.type.value for _, p in postings],
            "p_ids": [p.account.party.id for _, p in postings],
            "p_purposes": [p.account.purpose.value for _, p in postings],
            "p_amounts": [p.amount_fen for _, p in postings],
        })
        if result.rowcount != len(postings):
            # Every posting's account is among the upserted ones, so this is a bug, never bad input.
            raise RuntimeError(f"posted {result.rowcount} of {len(postings)} postings")

    async def split(self, conn: Connection, order_id: str) -> Split | None:
        found = await self.splits(conn, [order_id])
        return found[0] if found else None

    async def splits(self, conn: Connection, order_ids: Sequence[str]) -> list[Split]:
        """The splits of these orders (those that exist), in the given order, in three statements."""
        ids = list(order_ids)
        rows = {r.order_id: r for r in (await conn.execute(_SPLITS, {"ids": ids})).all()}
        legs: dict[str, list[SplitLeg]] = {}
        for r in (await conn.execute(_LEGS, {"ids": ids})).all():
            legs.setdefault(r.order_id, []).append(SplitLeg(
                Party(PartyType(r.receiver_type), r.receiver_id), SplitRole(r.role), r.amount_fen,
                r.shared_fen, LegState(r.state), r.close_reason, r.refunded_fen, r.frozen_refund_fen))
        receivables: dict[str, list[Receivable]] = {}
        for r in (await conn.execute(_RECEIVABLES, {"ids": ids})).all():
            receivables.setdefault(r.order_id, []).append(Receivable(
                Party(PartyType(r.creditor_type), r.creditor_id), Party(PartyType(r.debtor_type), r.debtor_id),
                r.amount_fen, ReceivableReason(r.reason)))
        return [Split(
            order_id=row.order_id, brand_id=row.brand_id, dealer_id=row.dealer_id, store_id=row.store_id,
            paid_fen=row.paid_fen, cost_fen=row.cost_fen, brand_funded_discount_fen=row.brand_funded_discount_fen,
            legs=tuple(legs.get(row.order_id, ())), receivables=tuple(receivables.get(row.order_id, ())),
            payment_journal_id=row.payment_journal_id, split_journal_id=row.split_journal_id,
            settled_at=row.settled_at, state=SplitState(row.state), provider_txn_id=row.provider_txn_id,
            cap_fen=row.cap_fen, revision=row.revision,
        ) for oid in ids if (row := rows.get(oid)) is not None]

    async def claim_due(self, conn: Connection, limit: int, lease_s: float) -> list[Split]:
        """Lease up to `limit` splits whose next sharing step is due."""
        ids = [r.order_id for r in (await conn.execute(_CLAIM_DUE, {"n": limit, "lease_s": lease_s})).all()]
        return await self.splits(conn, ids) if ids else []

    async def advance(self, conn: Connection, progress: Sequence[Progress]) -> None:
        """Write each split's progress over the state it was computed from, and post the journals that
        progress implies (new successful shares, completions), all in the caller's transaction."""
        legs = [(p.after.order_id, i + 1, old.state.value, new.state.value, new.close_reason)
                for p in progress for i, (old, new) in enumerate(zip(p.before.legs, p.after.legs, strict=True))
                if old.state is not new.state]
        if legs:
            result = await conn.execute(_ADVANCE_LEGS, {
                "orders": [x[0] for x in legs], "legs": [x[1] for x in legs], "old": [x[2] for x in legs],
                "new": [x[3] for x in legs], "reasons": [x[4] for x in legs]})
            if result.rowcount != len(legs):
                raise ConcurrentProgress(f"{len(legs) - result.rowcount} legs moved on meanwhile")
        if progress:
            result = await conn.execute(_ADVANCE_SPLITS, {
                "orders": [p.after.order_id for p in progress], "old": [p.before.state.value for p in progress],
                "new": [p.after.state.value for p in progress], "errors": [p.error for p in progress],
                "retry_s": [p.retry_s for p in progress], "revisions": [p.before.revision for p in progress]})
            if result.rowcount != len(progress):
                raise ConcurrentProgress(f"{len(progress) - result.rowcount} splits moved on meanwhile")
        journals = [j for p in progress for j in progress_journals(p.before, p.after)]
        if journals:
            await self.post(conn, journals)
        owed = [r for p in progress if p.after.state is SplitState.COMPLETED
                and p.before.state is not SplitState.COMPLETED for r in owed_after_sharing(p.after)]
        if owed:
            await self.add_debts(conn, owed)

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
        await self.post(conn, [transfer_journal(t) for t in transfers])

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
        """Apply a refund to its order's split: claw-backs on the legs, the refund journal, the split
        returns to request and what receivers now owe, in the caller's transaction. None if this refund id
        was recorded before (a replay has no second effect)."""
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
        await self.post(conn, [outcome.journal])
        if outcome.owed:
            await self.add_debts(conn, outcome.owed)
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
        if done:
            result = await conn.execute(_RETURNS_DONE, {"nos": [r.return_no for r, _ in done]})
            if result.rowcount != len(done):
                raise ConcurrentProgress(f"{len(done) - result.rowcount} split returns finished meanwhile")
            await self.post(conn, [return_journal(r, dealer) for r, dealer in done])
        if failed:
            await conn.execute(_RETURNS_RETRY, {"nos": [r.return_no for r, _ in failed],
                                                "errors": [e[:500] for _, e in failed], "retry_s": retry_s})

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
        o = (await conn.execute(_DAY_ORDERS, args)).one()
        refunded = (await conn.execute(_DAY_REFUNDS, args)).scalar_one()
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
        journal = reimbursement_journal(redemption)
        claimed = (await conn.execute(_CLAIM_REIMBURSEMENT, {
            "code": redemption.code, "brand_id": redemption.brand_id, "store_id": redemption.store_id,
            "amount": redemption.reimbursement_fen, "journal_id": journal.journal_id})).first()
        if claimed is None:
            return False
        await self.post(conn, [journal])
        return True
