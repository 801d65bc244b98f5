"""The whole suite as child processes: infrastructure, schema bootstrap, migrations, five services.

`omo up`, the test session and the benchmark all start the suite through this one class."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime import config, dbadmin

from .infra import EmbeddedNats, EmbeddedPostgres, free_port, stop_process

ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclass
class StackOptions:
    home: pathlib.Path = ROOT / ".omo"
    database_url: str | None = None  # external Postgres (admin URL); None starts the embedded one
    nats_url: str | None = None  # external NATS; None starts the embedded one
    pg_port: int = 54329
    nats_port: int = 4222
    # The ports the services would take by themselves (defaults or OMO_<SERVICE>_PORT and friends).
    grpc_ports: dict[str, int] = field(default_factory=lambda: {s: config.grpc_port(s) for s in config.SERVICES})
    metrics_ports: dict[str, int] = field(default_factory=lambda: {
        s: config.metrics_port(s) for s in config.SERVICES})
    durable: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    # Each service with background work runs it in a worker process of its own, at a lower CPU priority,
    # beside its API process (OMO_ROLE); False runs one process per service doing both.
    split_roles: bool = field(default_factory=lambda: os.environ.get("OMO_SPLIT_ROLES", "1") != "0")
    worker_ports: dict[str, int] = field(default_factory=lambda: {
        s: config.worker_port(s) for s in config.WORKER_SERVICES})
    worker_metrics_ports: dict[str, int] = field(default_factory=lambda: {
        s: config.worker_metrics_port(s) for s in config.WORKER_SERVICES})

    @classmethod
    def from_env(cls, **overrides: object) -> StackOptions:
        opts = cls(database_url=os.environ.get("DATABASE_URL") or None, nats_url=os.environ.get("NATS_URL") or None)
        for key, value in overrides.items():
            setattr(opts, key, value)
        return opts

    @classmethod
    def isolated(cls, home: pathlib.Path, **overrides: object) -> StackOptions:
        """Every port free-picked: for tests and benchmarks that must not collide with a running `omo up`."""
        opts = cls.from_env(home=home, pg_port=free_port(), nats_port=free_port(),
                            grpc_ports={s: free_port() for s in config.SERVICES},
                            metrics_ports={s: free_port() for s in config.SERVICES},
                            worker_ports={s: free_port() for s in config.WORKER_SERVICES},
                            worker_metrics_ports={s: free_port() for s in config.WORKER_SERVICES})
        for key, value in overrides.items():
            setattr(opts, key, value)
        return opts


def check_health(address: str) -> str:
    with grpc.insecure_channel(address) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as err:
            return err.code().name


class Stack:
    def __init__(self, options: StackOptions, services: tuple[str, ...] = config.SERVICES):
        self.opts = options
        self.services = services
        self.pg: EmbeddedPostgres | None = None
        self.nats: EmbeddedNats | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = options.home / "logs"

    # -- addresses ---------------------------------------------------------------------------------------
    @property
    def admin_url(self) -> str:
        return self.opts.database_url or (self.pg.url if self.pg else "")

    @property
    def nats_url(self) -> str:
        return self.opts.nats_url or (self.nats.url if self.nats else "")

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.opts.grpc_ports[service]}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"DATABASE_URL": self.admin_url, "NATS_URL": self.nats_url, "PYTHONUNBUFFERED": "1"})
        for svc in config.SERVICES:
            env[f"OMO_{svc.upper()}_PORT"] = str(self.opts.grpc_ports[svc])
            env[f"OMO_{svc.upper()}_METRICS_PORT"] = str(self.opts.metrics_ports[svc])
            env[f"OMO_{svc.upper()}_ADDR"] = self.address(svc)
        for svc in config.WORKER_SERVICES:
            env[f"OMO_{svc.upper()}_WORKER_PORT"] = str(self.opts.worker_ports[svc])
            env[f"OMO_{svc.upper()}_WORKER_METRICS_PORT"] = str(self.opts.worker_metrics_ports[svc])
        env.setdefault("OMO_LOG_FORMAT", "json")
        env.update(self.opts.extra_env)
        return env

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self.start_infra()
            self.bootstrap()
            self.migrate()
            for svc in self.services:
                self.start_service(svc)
            self.wait_healthy(services=self.services)
        except BaseException:
            self.stop()
            raise

    def start_infra(self) -> None:
        if not self.opts.database_url:
            self.pg = EmbeddedPostgres(self.opts.home / "pg", self.opts.pg_port, durable=self.opts.durable)
            self.pg.start(self.logs / "postgres.log")
        if not self.opts.nats_url:
            self.nats = EmbeddedNats(self.opts.home / "nats", self.opts.nats_port)
            self.nats.start(self.logs / "nats.log")

    def bootstrap(self) -> None:
        asyncio.run(dbadmin.bootstrap(self.admin_url, config.SERVICES))

    def migrate(self) -> None:
        def one(svc: str) -> None:
            result = subprocess.run([sys.executable, "-m", f"services.{svc}", "migrate"], env=self.env(),
                                    cwd=ROOT, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"migrating {svc} failed:\n{result.stderr[-4000:]}")

        with ThreadPoolExecutor(len(self.services)) as pool:
            list(pool.map(one, self.services))

    def processes(self, svc: str) -> list[tuple[str, str, str]]:
        """(process name, OMO_ROLE, gRPC address) of each process that runs the service."""
        if not self.opts.split_roles or svc not in config.WORKER_SERVICES:
            return [(svc, "all", self.address(svc))]
        return [(svc, "api", self.address(svc)),
                (f"{svc}-worker", "worker", f"127.0.0.1:{self.opts.worker_ports[svc]}")]

    def start_service(self, svc: str) -> None:
        for proc_name, role, _ in self.processes(svc):
            log = open(self.logs / f"{proc_name}.log", "ab")
            env = {**self.env(), "OMO_ROLE": role}
            self.procs[proc_name] = subprocess.Popen([sys.executable, "-m", f"services.{svc}"], env=env, cwd=ROOT,
                                                     stdout=log, stderr=subprocess.STDOUT)

    def stop_service(self, svc: str, sig: int = signal.SIGTERM) -> None:
        for proc_name, _, _ in self.processes(svc):
            stop_process(self.procs.get(proc_name), sig, 20)

    def restart_nats(self) -> None:
        """Stop and start the embedded NATS on the same port and data dir (fault-injection tests)."""
        assert self.nats is not None, "only the embedded NATS can be restarted"
        self.nats.stop()
        self.nats.start(self.logs / "nats.log")

    def wait_healthy(self, timeout_s: float = 60, services: tuple[str, ...] = config.SERVICES) -> None:
        deadline = time.monotonic() + timeout_s
        for proc_name, address in [(p, a) for svc in services for p, _, a in self.processes(svc)]:
            with grpc.insecure_channel(address) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                while True:
                    proc = self.procs.get(proc_name)
                    if proc is not None and proc.poll() is not None:
                        raise RuntimeError(f"{proc_name} exited with {proc.returncode}:\n{self.tail(proc_name)}")
                    try:
                        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{proc_name} not healthy within {timeout_s}s:\n{self.tail(proc_name)}")
                    time.sleep(0.2)

    def health(self) -> dict[str, str]:
        """Health of every process, by process name (`orders`, `orders-worker`, ...)."""
        return {name: check_health(address) for svc in self.services for name, _, address in self.processes(svc)}

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for svc in list(self.procs):
            stop_process(self.procs[svc], signal.SIGTERM, 20)
        self.procs.clear()
        if self.nats:
            self.nats.stop()
        if self.pg:
            self.pg.stop()
