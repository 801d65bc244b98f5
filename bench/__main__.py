"""`python -m bench [--duration S] [--buyers N]`: start an isolated, durable stack (the same launcher as
`make run`), seed it, run the scenarios, write bench/results/latest.json and print a one-line summary."""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import tempfile

from services.cli.seed import seed
from services.cli.stack import Stack, StackOptions
from services.cli.stubs import Stubs

from . import hot_sku, ledger, machine, orders_flow
from .stats import write


def _run(scenario):  # type: ignore[no-untyped-def]
    """The load generator shares the machine with the suite: it runs on uvloop, like the services, so that its
    own CPU per call stays small."""
    import uvloop

    return uvloop.run(scenario)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per scenario")
    parser.add_argument("--buyers", type=int, default=48, help="concurrent buyers of the closed-loop capacity run")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="orders per second offered in the open-loop run (the milestone's rate)")
    parser.add_argument("--skus", type=int, default=200, help="SKUs in the range the buyers pick from")
    parser.add_argument("--hot-callers", type=int, default=256, help="concurrent callers on the flash-sale SKU")
    parser.add_argument("--only", choices=("orders", "hot-sku", "ledger"), help="run one scenario (default: all)")
    parser.add_argument("--ledger-duration", type=float, default=8.0,
                        help="seconds for each of the ledger's batched and naive runs")
    parser.add_argument("--no-fsync", action="store_true", help="run Postgres without durability (diagnosis only)")
    args = parser.parse_args()
    results: dict = {"machine_speed_ms": machine.python_loop_ms()}  # measured while nothing else of the run is up
    home = pathlib.Path(tempfile.mkdtemp(prefix="omo-bench-"))
    stack = Stack(StackOptions.isolated(home, durable=not args.no_fsync,
                                                extra_env={"OMO_LOG_LEVEL": "warning"}))
    try:
        stack.start()
        results.update(_run(machine.database_probe(stack.admin_url)))  # before any load, on an idle stack
        stubs = Stubs.connect(stack.address)
        world = seed(stubs, prefix="bench", stock=10_000_000, range_size=args.skus - 4)
        hot = world.skus[0]
        stubs.close()
        if args.only in (None, "orders"):
            # Open loop first, at the milestone's rate: latency at a given throughput. Then the closed loop:
            # the most the suite sustains.
            metrics_url = f"http://127.0.0.1:{stack.opts.metrics_ports['orders']}/metrics"
            results.update(_run(orders_flow.run(stack.address("orders"), stack.nats_url, world,
                                                duration_s=args.duration, rate=args.rate,
                                                orders_metrics_url=metrics_url)))
            capacity = _run(orders_flow.run(stack.address("orders"), stack.nats_url, world,
                                            duration_s=args.duration, buyers=args.buyers,
                                            orders_metrics_url=metrics_url))
            results.update({f"capacity_{k}": v for k, v in capacity.items()})
        if args.only in (None, "hot-sku"):
            results.update(_run(hot_sku.run(stack.address("warehouse"), hot.sku_id,
                                                   duration_s=args.duration, callers=args.hot_callers)))
            results.update(_run(hot_sku.run(stack.address("warehouse"), hot.sku_id,
                                                   duration_s=args.duration / 2, callers=args.hot_callers,
                                                   single_call=True)))
        if args.only in (None, "ledger"):
            results.update(_run(ledger.run(stack.admin_url, duration_s=args.ledger_duration)))
    finally:
        stack.stop()
        # A run writes a few hundred MB of data and WAL; left behind, their write-back slows the next run.
        shutil.rmtree(home, ignore_errors=True)
    summary = _summary(results)
    path = write(results, summary)
    print(summary)
    print(f"results: {path}")


def _summary(r: dict) -> str:
    """One line over the scenarios that ran."""
    parts = []
    if "orders_per_s" in r:
        parts.append(f"{r['orders_per_s']} orders/s fully settled (placed→paid→dispatched→split) at "
                     f"{r['offered_per_s']}/s offered, PlaceOrder p50/p95/p99 {r['place_p50_ms']}/{r['place_p95_ms']}/"
                     f"{r['place_p99_ms']} ms ({r.get('place_server_within_100ms_pct')} % within 100 ms inside "
                     f"orders), event lag p99 {r['event_lag_p99_ms']} ms; capacity "
                     f"{r['capacity_orders_per_s']} orders/s ({r['capacity_buyers']} buyers, p99 "
                     f"{r['capacity_place_p99_ms']} ms) on {os.cpu_count()} cores")
    if "hot_sku_reservations_per_s" in r:
        parts.append(f"flash sale {r['hot_sku_reservations_per_s']} reservations/s on one SKU "
                     f"({r['hot_sku_callers']} callers; {r['hot_sku_single_call_reservations_per_s']}/s one call each)")
    if "ledger_postings_per_s" in r:
        parts.append(f"ledger {r['ledger_postings_per_s']} postings/s batched vs {r['ledger_naive_postings_per_s']} "
                     "one journal per transaction")
    if "machine_speed_ms" in r:
        parts.append(f"machine: Python loop {r['machine_speed_ms']} ms, Postgres round trip "
                     f"{r['pg_round_trip_us']} µs, commit {r['pg_commit_ms']} ms (lower is faster)")
    return "; ".join(parts)


if __name__ == "__main__":
    main()
