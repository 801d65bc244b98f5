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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

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


class JournalKind(StrEnum):
    ORDER_PAYMENT = "ORDER_PAYMENT"
    ORDER_SPLIT = "ORDER_SPLIT"


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
        business_key = f"{kind.value}/{order_id}" + (f"/{fact}" if fact else "")
        return cls(derived_id("jnl", business_key), kind, business_key, order_id,
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

    @property
    def journal_ids(self) -> tuple[str, str]:
        return (self.payment_journal_id, self.split_journal_id)

    def leg(self, role: SplitRole) -> SplitLeg | None:
        return next((leg for leg in self.legs if leg.role is role), None)


@dataclass(frozen=True)
class Settlement:
    """A paid order's split and the journals that record the payment and the split."""

    order: PaidOrder
    split: Split
    payment_journal: Journal
    split_journal: Journal

    @property
    def journals(self) -> tuple[Journal, Journal]:
        return (self.payment_journal, self.split_journal)


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


def settle(order: PaidOrder, rates: SplitRates = SplitRates()) -> Settlement:
    """The split of a paid order and the two journals that record the payment and the split."""
    validate(order)
    dealer = Party(PartyType.DEALER, order.dealer_id)
    legs, receivables = divide(order.payable_fen, entitlements(order, rates), dealer)

    frozen = AccountKey(dealer, Purpose.MERCHANT_FROZEN)
    payment = Journal.of(JournalKind.ORDER_PAYMENT, order.order_id, [
        Posting(AccountKey(PAYMENT_PROVIDER, Purpose.PAYMENTS_CLEARING), -order.payable_fen),
        Posting(frozen, order.payable_fen),
    ])
    split_postings = [Posting(frozen, -order.payable_fen)]
    split_postings += [Posting(AccountKey(leg.receiver, LEG_PURPOSE[leg.role]), leg.amount_fen) for leg in legs]
    for r in receivables:
        split_postings += [Posting(AccountKey(r.debtor, Purpose.PAYABLE), -r.amount_fen),
                           Posting(AccountKey(r.creditor, Purpose.RECEIVABLE), r.amount_fen)]
    split_journal = Journal.of(JournalKind.ORDER_SPLIT, order.order_id, split_postings)
    split = Split(order.order_id, order.brand_id, order.dealer_id, order.store_id, order.payable_fen,
                  cost_of(order), order.brand_funded_discount_fen, tuple(legs), tuple(receivables),
                  payment.journal_id, split_journal.journal_id)
    return Settlement(order, split, payment, split_journal)


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
