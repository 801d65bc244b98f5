"""Order rules, free of I/O: pricing a basket at the unified price, the coupon discount, who the order is
credited to, the order state machine and the payment check."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied


class Status(enum.StrEnum):
    PENDING_PAYMENT = "PENDING_PAYMENT"
    PAID = "PAID"
    DISPATCHED = "DISPATCHED"


# Every legal move of an order. Anything else is refused loudly, never skipped silently.
ALLOWED_TRANSITIONS: frozenset[tuple[Status, Status]] = frozenset({
    (Status.PENDING_PAYMENT, Status.PAID),
    (Status.PAID, Status.DISPATCHED),
})


def check_transition(current: Status, target: Status) -> None:
    if (current, target) not in ALLOWED_TRANSITIONS:
        raise FailedPrecondition(
            f"order is {current}, it cannot become {target}",
            reason="ILLEGAL_ORDER_TRANSITION",
            metadata={"from": str(current), "to": str(target)},
        )


@dataclass(frozen=True)
class LineInput:
    sku_id: str
    quantity: int


@dataclass(frozen=True)
class Quote:
    """A SKU as the store sells it: the unified retail price and the dealer's supply (cost) price."""

    sku_id: str
    name: str
    unit_price_fen: int
    unit_supply_price_fen: int


@dataclass(frozen=True)
class Line:
    """An order line with its prices captured at order time, so later price changes do not touch it."""

    sku_id: str
    name: str
    quantity: int
    unit_price_fen: int
    unit_supply_price_fen: int
    line_total_fen: int


@dataclass(frozen=True)
class Coupon:
    code: str
    funder: str  # "BRAND": the brand pays for the discount out of its cost share
    discount_fen: int


@dataclass(frozen=True)
class Totals:
    subtotal_fen: int
    discount_fen: int
    payable_fen: int


@dataclass(frozen=True)
class Attribution:
    """Who brought the consumer: the parameters of the QR code the order came through (业绩回算)."""

    scene: str = ""
    dealer_id: str = ""
    store_id: str = ""
    guide_id: str = ""


@dataclass(frozen=True)
class StoreRef:
    store_id: str
    dealer_id: str
    brand_id: str


@dataclass(frozen=True)
class Order:
    order_id: str
    status: Status
    store_id: str
    dealer_id: str
    brand_id: str
    consumer_id: str
    attribution: Attribution
    lines: tuple[Line, ...]
    coupon: Coupon | None
    subtotal_fen: int
    discount_fen: int
    payable_fen: int
    reservation_id: str
    created_at: datetime
    payment_txn_id: str = ""
    paid_at: datetime | None = None
    shipment_id: str = ""
    dispatched_at: datetime | None = None


# -- placing ----------------------------------------------------------------------------------------------

def check_lines(lines: Sequence[LineInput]) -> None:
    """One line per SKU. A repeated SKU is refused rather than merged: the reservation, the price snapshot
    and the consumer's basket then all show the same lines, and the per-line quantity limit keeps meaning."""
    first_at: dict[str, int] = {}
    violations = []
    for i, line in enumerate(lines):
        if line.sku_id in first_at:
            violations.append((f"lines[{i}].sku_id", f"repeats lines[{first_at[line.sku_id]}]; "
                                                     "put the whole quantity on one line"))
        else:
            first_at[line.sku_id] = i
    if violations:
        raise InvalidArgument(violations)


def price_lines(requested: Sequence[LineInput], quotes: Mapping[str, Quote]) -> tuple[Line, ...]:
    """Price every line at the store's quote (the nationwide unified price)."""
    lines = []
    for item in requested:
        quote = quotes.get(item.sku_id)
        if quote is None:
            raise NotFound("sku", item.sku_id)
        lines.append(Line(item.sku_id, quote.name, item.quantity, quote.unit_price_fen,
                          quote.unit_supply_price_fen, quote.unit_price_fen * item.quantity))
    return tuple(lines)


def totals(lines: Sequence[Line], discount_fen: int = 0) -> Totals:
    """payable = subtotal − discount; a discount larger than the basket is capped, so payable is never negative."""
    if discount_fen < 0:
        raise ValueError("a discount cannot be negative")
    subtotal = sum(line.line_total_fen for line in lines)
    discount = min(discount_fen, subtotal)
    return Totals(subtotal, discount, subtotal - discount)


def attribute(requested: Attribution, store: StoreRef, credited_store: StoreRef | None) -> Attribution:
    """Whom the order is credited to. An empty attribution credits the ordering store and its dealer.

    A QR code may credit another store than the one ordered through (traffic allocation sends consumers to the
    nearest store offering the service), but only a store of the same dealer: crediting another dealer would set
    dealers against each other. `credited_store` is the store named by `requested.store_id` when it differs from
    the ordering store (None if no such store exists). A guide id is taken as given: guides are not registered."""
    store_id = requested.store_id or store.store_id
    if store_id != store.store_id:
        if credited_store is None:
            raise InvalidArgument.field("attribution.store_id", f"no store {store_id!r}")
        if credited_store.dealer_id != store.dealer_id:
            raise InvalidArgument.field("attribution.store_id",
                                        "belongs to another dealer than the store the order is placed in")
    dealer_id = requested.dealer_id or store.dealer_id
    if dealer_id != store.dealer_id:
        raise InvalidArgument.field("attribution.dealer_id", "is not the dealer of the store the order is placed in")
    return Attribution(requested.scene, dealer_id, store_id, requested.guide_id)


def new_order(order_id: str, store: StoreRef, consumer_id: str, attribution: Attribution, lines: tuple[Line, ...],
              coupon: Coupon | None, reservation_id: str, now: datetime) -> Order:
    sums = totals(lines, coupon.discount_fen if coupon else 0)
    if coupon is not None and coupon.discount_fen != sums.discount_fen:
        coupon = replace(coupon, discount_fen=sums.discount_fen)
    return Order(order_id, Status.PENDING_PAYMENT, store.store_id, store.dealer_id, store.brand_id, consumer_id,
                 attribution, lines, coupon, sums.subtotal_fen, sums.discount_fen, sums.payable_fen,
                 reservation_id, now)


# -- paying -----------------------------------------------------------------------------------------------

def is_repeated_notification(order: Order, provider_txn_id: str, amount_fen: int) -> bool:
    """The provider repeats a notification until it is acknowledged: the transaction that paid this order, told
    again, changes nothing. It must claim the same amount, though; anything else is a different claim."""
    if not order.payment_txn_id or order.payment_txn_id != provider_txn_id:
        return False
    if amount_fen != order.payable_fen:
        raise InvalidArgument.field("amount_fen", f"is {amount_fen}, but this transaction paid {order.payable_fen}")
    return True


def pay(order: Order, provider_txn_id: str, amount_fen: int, at: datetime) -> Order:
    if amount_fen != order.payable_fen:
        raise InvalidArgument.field("amount_fen", f"is {amount_fen}, the order's payable amount is {order.payable_fen}")
    check_transition(order.status, Status.PAID)
    return replace(order, status=Status.PAID, payment_txn_id=provider_txn_id, paid_at=at)


# -- shipping ---------------------------------------------------------------------------------------------

def dispatch(order: Order, shipment_id: str, at: datetime) -> Order | None:
    """The warehouse shipped the order. None if this very shipment was recorded already (a redelivery)."""
    if order.status == Status.DISPATCHED and order.shipment_id == shipment_id:
        return None
    check_transition(order.status, Status.DISPATCHED)
    return replace(order, status=Status.DISPATCHED, shipment_id=shipment_id, dispatched_at=at)


# -- reading ----------------------------------------------------------------------------------------------

def check_visible(order: Order, kind: str, ident: str) -> None:
    """A brand, dealer or store sees its own orders; a guide sees the orders credited to it."""
    owner = {
        "brand": order.brand_id,
        "dealer": order.dealer_id,
        "store": order.store_id,
        "guide": order.attribution.guide_id,
    }.get(kind)
    if owner is None or owner != ident:
        raise PermissionDenied(
            f"{kind} {ident!r} may not read order {order.order_id!r}",
            reason="OUTSIDE_TENANT",
            metadata={"principal": f"{kind}:{ident}", "order_id": order.order_id},
        )
