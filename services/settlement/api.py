"""gRPC <-> domain translation for SettlementService."""

from __future__ import annotations

from omo.settlement.v1 import settlement_pb2 as pb
from omo.settlement.v1 import settlement_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from services.runtime import reqctx
from services.runtime.errors import NotFound, PermissionDenied
from services.runtime.tenancy import require_party

from . import domain
from .messages import PURPOSE, ledger_check_pb, party_of, party_pb, split_pb
from .store import LedgerStore


def require_split_reader(split: domain.Split) -> None:
    """Internal callers, the split's dealer and its brand may read it; any other principal may not."""
    try:
        require_party("dealer", split.dealer_id)
    except PermissionDenied:
        require_party("brand", split.brand_id)


def require_internal(what: str) -> None:
    """Operator-only reads: no tenant principal may make them."""
    who = reqctx.principal()
    if who is not None:
        raise PermissionDenied(f"{who.kind} {who.ident!r} may not {what}", reason="OUTSIDE_TENANT",
                               metadata={"principal": who.header()})


class SettlementApi(settlement_pb2_grpc.SettlementServiceServicer):
    def __init__(self, engine: AsyncEngine, store: LedgerStore):
        self.engine = engine
        self.store = store

    async def GetOrderSplit(self, request: pb.GetOrderSplitRequest, context) -> pb.GetOrderSplitResponse:
        async with self.engine.connect() as conn:
            split = await self.store.split(conn, request.order_id)
        if split is None:
            raise NotFound("order split", request.order_id)
        require_split_reader(split)
        return pb.GetOrderSplitResponse(split=split_pb(split))

    async def GetBalances(self, request: pb.GetBalancesRequest, context) -> pb.GetBalancesResponse:
        party = party_of(request.party)
        require_party(domain.PRINCIPAL_KIND[party.type], party.id)
        async with self.engine.connect() as conn:
            balances = await self.store.balances(conn, party)
        # A party without ledger activity has no accounts yet: an empty list, not NOT_FOUND (see the proto).
        return pb.GetBalancesResponse(
            party=party_pb(party),
            balances=[pb.AccountBalance(purpose=PURPOSE[purpose], balance_fen=balance)
                      for purpose, balance in sorted(balances.items(), key=lambda kv: PURPOSE[kv[0]])],
        )

    async def VerifyLedger(self, request: pb.VerifyLedgerRequest, context) -> pb.VerifyLedgerResponse:
        require_internal("verify the whole ledger")
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            async with conn.begin():
                check = await self.store.verify(conn)
        return ledger_check_pb(check)
