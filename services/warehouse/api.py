"""gRPC <-> domain translation for WarehouseService."""

from __future__ import annotations

from dataclasses import replace

import protovalidate
from omo.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from omo.warehouse.v1 import warehouse_pb2 as pb
from omo.warehouse.v1 import warehouse_pb2_grpc
from sqlalchemy.exc import DBAPIError

from services.runtime import batch, outbox, reqctx
from services.runtime.db import Connection, Database, is_unique_violation, retry_conflicts
from services.runtime.errors import AlreadyExists, DomainError, NotFound, PermissionDenied, Unavailable
from services.runtime.idempotency import request_hash, run_idempotent
from services.runtime.ids import derived_id, new_id
from services.runtime.timestamps import now

from . import domain, routing
from .batching import ReserveBatcher
from .messages import (
    KINDS,
    MODES,
    RESERVATION_RELEASED,
    SHIPMENT_DELIVERED,
    SHIPMENT_DISPATCHED,
    level_pb,
    movement_pb,
    plan_pb,
    reservation_pb,
    reservation_released,
    shipment_delivered,
    shipment_dispatched,
    shipment_pb,
    warehouse_pb,
)
from .store import ReserveCall, SplitResult, WarehouseStore

# A ReserveStock call looks again only when it lost the last units of its chosen warehouse to a concurrent
# call, i.e. when somebody else made progress; this bounds a pathological streak of such losses.
_RESERVE_LOOKS = 8


def _require_brand_operator() -> None:
    """Warehouses and their stock are the brand's: a dealer, store or guide may not create or stock them."""
    who = reqctx.principal()
    if who is not None and who.kind != "brand":
        raise PermissionDenied(f"{who.kind} {who.ident!r} may not operate the brand's warehouses",
                               reason="OUTSIDE_TENANT", metadata={"principal": who.header()})


class WarehouseApi(warehouse_pb2_grpc.WarehouseServiceServicer):
    def __init__(self, engine: Database, store: WarehouseStore, catalog: catalog_pb2_grpc.CatalogServiceStub,
                 default_hold_s: float = domain.DEFAULT_HOLD_S):
        self.engine = engine
        self.store = store
        self.catalog = catalog
        self.default_hold_s = default_hold_s
        self.batcher = ReserveBatcher(self.engine, store)
        self._validator = protovalidate.Validator()

    async def CreateWarehouse(self, request: pb.CreateWarehouseRequest, context) -> pb.CreateWarehouseResponse:
        _require_brand_operator()

        warehouse = domain.location(new_id("whs"), request.code, request.name, KINDS[request.kind],
                                    request.region, request.latitude, request.longitude,
                                    [MODES[m] for m in request.modes], request.store_id, request.express_radius_km,
                                    request.manual_fulfilment)
        if warehouse.store_id:
            # Store stock belongs to a store the catalog knows (NOT_FOUND otherwise).
            await self.catalog.GetStore(catalog_pb2.GetStoreRequest(store_id=warehouse.store_id))

        async def effect(conn: Connection) -> pb.CreateWarehouseResponse:
            if not await self.store.add_warehouse(conn, warehouse):
                raise AlreadyExists(f"a warehouse with code {request.code!r} exists",
                                    reason="WAREHOUSE_CODE_TAKEN", metadata={"code": request.code})
            return pb.CreateWarehouseResponse(warehouse=warehouse_pb(warehouse))

        return await run_idempotent(self.engine, "CreateWarehouse", request.idempotency_key, request,
                                    pb.CreateWarehouseResponse, effect)

    async def ReceiveStock(self, request: pb.ReceiveStockRequest, context) -> pb.ReceiveStockResponse:
        _require_brand_operator()
        # Goods of a SKU the brand's library does not know are refused at the door (NOT_FOUND from catalog).
        await self.catalog.GetSku(catalog_pb2.GetSkuRequest(sku_id=request.sku_id))

        async def effect(conn: Connection) -> pb.ReceiveStockResponse:
            if await self.store.warehouse(conn, request.warehouse_id) is None:
                raise NotFound("warehouse", request.warehouse_id)
            receipt_id = new_id("rcp")
            level = await self.store.book(conn, request.warehouse_id, request.sku_id, request.quantity,
                                          domain.MovementReason.RECEIPT, receipt_id)
            return pb.ReceiveStockResponse(stock=level_pb(level), receipt_id=receipt_id)

        return await retry_conflicts(lambda: run_idempotent(
            self.engine, "ReceiveStock", request.idempotency_key, request, pb.ReceiveStockResponse, effect))

    async def AdjustStock(self, request: pb.AdjustStockRequest, context) -> pb.AdjustStockResponse:
        _require_brand_operator()
        await self.catalog.GetSku(catalog_pb2.GetSkuRequest(sku_id=request.sku_id))

        async def effect(conn: Connection) -> pb.AdjustStockResponse:
            if await self.store.warehouse(conn, request.warehouse_id) is None:
                raise NotFound("warehouse", request.warehouse_id)
            current = await self.store.level(conn, request.warehouse_id, request.sku_id, lock=True)
            domain.check_adjustment(current, request.sku_id, request.delta)
            adjustment_id = new_id("adj")
            level = await self.store.book(conn, request.warehouse_id, request.sku_id, request.delta,
                                          domain.MovementReason.ADJUSTMENT, adjustment_id)
            return pb.AdjustStockResponse(stock=level_pb(level), adjustment_id=adjustment_id)

        return await retry_conflicts(lambda: run_idempotent(
            self.engine, "AdjustStock", request.idempotency_key, request, pb.AdjustStockResponse, effect))

    async def GetWarehouse(self, request: pb.GetWarehouseRequest, context) -> pb.GetWarehouseResponse:
        async with self.engine.connect() as conn:
            warehouse = await self.store.warehouse(conn, request.warehouse_id)
        if warehouse is None:
            raise NotFound("warehouse", request.warehouse_id)
        return pb.GetWarehouseResponse(warehouse=warehouse_pb(warehouse))

    async def GetStock(self, request: pb.GetStockRequest, context) -> pb.GetStockResponse:
        async with self.engine.connect() as conn:
            levels = await self.store.levels(conn, request.sku_id)
        return pb.GetStockResponse(levels=[level_pb(level) for level in levels])

    async def ReserveStock(self, request: pb.ReserveStockRequest, context) -> pb.ReserveStockResponse:
        return await self._reserve(request)

    async def BatchReserveStock(self, request: pb.BatchReserveStockRequest,
                                context) -> pb.BatchReserveStockResponse:
        # Concurrently, so that the items meet in the reservation batcher and share its statements.
        answers = await batch.answer_each(self._validator, list(request.requests), self._reserve)
        return pb.BatchReserveStockResponse(results=[batch.outcome(pb.ReserveStockResult, a) for a in answers])

    async def _reserve(self, request: pb.ReserveStockRequest) -> pb.ReserveStockResponse:
        lines = domain.merge_lines((line.sku_id, line.quantity) for line in request.lines)
        digest = request_hash(request)
        hold_s = request.hold_for.ToTimedelta().total_seconds() if request.HasField("hold_for") \
            else self.default_hold_s
        call = ReserveCall(new_id("rsv"), request.order_id, request.idempotency_key, digest, lines, hold_s)
        reservation_id = call.reservation_id
        routed = request.HasField("route")
        for _ in range(_RESERVE_LOOKS):
            if routed:
                try:
                    best = await self._route(request.route, lines)
                except DomainError:
                    # A retry replays the first answer even if no route would serve it now.
                    replayed = await self._replay(request, digest, lines)
                    if replayed is not None:
                        return replayed
                    raise
                if len(best.legs) > 1:
                    held = await self._reserve_split(call, best)
                    if held is None:  # a leg's units went to a concurrent call: look again
                        continue
                    if not held:
                        replayed = await self._replay(request, digest, lines)
                        if replayed is not None:
                            return replayed
                        continue
                    return pb.ReserveStockResponse(reservation=reservation_pb(held[0]),
                                                   legs=[reservation_pb(r) for r in held])
                call = replace(call, warehouse_id=best.legs[0].warehouse_id)
            result = await self.batcher.reserve(call)
            if result.conflict:
                # A concurrent call with this key or for this order committed first (the unique constraints
                # decided): look again, and the next look sees the winner's reservation.
                continue
            if result.prior:
                replayed = await self._replay(request, digest, lines)
                if replayed is not None:
                    return replayed
                continue
            if result.warehouse_id is not None and result.created_at is not None:
                reservation = domain.Reservation(reservation_id, request.order_id, result.warehouse_id,
                                                 domain.ReservationStatus.RESERVED, lines, result.created_at,
                                                 expires_at=result.expires_at)
                held_pb = reservation_pb(reservation)
                return pb.ReserveStockResponse(reservation=held_pb, legs=[held_pb])
            if not routed:
                # Refused on the locked rows' levels: nothing covers the order.
                raise domain.shortage(result.available, lines)
            # The chosen location's units went to an earlier call: rank again on the new levels.
        raise Unavailable("stock of this order is heavily contended, retry with the same idempotency key",
                          reason="CONTENDED")

    async def _replay(self, request: pb.ReserveStockRequest, digest: bytes,
                      lines: tuple[domain.Line, ...]) -> pb.ReserveStockResponse | None:
        """The answer for a key or an order that already holds stock (None if neither does)."""
        async with self.engine.connect() as conn:
            prior = await self.store.prior_reservations(conn, request.idempotency_key, request.order_id)
        if not prior:
            return None
        held = domain.replay_legs(prior, request.idempotency_key, digest, request.order_id, lines)
        return pb.ReserveStockResponse(reservation=reservation_pb(held[0]), legs=[reservation_pb(r) for r in held])

    async def _reserve_split(self, call: ReserveCall,
                             best: routing.Plan) -> tuple[domain.Reservation, ...] | None:
        """Every leg of the plan held in one transaction, all or nothing. () if the key or the order holds
        stock already; None if a leg's units went to a concurrent call."""
        rids = [call.reservation_id, *(derived_id("rsv", call.reservation_id, str(i))
                                       for i in range(1, len(best.legs)))]
        legs = [(leg.warehouse_id, leg.lines) for leg in best.legs]

        async def attempt() -> SplitResult:
            async with self.engine.begin() as conn:
                return await self.store.reserve_split(conn, call, rids, legs)

        try:
            result = await retry_conflicts(attempt)
        except DBAPIError as err:
            if is_unique_violation(err):  # a concurrent call for this key or order committed first
                return ()
            raise
        if result.prior:
            return ()
        return result.legs or None

    async def _plan(self, route: pb.Route,
                    lines: tuple[domain.Line, ...]) -> tuple[routing.Plan, domain.Availability]:
        mode = MODES[route.mode]
        async with self.engine.connect() as conn:
            locations, available = await self.store.route_levels(conn, str(mode), [line.sku_id for line in lines])
        where = (route.deliver_to.latitude, route.deliver_to.longitude)
        best = routing.plan(lines, mode, *where, locations, available)
        if best is None:
            raise routing.no_route(lines, mode, *where, locations, available)
        return best, available

    async def _route(self, route: pb.Route, lines: tuple[domain.Line, ...]) -> routing.Plan:
        """What QuoteRoute shows for the same request, ranked the same way on the current levels."""
        best, _ = await self._plan(route, lines)
        return best

    async def QuoteRoute(self, request: pb.QuoteRouteRequest, context) -> pb.QuoteRouteResponse:
        lines = domain.merge_lines((line.sku_id, line.quantity) for line in request.lines)
        best, _ = await self._plan(request.route, lines)
        return pb.QuoteRouteResponse(plan=plan_pb(best))

    async def GetReservation(self, request: pb.GetReservationRequest, context) -> pb.GetReservationResponse:
        async with self.engine.connect() as conn:
            reservation = await self.store.reservation(conn, request.reservation_id)
        if reservation is None:
            raise NotFound("reservation", request.reservation_id)
        return pb.GetReservationResponse(reservation=reservation_pb(reservation))

    async def ReleaseReservation(self, request: pb.ReleaseReservationRequest,
                                 context) -> pb.ReleaseReservationResponse:
        async def effect(conn: Connection) -> pb.ReleaseReservationResponse:
            reservation = await self.store.reservation(conn, request.reservation_id, lock=True)
            if reservation is None:
                raise NotFound("reservation", request.reservation_id)
            domain.check_transition(reservation, domain.ReservationStatus.RELEASED)
            await outbox.add(conn, RESERVATION_RELEASED, reservation_released(reservation, request.reason, now()))
            # Last: the stock rows stay locked only until the commit right after.
            await self.store.release(conn, reservation, request.reason)
            released = replace(reservation, status=domain.ReservationStatus.RELEASED)
            return pb.ReleaseReservationResponse(reservation=reservation_pb(released))

        return await retry_conflicts(lambda: run_idempotent(
            self.engine, "ReleaseReservation", request.idempotency_key, request, pb.ReleaseReservationResponse,
            effect))

    async def ListShipments(self, request: pb.ListShipmentsRequest, context) -> pb.ListShipmentsResponse:
        async with self.engine.connect() as conn:
            shipments = await self.store.shipments(conn, request.order_id)
        return pb.ListShipmentsResponse(shipments=[shipment_pb(s) for s in shipments])

    async def CollectPickup(self, request: pb.CollectPickupRequest, context) -> pb.CollectPickupResponse:
        async def effect(conn: Connection) -> pb.CollectPickupResponse:
            await self._lock_order_of(conn, request.shipment_id)
            found = await self.store.pickup(conn, request.shipment_id)
            if found is None:
                raise NotFound("shipment", request.shipment_id)
            shipment, code, wrong_codes = found
            domain.check_collect(shipment, request.pickup_code, code, wrong_codes)
            collected = replace(shipment, status="DISPATCHED", dispatched_at=now())
            await self.store.hand_over(conn, shipment, collected)
            done = await self.store.progress(conn, shipment.order_id)
            await outbox.add(conn, SHIPMENT_DISPATCHED, shipment_dispatched(collected, done.all_dispatched))
            return pb.CollectPickupResponse(shipment=shipment_pb(collected))

        # A wrong code is counted first, in its own transaction, so that it stays counted although the call
        # fails; once the limit is reached nothing is counted and the collection below says PICKUP_LOCKED.
        async with self.engine.begin() as conn:
            tried = await self.store.count_wrong_code(conn, request.shipment_id, request.pickup_code,
                                                      domain.MAX_WRONG_CODES)
        if tried is not None:
            raise domain.wrong_pickup_code(tried)
        return await retry_conflicts(lambda: run_idempotent(
            self.engine, "CollectPickup", request.idempotency_key, request, pb.CollectPickupResponse, effect))

    async def _lock_order_of(self, conn: Connection, shipment_id: str) -> None:
        """Every leg of the shipment's order locked first (as on every path), so that whichever of its
        shipments leaves or arrives last sees the others and says the order is complete."""
        shipment = await self.store.shipment(conn, shipment_id)
        if shipment is not None:
            await self.store.lock_order(conn, shipment.order_id)

    async def _step(self, scope: str, request, to: str, response_type, **handed):  # type: ignore[no-untyped-def]
        """One hand-fulfilment step of a shipment, idempotent by the request's key."""
        async def effect(conn: Connection):  # type: ignore[no-untyped-def]
            await self._lock_order_of(conn, request.shipment_id)
            shipment = await self.store.shipment_locked(conn, request.shipment_id)
            if shipment is None:
                raise NotFound("shipment", request.shipment_id)
            domain.check_step(shipment, to)
            if to == "DISPATCHED":
                after = replace(shipment, status=to, dispatched_at=now(), **handed)
                await self.store.hand_over(conn, shipment, after)
                done = await self.store.progress(conn, shipment.order_id)
                await outbox.add(conn, SHIPMENT_DISPATCHED, shipment_dispatched(after, done.all_dispatched))
            else:
                after = replace(shipment, status=to)
                await self.store.step(conn, shipment, to)
            return response_type(shipment=shipment_pb(after))

        return await retry_conflicts(lambda: run_idempotent(self.engine, scope, request.idempotency_key, request,
                                                            response_type, effect))

    async def PickShipment(self, request: pb.PickShipmentRequest, context) -> pb.PickShipmentResponse:
        return await self._step("PickShipment", request, "PICKED", pb.PickShipmentResponse)

    async def PackShipment(self, request: pb.PackShipmentRequest, context) -> pb.PackShipmentResponse:
        return await self._step("PackShipment", request, "PACKED", pb.PackShipmentResponse)

    async def ShipShipment(self, request: pb.ShipShipmentRequest, context) -> pb.ShipShipmentResponse:
        return await self._step("ShipShipment", request, "DISPATCHED", pb.ShipShipmentResponse,
                                carrier=request.carrier, tracking_number=request.tracking_number)

    async def RecordDelivery(self, request: pb.RecordDeliveryRequest, context) -> pb.RecordDeliveryResponse:
        async def effect(conn: Connection) -> pb.RecordDeliveryResponse:
            await self._lock_order_of(conn, request.shipment_id)
            shipment = await self.store.shipment_locked(conn, request.shipment_id)
            if shipment is None:
                raise NotFound("shipment", request.shipment_id)
            domain.check_delivery(shipment)
            delivered = replace(shipment, status="DELIVERED", delivered_at=now())
            await self.store.deliver(conn, delivered)
            done = await self.store.progress(conn, shipment.order_id)
            await outbox.add(conn, SHIPMENT_DELIVERED, shipment_delivered(delivered, done.all_delivered))
            return pb.RecordDeliveryResponse(shipment=shipment_pb(delivered))

        return await run_idempotent(self.engine, "RecordDelivery", request.idempotency_key, request,
                                    pb.RecordDeliveryResponse, effect)

    async def CancelFulfilment(self, request: pb.CancelFulfilmentRequest, context) -> pb.CancelFulfilmentResponse:
        async def effect(conn: Connection) -> pb.CancelFulfilmentResponse:
            held = [h.reservation for h in await self.store.reservations_for_order(conn, request.order_id)]
            if not held:
                raise NotFound("order", request.order_id)
            shipments = await self.store.shipments_locked(conn, request.order_id)
            domain.check_cancel_fulfilment(request.order_id, held, shipments)
            if len(held) > 1:
                await self.store.lock_stock(conn, [(r.warehouse_id, r.lines) for r in held])
            reason = f"order cancelled: {request.reason}"[:200]
            hold_of = {r.reservation_id: r for r in held}
            cancelled = []
            for shipment in shipments:
                reservation = hold_of[shipment.reservation_id]
                await self.store.cancel_shipment(conn, shipment)
                await outbox.add(conn, RESERVATION_RELEASED, reservation_released(reservation, reason, now()))
                await self.store.release(conn, reservation, reason)
                cancelled.append(replace(shipment, status="CANCELLED"))
            return pb.CancelFulfilmentResponse(shipments=[shipment_pb(s) for s in cancelled])

        return await retry_conflicts(lambda: run_idempotent(
            self.engine, "CancelFulfilment", request.idempotency_key, request, pb.CancelFulfilmentResponse, effect))

    async def ListMovements(self, request: pb.ListMovementsRequest, context) -> pb.ListMovementsResponse:
        after = domain.page_after(request.page_token)
        size = request.page_size or domain.DEFAULT_PAGE_SIZE
        async with self.engine.connect() as conn:
            if await self.store.warehouse(conn, request.warehouse_id) is None:
                raise NotFound("warehouse", request.warehouse_id)
            movements = await self.store.movements(conn, request.warehouse_id, request.sku_id, after, size + 1)
        page = movements[:size]
        next_token = str(page[-1].movement_id) if len(movements) > size else ""
        return pb.ListMovementsResponse(movements=[movement_pb(m) for m in page], next_page_token=next_token)
