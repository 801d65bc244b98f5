"""Refunds against a split, free of I/O: who gives back how much, and the journals that record it.

Claw-back
---------
Each refund takes its amount back from the split's legs in proportion to what each leg still holds (the leg
less what earlier refunds took), by the largest-remainder method. So every refund is exact to the fen, no leg
ever gives back more than it holds (no leg goes negative), refunds in a row add up to exactly what was
refunded, and refunding everything that is left takes back every leg exactly (a full refund reverses the
split).

Where the money comes from depends on how far the split got:

- SCHEDULED (nothing shared yet): the refund comes out of the frozen funds; the legs shrink before they are
  shared (`frozen_refund_fen`), and what may be shared is re-capped on what is left of the payment.
      dealer MERCHANT_FROZEN −r, provider PAYMENTS_CLEARING +r
- COMPLETED: the provider refunds from the dealer's available balance, and each receiver owes the dealer its
  claw-back. The part of it the receiver got through profit sharing is asked back with a split return
  (分账回退), retried with the same request number until it succeeds; any further part stays owed (a debt
  of the receiver to the dealer, netted later against what the dealer owes it).
      dealer MERCHANT_AVAILABLE −r, provider PAYMENTS_CLEARING +r,
      receiver PAYABLE −c, dealer RECEIVABLE +c                    for each receiver's claw-back c
  and when a split return of x succeeds:
      receiver <its leg account> −x, dealer MERCHANT_AVAILABLE +x, receiver PAYABLE +x, dealer RECEIVABLE −x
  A refund that completes the full amount also reverses the shortfalls the split booked (each debt is
  matched by an equal debt the other way).
- SHARING / UNFREEZING: the provider is mid-way; `refund` refuses (FailedPrecondition) and the caller keeps
  the refund waiting until the split completes (events.RefundHandler, executor.SplitReturnJob).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.runtime.money import allocate

from .domain import (
    LEG_PURPOSE,
    PAYMENT_PROVIDER,
    AccountKey,
    Journal,
    JournalKind,
    LegState,
    Party,
    Posting,
    Purpose,
    Receivable,
    ReceivableReason,
    Split,
    SplitLeg,
    SplitRole,
    SplitState,
    request_no,
    share_caps,
)


@dataclass(frozen=True)
class Refund:
    """A refund the provider made to the consumer for (part of) an order."""

    order_id: str
    # The provider's refund id: the same refund reported twice is one refund.
    refund_id: str
    amount_fen: int


@dataclass(frozen=True)
class SplitReturn:
    """A split return to request from a receiver after a refund, with its deterministic request number."""

    order_id: str
    refund_id: str
    role: SplitRole
    receiver: Party
    amount_fen: int

    @property
    def return_no(self) -> str:
        return request_no(self.order_id, f"return/{self.refund_id}/{self.role.value}")


@dataclass(frozen=True)
class RefundOutcome:
    split: Split  # the split with the refund applied to its legs
    journal: Journal
    returns: tuple[SplitReturn, ...]
    # Debts the refund creates (receivers owing the dealer what no split return asks back).
    owed: tuple[Receivable, ...]


def refunded_fen(split: Split) -> int:
    return sum(leg.refunded_fen for leg in split.legs)


def claw_back(split: Split, amount_fen: int) -> list[int]:
    """How much of `amount_fen` each leg gives back: in proportion to what each still holds."""
    held = [leg.amount_fen - leg.refunded_fen for leg in split.legs]
    if amount_fen <= 0:
        raise InvalidArgument.field("refund.amount_fen", "must be positive")
    if amount_fen > sum(held):
        raise InvalidArgument.field(
            "refund.amount_fen", f"{amount_fen} fen exceeds the {sum(held)} fen left to refund on the order")
    return allocate(amount_fen, held)


def refund(split: Split, r: Refund) -> RefundOutcome:
    if r.order_id != split.order_id:
        raise InvalidArgument.field("refund.order_id", "is not the split's order")
    if split.state in (SplitState.SHARING, SplitState.UNFREEZING):
        raise FailedPrecondition(f"split of {split.order_id} is being shared at the provider; retry the refund")
    claws = claw_back(split, r.amount_fen)
    key = r.refund_id
    clearing = Posting(AccountKey(PAYMENT_PROVIDER, Purpose.PAYMENTS_CLEARING), r.amount_fen)
    dealer = split.dealer
    if split.state is SplitState.SCHEDULED:
        legs = [dataclasses.replace(leg, refunded_fen=leg.refunded_fen + c, frozen_refund_fen=leg.frozen_refund_fen + c)
                for leg, c in zip(split.legs, claws, strict=True)]
        left = split.paid_fen - sum(leg.frozen_refund_fen for leg in legs)
        cap = split.cap_fen * left // split.paid_fen
        after = dataclasses.replace(split, legs=tuple(share_caps(legs, cap)), cap_fen=cap,
                                    revision=split.revision + 1)
        journal = Journal.of(JournalKind.REFUND, split.order_id, [
            Posting(AccountKey(dealer, Purpose.MERCHANT_FROZEN), -r.amount_fen), clearing], fact=key)
        return RefundOutcome(after, journal, (), ())

    postings = [Posting(AccountKey(dealer, Purpose.MERCHANT_AVAILABLE), -r.amount_fen), clearing]
    returns: list[SplitReturn] = []
    owed: list[Receivable] = []
    legs = []
    for leg, c in zip(split.legs, claws, strict=True):
        legs.append(dataclasses.replace(leg, refunded_fen=leg.refunded_fen + c))
        if leg.role is SplitRole.PROFIT_TO_DEALER or c == 0:
            continue
        postings += [Posting(AccountKey(leg.receiver, Purpose.PAYABLE), -c),
                     Posting(AccountKey(dealer, Purpose.RECEIVABLE), c)]
        returnable = _received(leg) - _clawed_by_returns(leg)
        back = min(c, max(returnable, 0))
        if back:
            returns.append(SplitReturn(split.order_id, r.refund_id, leg.role, leg.receiver, back))
        if c - back:
            owed.append(Receivable(dealer, leg.receiver, c - back, ReceivableReason.REFUND_CLAWBACK))
    after = dataclasses.replace(split, legs=tuple(legs))
    if refunded_fen(after) == split.paid_fen:
        # Fully refunded: the shortfalls the split booked (debts beyond its legs) are reversed by equal debts
        # the other way. (Parts of legs left owed — above the cap, closed — are covered by the claw-backs.)
        for o in split.receivables:
            postings += [Posting(AccountKey(o.creditor, Purpose.PAYABLE), -o.amount_fen),
                         Posting(AccountKey(o.debtor, Purpose.RECEIVABLE), o.amount_fen)]
            owed.append(Receivable(o.debtor, o.creditor, o.amount_fen, ReceivableReason.REFUND_CLAWBACK))
    journal = Journal.of(JournalKind.REFUND, split.order_id, _net(postings), fact=key)
    return RefundOutcome(after, journal, tuple(returns), tuple(owed))


def _received(leg: SplitLeg) -> int:
    """What the receiver got through profit sharing."""
    return leg.shared_fen if leg.state is LegState.SUCCESS else 0


def _clawed_by_returns(leg: SplitLeg) -> int:
    """What earlier refunds already asked back of the shared part: refunds take from the shared part first,
    so it is the smaller of what was clawed from the leg after sharing and what was shared."""
    return min(leg.refunded_fen - leg.frozen_refund_fen, _received(leg))


def return_journal(ret: SplitReturn, dealer: Party) -> Journal:
    """The receiver gave its share back (the split return succeeded): the debt it had is settled."""
    return Journal.of(JournalKind.SPLIT_RETURN, ret.order_id, [
        Posting(AccountKey(ret.receiver, LEG_PURPOSE[ret.role]), -ret.amount_fen),
        Posting(AccountKey(dealer, Purpose.MERCHANT_AVAILABLE), ret.amount_fen),
        Posting(AccountKey(ret.receiver, Purpose.PAYABLE), ret.amount_fen),
        Posting(AccountKey(dealer, Purpose.RECEIVABLE), -ret.amount_fen),
    ], fact=f"{ret.refund_id}/{ret.role.value}")


def _net(postings: list[Posting]) -> list[Posting]:
    merged: dict[AccountKey, int] = {}
    for p in postings:
        merged[p.account] = merged.get(p.account, 0) + p.amount_fen
    return [Posting(k, v) for k, v in merged.items() if v]

