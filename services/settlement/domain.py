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
             dealer   MERCHANT_AVAILABLE +dealer_profit   (all the profit stays with the dealer, unfrozen)

    cost          = Σ(unit_supply_price_fen × quantity)
    brand_share   = cost − brand_funded_discount   (a brand-funded coupon comes out of the brand's share)
    dealer_profit = payable − brand_share

A discount the brand does not fund is already in `payable`, so it comes out of the dealer's profit.

Shortfalls: a leg is never negative
-----------------------------------
A split transfers money; a negative transfer would take money from a receiver. When a leg would be negative it
is clamped at 0 and the shortfall is recorded, in the same split journal, as a debt between the two parties:

    debtor   PAYABLE     −shortfall   (what the party owes: a negative balance)
    creditor RECEIVABLE  +shortfall   (what the party is owed: a positive balance)

- paid below cost (dealer_profit < 0, e.g. a dealer-funded discount deeper than the margin): the brand's leg
  is capped at `payable`, and the dealer owes the brand `brand_share − payable`.
- brand coupon above cost (brand_share < 0): the brand's leg is 0, the dealer keeps all of `payable`, and the
  brand owes the dealer `brand_funded_discount − cost`.

The two cases exclude each other, the legs always add up to exactly `payable`, and with the receivable the
dealer and brand end up with exactly the unclamped figures (a later settlement run nets the receivables).

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

INT64_MAX = 2**63 - 1


class PartyType(StrEnum):
    BRAND = "BRAND"
    DEALER = "DEALER"
    PROVIDER = "PROVIDER"


class Purpose(StrEnum):
    PAYMENTS_CLEARING = "PAYMENTS_CLEARING"
    MERCHANT_FROZEN = "MERCHANT_FROZEN"
    MERCHANT_AVAILABLE = "MERCHANT_AVAILABLE"
    COST_SHARE = "COST_SHARE"
    RECEIVABLE = "RECEIVABLE"
    PAYABLE = "PAYABLE"


class JournalKind(StrEnum):
    ORDER_PAYMENT = "ORDER_PAYMENT"
    ORDER_SPLIT = "ORDER_SPLIT"


class SplitRole(StrEnum):
    COST_TO_BRAND = "COST_TO_BRAND"
    PROFIT_TO_DEALER = "PROFIT_TO_DEALER"


class ReceivableReason(StrEnum):
    PAID_BELOW_COST = "PAID_BELOW_COST"
    BRAND_COUPON_ABOVE_COST = "BRAND_COUPON_ABOVE_COST"


# Principal kinds (x-omo-principal) that may read a party's figures; the provider has none: internal only.
PRINCIPAL_KIND = {PartyType.BRAND: "brand", PartyType.DEALER: "dealer", PartyType.PROVIDER: "provider"}


@dataclass(frozen=True, order=True)
class Party:
    type: PartyType
    id: str


# The payment provider the mall is modelled on (WeChat Pay profit sharing); one clearing account for all.
PAYMENT_PROVIDER = Party(PartyType.PROVIDER, "wechatpay")


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
    def of(cls, kind: JournalKind, order_id: str, postings: Iterable[Posting]) -> Journal:
        """A journal for an order fact; zero amounts are dropped (a clamped leg moves no money)."""
        business_key = f"{kind.value}/{order_id}"
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
    # The coupon discount the brand funds; 0 without a coupon or for a coupon the brand does not fund.
    brand_funded_discount_fen: int
    provider_txn_id: str
    paid_at: datetime | None = None


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
class Division:
    """The pure arithmetic of a split: the legs actually paid and the shortfall owed (at most one of the two
    shortfalls is non-zero)."""

    cost_fen: int
    brand_share_fen: int
    dealer_profit_fen: int
    dealer_owes_brand_fen: int
    brand_owes_dealer_fen: int


def divide(payable_fen: int, cost_fen: int, brand_funded_discount_fen: int) -> Division:
    brand_share = cost_fen - brand_funded_discount_fen
    dealer_profit = payable_fen - brand_share
    if brand_share < 0:
        # The coupon is worth more than the cost: the dealer keeps everything and the brand owes the rest.
        return Division(cost_fen, 0, payable_fen, 0, -brand_share)
    if dealer_profit < 0:
        # Paid below cost: the brand takes all that was paid and the dealer owes it the margin it lacks.
        return Division(cost_fen, payable_fen, 0, -dealer_profit, 0)
    return Division(cost_fen, brand_share, dealer_profit, 0, 0)


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


def settle(order: PaidOrder) -> Settlement:
    """The split of a paid order and the two journals that record the payment and the split."""
    validate(order)
    brand = Party(PartyType.BRAND, order.brand_id)
    dealer = Party(PartyType.DEALER, order.dealer_id)
    d = divide(order.payable_fen, cost_of(order), order.brand_funded_discount_fen)

    legs = (SplitLeg(brand, SplitRole.COST_TO_BRAND, d.brand_share_fen),
            SplitLeg(dealer, SplitRole.PROFIT_TO_DEALER, d.dealer_profit_fen))
    receivables: list[Receivable] = []
    if d.dealer_owes_brand_fen:
        receivables.append(Receivable(brand, dealer, d.dealer_owes_brand_fen, ReceivableReason.PAID_BELOW_COST))
    if d.brand_owes_dealer_fen:
        receivables.append(Receivable(dealer, brand, d.brand_owes_dealer_fen,
                                      ReceivableReason.BRAND_COUPON_ABOVE_COST))

    frozen = AccountKey(dealer, Purpose.MERCHANT_FROZEN)
    payment = Journal.of(JournalKind.ORDER_PAYMENT, order.order_id, [
        Posting(AccountKey(PAYMENT_PROVIDER, Purpose.PAYMENTS_CLEARING), -order.payable_fen),
        Posting(frozen, order.payable_fen),
    ])
    split_postings = [
        Posting(frozen, -order.payable_fen),
        Posting(AccountKey(brand, Purpose.COST_SHARE), d.brand_share_fen),
        Posting(AccountKey(dealer, Purpose.MERCHANT_AVAILABLE), d.dealer_profit_fen),
    ]
    for r in receivables:
        split_postings += [Posting(AccountKey(r.debtor, Purpose.PAYABLE), -r.amount_fen),
                           Posting(AccountKey(r.creditor, Purpose.RECEIVABLE), r.amount_fen)]
    split_journal = Journal.of(JournalKind.ORDER_SPLIT, order.order_id, split_postings)
    split = Split(order.order_id, order.brand_id, order.dealer_id, order.store_id, order.payable_fen, d.cost_fen,
                  order.brand_funded_discount_fen, legs, tuple(receivables), payment.journal_id,
                  split_journal.journal_id)
    return Settlement(order, split, payment, split_journal)
