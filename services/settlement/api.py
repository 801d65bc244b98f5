"""gRPC <-> domain translation for SettlementService."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from omo.settlement.v1 import settlement_pb2 as pb
from omo.settlement.v1 import settlement_pb2_grpc

from services.runtime import reqctx
from services.runtime.db import Database
from services.runtime.errors import InvalidArgument, NotFound, PermissionDenied
from services.runtime.idempotency import run_idempotent
from services.runtime.tenancy import require_party

from . import domain, reconciliation
from .messages import (
    BILL_TYPE_OF,
    PURPOSE,
    journal_entry_pb,
    ledger_check_pb,
    party_of,
    party_pb,
    reconciliation_pb,
    split_pb,
    statement_pb,
)
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
    def __init__(self, engine: Database, store: LedgerStore):
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
        async with self.engine.begin(isolation="repeatable_read", readonly=True) as conn:
            check = await self.store.verify(conn)
        return ledger_check_pb(check)

    async def ListJournal(self, request: pb.ListJournalRequest, context) -> pb.ListJournalResponse:
        party = party_of(request.party)
        require_party(domain.PRINCIPAL_KIND[party.type], party.id)
        after = _page_after(request.page_token)
        size = request.page_size or 100
        lo = request.from_time.ToDatetime(tzinfo=UTC) if request.HasField("from_time") else _EARLIEST
        hi = request.to_time.ToDatetime(tzinfo=UTC) if request.HasField("to_time") else _LATEST
        async with self.engine.connect() as conn:
            rows = await self.store.journal_page(conn, party, lo, hi, after, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return pb.ListJournalResponse(
            entries=[journal_entry_pb(r) for r in rows],
            next_page_token=_page_token(rows[-1].posting_id) if more else "")

    async def GetStatement(self, request: pb.GetStatementRequest, context) -> pb.GetStatementResponse:
        party = party_of(request.party)
        if party.type not in domain.STATEMENT_PURPOSES:
            raise InvalidArgument.field("party.type", "statements are for a dealer or the brand")
        require_party(domain.PRINCIPAL_KIND[party.type], party.id)
        async with self.engine.connect() as conn:
            statement = await self.store.statement(conn, party, request.day)
        return pb.GetStatementResponse(statement=statement_pb(statement))

    async def ReconcileProviderBill(self, request: pb.ReconcileProviderBillRequest,
                                    context) -> pb.ReconcileProviderBillResponse:
        require_internal("reconcile the ledger")
        domain.day_bounds(request.day)
        bill = [reconciliation.bill_line(i, BILL_TYPE_OF[line.type], line.reference, line.amount_yuan)
                for i, line in enumerate(request.lines)]

        async def effect(conn) -> pb.ReconcileProviderBillResponse:  # type: ignore[no-untyped-def]
            rec = reconciliation.reconcile(request.day, bill, await self.store.ledger_bill_lines(conn, request.day))
            await self.store.save_reconciliation(conn, rec)
            stored = await self.store.reconciliation(conn, request.day)
            return pb.ReconcileProviderBillResponse(reconciliation=reconciliation_pb(stored))

        return await run_idempotent(self.engine, "settlement.reconcile", request.idempotency_key, request,
                                    pb.ReconcileProviderBillResponse, effect)

    async def GetReconciliation(self, request: pb.GetReconciliationRequest, context) -> pb.GetReconciliationResponse:
        require_internal("read reconciliations")
        async with self.engine.connect() as conn:
            rec = await self.store.reconciliation(conn, request.day)
        if rec is None:
            raise NotFound("reconciliation", request.day)
        return pb.GetReconciliationResponse(reconciliation=reconciliation_pb(rec))


_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def _page_token(posting_id: int) -> str:
    return base64.urlsafe_b64encode(f"after:{posting_id}".encode()).decode()


def _page_after(token: str) -> int:
    if not token:
        return 0
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind != "after":
            raise ValueError(kind)
        return int(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument.field("page_token", "is not a token this RPC returned") from exc
