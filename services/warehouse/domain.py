"""Warehouse rules, free of I/O: what a location offers, which warehouse serves an order, which SKU is short,
how a reservation may change state, what a paid order does to it."""

from __future__ import annotations

import enum
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from services.runtime.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

DEFAULT_PAGE_SIZE = 100
# How long an unpaid order's hold lasts unless the caller says otherwise (OMO_RESERVATION_TTL_S).
DEFAULT_HOLD_S = 15 * 60
# A forward warehouse's 3-hour express reach unless given.
DEFAULT_EXPRESS_RADIUS_KM = 30


class Kind(enum.StrEnum):
    CLOUD = "CLOUD"
    FORWARD = "FORWARD"
    STORE = "STORE"


class Mode(enum.StrEnum):
    CLOUD_SHIPPING = "CLOUD_SHIPPING"
    STORE_PICKUP = "STORE_PICKUP"
    EXPRESS_3H = "EXPRESS_3H"


_USUAL_MODES = {
    Kind.CLOUD: (Mode.CLOUD_SHIPPING,),
    Kind.FORWARD: (Mode.CLOUD_SHIPPING, Mode.EXPRESS_3H),
    Kind.STORE: (Mode.STORE_PICKUP,),
}


class ReservationStatus(enum.StrEnum):
    RESERVED = "RESERVED"
    RELEASED = "RELEASED"
    SHIPPED = "SHIPPED"
    # Paid, set aside at a store for pickup.
    CONFIRMED = "CONFIRMED"


class MovementReason(enum.StrEnum):
    RECEIPT = "receipt"
    RESERVATION = "reservation"
    RELEASE = "release"
    SHIPMENT = "shipment"
    ADJUSTMENT = "adjustment"
    RETURN = "return"


# RELEASED -> SHIPPED exists because payment can arrive after an unpaid order's hold was given back: the
# paid order then takes its units again if any warehouse still has them.
_TRANSITIONS: dict[ReservationStatus, frozenset[ReservationStatus]] = {
    ReservationStatus.RESERVED: frozenset({ReservationStatus.RELEASED, ReservationStatus.SHIPPED,
                                           ReservationStatus.CONFIRMED}),
    ReservationStatus.RELEASED: frozenset({ReservationStatus.SHIPPED}),
    # A paid pickup leaves only when the consumer collects it.
    ReservationStatus.CONFIRMED: frozenset({ReservationStatus.SHIPPED}),
    ReservationStatus.SHIPPED: frozenset(),
}


@dataclass(frozen=True, order=True)
class Line:
    sku_id: str
    quantity: int


@dataclass(frozen=True)
class Warehouse:
    warehouse_id: str
    code: str
    name: str
    kind: str
    region: str
    latitude: float
    longitude: float
    modes: tuple[str, ...] = (Mode.CLOUD_SHIPPING,)
    store_id: str = ""
    express_radius_km: int = 0
    manual_fulfilment: bool = False


def location(warehouse_id: str, code: str, name: str, kind: Kind, region: str, latitude: float,
             longitude: float, modes: Iterable[Mode], store_id: str, express_radius_km: int,
             manual_fulfilment: bool = False) -> Warehouse:
    """A new stock location, its modes defaulted from its kind and checked against it: pickup happens at a
    store's own stock, express needs a reach, and store stock belongs to exactly one store."""
    chosen = tuple(sorted(set(modes))) or _USUAL_MODES[kind]
    if kind == Kind.STORE and not store_id:
        raise InvalidArgument.field("store_id", "is required for a store's stock")
    if kind != Kind.STORE and store_id:
        raise InvalidArgument.field("store_id", f"must be empty for a {kind} location")
    if Mode.STORE_PICKUP in chosen and kind != Kind.STORE:
        raise InvalidArgument.field("modes", "STORE_PICKUP is offered only by a store's own stock")
    radius = express_radius_km
    if Mode.EXPRESS_3H in chosen and radius == 0:
        if kind != Kind.FORWARD:
            raise InvalidArgument.field("express_radius_km", "is required when the location offers EXPRESS_3H")
        radius = DEFAULT_EXPRESS_RADIUS_KM
    if Mode.EXPRESS_3H not in chosen and radius:
        raise InvalidArgument.field("express_radius_km", "is only meaningful with EXPRESS_3H")
    if manual_fulfilment and kind == Kind.STORE:
        raise InvalidArgument.field("manual_fulfilment", "a store's stock is collected at the counter")
    return Warehouse(warehouse_id, code, name, kind, region, latitude, longitude,
                     tuple(str(m) for m in chosen), store_id, radius, manual_fulfilment)


def check_adjustment(level: StockLevel | None, sku_id: str, delta: int) -> None:
    """A count correction may not take away units that are held for orders (on hand >= reserved always)."""
    on_hand = level.on_hand if level else 0
    reserved = level.reserved if level else 0
    if on_hand + delta < reserved:
        raise FailedPrecondition(
            f"adjusting sku {sku_id!r} by {delta} would leave {on_hand + delta} on hand for {reserved} reserved",
            reason="STOCK_RESERVED",
            metadata={"sku_id": sku_id, "on_hand": str(on_hand), "reserved": str(reserved)},
        )


@dataclass(frozen=True)
class StockLevel:
    warehouse_id: str
    sku_id: str
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    order_id: str
    warehouse_id: str
    status: ReservationStatus
    lines: tuple[Line, ...]
    created_at: datetime
    # The ReserveStock call that created it: the reservation is that call's idempotency record.
    idempotency_key: str = ""
    request_hash: bytes = b""
    expires_at: datetime | None = None
    # Its place in a split route (0: the only or the first location); leg 0 stands for the order.
    leg: int = 0


@dataclass(frozen=True)
class Shipment:
    shipment_id: str
    order_id: str
    warehouse_id: str
    reservation_id: str
    lines: tuple[Line, ...]
    dispatched_at: datetime | None
    status: str = "DISPATCHED"
    ready_at: datetime | None = None
    delivered_at: datetime | None = None
    carrier: str = ""
    tracking_number: str = ""


@dataclass(frozen=True)
class Movement:
    movement_id: int
    warehouse_id: str
    sku_id: str
    on_hand_delta: int
    reserved_delta: int
    reason: MovementReason
    reference_id: str
    created_at: datetime


def merge_lines(lines: Iterable[tuple[str, int]]) -> tuple[Line, ...]:
    """One line per SKU, quantities summed, in sku_id order: the order stock rows are locked in."""
    totals: dict[str, int] = {}
    for sku_id, quantity in lines:
        totals[sku_id] = totals.get(sku_id, 0) + quantity
    return tuple(Line(sku_id, totals[sku_id]) for sku_id in sorted(totals))


# warehouse_id -> sku_id -> available units, for cloud warehouses only.
Availability = Mapping[str, Mapping[str, int]]


def covers(available: Mapping[str, int], lines: Iterable[Line]) -> bool:
    return all(available.get(line.sku_id, 0) >= line.quantity for line in lines)


def choose_warehouse(available: Availability, lines: tuple[Line, ...]) -> str | None:
    """The first cloud warehouse, by warehouse_id, that covers every line on its own: an order ships from one
    place, and a fixed order of preference keeps the choice deterministic across replicas."""
    for warehouse_id in sorted(available):
        if covers(available[warehouse_id], lines):
            return warehouse_id
    return None


def short_sku(available: Availability, lines: tuple[Line, ...]) -> str:
    """The SKU to blame when no warehouse covers the order: the first line (sku_id order) that no warehouse
    has enough of; if every line fits somewhere but never all in one place, the first line the first
    warehouse lacks."""
    for line in lines:
        if max((stock.get(line.sku_id, 0) for stock in available.values()), default=0) < line.quantity:
            return line.sku_id
    first = available[min(available)]
    return next(line.sku_id for line in lines if first.get(line.sku_id, 0) < line.quantity)


def shortage(available: Availability, lines: tuple[Line, ...]) -> ResourceExhausted:
    sku_id = short_sku(available, lines)
    wanted = next(line.quantity for line in lines if line.sku_id == sku_id)
    return ResourceExhausted(
        f"not enough stock of sku {sku_id!r}: {wanted} wanted and no cloud warehouse can cover the order",
        reason="INSUFFICIENT_STOCK",
        metadata={"sku_id": sku_id, "requested": str(wanted)},
    )


def check_transition(reservation: Reservation, to: ReservationStatus) -> None:
    if to not in _TRANSITIONS[reservation.status]:
        raise FailedPrecondition(
            f"reservation {reservation.reservation_id!r} is {reservation.status}, it cannot become {to}",
            reason=f"RESERVATION_{reservation.status}",
            metadata={"reservation_id": reservation.reservation_id, "status": reservation.status},
        )


def replay_or_conflict(prior: Iterable[Reservation], key: str, request_hash: bytes, order_id: str,
                       lines: tuple[Line, ...]) -> Reservation:
    """replay_legs for an order held at one location: its one reservation."""
    return replay_legs(prior, key, request_hash, order_id, lines)[0]


def replay_legs(prior: Iterable[Reservation], key: str, request_hash: bytes, order_id: str,
                lines: tuple[Line, ...]) -> tuple[Reservation, ...]:
    """What a ReserveStock call gets when its key or its order already has a reservation: every leg of it
    (one per location of a split route), leg 0 first.

    The same key replays the first response (a reservation is RESERVED when created); the same key with a
    different request is a client bug. Another key for an order that is already held returns that hold if
    it is for the same lines (summed over its legs) and still in force, so a caller that lost its key cannot
    double-reserve; any other combination is refused."""
    prior = sorted(prior, key=lambda r: (r.leg, r.reservation_id))
    same_key = [r for r in prior if r.idempotency_key == key]
    if same_key:
        if same_key[0].request_hash != request_hash:
            raise InvalidArgument.field("idempotency_key", "was already used for a different request")
        return tuple(replace(r, status=ReservationStatus.RESERVED) for r in same_key)
    held = [r for r in prior if r.order_id == order_id]
    if held:
        held_lines = merge_lines((line.sku_id, line.quantity) for r in held for line in r.lines)
        if held_lines == lines and all(r.status != ReservationStatus.RELEASED for r in held):
            return tuple(held)
        raise FailedPrecondition(
            f"order {order_id!r} already holds reservation {held[0].reservation_id!r} "
            f"({held[0].status}) for other lines or no longer in force",
            reason="ORDER_ALREADY_RESERVED",
            metadata={"order_id": order_id, "reservation_id": held[0].reservation_id},
        )
    raise LookupError("replay_legs needs a reservation with the key or the order")


class ShipAction(enum.Enum):
    # A shipment for the order exists: the event was seen before under another id.
    ALREADY_SHIPPED = "already_shipped"
    # The held units leave the warehouse.
    SHIP_HELD = "ship_held"
    # The hold was released before payment: take the units again, then ship.
    RETAKE = "retake"
    # Held at a store's counter stock: set it aside for the consumer to collect.
    SET_ASIDE = "set_aside"
    # Held at a location fulfilling by hand: a shipment to pick, pack and ship.
    TO_PICK = "to_pick"


def ship_action(reservation: Reservation, shipped: bool, location_kind: str = Kind.CLOUD,
                manual: bool = False) -> ShipAction:
    if shipped:
        return ShipAction.ALREADY_SHIPPED
    check_transition(reservation, ReservationStatus.SHIPPED)
    if reservation.status == ReservationStatus.RESERVED:
        if location_kind == Kind.STORE:
            return ShipAction.SET_ASIDE
        return ShipAction.TO_PICK if manual else ShipAction.SHIP_HELD
    return ShipAction.RETAKE


# Hand fulfilment, one step at a time; a pickup is handed over at the counter; a parcel is delivered.
_SHIPMENT_STEPS = {
    "CREATED": "PICKED", "PICKED": "PACKED", "PACKED": "DISPATCHED", "READY_FOR_PICKUP": "DISPATCHED",
    "DISPATCHED": "DELIVERED",
}


def check_step(shipment: Shipment, to: str) -> None:
    if _SHIPMENT_STEPS.get(shipment.status) != to:
        raise FailedPrecondition(f"shipment {shipment.shipment_id!r} is {shipment.status}, it cannot become {to}",
                                 reason=f"SHIPMENT_{shipment.status}",
                                 metadata={"shipment_id": shipment.shipment_id, "status": shipment.status})


def check_delivery(shipment: Shipment) -> None:
    """Only a parcel on its way is delivered."""
    check_step(shipment, "DELIVERED")


# Wrong pickup codes a shipment takes before it is locked: six digits cannot be guessed in five tries.
MAX_WRONG_CODES = 5


def wrong_pickup_code(tried: int) -> InvalidArgument:
    """The answer to the `tried`-th wrong code (counted, committed although the call fails)."""
    return InvalidArgument.field("pickup_code", f"does not match the shipment's pickup code "
                                                f"({MAX_WRONG_CODES - tried} tries left)")


def check_collect(shipment: Shipment, pickup_code: str, expected_code: str, wrong_codes: int = 0) -> None:
    """Only a shipment waiting at the counter is collected, only with its code, and not once
    MAX_WRONG_CODES wrong codes were tried (the consumer asks the store; an uncollected pickup expires)."""
    if shipment.status != "READY_FOR_PICKUP":
        raise FailedPrecondition(f"shipment {shipment.shipment_id!r} is {shipment.status}, not waiting for pickup",
                                 reason=f"SHIPMENT_{shipment.status}",
                                 metadata={"shipment_id": shipment.shipment_id, "status": shipment.status})
    if wrong_codes >= MAX_WRONG_CODES:
        raise FailedPrecondition(f"shipment {shipment.shipment_id!r} is locked after {wrong_codes} wrong pickup codes",
                                 reason="PICKUP_LOCKED",
                                 metadata={"shipment_id": shipment.shipment_id, "wrong_codes": str(wrong_codes)})
    if not hmac.compare_digest(pickup_code.encode(), expected_code.encode()):
        raise wrong_pickup_code(wrong_codes + 1)


_WAITING = frozenset({"CREATED", "PICKED", "PACKED", "READY_FOR_PICKUP"})


def check_cancel_fulfilment(order_id: str, reservations: Iterable[Reservation],
                            shipments: Iterable[Shipment]) -> None:
    """A paid order's fulfilment stops only if nothing was handed over and every location has set its part
    aside (a waiting shipment on a CONFIRMED hold): then each hold can go back whole. Anything else is
    refused and changes nothing: goods that left come back only as a return."""
    shipments = list(shipments)
    for s in shipments:
        if s.status in _OUT:
            raise FailedPrecondition(f"shipment {s.shipment_id!r} of order {order_id!r} was handed over already",
                                     reason="HANDED_OVER", metadata={"order_id": order_id,
                                                                    "shipment_id": s.shipment_id})
    if shipments and all(s.status == "CANCELLED" for s in shipments):
        raise FailedPrecondition(f"order {order_id!r}'s fulfilment was cancelled already",
                                 reason="SHIPMENT_CANCELLED", metadata={"order_id": order_id})
    waiting = {s.reservation_id for s in shipments if s.status in _WAITING}
    for r in reservations:
        if r.status != ReservationStatus.CONFIRMED or r.reservation_id not in waiting:
            raise FailedPrecondition(
                f"order {order_id!r} has no waiting shipment at {r.warehouse_id!r} yet ({r.status})",
                reason="FULFILMENT_NOT_STARTED", metadata={"order_id": order_id, "reservation_id": r.reservation_id})


def retake_order(reservation: Reservation, cloud_warehouses: Iterable[str], split: bool = False) -> list[str]:
    """Where a released order's units are sought again: its own warehouse first, then the others by id. A
    leg of a split order only at its own location: the other legs' shipments are there already (one
    shipment per location)."""
    if split:
        return [reservation.warehouse_id]
    others = sorted(w for w in cloud_warehouses if w != reservation.warehouse_id)
    return [reservation.warehouse_id, *others]


_OUT = frozenset({"DISPATCHED", "DELIVERED"})


@dataclass(frozen=True)
class Progress:
    """How far an order's shipments are, one per leg: what orders needs to follow them (PARTIALLY_SHIPPED
    until every leg is out, DELIVERED once every leg is delivered)."""

    all_dispatched: bool
    all_delivered: bool


def progress(legs: int, shipments: Iterable[Shipment]) -> Progress:
    return progress_of(legs, [s.status for s in shipments])


def progress_of(legs: int, statuses: Iterable[str]) -> Progress:
    """progress from the statuses of the order's shipments."""
    statuses = list(statuses)
    return Progress(sum(st in _OUT for st in statuses) >= legs,
                    sum(st == "DELIVERED" for st in statuses) >= legs)


@dataclass(frozen=True)
class Return:
    """Units of one SKU a consumer sent back, and the legs orders says they shipped with (reservation,
    location, units); no legs in refunds published before orders said so."""

    sku_id: str
    quantity: int
    legs: tuple[tuple[str, str, int], ...] = ()


def return_bookings(order_id: str, returns: Iterable[Return],
                    shipments: Iterable[Shipment]) -> list[tuple[str, str, int]]:
    """Where returned goods go back into stock, as (sku_id, warehouse_id, units) in the order stock rows are
    locked in: each leg's units to the location its shipment left from, units no leg accounts for to the first
    shipment that left with the SKU. Only shipments that left count (a split order's leg still waiting holds
    nothing to return to). Orders accepts returns only of units that left, so this finds a place for every
    one; none is a broken invariant (RETURN_NOT_SHIPPED)."""
    out = [s for s in shipments if s.status in _OUT]
    booked: dict[tuple[str, str], int] = {}
    for r in returns:
        carrying = [s for s in out if any(line.sku_id == r.sku_id for line in s.lines)]
        if not carrying:
            raise FailedPrecondition(f"sku {r.sku_id!r} is returned, but no shipment of order {order_id!r} left "
                                     "with it", reason="RETURN_NOT_SHIPPED",
                                     metadata={"order_id": order_id, "sku_id": r.sku_id})
        left = r.quantity
        for reservation_id, warehouse_id, units in r.legs:
            shipment = next((s for s in carrying if s.reservation_id == reservation_id), None) or next(
                (s for s in carrying if s.warehouse_id == warehouse_id), None)
            units = min(units, left)
            if shipment is not None and units > 0:
                key = (r.sku_id, shipment.warehouse_id)
                booked[key] = booked.get(key, 0) + units
                left -= units
        if left:
            key = (r.sku_id, carrying[0].warehouse_id)
            booked[key] = booked.get(key, 0) + left
    return [(sku_id, warehouse_id, units) for (sku_id, warehouse_id), units in sorted(booked.items())]


def page_after(token: str) -> int:
    """The movement id a page token stands for (0: from the start)."""
    if not token:
        return 0
    if not token.isdigit() or len(token) > 18:
        raise InvalidArgument.field("page_token", "is not a token from a previous page")
    return int(token)
