"""Routing rules, free of I/O: which locations serve an order in a fulfilment mode for a consumer at a place.

Ranking, in order: only locations offering the mode (3-hour express only within the location's radius); a
plan from one location before any split; among splits, the fewest locations, a line split across them when
no single one covers it (never for store pickup: the consumer collects at one counter); then the shorter
distance (the farthest leg, since the order is complete only when
that parcel arrives); then more available units; then warehouse ids. Same inputs, same plan, on every
replica."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from services.runtime.errors import ResourceExhausted

from .domain import Availability, Line, Mode, Warehouse, covers

EARTH_RADIUS_KM = 6371.0088
# Splits are sought among this many nearest candidates holding any of the goods, up to this many locations:
# enough for any real basket, and it bounds the combinations looked at (C(12, 4) = 495).
_NEAREST = 12
_MAX_LOCATIONS = 4


@dataclass(frozen=True)
class Leg:
    warehouse_id: str
    kind: str
    lines: tuple[Line, ...]
    distance_km: float


@dataclass(frozen=True)
class Plan:
    legs: tuple[Leg, ...]


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance on a spherical earth."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def candidates(mode: Mode, lat: float, lon: float,
               locations: Sequence[Warehouse]) -> list[tuple[Warehouse, float]]:
    """Locations that can serve the mode here, nearest first (ties by id)."""
    found = []
    for w in locations:
        if str(mode) not in w.modes:
            continue
        distance = great_circle_km(w.latitude, w.longitude, lat, lon)
        if mode == Mode.EXPRESS_3H and distance > w.express_radius_km:
            continue
        found.append((w, distance))
    return sorted(found, key=lambda c: (c[1], c[0].warehouse_id))


def _units(available: Mapping[str, int], lines: Sequence[Line]) -> int:
    """Units of the order's SKUs on hold-free stock there: more left after this order is the better choice."""
    return sum(available.get(line.sku_id, 0) for line in lines)


def plan(lines: tuple[Line, ...], mode: Mode, lat: float, lon: float, locations: Sequence[Warehouse],
         available: Availability) -> Plan | None:
    """The best plan, or None if the candidates together cannot cover the lines."""
    ranked = candidates(mode, lat, lon, locations)
    stock = {w.warehouse_id: available.get(w.warehouse_id, {}) for w, _ in ranked}
    singles = [(w, d) for w, d in ranked if covers(stock[w.warehouse_id], lines)]
    if singles:
        w, d = min(singles, key=lambda c: (c[1], -_units(stock[c[0].warehouse_id], lines), c[0].warehouse_id))
        return Plan((Leg(w.warehouse_id, w.kind, lines, d),))
    if mode == Mode.STORE_PICKUP:
        return None
    # Only places holding some of the goods can be part of a split.
    nearest = [c for c in ranked if _units(stock[c[0].warehouse_id], lines) > 0][:_NEAREST]
    for size in range(2, min(_MAX_LOCATIONS, len(nearest)) + 1):
        best = None
        for combo in combinations(nearest, size):
            totals = {line.sku_id: sum(stock[w.warehouse_id].get(line.sku_id, 0) for w, _ in combo) for line in lines}
            if any(totals[line.sku_id] < line.quantity for line in lines):
                continue
            key = (max(d for _, d in combo), -sum(_units(stock[w.warehouse_id], lines) for w, _ in combo),
                   tuple(w.warehouse_id for w, _ in combo))
            if best is None or key < best[0]:
                best = (key, combo)
        if best is not None:
            return Plan(_allocate(best[1], lines, stock))
    return None


def _allocate(combo: Sequence[tuple[Warehouse, float]], lines: tuple[Line, ...],
              stock: Mapping[str, Mapping[str, int]]) -> tuple[Leg, ...]:
    """Each line from the nearest location of the plan first. With the fewest locations every one of them
    gets something: otherwise fewer would have covered the order."""
    taken: dict[str, list[Line]] = {w.warehouse_id: [] for w, _ in combo}
    for line in lines:
        left = line.quantity
        for w, _ in combo:
            take = min(left, stock[w.warehouse_id].get(line.sku_id, 0))
            if take:
                taken[w.warehouse_id].append(Line(line.sku_id, take))
                left -= take
            if not left:
                break
    return tuple(Leg(w.warehouse_id, w.kind, tuple(taken[w.warehouse_id]), d) for w, d in combo
                 if taken[w.warehouse_id])


def no_route(lines: tuple[Line, ...], mode: Mode, lat: float, lon: float, locations: Sequence[Warehouse],
             available: Availability) -> ResourceExhausted:
    """Why no plan exists: the first line the mode's candidates here do not hold enough of together (for
    pickup, that no one counter holds enough of)."""
    ranked = candidates(mode, lat, lon, locations)
    for line in lines:
        units = [available.get(w.warehouse_id, {}).get(line.sku_id, 0) for w, _ in ranked]
        total = max(units, default=0) if mode == Mode.STORE_PICKUP else sum(units)
        if total < line.quantity:
            break
    else:
        line = lines[0]
    return ResourceExhausted(
        f"not enough stock of sku {line.sku_id!r} for {mode} here: {line.quantity} wanted",
        reason="INSUFFICIENT_STOCK", metadata={"sku_id": line.sku_id, "requested": str(line.quantity),
                                               "mode": str(mode)})
