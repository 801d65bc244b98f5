"""The payment provider's profit sharing (分账), behind an interface, and a simulator of it.

The interface is modelled on WeChat Pay's profit-sharing API (v3 `/profitsharing/orders`,
`/profitsharing/orders/unfreeze`): the payment sits frozen in the merchant (dealer) account; a sharing
order names receivers and integer-fen amounts; each receiver's result comes later (PENDING → SUCCESS, or
CLOSED with a reason); unfreezing releases whatever was not shared to the merchant.

Every request carries a request number (`out_order_no`) chosen by us and derived deterministically from the
order and the step, and the provider treats a request number it has seen as the same request: it returns
that request's current state and never acts twice. That is what makes a retry after a timeout, or a replay
after a crash between "the provider acted" and "we recorded it", safe.

A real provider plugs in by implementing `SharingProvider` (e.g. an HTTPS client that signs WeChat v3
requests, maps `out_order_no` and the receiver list one to one, and maps its errors: network failures and
5xx to `ProviderUnavailable`, a lost answer to `ProviderTimeout`); nothing else in settlement changes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class ReceiverState(StrEnum):
    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    CLOSED = "CLOSED"


@dataclass(frozen=True)
class Receiver:
    """One receiver of a sharing order: its account at the provider and the amount in fen."""

    account: str
    amount_fen: int


@dataclass(frozen=True)
class ReceiverResult:
    account: str
    amount_fen: int
    state: ReceiverState
    # Why the provider closed it (e.g. ACCOUNT_ABNORMAL); empty otherwise.
    fail_reason: str = ""


@dataclass(frozen=True)
class SharingOrderResult:
    out_order_no: str
    receivers: tuple[ReceiverResult, ...]


@dataclass(frozen=True)
class UnfreezeResult:
    """The provider released to the merchant whatever of the payment no receiver got."""

    out_order_no: str


class ReturnState(StrEnum):
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


@dataclass(frozen=True)
class ReturnResult:
    out_return_no: str
    state: ReturnState
    # Why it failed (e.g. BALANCE_NOT_ENOUGH: the receiver's balance cannot cover it yet).
    fail_reason: str = ""


@dataclass(frozen=True)
class TransferResult:
    out_transfer_no: str
    amount_fen: int


class ProviderError(Exception):
    """The call's outcome is unknown or it failed transiently: retry with the same request number."""


class ProviderUnavailable(ProviderError):
    pass


class ProviderTimeout(ProviderError):
    """No answer in time. The request may or may not have taken effect."""


class SharingProvider(Protocol):
    async def create_order(self, out_order_no: str, transaction_id: str, merchant: str,
                           receivers: tuple[Receiver, ...]) -> SharingOrderResult:
        """Ask the provider to share parts of a frozen payment. Same out_order_no: same request."""

    async def query_order(self, out_order_no: str, transaction_id: str) -> SharingOrderResult:
        """Each receiver's current result."""

    async def unfreeze(self, out_order_no: str, transaction_id: str, merchant: str) -> UnfreezeResult:
        """Release what was not shared to the merchant. Same out_order_no: same request."""

    async def create_return(self, out_return_no: str, out_order_no: str, receiver: str,
                            amount_fen: int) -> ReturnResult:
        """Take part of a share back from a receiver after a refund (分账回退). A FAILED return is asked again
        later with the same out_return_no; once SUCCESS, asking again answers SUCCESS and moves nothing."""

    async def transfer(self, out_transfer_no: str, merchant: str, receiver: str, amount_fen: int) -> TransferResult:
        """Move money from the merchant's available balance to a receiver (settling what a split left owed,
        e.g. the part above the sharing cap). Same out_transfer_no: same request."""


# -- the simulator ------------------------------------------------------------------------------------------


class SimulatedCrash(BaseException):
    """Raised by a test hook to stop the executor between two steps, as a process crash would: a
    BaseException, so no error handling on the way up mistakes it for a failed step."""


@dataclass
class Faults:
    """What the simulator should do wrong. Tests flip these; the demo runs with none."""

    latency_s: float = 0.0
    # The next N calls raise ProviderTimeout *after* the request took effect (the answer is lost).
    timeouts_after_effect: int = 0
    # The next N calls raise ProviderUnavailable before anything happens.
    unavailable: int = 0
    # Receiver accounts the provider closes with ACCOUNT_ABNORMAL.
    abnormal_accounts: set[str] = field(default_factory=set)
    # How many queries a receiver stays PENDING before its result is final.
    pending_queries: int = 0
    # Receiver account -> how many more split returns from it fail with BALANCE_NOT_ENOUGH.
    return_failures: dict[str, int] = field(default_factory=dict)


@dataclass
class _Order:
    transaction_id: str
    merchant: str
    receivers: tuple[Receiver, ...]
    queries: int = 0


class SimulatedProvider:
    """An in-memory provider that keeps every request it accepted, so a replayed request number gets the
    same answer and has no second effect. Its memory is the process's: after a restart of settlement it has
    forgotten earlier requests, and a replayed request is simply accepted again (the ledger side still posts
    once, by its journals' business keys)."""

    def __init__(self, faults: Faults | None = None):
        self.faults = faults or Faults()
        self.orders: dict[str, _Order] = {}
        self.unfrozen: set[str] = set()
        self.transfers: dict[str, tuple[str, str, int]] = {}
        self.returns: dict[str, tuple[str, int]] = {}
        # Every request that took effect, in order: a replayed request number never appears twice.
        self.effects: list[tuple[str, str]] = []

    async def _enter(self) -> None:
        if self.faults.latency_s:
            await asyncio.sleep(self.faults.latency_s)
        if self.faults.unavailable:
            self.faults.unavailable -= 1
            raise ProviderUnavailable("simulated: provider unavailable")

    def _leave(self) -> None:
        if self.faults.timeouts_after_effect:
            self.faults.timeouts_after_effect -= 1
            raise ProviderTimeout("simulated: the request took effect but the answer was lost")

    def _result(self, out_order_no: str) -> SharingOrderResult:
        order = self.orders[out_order_no]
        final = order.queries >= self.faults.pending_queries
        results = []
        for r in order.receivers:
            if not final:
                results.append(ReceiverResult(r.account, r.amount_fen, ReceiverState.PENDING))
            elif r.account in self.faults.abnormal_accounts:
                results.append(ReceiverResult(r.account, r.amount_fen, ReceiverState.CLOSED, "ACCOUNT_ABNORMAL"))
            else:
                results.append(ReceiverResult(r.account, r.amount_fen, ReceiverState.SUCCESS))
        return SharingOrderResult(out_order_no, tuple(results))

    async def create_order(self, out_order_no: str, transaction_id: str, merchant: str,
                           receivers: tuple[Receiver, ...]) -> SharingOrderResult:
        await self._enter()
        if out_order_no not in self.orders:
            if not receivers or any(r.amount_fen <= 0 for r in receivers):
                raise ValueError("a sharing order needs receivers with positive amounts")
            self.orders[out_order_no] = _Order(transaction_id, merchant, receivers)
            self.effects.append(("create_order", out_order_no))
        result = self._result(out_order_no)
        self._leave()
        return result

    async def query_order(self, out_order_no: str, transaction_id: str) -> SharingOrderResult:
        await self._enter()
        if out_order_no not in self.orders:
            raise ProviderUnavailable(f"simulated: no sharing order {out_order_no}")
        self.orders[out_order_no].queries += 1
        return self._result(out_order_no)

    async def unfreeze(self, out_order_no: str, transaction_id: str, merchant: str) -> UnfreezeResult:
        await self._enter()
        if out_order_no not in self.unfrozen:
            self.unfrozen.add(out_order_no)
            self.effects.append(("unfreeze", out_order_no))
        result = UnfreezeResult(out_order_no)
        self._leave()
        return result

    async def transfer(self, out_transfer_no: str, merchant: str, receiver: str, amount_fen: int) -> TransferResult:
        await self._enter()
        if out_transfer_no not in self.transfers:
            if amount_fen <= 0:
                raise ValueError("a transfer moves a positive amount")
            self.transfers[out_transfer_no] = (merchant, receiver, amount_fen)
            self.effects.append(("transfer", out_transfer_no))
        result = TransferResult(out_transfer_no, self.transfers[out_transfer_no][2])
        self._leave()
        return result

    async def create_return(self, out_return_no: str, out_order_no: str, receiver: str,
                            amount_fen: int) -> ReturnResult:
        await self._enter()
        if out_return_no not in self.returns:
            if self.faults.return_failures.get(receiver, 0) > 0:
                self.faults.return_failures[receiver] -= 1
                return ReturnResult(out_return_no, ReturnState.FAILED, "BALANCE_NOT_ENOUGH")
            self.returns[out_return_no] = (receiver, amount_fen)
            self.effects.append(("return", out_return_no))
        result = ReturnResult(out_return_no, ReturnState.SUCCESS)
        self._leave()
        return result
