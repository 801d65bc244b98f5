"""How fast this machine is at the moment of a run, measured just before it.

The host is shared: the same code measured a third slower or faster from one hour to the next. A fixed
pure-Python loop (`machine_speed_ms`) missed part of it: on 1 December it read 77-79 ms, its fastest of the
day, in the hour when the ledger scenario (nothing but Postgres) was at its slowest. So the run also times
the two things the suite does most between its processes, on the bench stack's own Postgres: a round trip
on a local connection (a wake-up of another process and back) and a durable commit (a WAL flush)."""

from __future__ import annotations

import math
import statistics
import time

import asyncpg


def python_loop_ms() -> float:
    """A fixed piece of pure-Python work, best of three. Lower is faster."""
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(2_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


async def database_probe(admin_url: str, *, round_trips: int = 2000, commits: int = 200) -> dict[str, float]:
    """Median `SELECT 1` round trip (µs) and median single-row durable commit (ms), on one connection."""
    conn = await asyncpg.connect(admin_url)
    try:
        ping = await conn.prepare("SELECT 1")
        for _ in range(200):  # a fresh connection's first trips are slower: not the machine's speed
            await ping.fetchval()
        trips = []
        for _ in range(round_trips):
            started = time.perf_counter()
            await ping.fetchval()
            trips.append(time.perf_counter() - started)
        await conn.execute("CREATE TABLE IF NOT EXISTS public.bench_probe (n int)")
        insert = await conn.prepare("INSERT INTO public.bench_probe VALUES ($1)")
        flushes = []
        for n in range(commits):
            started = time.perf_counter()
            await insert.fetch(n)  # autocommit: one durable commit each
            flushes.append(time.perf_counter() - started)
        await conn.execute("DROP TABLE public.bench_probe")
    finally:
        await conn.close()
    return {"pg_round_trip_us": round(statistics.median(trips) * 1e6, 1),
            "pg_commit_ms": round(statistics.median(flushes) * 1000, 3)}
