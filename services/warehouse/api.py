"""gRPC <-> domain translation for WarehouseService."""

from __future__ import annotations

from dataclasses import replace

from omo.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from omo.warehouse.v1 import warehouse_pb2 as pb
from omo.warehouse.v1 import warehouse_pb2_grpc
from sqlalchemy.exc import DBAPIError

from services.runtime import outbox, reqctx
from services.runtime.db import Connection, Database
from services.runtime.errors import AlreadyExists, NotFound, PermissionDenied, Unavailable
from services.runtime.idempotency import request_hash, run_idempotent
from services.runtime.ids import new_id

from . import domain
from .messages import (
    KINDS,
    RESERVATION_RELEASED,
    level_pb,
    movement_pb,
    reservation_pb,
    reservation_released,
    shipment_pb,
    warehouse_pb,
)
from .store import ReserveResult, WarehouseStore, is_unique_violation, retry_conflicts

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
    def __init__(self, engine: Database, store: WarehouseStore, catalog: catalog_pb2_grpc.CatalogServiceStub):
        self.engine = engine
        # ReserveStock is a single statement; without BEGIN/COMMIT around it no row lock outlives it.
        self.store = store
        self.catalog = catalog

    async def CreateWarehouse(self, request: pb.CreateWarehouseRequest, context) -> pb.CreateWarehouseResponse:
        _require_brand_operator()

        async def effect(conn: Connection) -> pb.CreateWarehouseResponse:
            warehouse = domain.Warehouse(new_id("whs"), request.code, request.name, KINDS[request.kind],
                                         request.region, request.latitude, request.longitude)
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
            level = await self.store.receive(conn, request.warehouse_id, request.sku_id, request.quantity,
                                             receipt_id)
            return pb.ReceiveStockResponse(stock=level_pb(level), receipt_id=receipt_id)

        return await retry_conflicts(lambda: run_idempotent(
            self.engine, "ReceiveStock", request.idempotency_key, request, pb.ReceiveStockResponse, effect))

    async def GetStock(self, request: pb.GetStockRequest, context) -> pb.GetStockResponse:
        async with self.engine.connect() as conn:
            levels = await self.store.levels(conn, request.sku_id)
        return pb.GetStockResponse(levels=[level_pb(level) for level in levels])

    async def ReserveStock(self, request: pb.ReserveStockRequest, context) -> pb.ReserveStockResponse:
        lines = domain.merge_lines((line.sku_id, line.quantity) for line in request.lines)
        digest = request_hash(request)
        reservation_id = new_id("rsv")
        for _ in range(_RESERVE_LOOKS):
            try:
                result = await retry_conflicts(lambda: self._reserve_once(reservation_id, request, digest, lines))
            except DBAPIError as err:
                # A concurrent call with this key or for this order committed first (the unique constraints
                # decided): look again, and the next look sees the winner's reservation.
                if is_unique_violation(err):
                    continue
                raise
            if result.prior:
                async with self.engine.connect() as conn:
                    prior = await self.store.prior_reservations(conn, request.idempotency_key, request.order_id)
                reservation = domain.replay_or_conflict(prior, request.idempotency_key, digest, request.order_id,
                                                        lines)
                return pb.ReserveStockResponse(reservation=reservation_pb(reservation))
            if result.warehouse_id is not None and result.created_at is not None:
                reservation = domain.Reservation(reservation_id, request.order_id, result.warehouse_id,
                                                 domain.ReservationStatus.RESERVED, lines, result.created_at)
                return pb.ReserveStockResponse(reservation=reservation_pb(reservation))
            if domain.choose_warehouse(result.available, lines) is None:
                raise domain.shortage(result.available, lines)
            # The snapshot showed a warehouse covering the order but its units went to a concurrent call
            # before we could lock them: look again at the new levels.
        raise Unavailable("stock of this order is heavily contended, retry with the same idempotency key",
                          reason="CONTENDED")

    async def _reserve_once(self, reservation_id: str, request: pb.ReserveStockRequest, digest: bytes,
                            lines: tuple[domain.Line, ...]) -> ReserveResult:
        async with self.engine.connect() as conn:
            return await self.store.reserve(conn, reservation_id, request.order_id, request.idempotency_key,
                                            digest, lines)

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
            await outbox.add(conn, RESERVATION_RELEASED, reservation_released(reservation, request.reason))
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
