"""Warehouse rules, free of I/O: which warehouse serves an order, which SKU is short, how a reservation
may change state, what a paid order does to it."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from services.runtime.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

DEFAULT_PAGE_SIZE = 100


class ReservationStatus(enum.StrEnum):
    RESERVED = "RESERVED"
    RELEASED = "RELEASED"
    SHIPPED = "SHIPPED"


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
    ReservationStatus.RESERVED: frozenset({ReservationStatus.RELEASED, ReservationStatus.SHIPPED}),
    ReservationStatus.RELEASED: frozenset({ReservationStatus.SHIPPED}),
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


@dataclass(frozen=True)
class Shipment:
    shipment_id: str
    order_id: str
    warehouse_id: str
    reservation_id: str
    lines: tuple[Line, ...]
    dispatched_at: datetime
    status: str = "DISPATCHED"


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
    """What a ReserveStock call gets when its key or its order already has a reservation.

    The same key replays the first response (a reservation is RESERVED when created); the same key with a
    different request is a client bug. Another key for an order that is already held returns that hold if
    it is for the same lines and still in force, so a caller that lost its key cannot double-reserve; any
    other combination is refused."""
    prior = list(prior)
    for reservation in prior:
        if reservation.idempotency_key == key:
            if reservation.request_hash != request_hash:
                raise InvalidArgument.field("idempotency_key", "was already used for a different request")
            return replace(reservation, status=ReservationStatus.RESERVED)
    for reservation in prior:
        if reservation.order_id == order_id:
            if reservation.lines == lines and reservation.status != ReservationStatus.RELEASED:
                return reservation
            raise FailedPrecondition(
                f"order {order_id!r} already holds reservation {reservation.reservation_id!r} "
                f"({reservation.status}) for other lines or no longer in force",
                reason="ORDER_ALREADY_RESERVED",
                metadata={"order_id": order_id, "reservation_id": reservation.reservation_id},
            )
    raise LookupError("replay_or_conflict needs a reservation with the key or the order")


class ShipAction(enum.Enum):
    # A shipment for the order exists: the event was seen before under another id.
    ALREADY_SHIPPED = "already_shipped"
    # The held units leave the warehouse.
    SHIP_HELD = "ship_held"
    # The hold was released before payment: take the units again, then ship.
    RETAKE = "retake"


def ship_action(reservation: Reservation, shipped: bool) -> ShipAction:
    if shipped:
        return ShipAction.ALREADY_SHIPPED
    check_transition(reservation, ReservationStatus.SHIPPED)
    if reservation.status == ReservationStatus.RESERVED:
        return ShipAction.SHIP_HELD
    return ShipAction.RETAKE


def retake_order(reservation: Reservation, cloud_warehouses: Iterable[str]) -> list[str]:
    """Where a released order's units are sought again: its own warehouse first, then the others by id."""
    others = sorted(w for w in cloud_warehouses if w != reservation.warehouse_id)
    return [reservation.warehouse_id, *others]


def page_after(token: str) -> int:
    """The movement id a page token stands for (0: from the start)."""
    if not token:
        return 0
    if not token.isdigit() or len(token) > 18:
        raise InvalidArgument.field("page_token", "is not a token from a previous page")
    return int(token)
