"""Settings from the environment. Every knob a deployment may turn is an environment variable here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

SERVICES = ("catalog", "orders", "warehouse", "settlement", "marketing")
GRPC_PORTS = {"catalog": 50051, "orders": 50052, "warehouse": 50053, "settlement": 50054, "marketing": 50055}
METRICS_PORTS = {"catalog": 9151, "orders": 9152, "warehouse": 9153, "settlement": 9154, "marketing": 9155}
# Services with background work (event consumers, sweepers, jobs) that can run it in a worker process of
# its own beside the API process (`OMO_ROLE`); catalog has none.
WORKER_SERVICES = ("orders", "warehouse", "settlement", "marketing")
# A worker listens (health only) and serves metrics on these offsets from its service's ports.
WORKER_PORT_OFFSET = 100
ROLES = ("all", "api", "worker")
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/omo"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def role_password(service: str) -> str:
    """Password of a service's own database role. Local default is derived; set it in production."""
    return _env(f"OMO_{service.upper()}_DB_PASSWORD", f"{service}-local-pw")


def role_url(admin_url: str, service: str) -> str:
    """The admin DATABASE_URL with the service's own role and password substituted in."""
    parts = urlsplit(admin_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(service)}:{quote(role_password(service))}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def asyncpg_url(url: str) -> str:
    """SQLAlchemy wants the driver in the scheme."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


@dataclass(frozen=True)
class Settings:
    service: str
    grpc_port: int
    metrics_port: int
    database_url: str
    nats_url: str
    log_level: str
    log_format: str  # "auto" (JSON off a TTY), "json" or "console"
    shutdown_grace_s: float
    default_deadline_s: float
    db_pool_size: int
    outbox_batch: int
    consumer_batch: int
    max_deliver: int
    # "all": RPCs and background work in one process (the default). "api": RPCs only. "worker": consumers,
    # sweepers and jobs only, at a lower CPU priority (`worker_nice`), serving just the health service.
    role: str = "all"
    worker_nice: int = 19

    def address_of(self, service: str) -> str:
        """Where another service listens, for gRPC clients."""
        return _env(f"OMO_{service.upper()}_ADDR", f"127.0.0.1:{grpc_port(service)}")


def grpc_port(service: str) -> int:
    return int(_env(f"OMO_{service.upper()}_PORT", str(GRPC_PORTS[service])))


def metrics_port(service: str) -> int:
    return int(_env(f"OMO_{service.upper()}_METRICS_PORT", str(METRICS_PORTS[service])))


def admin_database_url() -> str:
    return _env("DATABASE_URL", DEFAULT_DATABASE_URL)


def service_database_url(service: str) -> str:
    return _env(f"OMO_{service.upper()}_DATABASE_URL", role_url(admin_database_url(), service))


def worker_port(service: str) -> int:
    return int(_env(f"OMO_{service.upper()}_WORKER_PORT", str(grpc_port(service) + WORKER_PORT_OFFSET)))


def worker_metrics_port(service: str) -> int:
    return int(_env(f"OMO_{service.upper()}_WORKER_METRICS_PORT",
                    str(metrics_port(service) + WORKER_PORT_OFFSET)))


def load(service: str) -> Settings:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}")
    role = _env("OMO_ROLE", "all")
    if role not in ROLES:
        raise ValueError(f"OMO_ROLE must be one of {', '.join(ROLES)}, not {role!r}")
    worker = role == "worker"
    return Settings(
        service=service,
        grpc_port=worker_port(service) if worker else grpc_port(service),
        metrics_port=worker_metrics_port(service) if worker else metrics_port(service),
        role=role,
        worker_nice=int(_env("OMO_WORKER_NICE", "19")),
        database_url=service_database_url(service),
        nats_url=_env("NATS_URL", DEFAULT_NATS_URL),
        log_level=_env("OMO_LOG_LEVEL", "info"),
        log_format=_env("OMO_LOG_FORMAT", "auto"),
        shutdown_grace_s=float(_env("OMO_SHUTDOWN_GRACE_S", "5")),
        default_deadline_s=float(_env("OMO_DEFAULT_DEADLINE_S", "5")),
        db_pool_size=int(_env("OMO_DB_POOL_SIZE", "6")),
        outbox_batch=int(_env("OMO_OUTBOX_BATCH", "500")),
        consumer_batch=int(_env("OMO_CONSUMER_BATCH", "200")),
        max_deliver=int(_env("OMO_MAX_DELIVER", "5")),
    )
