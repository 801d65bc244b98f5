"""Split settlement rules, free of I/O: how a paid order's money is divided, and the double-entry journals
that record it.

The ledger
----------
Every account belongs to a party (brand, dealer or the payment provider) and has a purpose; its balance is
what the ledger holds *for* that party under that purpose. A journal is a set of signed postings that sum to
exactly zero, so money only ever moves between accounts and the sum of all balances stays 0.

A paid order is settled in two journals:

1. payment   provider PAYMENTS_CLEARING  -payable
             dealer   MERCHANT_FROZEN    +payable   (the money lands frozen in the dealer's merchant account)
2. split     dealer   MERCHANT_FROZEN    -payable
             brand    COST_SHARE         +brand_share     (cost to the brand)
             store    COMMISSION         +store_commission (the attributed store, if any)
             guide    COMMISSION         +guide_commission (the attributed guide, if any)
             platform PLATFORM_FEE       +platform_fee
             dealer   MERCHANT_AVAILABLE +dealer_profit   (all the profit stays with the dealer, unfrozen)

    cost          = Σ(unit_supply_price_fen × quantity)   (the price snapshot taken when the order was placed)
    brand_share   = cost − brand_funded_discount          (a brand-funded coupon comes out of the brand's share)
    net           = payable + brand_funded_discount        (the sale after discounts the dealer funds)
    commission    = ⌊net × rate_bp / 10000⌋ for each attributed store / guide and the platform fee
    dealer_profit = payable − brand_share − commissions

A discount the brand does not fund (a dealer-funded coupon) is already in `payable`, so it comes out of the
dealer's profit; a brand-funded coupon changes neither the net nor the commissions, so the dealer's profit is
untouched by it.

Shortfalls: a leg is never negative
-----------------------------------
A split transfers money; a negative transfer would take money from a receiver. The payment pays the brand's
share first, then the commissions and the fee, each at most what is left; the dealer keeps the remainder.
What a leg could not be paid is recorded, in the same split journal, as a debt between two parties:

    debtor   PAYABLE     −shortfall   (what the party owes: a negative balance)
    creditor RECEIVABLE  +shortfall   (what the party is owed: a positive balance)

- paid below cost or below the commissions (zero or negative margin): the dealer owes the brand
  (PAID_BELOW_COST) or the store / guide / platform (COMMISSION_ABOVE_MARGIN) what its leg lacked;
- brand coupon above cost (brand_share < 0): the brand's leg is 0 and the brand owes the dealer
  `brand_funded_discount − cost` (BRAND_COUPON_ABOVE_COST).

The legs always add up to exactly `payable`, and with the receivables every party ends up with exactly its
unclamped figure (a later settlement run nets the receivables).

Journals carry a deterministic id and business key derived from the order, so a retried or duplicated event
derives the very same journals and the store's unique keys refuse a second posting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from enum import StrEnum
from functools import cached_property, lru_cache

from services.runtime.errors import InvalidArgument
from services.runtime.ids import derived_id
from services.runtime.money import apply_rate_bp

INT64_MAX = 2**63 - 1


class PartyType(StrEnum):
    BRAND = "BRAND"
    DEALER = "DEALER"
    PROVIDER = "PROVIDER"
    STORE = "STORE"
    GUIDE = "GUIDE"
    PLATFORM = "PLATFORM"


class Purpose(StrEnum):
    PAYMENTS_CLEARING = "PAYMENTS_CLEARING"
    MERCHANT_FROZEN = "MERCHANT_FROZEN"
    MERCHANT_AVAILABLE = "MERCHANT_AVAILABLE"
    COST_SHARE = "COST_SHARE"
    RECEIVABLE = "RECEIVABLE"
    PAYABLE = "PAYABLE"
    COMMISSION = "COMMISSION"
    PLATFORM_FEE = "PLATFORM_FEE"
    COUPON_SUBSIDY = "COUPON_SUBSIDY"
    VOUCHER_REIMBURSEMENT = "VOUCHER_REIMBURSEMENT"


class JournalKind(StrEnum):
    ORDER_PAYMENT = "ORDER_PAYMENT"
    # One receiver's share, when the provider reports it SUCCESS: frozen -> the receiver.
    SHARE = "SHARE"
    # The split's completion, when the rest is unfrozen: frozen -> dealer available, plus what is owed.
    ORDER_SPLIT = "ORDER_SPLIT"
    # A periodic transfer settling what a dealer owes a party (e.g. the part of legs above the cap).
    DEBT_TRANSFER = "DEBT_TRANSFER"
    # A refund to the consumer, clawed back from the split's legs (services/settlement/refunds.py).
    REFUND = "REFUND"
    # A receiver gave back (part of) its share after a refund (分账回退).
    SPLIT_RETURN = "SPLIT_RETURN"
    # The brand reimburses a store for a brand-funded voucher redeemed at its counter.
    VOUCHER_REIMBURSEMENT = "VOUCHER_REIMBURSEMENT"


class SplitState(StrEnum):
    # Waiting for the configured delay before the sharing order is made.
    SCHEDULED = "SCHEDULED"
    # The sharing order is made; receivers' results are awaited.
    SHARING = "SHARING"
    # Every receiver's result is final; the rest is being unfrozen to the dealer.
    UNFREEZING = "UNFREEZING"
    COMPLETED = "COMPLETED"


class LegState(StrEnum):
    PLANNED = "PLANNED"
    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    CLOSED = "CLOSED"


class SplitRole(StrEnum):
    COST_TO_BRAND = "COST_TO_BRAND"
    PROFIT_TO_DEALER = "PROFIT_TO_DEALER"
    STORE_COMMISSION = "STORE_COMMISSION"
    GUIDE_COMMISSION = "GUIDE_COMMISSION"
    PLATFORM_FEE = "PLATFORM_FEE"


class ReceivableReason(StrEnum):
    PAID_BELOW_COST = "PAID_BELOW_COST"
    BRAND_COUPON_ABOVE_COST = "BRAND_COUPON_ABOVE_COST"
    COMMISSION_ABOVE_MARGIN = "COMMISSION_ABOVE_MARGIN"
    # The part of a leg above the dealer's sharing cap: it stays in the merchant account and is owed.
    OVER_SHARING_CAP = "OVER_SHARING_CAP"
    # The provider closed the receiver's share (e.g. an abnormal account): the dealer owes it instead.
    RECEIVER_CLOSED = "RECEIVER_CLOSED"
    # A refund clawed back part of a receiver's leg that no split return asks back: the receiver owes it.
    REFUND_CLAWBACK = "REFUND_CLAWBACK"


# Principal kinds (x-omo-principal) that may read a party's figures; the provider has none: internal only.
PRINCIPAL_KIND = {PartyType.BRAND: "brand", PartyType.DEALER: "dealer", PartyType.PROVIDER: "provider",
                  PartyType.STORE: "store", PartyType.GUIDE: "guide", PartyType.PLATFORM: "platform"}


@dataclass(frozen=True, order=True)
class Party:
    type: PartyType
    id: str


# The payment provider the mall is modelled on (WeChat Pay profit sharing); one clearing account for all.
PAYMENT_PROVIDER = Party(PartyType.PROVIDER, "wechatpay")
# The mall operator, receiver of the platform fee (0 by default).
PLATFORM = Party(PartyType.PLATFORM, "omo")


@dataclass(frozen=True)
class AccountKey:
    party: Party
    purpose: Purpose

    def lock_rank(self) -> tuple[int, str, str, str]:
        """Accounts are locked (balance updates) in this order. The provider's clearing account comes first:
        every payment touches it, so a transaction holding any ledger lock already holds it, and two
        transactions can never wait for each other in opposite orders."""
        first = 0 if self.party.type is PartyType.PROVIDER else 1
        return (first, self.party.type.value, self.party.id, self.purpose.value)


@dataclass(frozen=True)
class Posting:
    account: AccountKey
    amount_fen: int


class UnbalancedJournal(ValueError):
    """A journal whose postings do not sum to zero: a bug in a rule, never something to store."""


@dataclass(frozen=True)
class Journal:
    journal_id: str
    kind: JournalKind
    # Unique across the ledger: the business fact this journal records, so it is posted at most once.
    business_key: str
    order_id: str
    postings: tuple[Posting, ...]

    def __post_init__(self) -> None:
        if len(self.postings) < 2:
            raise UnbalancedJournal(f"journal {self.business_key} needs at least two postings")
        if any(p.amount_fen == 0 for p in self.postings):
            raise UnbalancedJournal(f"journal {self.business_key} has a zero posting")
        total = sum(p.amount_fen for p in self.postings)
        if total != 0:
            raise UnbalancedJournal(f"journal {self.business_key} is off by {total} fen")

    @classmethod
    def of(cls, kind: JournalKind, order_id: str, postings: Iterable[Posting], fact: str = "") -> Journal:
        """A journal for an order fact (`fact` tells apart several of one kind, e.g. a refund's id); zero
        amounts are dropped (a clamped leg moves no money)."""
        business_key = "/".join(x for x in (kind.value, order_id, fact) if x)
        return cls(journal_id(kind, order_id, fact), kind, business_key, order_id,
                   tuple(p for p in postings if p.amount_fen != 0))


def net_changes(journals: Sequence[Journal]) -> list[tuple[AccountKey, int]]:
    """Each touched account's net balance change, in lock order (accounts with a net 0 are kept: they must
    exist for their postings)."""
    changes: dict[AccountKey, int] = {}
    for journal in journals:
        for p in journal.postings:
            changes[p.account] = changes.get(p.account, 0) + p.amount_fen
    return sorted(changes.items(), key=lambda item: item[0].lock_rank())




# -- the order split -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitRates:
    """Commission and fee rates in basis points (1/10000) of an order's net amount, each floored.

    The net amount is what the sale brings in after discounts the dealer funds: payable + brand-funded
    discount. A brand-funded coupon therefore changes no commission (and so never the dealer's profit)."""

    store_commission_bp: int = 0
    guide_commission_bp: int = 0
    platform_fee_bp: int = 0

    def __post_init__(self) -> None:
        rates = (self.store_commission_bp, self.guide_commission_bp, self.platform_fee_bp)
        if any(r < 0 for r in rates) or sum(rates) > 10_000:
            raise ValueError(f"split rates must be non-negative and add up to at most 100%: {rates}")


@dataclass(frozen=True)
class PaidLine:
    quantity: int
    unit_supply_price_fen: int


@dataclass(frozen=True)
class PaidOrder:
    """What settlement needs of a paid order."""

    order_id: str
    brand_id: str
    dealer_id: str
    store_id: str
    payable_fen: int
    lines: tuple[PaidLine, ...]
    # The coupon discount the brand funds; 0 without a coupon or for a coupon the dealer funds (that one is
    # already in payable_fen and so comes out of the dealer's profit).
    brand_funded_discount_fen: int
    provider_txn_id: str
    paid_at: datetime | None = None
    # Who brought the consumer (the QR code's parameters): they earn the commissions. Empty: nobody.
    attributed_store_id: str = ""
    attributed_guide_id: str = ""


@dataclass(frozen=True)
class SplitLeg:
    receiver: Party
    role: SplitRole
    amount_fen: int
    # What goes out through the provider's profit sharing (≤ amount, within the dealer's cap); the rest of
    # the leg (`deferred_fen`) stays in the merchant account and is owed to the receiver. 0 for the dealer.
    shared_fen: int = 0
    state: LegState = LegState.PLANNED
    close_reason: str = ""
    # Clawed back from this leg by refunds so far (services/settlement/refunds.py), and the part of that
    # refunded while the split was still SCHEDULED (it came out of the frozen funds, nothing was shared).
    refunded_fen: int = 0
    frozen_refund_fen: int = 0

    @property
    def deferred_fen(self) -> int:
        if self.role is SplitRole.PROFIT_TO_DEALER:
            return 0
        return self.amount_fen - self.frozen_refund_fen - self.shared_fen

    @property
    def is_receiver(self) -> bool:
        """Sent to the provider as a receiver of the sharing order."""
        return self.role is not SplitRole.PROFIT_TO_DEALER and self.shared_fen > 0


@dataclass(frozen=True)
class Receivable:
    creditor: Party
    debtor: Party
    amount_fen: int
    reason: ReceivableReason


@dataclass(frozen=True)
class Split:
    """How one paid order's money was divided. The legs add up to exactly `paid_fen`."""

    order_id: str
    brand_id: str
    dealer_id: str
    store_id: str
    paid_fen: int
    cost_fen: int
    brand_funded_discount_fen: int
    legs: tuple[SplitLeg, ...]
    receivables: tuple[Receivable, ...]
    payment_journal_id: str
    split_journal_id: str
    # Set by the store when the split is recorded.
    settled_at: datetime | None = None
    state: SplitState = SplitState.SCHEDULED
    provider_txn_id: str = ""
    # The most the dealer's sharing cap lets leave the merchant account through the provider.
    cap_fen: int = 0
    # Bumped by each refund that reshapes the split before it is shared.
    revision: int = 0

    @property
    def dealer(self) -> Party:
        return Party(PartyType.DEALER, self.dealer_id)

    @property
    def journal_ids(self) -> tuple[str, ...]:
        """The journals posted so far: the payment, each successful share, and the completion."""
        shares = [share_journal_id(self.order_id, leg.role) for leg in self.legs
                  if leg.is_receiver and leg.state is LegState.SUCCESS]
        done = [self.split_journal_id] if self.state is SplitState.COMPLETED and self.completion is not None else []
        return (self.payment_journal_id, *shares, *done)

    # A split never changes (progress makes a new one), so what follows from it is worked out once: the sharing
    # job books it, announces it and reads it back within one pass.
    @cached_property
    def owed(self) -> tuple[Receivable, ...]:
        """`owed_after_sharing`."""
        return tuple(owed_after_sharing(self))

    @cached_property
    def completion(self) -> Journal | None:
        """`completion_journal`."""
        return completion_journal(self)

    def leg(self, role: SplitRole) -> SplitLeg | None:
        return next((leg for leg in self.legs if leg.role is role), None)


@dataclass(frozen=True)
class Settlement:
    """A paid order's split (decided, not yet carried out) and the journal that records the payment."""

    order: PaidOrder
    split: Split
    payment_journal: Journal

    @property
    def journals(self) -> tuple[Journal, ...]:
        """Every journal the order ends with if each share succeeds: payment, shares, completion."""
        split = self.split
        for leg in split.legs:
            if leg.is_receiver:
                split = with_leg(split, leg.role, state=LegState.SUCCESS)
        shares = [share_journal(split, leg) for leg in split.legs if leg.is_receiver]
        done = completion_journal(split)
        return (self.payment_journal, *shares, *([done] if done else []))


@dataclass(frozen=True)
class Entitlement:
    """What one receiver is owed by a split before any clamping (may be negative for the brand)."""

    receiver: Party
    role: SplitRole
    amount_fen: int
    # What the receiver is owed if its leg cannot be paid in full.
    shortfall_reason: ReceivableReason


def entitlements(order: PaidOrder, rates: SplitRates) -> list[Entitlement]:
    """Each receiver's unclamped figure, in the order the payment pays them: cost first, then commissions,
    then the platform fee. The dealer's profit is what remains."""
    net = order.payable_fen + order.brand_funded_discount_fen
    owed = [Entitlement(Party(PartyType.BRAND, order.brand_id), SplitRole.COST_TO_BRAND,
                        cost_of(order) - order.brand_funded_discount_fen, ReceivableReason.PAID_BELOW_COST)]
    if order.attributed_store_id and rates.store_commission_bp:
        owed.append(Entitlement(Party(PartyType.STORE, order.attributed_store_id), SplitRole.STORE_COMMISSION,
                                apply_rate_bp(net, rates.store_commission_bp),
                                ReceivableReason.COMMISSION_ABOVE_MARGIN))
    if order.attributed_guide_id and rates.guide_commission_bp:
        owed.append(Entitlement(Party(PartyType.GUIDE, order.attributed_guide_id), SplitRole.GUIDE_COMMISSION,
                                apply_rate_bp(net, rates.guide_commission_bp),
                                ReceivableReason.COMMISSION_ABOVE_MARGIN))
    if rates.platform_fee_bp:
        owed.append(Entitlement(PLATFORM, SplitRole.PLATFORM_FEE, apply_rate_bp(net, rates.platform_fee_bp),
                                ReceivableReason.COMMISSION_ABOVE_MARGIN))
    return owed


def divide(payable_fen: int, owed: Sequence[Entitlement], dealer: Party
           ) -> tuple[list[SplitLeg], list[Receivable]]:
    """Pay each entitlement out of `payable_fen` in turn, never a negative leg and never more than is left;
    the dealer keeps the remainder. What a leg could not pay becomes a receivable from the dealer; a negative
    entitlement (a brand coupon larger than the cost) is a receivable the dealer holds on that receiver."""
    cash = payable_fen  # what is left of the payment to pay legs with
    legs: list[SplitLeg] = []
    receivables: list[Receivable] = []
    for e in owed:
        if e.amount_fen < 0:
            legs.append(SplitLeg(e.receiver, e.role, 0))
            receivables.append(Receivable(dealer, e.receiver, -e.amount_fen, ReceivableReason.BRAND_COUPON_ABOVE_COST))
            continue
        paid = min(e.amount_fen, cash)
        legs.append(SplitLeg(e.receiver, e.role, paid))
        if paid < e.amount_fen:
            receivables.append(Receivable(e.receiver, dealer, e.amount_fen - paid, e.shortfall_reason))
        cash -= paid
    legs.append(SplitLeg(dealer, SplitRole.PROFIT_TO_DEALER, cash))
    return legs, receivables


def validate(order: PaidOrder) -> None:
    """An OrderPaid that breaks these can never be settled (the orders service guarantees them)."""
    violations: list[tuple[str, str]] = []
    for name in ("order_id", "brand_id", "dealer_id"):
        if not getattr(order, name):
            violations.append((f"order.{name}", "must not be empty"))
    if not 0 < order.payable_fen <= INT64_MAX:
        violations.append(("order.payable_fen", "must be positive: a paid order was paid something"))
    if not order.lines:
        violations.append(("order.lines", "must not be empty"))
    for i, line in enumerate(order.lines):
        if line.quantity <= 0:
            violations.append((f"order.lines[{i}].quantity", "must be positive"))
        if line.unit_supply_price_fen < 0:
            violations.append((f"order.lines[{i}].unit_supply_price_fen", "must not be negative"))
    if order.brand_funded_discount_fen < 0:
        violations.append(("order.coupon.discount_fen", "must not be negative"))
    if not violations and cost_of(order) > INT64_MAX:
        violations.append(("order.lines", "cost exceeds the int64 range"))
    if violations:
        raise InvalidArgument(violations)


def cost_of(order: PaidOrder) -> int:
    return sum(line.unit_supply_price_fen * line.quantity for line in order.lines)


LEG_PURPOSE = {
    SplitRole.COST_TO_BRAND: Purpose.COST_SHARE,
    SplitRole.PROFIT_TO_DEALER: Purpose.MERCHANT_AVAILABLE,
    SplitRole.STORE_COMMISSION: Purpose.COMMISSION,
    SplitRole.GUIDE_COMMISSION: Purpose.COMMISSION,
    SplitRole.PLATFORM_FEE: Purpose.PLATFORM_FEE,
}


def share_caps(legs: Sequence[SplitLeg], cap_fen: int) -> list[SplitLeg]:
    """Fill the receivers' shares in leg order up to the cap; each leg's excess is deferred (owed)."""
    left = cap_fen
    capped = []
    for leg in legs:
        if leg.role is SplitRole.PROFIT_TO_DEALER:
            capped.append(leg)
            continue
        shared = min(leg.amount_fen - leg.frozen_refund_fen, left)
        left -= shared
        # Built directly rather than with dataclasses.replace: this runs for every leg of every paid order.
        capped.append(SplitLeg(receiver=leg.receiver, role=leg.role, amount_fen=leg.amount_fen, shared_fen=shared,
                               state=LegState.PLANNED if shared else LegState.SUCCESS, close_reason=leg.close_reason,
                               refunded_fen=leg.refunded_fen, frozen_refund_fen=leg.frozen_refund_fen))
    return capped


def settle(order: PaidOrder, rates: SplitRates = SplitRates(), cap_bp: int = 10_000) -> Settlement:
    """The split of a paid order, within the dealer's sharing cap (basis points of what was paid), and the
    journal that records the payment landing frozen in the dealer's merchant account."""
    validate(order)
    if not 0 <= cap_bp <= 10_000:
        raise ValueError(f"a sharing cap is a share of the payment: {cap_bp} bp")
    dealer = Party(PartyType.DEALER, order.dealer_id)
    legs, receivables = divide(order.payable_fen, entitlements(order, rates), dealer)
    cap = apply_rate_bp(order.payable_fen, cap_bp)
    payment = Journal.of(JournalKind.ORDER_PAYMENT, order.order_id, [
        Posting(AccountKey(PAYMENT_PROVIDER, Purpose.PAYMENTS_CLEARING), -order.payable_fen),
        Posting(AccountKey(dealer, Purpose.MERCHANT_FROZEN), order.payable_fen),
    ])
    split = Split(order.order_id, order.brand_id, order.dealer_id, order.store_id, order.payable_fen,
                  cost_of(order), order.brand_funded_discount_fen, tuple(share_caps(legs, cap)),
                  tuple(receivables), payment.journal_id, journal_id(JournalKind.ORDER_SPLIT, order.order_id),
                  provider_txn_id=order.provider_txn_id, cap_fen=cap)
    return Settlement(order, split, payment)


# -- carrying the split out: profit sharing at the provider --------------------------------------------------


# An order's journal ids are derived several times on its way (the payment, each share, the completion, and
# each split read back for an event or an RPC), and a derivation is a SHA-1: the last few thousand are kept.
@lru_cache(maxsize=16_384)
def journal_id(kind: JournalKind, order_id: str, fact: str = "") -> str:
    return derived_id("jnl", "/".join(x for x in (kind.value, order_id, fact) if x))


def share_journal_id(order_id: str, role: SplitRole) -> str:
    return journal_id(JournalKind.SHARE, order_id, role.value)


def request_no(order_id: str, phase: str, seq: int = 1) -> str:
    """The provider request number of one step of an order, the same however often the step is retried."""
    return derived_id("ps", order_id, phase, str(seq)).replace("_", "")


def receiver_account(party: Party) -> str:
    """The receiver's account as the provider knows it (a merchant id or openid in a real deployment)."""
    return f"{party.type.value}:{party.id}"


def with_leg(split: Split, role: SplitRole, **changes: object) -> Split:
    legs = tuple(dataclasses.replace(leg, **changes) if leg.role is role else leg for leg in split.legs)
    return dataclasses.replace(split, legs=legs)


def share_journal(split: Split, leg: SplitLeg) -> Journal:
    """A receiver's share left the frozen funds (the provider reported SUCCESS)."""
    if not (leg.is_receiver and leg.state is LegState.SUCCESS):
        raise ValueError(f"leg {leg.role} of {split.order_id} has no successful share")
    return Journal.of(JournalKind.SHARE, split.order_id, [
        Posting(AccountKey(split.dealer, Purpose.MERCHANT_FROZEN), -leg.shared_fen),
        Posting(AccountKey(leg.receiver, LEG_PURPOSE[leg.role]), leg.shared_fen),
    ], fact=leg.role.value)


def owed_after_sharing(split: Split) -> list[Receivable]:
    """What the split leaves owed once every share is final: its shortfalls, the legs' parts above the cap,
    and the shares the provider closed."""
    # A split refunded in full before anything was shared is void: it leaves nothing owed.
    void = sum(leg.frozen_refund_fen for leg in split.legs) == split.paid_fen
    owed = [] if void else list(split.receivables)
    for leg in split.legs:
        if leg.deferred_fen > 0:
            owed.append(Receivable(leg.receiver, split.dealer, leg.deferred_fen, ReceivableReason.OVER_SHARING_CAP))
        if leg.is_receiver and leg.state is LegState.CLOSED:
            owed.append(Receivable(leg.receiver, split.dealer, leg.shared_fen, ReceivableReason.RECEIVER_CLOSED))
    return owed


def completion_journal(split: Split) -> Journal | None:
    """Every share is final: the rest of the frozen payment is unfrozen to the dealer, and what the split
    leaves owed is booked (debtor PAYABLE, creditor RECEIVABLE). None when there is nothing left to move
    (everything was shared and nothing is owed)."""
    pending = [leg.role for leg in split.legs if leg.is_receiver and leg.state not in (LegState.SUCCESS,
                                                                                         LegState.CLOSED)]
    if pending:
        raise ValueError(f"split of {split.order_id} has shares not final yet: {pending}")
    shared = sum(leg.shared_fen for leg in split.legs if leg.is_receiver and leg.state is LegState.SUCCESS)
    rest = split.paid_fen - sum(leg.frozen_refund_fen for leg in split.legs) - shared
    postings = [Posting(AccountKey(split.dealer, Purpose.MERCHANT_FROZEN), -rest),
                Posting(AccountKey(split.dealer, Purpose.MERCHANT_AVAILABLE), rest)]
    for r in split.owed:
        postings += [Posting(AccountKey(r.debtor, Purpose.PAYABLE), -r.amount_fen),
                     Posting(AccountKey(r.creditor, Purpose.RECEIVABLE), r.amount_fen)]
    postings = [p for p in _merge(postings) if p.amount_fen]
    return Journal.of(JournalKind.ORDER_SPLIT, split.order_id, postings) if postings else None


@dataclass(frozen=True)
class Progress:
    """A split before and after one pass of the sharing job; `error` and `retry_s` say when to look again."""

    before: Split
    after: Split
    error: str = ""
    retry_s: float = 0.0


def progress_journals(before: Split, after: Split) -> list[Journal]:
    """The journals a split's progress implies: a share for each leg that turned SUCCESS, and the
    completion when the split turned COMPLETED."""
    journals = [share_journal(after, new) for old, new in zip(before.legs, after.legs, strict=True)
                if new.is_receiver and new.state is LegState.SUCCESS and old.state is not LegState.SUCCESS]
    if after.state is SplitState.COMPLETED and before.state is not SplitState.COMPLETED \
            and after.completion is not None:
        journals.append(after.completion)
    return journals


def _merge(postings: list[Posting]) -> list[Posting]:
    """One posting per account (a split can owe one party for two reasons); order of first appearance."""
    merged: dict[AccountKey, int] = {}
    for p in postings:
        merged[p.account] = merged.get(p.account, 0) + p.amount_fen
    return [Posting(k, v) for k, v in merged.items()]


# -- settling what splits left owed -------------------------------------------------------------------------

# Where a creditor's money lands when a debt to it is settled: the account its split leg would have credited.
SETTLES_INTO = {
    PartyType.BRAND: Purpose.COST_SHARE,
    PartyType.STORE: Purpose.COMMISSION,
    PartyType.GUIDE: Purpose.COMMISSION,
    PartyType.PLATFORM: Purpose.PLATFORM_FEE,
    PartyType.DEALER: Purpose.MERCHANT_AVAILABLE,
}


@dataclass(frozen=True)
class DebtTransfer:
    """One transfer settling (part of) what a dealer owes a creditor, with its provider request number."""

    creditor: Party
    debtor: Party
    seq: int
    amount_fen: int

    @property
    def transfer_no(self) -> str:
        return request_no(f"{receiver_account(self.creditor)}|{receiver_account(self.debtor)}", "transfer", self.seq)


def transfer_amount(outstanding_fen: int, debtor_available_fen: int) -> int:
    """What the next transfer moves: the debt, as far as the dealer's available balance covers it."""
    return max(0, min(outstanding_fen, debtor_available_fen))


def transfer_journal(t: DebtTransfer) -> Journal:
    """The debtor pays the creditor from its available balance, and the debt shrinks by as much."""
    if t.debtor.type is not PartyType.DEALER or t.amount_fen <= 0:
        raise ValueError(f"only a dealer's positive debt is transferred: {t}")
    return Journal.of(JournalKind.DEBT_TRANSFER, "", [
        Posting(AccountKey(t.debtor, Purpose.MERCHANT_AVAILABLE), -t.amount_fen),
        Posting(AccountKey(t.creditor, SETTLES_INTO[t.creditor.type]), t.amount_fen),
        Posting(AccountKey(t.debtor, Purpose.PAYABLE), t.amount_fen),
        Posting(AccountKey(t.creditor, Purpose.RECEIVABLE), -t.amount_fen),
    ], fact=t.transfer_no)


# -- vouchers redeemed at a store counter -------------------------------------------------------------------


@dataclass(frozen=True)
class CounterRedemption:
    code: str
    brand_id: str
    store_id: str
    reimbursement_fen: int


def reimbursement_journal(r: CounterRedemption) -> Journal:
    """The brand pays the store the voucher's value: out of the brand's coupon subsidy, once per voucher."""
    violations = [(f"coupon.{name}", "must not be empty") for name in ("code", "brand_id")
                  if not getattr(r, name)]
    if not r.store_id:
        violations.append(("store_id", "must not be empty"))
    if r.reimbursement_fen <= 0:
        violations.append(("reimbursement_fen", "must be positive"))
    if violations:
        raise InvalidArgument(violations)
    return Journal.of(JournalKind.VOUCHER_REIMBURSEMENT, "", [
        Posting(AccountKey(Party(PartyType.BRAND, r.brand_id), Purpose.COUPON_SUBSIDY), -r.reimbursement_fen),
        Posting(AccountKey(Party(PartyType.STORE, r.store_id), Purpose.VOUCHER_REIMBURSEMENT), r.reimbursement_fen),
    ], fact=r.code)


# -- statements ----------------------------------------------------------------------------------------------

# Days are China Standard Time, which has no daylight saving: a fixed UTC+8.
CHINA = timezone(timedelta(hours=8), "CST")

# The accounts whose change over a day is the party's net for the day.
STATEMENT_PURPOSES = {
    PartyType.DEALER: (Purpose.MERCHANT_FROZEN, Purpose.MERCHANT_AVAILABLE, Purpose.RECEIVABLE, Purpose.PAYABLE),
    PartyType.BRAND: (Purpose.COST_SHARE, Purpose.RECEIVABLE, Purpose.PAYABLE),
}


def day_bounds(day: str) -> tuple[datetime, datetime]:
    """[start, end) of a YYYY-MM-DD day in China Standard Time."""
    try:
        d = date.fromisoformat(day)
    except ValueError as exc:
        raise InvalidArgument.field("day", f"not a date: {day!r}") from exc
    start = datetime(d.year, d.month, d.day, tzinfo=CHINA)
    return start, start + timedelta(days=1)


@dataclass(frozen=True)
class Statement:
    party: Party
    day: str
    orders: int
    gross_fen: int
    brand_coupon_fen: int
    cost_to_brand_fen: int
    commissions_fen: int
    refunds_fen: int
    net_fen: int
    frozen_fen: int
    available_fen: int


# -- verifying the whole ledger ------------------------------------------------------------------------------


class BreakKind(StrEnum):
    UNBALANCED_JOURNAL = "UNBALANCED_JOURNAL"
    BALANCE_DRIFT = "BALANCE_DRIFT"
    LEDGER_NOT_ZERO = "LEDGER_NOT_ZERO"
    SPLIT_MISMATCH = "SPLIT_MISMATCH"


@dataclass(frozen=True)
class LedgerBreak:
    kind: BreakKind
    subject: str
    expected_fen: int
    actual_fen: int


@dataclass(frozen=True)
class LedgerCheck:
    journals: int
    postings: int
    accounts: int
    splits: int
    breaks: tuple[LedgerBreak, ...]

    @property
    def ok(self) -> bool:
        return not self.breaks
