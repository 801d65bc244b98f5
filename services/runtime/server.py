"""The service bootstrap every service's `__main__` calls: one process, one gRPC server, its event
consumers and background jobs, and an orderly shutdown.

Shutdown on SIGTERM/SIGINT: health NOT_SERVING -> stop accepting RPCs and let in-flight ones finish within
the grace period -> stop consumers -> flush the outbox -> drain NATS -> close the database pool."""

from __future__ import annotations

import asyncio
import gc
import os
import pathlib
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client
from nats.js import JetStreamContext

from . import bus, clients, config, db, log, metrics, migrate
from .consumer import Consumer, Subscription
from .db import Database
from .interceptors import RpcInterceptor
from .outbox import OutboxRelay

_log = log.get(__name__)


@dataclass
class Runtime:
    """Shared handles a service's composition root wires its parts with."""

    settings: config.Settings
    engine: Database
    nc: Client
    js: JetStreamContext
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    def channel(self, service: str) -> grpc.aio.Channel:
        if service not in self._channels:
            self._channels[service] = clients.channel(
                self.settings.address_of(service), self.settings.default_deadline_s
            )
        return self._channels[service]

    async def close_channels(self) -> None:
        for ch in self._channels.values():
            await ch.close()


@dataclass
class Wiring:
    """What a service contributes: servicers, event subscriptions and background jobs."""

    # (add_XServicer_to_server, servicer instance, full service name)
    servicers: list[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]]
    subscriptions: list[Subscription] = field(default_factory=list)
    # Long-running coroutines (sweepers, schedulers); cancelled at shutdown.
    jobs: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


Wire = Callable[[Runtime], Awaitable[Wiring]]


async def serve(name: str, wire: Wire) -> None:
    settings = config.load(name)
    log.configure(name, settings.log_level, settings.log_format)
    serves_rpcs, works = settings.role in ("all", "api"), settings.role in ("all", "worker")
    if settings.role == "worker" and settings.worker_nice:
        # Background work yields the CPU to the RPC processes whenever both want it: an order's placement
        # waits on no consumer, and consumers only fall a little behind while the API is busy. Only to the
        # processes that share its scheduling group, though: where the kernel groups by session (autogroup),
        # every Postgres backend is a group of its own and nice does not reach across groups
        # (docs/performance.md, "Scheduling groups, and the reservation hop").
        os.nice(settings.worker_nice)
    metrics.start(name, settings.metrics_port)
    # A worker names itself apart, so that its sessions and connections can be told from the API's
    # (pg_stat_activity, NATS connection lists).
    process_name = f"omo-{name}-worker" if settings.role == "worker" else f"omo-{name}"
    engine = db.create_engine(settings.database_url, name, pool_size=settings.db_pool_size,
                              application_name=process_name)
    nc = await bus.connect(settings.nats_url, process_name)
    js = nc.jetstream(timeout=5.0)
    await bus.ensure_streams(js)
    rt = Runtime(settings, engine, nc, js)
    wiring = await wire(rt)

    server = grpc.aio.server(
        # A flash sale sends thousands of calls at once: the core would cancel calls queued past its default
        # pending limit (3,000) before the handlers ever see them; let them wait for a handler instead.
        options=[("grpc.so_reuseport", 0), ("grpc.max_concurrent_streams", 1000),
                 ("grpc.server.max_pending_requests", 10_000),
                 ("grpc.server.max_pending_requests_hard_limit", 20_000)],
        maximum_concurrent_rpcs=5000,
    )
    rpcs = RpcInterceptor()
    health_servicer = health.aio.HealthServicer()
    rpcs.register(health_pb2_grpc.add_HealthServicer_to_server, health_servicer, server)
    names = []
    for add, servicer, full_name in wiring.servicers if serves_rpcs else ():
        rpcs.register(add, servicer, server)
        names.append(full_name)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    bound = server.add_insecure_port(f"0.0.0.0:{settings.grpc_port}")
    if bound == 0:
        raise SystemExit(f"{name}: cannot bind gRPC port {settings.grpc_port}")
    await server.start()

    relay = OutboxRelay(engine, js, name, batch=settings.outbox_batch)
    consumers = [
        Consumer(engine, nc, sub, batch=settings.consumer_batch, max_deliver=settings.max_deliver)
        for sub in (wiring.subscriptions if works else ())
    ]
    tasks = [asyncio.create_task(relay.run(), name="outbox-relay")]
    tasks += [asyncio.create_task(c.run(), name=f"consumer-{c.sub.durable}") for c in consumers]
    tasks += [asyncio.create_task(job(), name=f"job-{i}") for i, job in enumerate(wiring.jobs if works else ())]

    # Everything built so far lives as long as the process: move it out of the collector's sight, and collect
    # the young generation less often (a request allocates a lot of short-lived objects and few cycles: the
    # one grpc.aio's method lookup leaves per call, five small objects).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    for service_name in ("", *names):
        await health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
    _log.info("serving", role=settings.role, grpc_port=settings.grpc_port, metrics_port=settings.metrics_port,
              services=names, consumers=len(consumers))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    crashed = asyncio.ensure_future(_first_failure(tasks))
    await asyncio.wait([asyncio.ensure_future(stop.wait()), crashed], return_when=asyncio.FIRST_COMPLETED)

    _log.info("shutting down")
    await health_servicer.enter_graceful_shutdown()
    await server.stop(settings.shutdown_grace_s)
    for c in consumers:
        await c.stop()
    await relay.stop()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    crashed.cancel()
    await rt.close_channels()
    try:
        await asyncio.wait_for(nc.drain(), timeout=5)
    except Exception as exc:
        _log.warning("nats drain failed", error=repr(exc))
    await engine.dispose()
    _log.info("stopped")


async def _first_failure(tasks: list[asyncio.Task[Any]]) -> None:
    """Completes if a background task dies: a service without its relay or consumers must not look healthy."""
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            _log.error("background task failed", task=t.get_name(), error=repr(t.exception()))


def main(name: str, migrations: pathlib.Path, wire: Wire) -> None:
    """`python -m services.<name> [serve|migrate]`."""
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if command == "migrate":
        migrate.upgrade(name, migrations, config.service_database_url(name))
        return
    if command != "serve":
        raise SystemExit(f"usage: python -m services.{name} [serve|migrate]")
    try:
        import uvloop

        uvloop.run(serve(name, wire))
    except ImportError:
        asyncio.run(serve(name, wire))
