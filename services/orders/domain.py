"""Order rules, free of I/O: pricing a basket at the unified price, the coupon discount, who the order is
credited to, the order state machine and the payment check."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.runtime.money import allocate

from . import legs as leg_rules
from .legs import Leg, LegLine, LegReturn

# How long an order may stay unpaid before the sweeper cancels it (OMO_PAYMENT_WINDOW_S).
DEFAULT_PAYMENT_WINDOW_S = 15 * 60
# How long after the consumer has every item refunds and returns are still taken (OMO_AFTER_SALES_WINDOW_S):
# China's seven days' no-reason return (七天无理由退货). Then the order is COMPLETED.
DEFAULT_AFTER_SALES_WINDOW_S = 7 * 24 * 3600
# How long a paid pickup waits at the counter (OMO_PICKUP_WINDOW_S); then it is cancelled and refunded.
DEFAULT_PICKUP_WINDOW_S = 3 * 24 * 3600


class Status(enum.StrEnum):
    PENDING_PAYMENT = "PENDING_PAYMENT"
    PAID = "PAID"
    DISPATCHED = "DISPATCHED"
    CANCELLED = "CANCELLED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"
    DELIVERED = "DELIVERED"
    # A split order: some of its shipments (one per location) have left, others not yet.
    PARTIALLY_SHIPPED = "PARTIALLY_SHIPPED"
    # The consumer had every item and the after-sales window passed: final, no more refunds.
    COMPLETED = "COMPLETED"


class Fulfilment(enum.StrEnum):
    CLOUD_SHIPPING = "CLOUD_SHIPPING"
    EXPRESS_3H = "EXPRESS_3H"
    STORE_PICKUP = "STORE_PICKUP"


@dataclass(frozen=True)
class Route:
    """How and where the order is served: the mode and the consumer's place (None: no place given)."""

    mode: Fulfilment
    deliver_to: tuple[float, float] | None


def route(mode: Fulfilment | None, deliver_to: tuple[float, float] | None) -> Route:
    """Express comes from a forward warehouse near the consumer and pickup is at a store near them, so both
    need to know where the consumer is."""
    chosen = mode or Fulfilment.CLOUD_SHIPPING
    if chosen != Fulfilment.CLOUD_SHIPPING and deliver_to is None:
        raise InvalidArgument.field("deliver_to", f"is required for {chosen}")
    return Route(chosen, deliver_to)


# Every legal move of an order. Anything else is refused loudly, never skipped silently.
ALLOWED_TRANSITIONS: frozenset[tuple[Status, Status]] = frozenset({
    (Status.PENDING_PAYMENT, Status.PAID),
    (Status.PAID, Status.DISPATCHED),
    # A split order follows its shipments: partially shipped until the last location's has left.
    (Status.PAID, Status.PARTIALLY_SHIPPED),
    (Status.PARTIALLY_SHIPPED, Status.DISPATCHED),
    (Status.PENDING_PAYMENT, Status.CANCELLED),
    # A paid order is cancelled only while nothing was handed over (the warehouse confirms it by cancelling
    # its waiting shipments): every unit is refunded (`cancel_paid`), also after money-only refunds.
    (Status.PAID, Status.CANCELLED),
    (Status.PARTIALLY_REFUNDED, Status.CANCELLED),
    (Status.REFUNDED, Status.CANCELLED),
    # Refunds after payment: before hand-over money only, after it with or without returned goods (only
    # goods that left: a split order partly shipped returns from the legs that shipped).
    (Status.PAID, Status.PARTIALLY_REFUNDED),
    (Status.PAID, Status.REFUNDED),
    (Status.DISPATCHED, Status.PARTIALLY_REFUNDED),
    (Status.DISPATCHED, Status.REFUNDED),
    (Status.PARTIALLY_SHIPPED, Status.PARTIALLY_REFUNDED),
    (Status.PARTIALLY_SHIPPED, Status.REFUNDED),
    (Status.PARTIALLY_REFUNDED, Status.PARTIALLY_REFUNDED),
    (Status.PARTIALLY_REFUNDED, Status.REFUNDED),
    (Status.DISPATCHED, Status.DELIVERED),
    (Status.DELIVERED, Status.PARTIALLY_REFUNDED),
    (Status.DELIVERED, Status.REFUNDED),
    # After the after-sales window (see `complete`): from DELIVERED, or a pickup collected at the counter
    # (DISPATCHED), or either of them partly refunded. A fully refunded order stays REFUNDED.
    (Status.DELIVERED, Status.COMPLETED),
    (Status.DISPATCHED, Status.COMPLETED),
    (Status.PARTIALLY_REFUNDED, Status.COMPLETED),
})
# Refunds follow payment; a dispatch or a delivery after a refund is recorded (the legs, dispatched_at,
# delivered_at) without undoing the refund: a refunded order keeps following its parcels by its legs.
REFUNDABLE = frozenset({Status.PAID, Status.PARTIALLY_SHIPPED, Status.DISPATCHED, Status.DELIVERED,
                        Status.PARTIALLY_REFUNDED})


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
    refunded_quantity: int = 0
    refunded_fen: int = 0


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
    # The first leg's reservation and location (legs[0]): what the order stood for before it had legs.
    reservation_id: str
    created_at: datetime
    payment_txn_id: str = ""
    paid_at: datetime | None = None
    # The first shipment that left, then the one with which the order was shipped in full.
    shipment_id: str = ""
    dispatched_at: datetime | None = None
    cancelled_at: datetime | None = None
    cancel_reason: str = ""
    refunded_fen: int = 0
    fulfilment_mode: Fulfilment = Fulfilment.CLOUD_SHIPPING
    warehouse_id: str = ""
    pickup_code: str = ""
    # When the pickup was set aside at the counter (its code arrived).
    pickup_ready_at: datetime | None = None
    delivered_at: datetime | None = None
    completed_at: datetime | None = None
    # One per location of its route, in the route's order.
    legs: tuple[Leg, ...] = ()


def shipped_quantity(order: Order, sku_id: str) -> int:
    return leg_rules.shipped(order.legs, sku_id)


def returned_quantity(order: Order, sku_id: str) -> int:
    return leg_rules.returned(order.legs, sku_id)


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
              coupon: Coupon | None, reservation_id: str, now: datetime,
              fulfilment_mode: Fulfilment = Fulfilment.CLOUD_SHIPPING, warehouse_id: str = "",
              legs: tuple[Leg, ...] | None = None) -> Order:
    """`legs`: the holds the warehouse made, one per location (None: one hold of every line)."""
    sums = totals(lines, coupon.discount_fen if coupon else 0)
    if coupon is not None and coupon.discount_fen != sums.discount_fen:
        coupon = replace(coupon, discount_fen=sums.discount_fen)
    if legs is None:
        legs = (one_leg(reservation_id, warehouse_id, lines),)
    _check_legs(lines, legs, reservation_id)
    return Order(order_id, Status.PENDING_PAYMENT, store.store_id, store.dealer_id, store.brand_id, consumer_id,
                 attribution, lines, coupon, sums.subtotal_fen, sums.discount_fen, sums.payable_fen,
                 reservation_id, now, fulfilment_mode=fulfilment_mode, warehouse_id=warehouse_id, legs=legs)


def one_leg(reservation_id: str, warehouse_id: str, lines: Sequence[Line]) -> Leg:
    """Every line held at one location."""
    return Leg(reservation_id, warehouse_id, tuple(LegLine(line.sku_id, line.quantity) for line in lines))


def legacy_leg(order: Order) -> Leg:
    """An order stored before orders recorded legs, as its migration reads it: every line at its location,
    left if the order was dispatched. A split order caught partly shipped is not (which leg left is unknown);
    the warehouse's event for its last leg marks every leg out."""
    leg = one_leg(order.reservation_id, order.warehouse_id, order.lines)
    if order.dispatched_at is None or order.status == Status.PARTIALLY_SHIPPED:
        return leg
    return replace(leg, shipment_id=order.shipment_id, dispatched_at=order.dispatched_at)


def _check_legs(lines: Sequence[Line], legs: Sequence[Leg], reservation_id: str) -> None:
    """The holds cover the lines exactly: what can ship, and so come back, is what was bought."""
    held: dict[str, int] = {}
    for leg in legs:
        for line in leg.lines:
            held[line.sku_id] = held.get(line.sku_id, 0) + line.quantity
    if not legs or legs[0].reservation_id != reservation_id or held != {li.sku_id: li.quantity for li in lines}:
        raise RuntimeError(f"the holds {legs} do not cover the order's lines {lines} as reservation "
                           f"{reservation_id!r}")


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

# Everything an order can be once its first shipment left: a late event about an earlier shipment changes none.
_SHIPPED_OR_LATER = frozenset({Status.PARTIALLY_SHIPPED, Status.DISPATCHED, Status.DELIVERED,
                               Status.PARTIALLY_REFUNDED, Status.REFUNDED})


def dispatch(order: Order, shipment_id: str, at: datetime, complete: bool = True, *, reservation_id: str = "",
             warehouse_id: str = "") -> Order | None:
    """A shipment of the order left, carrying the leg held as `reservation_id` at `warehouse_id`;
    `complete`: it was the last of the order's shipments (every one, for a split order). The leg is marked
    shipped and the order moves on: PAID -> PARTIALLY_SHIPPED while others have not left, -> DISPATCHED
    with the last. An order refunded meanwhile keeps its refund status and records the parcel only.

    None if there is nothing to record: this leg's shipment was recorded already (a redelivery, or the same
    shipment under another event id), so its units never count twice."""
    i = leg_rules.carrying(order.legs, reservation_id, warehouse_id)
    if i is not None and order.legs[i].shipment_id:
        if order.legs[i].shipment_id == shipment_id:
            return None
        i = None  # a leg has one shipment: this one is not the leg's (an order that knows only its first leg)
    if i is None and order.dispatched_at is not None and order.shipment_id == shipment_id:
        return None  # recorded before the order followed its legs
    legs = order.legs if i is None else leg_rules.ship(order.legs, i, shipment_id, warehouse_id, at)
    if complete:
        legs = leg_rules.all_left(legs, at)
    followed = {"legs": legs, "warehouse_id": legs[0].warehouse_id if legs else order.warehouse_id}
    if order.status in (Status.PARTIALLY_REFUNDED, Status.REFUNDED):
        # Refunded before all of it left (money only, or goods of the legs that had left): the refund stands,
        # the first parcel and the last are recorded.
        if order.dispatched_at is None or (complete and not all(leg.shipped for leg in order.legs)):
            return replace(order, shipment_id=shipment_id, dispatched_at=at, **followed)
        return replace(order, **followed) if legs != order.legs else None
    if order.status in _SHIPPED_OR_LATER and (not complete or order.status != Status.PARTIALLY_SHIPPED):
        # Another leg of an order that moved on already (several legs leaving at once all say complete).
        return replace(order, **followed) if legs != order.legs else None
    target = Status.DISPATCHED if complete else Status.PARTIALLY_SHIPPED
    check_transition(order.status, target)
    return replace(order, status=target, shipment_id=shipment_id, dispatched_at=at, **followed)


def ready_for_pickup(order: Order, pickup_code: str, at: datetime | None = None) -> Order | None:
    """A paid pickup order is waiting at the store: the consumer gets the code. None if it has it already."""
    if order.pickup_code == pickup_code:
        return None
    if not awaiting_hand_over(order) or order.fulfilment_mode != Fulfilment.STORE_PICKUP or order.pickup_code:
        raise FailedPrecondition(f"order {order.order_id!r} ({order.status}, {order.fulfilment_mode}) is not a "
                                 "paid pickup order waiting for its code", reason="NOT_AWAITING_PICKUP",
                                 metadata={"order_id": order.order_id})
    return replace(order, pickup_code=pickup_code, pickup_ready_at=at)


# -- cancelling ------------------------------------------------------------------------------------------

def cancel(order: Order, reason: str, at: datetime) -> Order:
    """An unpaid order is cancelled; a paid one goes through cancel_paid."""
    if order.payment_txn_id:
        raise FailedPrecondition(f"order {order.order_id!r} is paid: cancelling it refunds the payment",
                                 reason="ORDER_PAID", metadata={"order_id": order.order_id})
    check_transition(order.status, Status.CANCELLED)
    return replace(order, status=Status.CANCELLED, cancelled_at=at, cancel_reason=reason)


def awaiting_hand_over(order: Order) -> bool:
    """Paid (perhaps refunded in part or whole, money only) and nothing of it has left yet."""
    return bool(order.payment_txn_id) and order.dispatched_at is None and order.status in (
        Status.PAID, Status.PARTIALLY_REFUNDED, Status.REFUNDED)


def cancel_paid(order: Order, reason: str, at: datetime,
                provider_refund_id: str) -> tuple[Refund | None, Order]:
    """A paid order whose goods were not handed over is cancelled: every unit not refunded yet is refunded
    (exact per line; None if money-only refunds already paid everything back) and the order is CANCELLED.
    Once anything left it is refunds and returns."""
    if not awaiting_hand_over(order):
        # Goods that left are refused as HANDED_OVER whichever step orders has followed them to (the warehouse
        # refuses a cancel of a shipment handed to the carrier with the same reason): a caller racing the
        # shipment's event gets one answer.
        if not order.payment_txn_id:
            raise FailedPrecondition(f"order {order.order_id!r} is not paid: cancelling it needs no refund",
                                     reason="ORDER_NOT_PAID", metadata={"order_id": order.order_id})
        if order.status is Status.CANCELLED:
            check_transition(order.status, Status.CANCELLED)  # raises: cancelled already
        raise FailedPrecondition(f"order {order.order_id!r} was handed over: refunds and returns apply",
                                 reason="HANDED_OVER", metadata={"order_id": order.order_id})
    check_transition(order.status, Status.CANCELLED)
    returned: Refund | None = None
    if any(line.refunded_quantity < line.quantity for line in order.lines):
        returned, order = refund(order, provider_refund_id, [], False, at)
    return returned, replace(order, status=Status.CANCELLED, cancelled_at=at, cancel_reason=reason)


# -- refunding --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RefundedLine:
    sku_id: str
    quantity: int
    gross_fen: int
    discount_fen: int
    amount_fen: int
    supply_fen: int
    # Goods returned: the legs they shipped with, where they go back into stock.
    legs: tuple[LegReturn, ...] = ()


@dataclass(frozen=True)
class Refund:
    provider_refund_id: str
    order_id: str
    lines: tuple[RefundedLine, ...]
    goods_returned: bool
    refunded_at: datetime

    @property
    def amount_fen(self) -> int:
        return sum(line.amount_fen for line in self.lines)


def line_discounts(order: Order) -> list[int]:
    """The order's discount split over its lines by line total (largest remainder): exact, deterministic."""
    if order.discount_fen == 0:
        return [0] * len(order.lines)
    return allocate(order.discount_fen, [line.line_total_fen for line in order.lines])


def _share(total: int, units: int, of: int) -> int:
    """The part of `total` that `units` of `of` units carry, rounded up: cumulative shares of a line's
    discount, so the first refunds never give back less discount than is theirs and the last unit closes
    the line exactly."""
    return -(-total * units // of)


def refund(order: Order, provider_refund_id: str, requested: Sequence[tuple[str, int]], goods_returned: bool,
           at: datetime) -> tuple[Refund, Order]:
    """Refund units by line. Empty `requested` refunds every unit not refunded yet. Amounts are exact: a line's
    paid amount is its total less its discount share, and its refunds add up to exactly that once every unit
    is back. Returned goods come only from legs that left, at most what of a line left and has not come back
    yet, and go back to those legs' locations; a money-only refund of units still waiting does not stop
    them."""
    if order.status == Status.COMPLETED:
        raise FailedPrecondition(f"order {order.order_id!r} is completed: its after-sales window closed",
                                 reason="AFTER_SALES_CLOSED", metadata={"order_id": order.order_id})
    if order.status not in REFUNDABLE:
        check_transition(order.status, Status.REFUNDED)  # raises: refunds come after payment
    if goods_returned and order.dispatched_at is None:
        raise InvalidArgument.field("goods_returned", "nothing of the order has been handed over: no goods can "
                                                      "come back")
    by_sku = {line.sku_id: i for i, line in enumerate(order.lines)}
    wanted: dict[int, int] = {}
    if not requested:
        wanted = {i: line.quantity - line.refunded_quantity for i, line in enumerate(order.lines)
                  if line.quantity > line.refunded_quantity}
    for n, (sku_id, quantity) in enumerate(requested):
        i = by_sku.get(sku_id)
        if i is None:
            raise InvalidArgument.field(f"lines[{n}].sku_id", f"order {order.order_id!r} has no line for it")
        if i in wanted:
            raise InvalidArgument.field(f"lines[{n}].sku_id", "repeats an earlier line")
        left = order.lines[i].quantity - order.lines[i].refunded_quantity
        if quantity > left:
            raise InvalidArgument.field(f"lines[{n}].quantity", f"is {quantity}, only {left} units are left "
                                                                "to refund on this line")
        if goods_returned and quantity > (back := _returnable(order, sku_id)):
            raise InvalidArgument.field(f"lines[{n}].quantity", f"is {quantity}, only {back} units of this line "
                                                                "were handed over and not returned yet")
        wanted[i] = quantity
    if not wanted:
        raise FailedPrecondition(f"order {order.order_id!r} has nothing left to refund", reason="NOTHING_TO_REFUND",
                                 metadata={"order_id": order.order_id})
    if goods_returned and not requested:
        for i, quantity in wanted.items():
            back = _returnable(order, order.lines[i].sku_id)
            if quantity > back:
                raise InvalidArgument.field("lines", f"is empty, which returns every unit not refunded yet, but "
                                                     f"only {back} of {order.lines[i].sku_id} were handed over and "
                                                     "not returned: name the units sent back")
    discounts = line_discounts(order)
    new_lines = list(order.lines)
    new_legs = order.legs
    refunded: list[RefundedLine] = []
    for i in sorted(wanted):
        line, quantity = order.lines[i], wanted[i]
        before, after = line.refunded_quantity, line.refunded_quantity + quantity
        discount = _share(discounts[i], after, line.quantity) - _share(discounts[i], before, line.quantity)
        gross = line.unit_price_fen * quantity
        returns: tuple[LegReturn, ...] = ()
        if goods_returned:
            new_legs, returns = leg_rules.take_back(new_legs, line.sku_id, quantity)
        part = RefundedLine(line.sku_id, quantity, gross, discount, gross - discount,
                            line.unit_supply_price_fen * quantity, returns)
        refunded.append(part)
        new_lines[i] = replace(line, refunded_quantity=after, refunded_fen=line.refunded_fen + part.amount_fen)
    done = all(line.refunded_quantity == line.quantity for line in new_lines)
    target = Status.REFUNDED if done else Status.PARTIALLY_REFUNDED
    check_transition(order.status, target)
    result = Refund(provider_refund_id, order.order_id, tuple(refunded), goods_returned, at)
    updated = replace(order, status=target, lines=tuple(new_lines), legs=new_legs,
                      refunded_fen=order.refunded_fen + result.amount_fen)
    return result, updated


def _returnable(order: Order, sku_id: str) -> int:
    """Units of the SKU the consumer has and may send back: handed over and not returned yet."""
    return leg_rules.shipped(order.legs, sku_id) - leg_rules.returned(order.legs, sku_id)


def deliver(order: Order, at: datetime, complete: bool = True) -> Order | None:
    """The carrier delivered. DISPATCHED -> DELIVERED once every shipment of the order is delivered
    (`complete`); an order refunded meanwhile keeps its refund status and records the time only. None if the
    delivery was recorded already (a redelivery) or other shipments of the order are still on their way."""
    if order.delivered_at is not None:
        return None
    if not complete and order.status in _SHIPPED_OR_LATER:
        return None
    if order.status in (Status.PARTIALLY_REFUNDED, Status.REFUNDED):
        return replace(order, delivered_at=at)
    check_transition(order.status, Status.DELIVERED)
    return replace(order, status=Status.DELIVERED, delivered_at=at)


# -- completing -------------------------------------------------------------------------------------------

def received_at(order: Order) -> datetime | None:
    """When the consumer had every item: the last parcel's delivery, or a pickup's collection at the counter.
    None while anything is still on its way (or was never paid)."""
    if order.delivered_at is not None:
        return order.delivered_at
    if order.fulfilment_mode == Fulfilment.STORE_PICKUP and order.status in (
            Status.DISPATCHED, Status.PARTIALLY_REFUNDED):
        return order.dispatched_at
    return None


def complete(order: Order, at: datetime, window_s: float) -> Order:
    """The after-sales window closed: the order is COMPLETED, final. Refused while the consumer does not have
    everything yet or the window is still open."""
    received = received_at(order)
    if received is None or at < received + timedelta(seconds=window_s):
        raise FailedPrecondition(
            f"order {order.order_id!r} is still in after-sales (received {received}, window {window_s:g} s)",
            reason="AFTER_SALES_OPEN", metadata={"order_id": order.order_id, "status": str(order.status)})
    check_transition(order.status, Status.COMPLETED)
    return replace(order, status=Status.COMPLETED, completed_at=at)


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


# -- listing ----------------------------------------------------------------------------------------------

DEFAULT_LIST_PAGE = 50
_TENANT_COLUMN = {"brand": "brand_id", "dealer": "dealer_id", "store": "store_id", "guide": "attribution_guide_id"}


@dataclass(frozen=True)
class ListScope:
    """Whose orders: the party's column and id, and the caller's own tenant filter (None for a trusted
    internal caller)."""

    column: str
    value: str
    tenant: tuple[str, str] | None


def list_scope(consumer_id: str, store_id: str, dealer_id: str, principal: tuple[str, str] | None) -> ListScope:
    named = [(f, v) for f, v in (("consumer_id", consumer_id), ("store_id", store_id), ("dealer_id", dealer_id))
             if v]
    if len(named) != 1:
        raise InvalidArgument([(f, "name exactly one of consumer_id, store_id, dealer_id")
                               for f in (["consumer_id"] if not named else [f for f, _ in named])])
    column, value = named[0]
    tenant = None
    if principal is not None:
        kind, ident = principal
        own = _TENANT_COLUMN.get(kind)
        if own is None or (column == own and value != ident):
            raise PermissionDenied(f"{kind} {ident!r} may not list the orders of {column} {value!r}",
                                   reason="OUTSIDE_TENANT", metadata={"principal": f"{kind}:{ident}"})
        tenant = (own, ident)  # a dealer listing a consumer sees only that consumer's orders with the dealer
    return ListScope(column, value, tenant)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def page_token(created_at: datetime, order_id: str) -> str:
    """The last order of a page as microseconds since the epoch (exact, as Postgres stores it) and its id."""
    return f"{(created_at - _EPOCH) // _MICROSECOND}.{order_id}"


def page_after(token: str) -> tuple[datetime, str] | None:
    """The (created_at, order_id) a token stands for: the page continues with older orders."""
    if not token:
        return None
    micros, _, order_id = token.partition(".")
    if not micros.isdigit() or not order_id:
        raise InvalidArgument.field("page_token", "is not a token from a previous page")
    return _EPOCH + int(micros) * _MICROSECOND, order_id
