"""`omo`: run and inspect the suite.

    omo up       start everything (embedded Postgres + NATS unless DATABASE_URL / NATS_URL are set), seed,
                 run a demo order, then keep running until Ctrl-C and stop everything it started
    omo demo     seed (idempotent) and run one demo order against a running suite
    omo status   health of each service
    omo ledger verify
                 check the whole settlement ledger (balanced journals, balances = Σ postings, splits add up)
"""

from __future__ import annotations

import signal
import threading

import typer
from rich.console import Console
from rich.table import Table

from services.runtime import config
from services.runtime.money import fen_to_yuan

from .demo import DemoResult, run_demo_order
from .seed import seed
from .stack import Stack, StackOptions, check_health
from .stubs import Stubs, default_address

app = typer.Typer(add_completion=False, help="OMO: the brand-dealer-store mall, as five gRPC services.")
console = Console()


def _yuan(fen: int) -> str:
    return f"¥{fen_to_yuan(fen)}"


def print_services(addresses: dict[str, str], metrics: dict[str, int] | None = None,
                   health: dict[str, str] | None = None) -> None:
    table = Table(title="OMO services")
    table.add_column("service")
    table.add_column("gRPC")
    if metrics:
        table.add_column("metrics")
    if health:
        table.add_column("health")
    for svc in config.SERVICES:
        row = [svc, addresses[svc]]
        if metrics:
            row.append(f"http://127.0.0.1:{metrics[svc]}/metrics")
        if health:
            row.append(health.get(svc, "?"))
        table.add_row(*row)
    console.print(table)


def print_demo(result: DemoResult) -> None:
    o = result.order
    console.print(f"\n[bold]Demo order[/] {o.order_id}  status={o.status and _status_name(o.status)}")
    lines = Table(show_header=True)
    for col in ("sku", "qty", "unit price", "supply price", "line total"):
        lines.add_column(col)
    for line in o.lines:
        lines.add_row(line.name, str(line.quantity), _yuan(line.unit_price_fen), _yuan(line.unit_supply_price_fen),
                      _yuan(line.line_total_fen))
    console.print(lines)
    console.print(f"subtotal {_yuan(o.subtotal_fen)}  coupon −{_yuan(o.discount_fen)} (brand-funded)  "
                  f"paid {_yuan(o.payable_fen)}  attributed to guide {o.attribution.guide_id or '-'}")
    for s in result.shipments:
        console.print(f"shipped by cloud warehouse {s.warehouse_id} as {s.shipment_id}")
    split = Table(title=f"Split of {_yuan(result.split.paid_fen)}")
    split.add_column("receiver")
    split.add_column("role")
    split.add_column("amount", justify="right")
    split.add_column("shared via provider", justify="right")
    split.add_column("owed (over cap)", justify="right")
    split.add_column("state")
    from omo.settlement.v1 import settlement_pb2 as stl

    for leg in result.split.legs:
        dealer = leg.role == stl.SPLIT_ROLE_PROFIT_TO_DEALER
        split.add_row(f"{stl.PartyType.Name(leg.receiver.type).removeprefix('PARTY_TYPE_').lower()} "
                      f"{leg.receiver.id}", stl.SplitRole.Name(leg.role).removeprefix("SPLIT_ROLE_"),
                      _yuan(leg.amount_fen), "unfrozen" if dealer else _yuan(leg.shared_fen),
                      "" if dealer else _yuan(leg.deferred_fen),
                      stl.LegState.Name(leg.state).removeprefix("LEG_STATE_"))
    console.print(split)
    console.print(f"at most {_yuan(result.split.cap_fen)} may leave the dealer's merchant account through profit "
                  "sharing; the rest of each leg is owed and settled by periodic transfer")


def _status_name(status: int) -> str:
    from omo.orders.v1 import orders_pb2 as ords

    return ords.OrderStatus.Name(status).removeprefix("ORDER_STATUS_")


@app.command()
def up(demo: bool = typer.Option(True, help="seed demo data and run one demo order")) -> None:
    """Start the whole suite and keep it running until Ctrl-C."""
    opts = StackOptions.from_env()
    stack = Stack(opts)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with console.status("starting Postgres, NATS and the five services..."):
            stack.start()
        console.print(f"Postgres: {'external' if opts.database_url else 'embedded'} {stack.admin_url}")
        console.print(f"NATS:     {'external' if opts.nats_url else 'embedded'} {stack.nats_url}")
        print_services({s: stack.address(s) for s in config.SERVICES}, opts.metrics_ports)
        if opts.split_roles:
            console.print("background work (event consumers, sweepers, jobs) runs in worker processes at lower CPU "
                          "priority: " + ", ".join(f"{s}-worker (health 127.0.0.1:{opts.worker_ports[s]})"
                                                   for s in config.WORKER_SERVICES))
        if demo:
            stubs = Stubs.connect(stack.address)
            try:
                world = seed(stubs)
                console.print(f"seeded brand {world.brand.name}: {len(world.dealers)} dealers, "
                              f"{len(world.stores)} stores, {len(world.skus)} SKUs in {world.warehouse.name}")
                print_demo(run_demo_order(stubs, world))
            finally:
                stubs.close()
        console.print(f"\nlogs in {stack.logs}. Press Ctrl-C to stop.")
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        with console.status("stopping..."):
            stack.stop()
        console.print("stopped everything that was started.")


@app.command()
def demo() -> None:
    """Seed demo data (idempotent) and run one demo order against a running suite."""
    stubs = Stubs.connect()
    try:
        print_demo(run_demo_order(stubs, seed(stubs)))
    finally:
        stubs.close()


@app.command()
def status() -> None:
    """Health of every service at its configured address, and of its worker process (OMO_SPLIT_ROLES=0: none)."""
    result = {svc: check_health(default_address(svc)) for svc in config.SERVICES}
    print_services({s: default_address(s) for s in config.SERVICES}, health=result)
    workers = {}
    if StackOptions().split_roles:
        workers = {f"{svc}-worker": check_health(f"127.0.0.1:{config.worker_port(svc)}")
                   for svc in config.WORKER_SERVICES}
        for name, state in workers.items():
            console.print(f"{name}: {state}")
    if any(v != "SERVING" for v in [*result.values(), *workers.values()]):
        raise typer.Exit(1)


ledger = typer.Typer(help="Inspect the settlement ledger.")
app.add_typer(ledger, name="ledger")


@ledger.command("verify")
def ledger_verify() -> None:
    """Verify the whole ledger through settlement's VerifyLedger RPC; exit 1 if anything breaks."""
    from omo.settlement.v1 import settlement_pb2 as stl

    stubs = Stubs.connect()
    try:
        reply = stubs.settlement.VerifyLedger(stl.VerifyLedgerRequest(), timeout=300)
    finally:
        stubs.close()
    console.print(f"checked {reply.journals_checked} journals, {reply.postings_checked} postings, "
                  f"{reply.accounts_checked} accounts, {reply.splits_checked} splits")
    if reply.ok:
        console.print("[green]ledger OK[/]: every journal balances, every balance is the sum of its postings, "
                      "the ledger sums to 0 and every split adds up")
        return
    table = Table(title=f"{len(reply.breaks)} ledger breaks")
    for col in ("kind", "subject", "expected", "actual"):
        table.add_column(col)
    for b in reply.breaks:
        table.add_row(stl.LedgerBreakKind.Name(b.kind).removeprefix("LEDGER_BREAK_KIND_"), b.subject,
                      _yuan(b.expected_fen), _yuan(b.actual_fen))
    console.print(table)
    raise typer.Exit(1)


if __name__ == "__main__":
    app()
