"""The sharing job: carries each decided split out at the payment provider, exactly once.

One pass leases a batch of due splits and, per split, walks as far as the provider lets it:

    SCHEDULED  --create sharing order (receivers, amounts)-->  SHARING
    SHARING    --query until every receiver is SUCCESS/CLOSED-->  UNFREEZING
    UNFREEZING --unfreeze the rest to the dealer-->  COMPLETED (OrderSplitSettled is published)

then writes the whole batch's progress, and the journals it implies, in one transaction. Nothing is written
between provider calls: after a crash anywhere the pass starts again from the last written state and makes
the very same requests (their numbers are derived from the order and the step), which the provider answers
without acting twice; each journal's business key makes posting it a second time impossible."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from services.runtime import jobs, log, outbox
from services.runtime.db import Database, retry_conflicts

from . import domain
from .domain import LegState, Progress, Split, SplitState
from .messages import split_settled
from .provider import ProviderError, Receiver, ReceiverState, ReturnState, SharingOrderResult, SharingProvider
from .store import LedgerStore

SPLIT_SETTLED = "settlement.split.settled"
_log = log.get(__name__)

# A step hook gets the step's name; tests raise SimulatedCrash from it to stop between two steps.
StepHook = Callable[[str], None]


def _no_hook(step: str) -> None:
    return None


class ProviderDisagrees(RuntimeError):
    """The provider's answer does not match the request we made: a bug or a foreign request number."""


def apply_results(split: Split, result: SharingOrderResult) -> Split:
    by_account = {r.account: r for r in result.receivers}
    legs, changed = [], False
    for leg in split.legs:
        if not leg.is_receiver:
            legs.append(leg)
            continue
        r = by_account.get(domain.receiver_account(leg.receiver))
        if r is None or r.amount_fen != leg.shared_fen:
            raise ProviderDisagrees(f"{result.out_order_no}: receiver {leg.receiver} answered {r}")
        state = LegState(r.state.value)
        if leg.state in (LegState.SUCCESS, LegState.CLOSED) or state is leg.state:
            legs.append(leg)  # final results never change; an unchanged one needs no new leg
            continue
        legs.append(dataclasses.replace(leg, state=state,
                                        close_reason=r.fail_reason if r.state is ReceiverState.CLOSED else ""))
        changed = True
    return dataclasses.replace(split, legs=tuple(legs)) if changed else split


def _all_final(split: Split) -> bool:
    return all(leg.state in (LegState.SUCCESS, LegState.CLOSED) for leg in split.legs if leg.is_receiver)


class SharingExecutor:
    def __init__(self, engine: Database, store: LedgerStore, provider: SharingProvider, *, batch: int = 200,
                 lease_s: float = 30.0, poll_s: float = 1.0, retry_s: float = 5.0, hook: StepHook = _no_hook):
        self.engine = engine
        self.store = store
        self.provider = provider
        self.batch = batch
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.hook = hook

    async def run(self, idle_s: float = 0.2) -> None:
        """The background job: pass after pass, resting only when nothing was due."""
        await jobs.repeat("sharing pass", self.run_once, rest_s=idle_s, full=self.batch)

    async def run_once(self) -> int:
        """One pass over up to `batch` due splits; the number of splits worked on."""
        async with self.engine.connect() as conn:
            splits = await self.store.claim_due(conn, self.batch, self.lease_s)
        if not splits:
            return 0
        progress = await asyncio.gather(*(self._advance(s) for s in splits))
        self.hook("before_record")
        settled = [(SPLIT_SETTLED, split_settled(p.after)) for p in progress
                   if p.after.state is SplitState.COMPLETED and p.before.state is not SplitState.COMPLETED]

        async def record() -> None:
            async with self.engine.begin() as conn:
                journals, owed = await self.store.record_progress(conn, progress)
                await outbox.add_many(conn, settled)
                await self.store.book(conn, journals, owed)

        # A deadlock victim is written again at once: otherwise its splits would sit out their whole lease.
        await retry_conflicts(record)
        return len(splits)

    async def _advance(self, before: Split) -> Progress:
        split = before
        try:
            split = await self._walk(split)
        except ProviderError as exc:
            # Keep what the provider did confirm; the failed step is retried later with the same number.
            _log.info("provider step failed; will retry", order_id=before.order_id, error=repr(exc))
            return Progress(before, split, error=repr(exc)[:500], retry_s=self.retry_s)
        except Exception as exc:
            # An answer we cannot make sense of (ProviderDisagrees, a bug): park this split for a while and
            # keep the rest of the batch moving.
            _log.error("sharing step failed", order_id=before.order_id, error=repr(exc))
            return Progress(before, before, error=repr(exc)[:500], retry_s=max(self.retry_s, 30.0))
        if split.state is SplitState.COMPLETED:
            return Progress(before, split)
        return Progress(before, split, retry_s=self.poll_s)

    async def _walk(self, split: Split) -> Split:
        merchant = domain.receiver_account(split.dealer)
        state = split.state
        if state is SplitState.SCHEDULED:
            receivers = tuple(Receiver(domain.receiver_account(leg.receiver), leg.shared_fen)
                              for leg in split.legs if leg.is_receiver)
            # With nothing to share (all of it stays with the dealer, or the cap lets nothing out) there is no
            # sharing order to make or query: the split goes straight on to unfreezing.
            if receivers:
                result = await self.provider.create_order(domain.request_no(split.order_id, "share"),
                                                          split.provider_txn_id, merchant, receivers)
                self.hook("after_create")
                split = apply_results(split, result)
            state = SplitState.SHARING
        if state is SplitState.SHARING and not _all_final(split):
            result = await self.provider.query_order(domain.request_no(split.order_id, "share"),
                                                     split.provider_txn_id)
            self.hook("after_query")
            split = apply_results(split, result)
        if state is SplitState.SHARING and _all_final(split):
            state = SplitState.UNFREEZING
        if state is SplitState.UNFREEZING:
            await self.provider.unfreeze(domain.request_no(split.order_id, "unfreeze"), split.provider_txn_id,
                                         merchant)
            self.hook("after_unfreeze")
            state = SplitState.COMPLETED
        return split if state is split.state else dataclasses.replace(split, state=state)


class DebtTransferJob:
    """Periodically settles what dealers owe (e.g. the part of legs above the sharing cap) by provider
    transfers from their available balance. Each transfer is recorded before it is requested, so after a
    crash the same request number is sent again and the debt is settled once."""

    def __init__(self, engine: Database, store: LedgerStore, provider: SharingProvider, *, batch: int = 200,
                 hook: StepHook = _no_hook):
        self.engine = engine
        self.store = store
        self.provider = provider
        self.batch = batch
        self.hook = hook

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                while await self.run_once() >= self.batch:
                    pass
            except Exception as exc:
                _log.warning("debt transfer pass failed", error=repr(exc))

    async def run_once(self) -> int:
        """Finish transfers left in flight, plan the next ones and make them; the number finished."""
        async with self.engine.begin() as conn:
            await self.store.plan_transfers(conn, self.batch)
        self.hook("after_plan")
        async with self.engine.connect() as conn:
            transfers = await self.store.open_transfers(conn, self.batch)
        done = []
        for t in transfers:
            try:
                await self.provider.transfer(t.transfer_no, domain.receiver_account(t.debtor),
                                             domain.receiver_account(t.creditor), t.amount_fen)
            except ProviderError as exc:
                _log.info("transfer failed; will retry", transfer_no=t.transfer_no, error=repr(exc))
                continue
            done.append(t)
        self.hook("after_transfer")
        if done:
            async with self.engine.begin() as conn:
                await self.store.finish_transfers(conn, done)
        return len(done)


class SplitReturnJob:
    """Applies refunds that waited for their split to complete, then asks receivers for the split returns
    refunds call for, with the same request number until each one succeeds, and books each success once."""

    def __init__(self, engine: Database, store: LedgerStore, provider: SharingProvider, *, batch: int = 200,
                 retry_s: float = 5.0, hook: StepHook = _no_hook):
        self.engine = engine
        self.store = store
        self.provider = provider
        self.batch = batch
        self.retry_s = retry_s
        self.hook = hook

    async def run(self, idle_s: float = 1.0) -> None:
        await jobs.repeat("split return pass", self.run_once, rest_s=idle_s, full=self.batch)

    async def run_once(self) -> int:
        await self.apply_waiting_refunds()
        async with self.engine.connect() as conn:
            due = await self.store.due_returns(conn, self.batch)
        done, failed = [], []
        for ret, dealer in due:
            try:
                result = await self.provider.create_return(ret.return_no, domain.request_no(ret.order_id, "share"),
                                                           domain.receiver_account(ret.receiver), ret.amount_fen)
            except ProviderError as exc:
                failed.append((ret, repr(exc)))
                continue
            if result.state is ReturnState.SUCCESS:
                done.append((ret, dealer))
            else:
                failed.append((ret, f"{result.state.value} {result.fail_reason}".strip()))
        self.hook("after_return")
        if done or failed:
            async with self.engine.begin() as conn:
                await self.store.finish_returns(conn, done, failed, self.retry_s)
        return len(due)

    async def apply_waiting_refunds(self) -> int:
        async with self.engine.connect() as conn:
            ready = await self.store.ready_refunds(conn, self.batch)
        for refund in ready:
            try:
                async with self.engine.begin() as conn:
                    applied = await self.store.apply_refund(conn, refund)
                    await self.store.unwait_refund(conn, refund)
                    if applied is not None:
                        await self.store.book(conn, [applied.journal], applied.owed)
            except Exception as exc:  # e.g. more than is left: keep it visible, do not block the others
                _log.error("waiting refund cannot apply", order_id=refund.order_id, refund_id=refund.refund_id,
                           error=repr(exc))
        return len(ready)
