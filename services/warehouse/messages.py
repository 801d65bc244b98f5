"""Domain objects -> protobuf messages, shared by the API and the events the service publishes."""

from __future__ import annotations

from datetime import datetime

from omo.warehouse.v1 import events_pb2 as ev
from omo.warehouse.v1 import warehouse_pb2 as pb

from services.runtime.timestamps import to_proto

from . import domain, routing

RESERVATION_RELEASED = "warehouse.reservation.released"
SHIPMENT_DISPATCHED = "warehouse.shipment.dispatched"
SHIPMENT_READY_FOR_PICKUP = "warehouse.shipment.ready_for_pickup"
SHIPMENT_DELIVERED = "warehouse.shipment.delivered"

_STATUS = {
    domain.ReservationStatus.RESERVED: pb.RESERVATION_STATUS_RESERVED,
    domain.ReservationStatus.RELEASED: pb.RESERVATION_STATUS_RELEASED,
    domain.ReservationStatus.SHIPPED: pb.RESERVATION_STATUS_SHIPPED,
    domain.ReservationStatus.CONFIRMED: pb.RESERVATION_STATUS_CONFIRMED,
}
_REASON = {
    domain.MovementReason.RECEIPT: pb.MOVEMENT_REASON_RECEIPT,
    domain.MovementReason.RESERVATION: pb.MOVEMENT_REASON_RESERVATION,
    domain.MovementReason.RELEASE: pb.MOVEMENT_REASON_RELEASE,
    domain.MovementReason.SHIPMENT: pb.MOVEMENT_REASON_SHIPMENT,
    domain.MovementReason.ADJUSTMENT: pb.MOVEMENT_REASON_ADJUSTMENT,
    domain.MovementReason.RETURN: pb.MOVEMENT_REASON_RETURN,
}
KINDS = {pb.WAREHOUSE_KIND_CLOUD: domain.Kind.CLOUD, pb.WAREHOUSE_KIND_FORWARD: domain.Kind.FORWARD,
         pb.WAREHOUSE_KIND_STORE: domain.Kind.STORE}
_KIND_PB = {str(name): value for value, name in KINDS.items()}
MODES = {pb.FULFILMENT_MODE_CLOUD_SHIPPING: domain.Mode.CLOUD_SHIPPING,
         pb.FULFILMENT_MODE_STORE_PICKUP: domain.Mode.STORE_PICKUP,
         pb.FULFILMENT_MODE_EXPRESS_3H: domain.Mode.EXPRESS_3H}
_MODE_PB = {str(name): value for value, name in MODES.items()}


def warehouse_pb(w: domain.Warehouse) -> pb.Warehouse:
    return pb.Warehouse(warehouse_id=w.warehouse_id, code=w.code, name=w.name, kind=_KIND_PB[str(w.kind)],
                        region=w.region, latitude=w.latitude, longitude=w.longitude,
                        modes=[_MODE_PB[m] for m in w.modes], store_id=w.store_id,
                        express_radius_km=w.express_radius_km, manual_fulfilment=w.manual_fulfilment)


def level_pb(s: domain.StockLevel) -> pb.StockLevel:
    return pb.StockLevel(warehouse_id=s.warehouse_id, sku_id=s.sku_id, on_hand=s.on_hand, reserved=s.reserved,
                         available=s.available)


def lines_pb(lines: tuple[domain.Line, ...]) -> list[pb.StockLine]:
    return [pb.StockLine(sku_id=line.sku_id, quantity=line.quantity) for line in lines]


def reservation_pb(r: domain.Reservation) -> pb.Reservation:
    return pb.Reservation(reservation_id=r.reservation_id, order_id=r.order_id, warehouse_id=r.warehouse_id,
                          status=_STATUS[r.status], lines=lines_pb(r.lines), created_at=to_proto(r.created_at),
                          expires_at=to_proto(r.expires_at))


_SHIPMENT_STATUS = {"DISPATCHED": pb.SHIPMENT_STATUS_DISPATCHED,
                    "READY_FOR_PICKUP": pb.SHIPMENT_STATUS_READY_FOR_PICKUP,
                    "DELIVERED": pb.SHIPMENT_STATUS_DELIVERED,
                    "CREATED": pb.SHIPMENT_STATUS_CREATED,
                    "PICKED": pb.SHIPMENT_STATUS_PICKED,
                    "PACKED": pb.SHIPMENT_STATUS_PACKED,
                    "CANCELLED": pb.SHIPMENT_STATUS_CANCELLED}


def shipment_pb(s: domain.Shipment) -> pb.Shipment:
    return pb.Shipment(shipment_id=s.shipment_id, order_id=s.order_id, warehouse_id=s.warehouse_id,
                       status=_SHIPMENT_STATUS[s.status], lines=lines_pb(s.lines),
                       dispatched_at=to_proto(s.dispatched_at), ready_at=to_proto(s.ready_at),
                       delivered_at=to_proto(s.delivered_at), carrier=s.carrier,
                       tracking_number=s.tracking_number)


def shipment_delivered(s: domain.Shipment, order_fully_delivered: bool) -> ev.ShipmentDelivered:
    return ev.ShipmentDelivered(shipment_id=s.shipment_id, order_id=s.order_id, warehouse_id=s.warehouse_id,
                                delivered_at=to_proto(s.delivered_at), order_fully_delivered=order_fully_delivered)


def ready_for_pickup(s: domain.Shipment, store_id: str, pickup_code: str) -> ev.ShipmentReadyForPickup:
    return ev.ShipmentReadyForPickup(shipment_id=s.shipment_id, order_id=s.order_id, warehouse_id=s.warehouse_id,
                                     store_id=store_id, pickup_code=pickup_code, lines=lines_pb(s.lines),
                                     ready_at=to_proto(s.ready_at))


def movement_pb(m: domain.Movement) -> pb.Movement:
    return pb.Movement(movement_id=m.movement_id, warehouse_id=m.warehouse_id, sku_id=m.sku_id,
                       on_hand_delta=m.on_hand_delta, reserved_delta=m.reserved_delta, reason=_REASON[m.reason],
                       reference_id=m.reference_id, created_at=to_proto(m.created_at))


def shipment_dispatched(s: domain.Shipment, order_fully_dispatched: bool) -> ev.ShipmentDispatched:
    return ev.ShipmentDispatched(shipment_id=s.shipment_id, order_id=s.order_id, warehouse_id=s.warehouse_id,
                                 lines=lines_pb(s.lines), dispatched_at=to_proto(s.dispatched_at),
                                 order_fully_dispatched=order_fully_dispatched, reservation_id=s.reservation_id)


def reservation_released(r: domain.Reservation, reason: str, at: datetime) -> ev.ReservationReleased:
    return ev.ReservationReleased(reservation_id=r.reservation_id, order_id=r.order_id, reason=reason,
                                  warehouse_id=r.warehouse_id, lines=lines_pb(r.lines), released_at=to_proto(at))


def plan_pb(plan: routing.Plan) -> pb.RoutePlan:
    return pb.RoutePlan(legs=[pb.RouteLeg(warehouse_id=leg.warehouse_id, kind=_KIND_PB[str(leg.kind)],
                                          lines=lines_pb(leg.lines), distance_km=round(leg.distance_km, 3))
                              for leg in plan.legs])
