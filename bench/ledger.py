"""Scenario: how many journal legs (postings) the settlement ledger writes durably per second.

Runs on the bench stack's Postgres, in a private schema migrated with settlement's own migrations, through
settlement's own store (`LedgerStore.post`: one statement for any number of journals, balances moved in the
same statement, the balance trigger checked at commit). Every order's full set of journals is posted —
payment, each share, completion — for orders with a brand share and a guide commission across many dealers.

- batched: each transaction posts the journals of `batch` orders (as the OrderPaid consumer and the sharing
  job do), several writers at once;
- naive: one journal per transaction, the same writers, in the same run for comparison.
"""

from __future__ import annotations

import asyncio
import pathlib
import time
import uuid

from services.runtime import db, migrate
from services.settlement import domain
from services.settlement.store import LedgerStore

MIGRATIONS = pathlib.Path(domain.__file__).parent / "migrations"
RATES = domain.SplitRates(guide_commission_bp=100)


def _journals(run: str, n: int) -> list[domain.Journal]:
    o = domain.PaidOrder(order_id=f"bench-{run}-{n}", brand_id="brd_bench", dealer_id=f"dlr_{n % 500}",
                         store_id="str_bench", payable_fen=10_000 + n % 997, lines=(domain.PaidLine(1, 6_000),),
                         brand_funded_discount_fen=0, provider_txn_id=f"wx-{run}-{n}",
                         attributed_guide_id=f"gd_{n % 2000}")
    return list(domain.settle(o, RATES).journals)


async def _measure(engine, run: str, *, per_tx_orders: int, naive: bool, duration_s: float,  # type: ignore[no-untyped-def]
                   writers: int) -> tuple[int, int, float]:
    store = LedgerStore()
    postings = journals = 0
    counter = iter(range(10**12))
    stop_at = time.monotonic() + duration_s

    async def writer() -> None:
        nonlocal postings, journals
        while time.monotonic() < stop_at:
            batch = [j for _ in range(per_tx_orders) for j in _journals(run, next(counter))]
            groups = [[j] for j in batch] if naive else [batch]
            for group in groups:
                async with engine.begin() as conn:
                    await store.post(conn, group)
                postings += sum(len(j.postings) for j in group)
                journals += len(group)

    started = time.monotonic()
    await asyncio.gather(*(writer() for _ in range(writers)))
    return postings, journals, time.monotonic() - started


async def run(admin_url: str, *, duration_s: float, batch: int = 200, writers: int = 4) -> dict:
    schema = await migrate.private_schema(admin_url, "ledger_bench", MIGRATIONS)
    engine = db.create_engine(admin_url, schema, pool_size=writers)
    try:
        run_id = uuid.uuid4().hex[:8]
        b_postings, b_journals, b_elapsed = await _measure(engine, f"{run_id}b", per_tx_orders=batch, naive=False,
                                                           duration_s=duration_s, writers=writers)
        n_postings, n_journals, n_elapsed = await _measure(engine, f"{run_id}n", per_tx_orders=1, naive=True,
                                                           duration_s=duration_s, writers=writers)
        async with engine.connect() as c:
            check = await LedgerStore().verify(c)
    finally:
        await engine.dispose()
    batched = b_postings / b_elapsed
    naive = n_postings / n_elapsed
    return {
        "ledger_postings_per_s": round(batched),
        "ledger_journals_per_s": round(b_journals / b_elapsed),
        "ledger_naive_postings_per_s": round(naive),
        "ledger_naive_journals_per_s": round(n_journals / n_elapsed),
        "ledger_batch_orders_per_tx": batch,
        "ledger_writers": writers,
        "ledger_speedup": round(batched / naive, 1) if naive else None,
        "ledger_verified": check.ok,
    }
