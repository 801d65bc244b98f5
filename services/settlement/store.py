"""SQL for the settlement schema: the ledger and the order splits.

Written for the consumer's batch transaction (many events per transaction): recording a split is one
statement and posting any number of journals is one statement, whatever the number of legs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from .domain import (
    BreakKind,
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
    net_changes,
    progress_journals,
)

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
        SELECT * FROM unnest(CAST(:j_ids AS text[]), CAST(:j_kinds AS text[]), CAST(:j_keys AS text[]),
                             CAST(:j_orders AS text[]))
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
           payment_journal_id, split_journal_id, settled_at, state, provider_txn_id, cap_fen
    FROM splits WHERE order_id = ANY(:ids)
""")
_LEGS = text("""
    SELECT order_id, role, receiver_type, receiver_id, amount_fen, shared_fen, state, close_reason
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
                CAST(:retry_s AS float8[])) AS u(order_id, old_state, state, error, retry_s)
    WHERE s.order_id = u.order_id AND s.state = u.old_state
""")
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
    async def record_split(self, conn: AsyncConnection, settlement: Settlement, delay_s: float = 0.0
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

    async def post(self, conn: AsyncConnection, journals: Sequence[Journal]) -> None:
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

    async def split(self, conn: AsyncConnection, order_id: str) -> Split | None:
        found = await self.splits(conn, [order_id])
        return found[0] if found else None

    async def splits(self, conn: AsyncConnection, order_ids: Sequence[str]) -> list[Split]:
        """The splits of these orders (those that exist), in the given order, in three statements."""
        ids = list(order_ids)
        rows = {r.order_id: r for r in (await conn.execute(_SPLITS, {"ids": ids})).all()}
        legs: dict[str, list[SplitLeg]] = {}
        for r in (await conn.execute(_LEGS, {"ids": ids})).all():
            legs.setdefault(r.order_id, []).append(SplitLeg(
                Party(PartyType(r.receiver_type), r.receiver_id), SplitRole(r.role), r.amount_fen,
                r.shared_fen, LegState(r.state), r.close_reason))
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
            cap_fen=row.cap_fen,
        ) for oid in ids if (row := rows.get(oid)) is not None]

    async def claim_due(self, conn: AsyncConnection, limit: int, lease_s: float) -> list[Split]:
        """Lease up to `limit` splits whose next sharing step is due."""
        ids = [r.order_id for r in (await conn.execute(_CLAIM_DUE, {"n": limit, "lease_s": lease_s})).all()]
        return await self.splits(conn, ids) if ids else []

    async def advance(self, conn: AsyncConnection, progress: Sequence[Progress]) -> None:
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
                "retry_s": [p.retry_s for p in progress]})
            if result.rowcount != len(progress):
                raise ConcurrentProgress(f"{len(progress) - result.rowcount} splits moved on meanwhile")
        journals = [j for p in progress for j in progress_journals(p.before, p.after)]
        if journals:
            await self.post(conn, journals)

    async def balances(self, conn: AsyncConnection, party: Party) -> dict[Purpose, int]:
        rows = (await conn.execute(_BALANCES, {"party_type": party.type.value, "party_id": party.id})).all()
        return {Purpose(r.purpose): r.balance_fen for r in rows}

    async def verify(self, conn: AsyncConnection) -> LedgerCheck:
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
