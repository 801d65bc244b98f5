"""The legs of an order, free of I/O: one per location of its route (a split route has several), each held
at one location and shipped as one parcel. What left, what came back and where it goes back to are read
from the legs, never counted separately, so a shipment seen twice cannot count its units twice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime


@dataclass(frozen=True)
class LegLine:
    sku_id: str
    quantity: int
    # Units of it the consumer sent back to this leg's location.
    returned_quantity: int = 0


@dataclass(frozen=True)
class Leg:
    reservation_id: str
    # Where it is served from: the hold's location, or once shipped the location it left from.
    warehouse_id: str
    lines: tuple[LegLine, ...]
    # Empty with dispatched_at set: the warehouse said the whole order had left before this leg's own event
    # arrived (its shipment id comes with that event).
    shipment_id: str = ""
    dispatched_at: datetime | None = None

    @property
    def shipped(self) -> bool:
        return self.dispatched_at is not None


@dataclass(frozen=True)
class LegReturn:
    """Units of a refunded line sent back to the location one leg shipped them from."""

    reservation_id: str
    warehouse_id: str
    quantity: int


def carrying(legs: Sequence[Leg], reservation_id: str, warehouse_id: str) -> int | None:
    """The leg a shipment carries: named by its reservation; an event from before shipments named it is
    matched by location (one reservation per location and order). None if no leg is known for it (an order
    placed before legs were recorded knows only its first)."""
    if reservation_id:
        return next((i for i, leg in enumerate(legs) if leg.reservation_id == reservation_id), None)
    return next((i for i, leg in enumerate(legs) if leg.warehouse_id == warehouse_id), None)


def ship(legs: tuple[Leg, ...], i: int, shipment_id: str, warehouse_id: str, at: datetime) -> tuple[Leg, ...]:
    """Leg i left with this shipment from this location (the hold's, unless the warehouse took released
    units again elsewhere) at the shipment's own time, also if `all_left` marked it out before."""
    leg = legs[i]
    left = replace(leg, shipment_id=shipment_id, warehouse_id=warehouse_id or leg.warehouse_id, dispatched_at=at)
    return (*legs[:i], left, *legs[i + 1:])


def all_left(legs: tuple[Leg, ...], at: datetime) -> tuple[Leg, ...]:
    """The warehouse says every shipment of the order has left: legs whose own event has not arrived yet (or
    that the order does not know apart) are out too."""
    return tuple(leg if leg.shipped else replace(leg, dispatched_at=at) for leg in legs)


def shipped(legs: Sequence[Leg], sku_id: str) -> int:
    """Units of the SKU that have left, over every leg that shipped."""
    return sum(line.quantity for leg in legs if leg.shipped for line in leg.lines if line.sku_id == sku_id)


def returned(legs: Sequence[Leg], sku_id: str) -> int:
    return sum(line.returned_quantity for leg in legs for line in leg.lines if line.sku_id == sku_id)


def take_back(legs: tuple[Leg, ...], sku_id: str, quantity: int) -> tuple[tuple[Leg, ...], tuple[LegReturn, ...]]:
    """Send `quantity` units of the SKU back to the legs that shipped them, the first legs first; the caller
    checked that enough of it left and has not come back yet."""
    left, updated, returns = quantity, list(legs), []
    for i, leg in enumerate(legs):
        if not left:
            break
        if not leg.shipped:
            continue
        lines = list(leg.lines)
        for n, line in enumerate(lines):
            take = min(left, line.quantity - line.returned_quantity) if line.sku_id == sku_id else 0
            if take:
                lines[n] = replace(line, returned_quantity=line.returned_quantity + take)
                returns.append(LegReturn(leg.reservation_id, leg.warehouse_id, take))
                left -= take
        updated[i] = replace(leg, lines=tuple(lines))
    if left:
        raise ValueError(f"{left} units of {sku_id} have not left or came back already")
    return tuple(updated), tuple(returns)
