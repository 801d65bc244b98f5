"""What every service process offers operators: health, reflection, metrics, request ids, and an orderly
shutdown on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from omo.catalog.v1 import catalog_pb2 as cat

from services.cli.infra import free_port
from services.cli.stack import ROOT
from services.runtime import config

from ..support import key

EXPECTED = {
    "catalog": "omo.catalog.v1.CatalogService",
    "orders": "omo.orders.v1.OrderService",
    "warehouse": "omo.warehouse.v1.WarehouseService",
    "settlement": "omo.settlement.v1.SettlementService",
    "marketing": "omo.marketing.v1.MarketingService",
}


def _services(stack) -> list[str]:
    return [s for s in config.SERVICES if s in stack.services]


def test_every_service_reports_serving_overall_and_per_service(stack):
    for svc in _services(stack):
        with grpc.insecure_channel(stack.address(svc)) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for name in ("", EXPECTED[svc]):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, (svc, name)


def test_reflection_lists_the_service_api(stack):
    for svc in _services(stack):
        with grpc.insecure_channel(stack.address(svc)) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                timeout=2)
            names = {s.name for r in replies for s in r.list_services_response.service}
        assert {EXPECTED[svc], "grpc.health.v1.Health"} <= names


def test_metrics_count_rpcs_by_method_and_code(stack, clients):
    clients.catalog.CreateBrand(cat.CreateBrandRequest(idempotency_key=key(), name="metrics probe"))
    with pytest.raises(grpc.RpcError):
        clients.catalog.GetStore(cat.GetStoreRequest(store_id="nope"))
    body = urllib.request.urlopen(f"http://127.0.0.1:{stack.opts.metrics_ports['catalog']}/metrics").read().decode()
    assert 'omo_rpc_requests_total{code="OK",method="CreateBrand",service="catalog"}' in body
    assert 'omo_rpc_requests_total{code="NOT_FOUND",method="GetStore",service="catalog"}' in body
    assert "omo_rpc_latency_seconds_bucket" in body
    assert "omo_outbox_backlog" in body


def test_responses_carry_the_request_id(clients):
    _, call = clients.catalog.CreateBrand.with_call(
        cat.CreateBrandRequest(idempotency_key=key(), name="rid probe"), metadata=[("x-request-id", "req-test-42")])
    assert ("x-request-id", "req-test-42") in call.trailing_metadata()


def test_sigterm_turns_health_not_serving_then_exits_cleanly(stack):
    port = free_port()
    env = stack.env()
    env.update({"OMO_CATALOG_PORT": str(port), "OMO_CATALOG_METRICS_PORT": "0", "OMO_SHUTDOWN_GRACE_S": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "services.catalog"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            grpc.channel_ready_future(ch).result(timeout=30)
            watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            statuses = [next(watch).status]
            deadline = time.monotonic() + 30
            while statuses[-1] != health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
                statuses.append(next(watch).status)
            proc.send_signal(signal.SIGTERM)
            try:
                for reply in watch:
                    statuses.append(reply.status)
            except grpc.RpcError:
                pass  # the server closes the stream once it has stopped
        assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
        assert proc.wait(timeout=30) == 0
        output = proc.stdout.read()
        assert '"event": "stopped"' in output
    finally:
        if proc.poll() is None:
            proc.kill()


def test_background_work_runs_in_worker_processes_at_lower_priority(stack):
    """With split roles (the default), each service with consumers or jobs runs them in a worker process
    beside its API process: the worker answers health, consumes (its metrics count its consumers) and runs
    niced; the API process serves the RPCs and consumes nothing."""
    if not stack.opts.split_roles:
        pytest.skip("this stack runs one process per service")
    assert set(stack.health().values()) == {"SERVING"}
    for svc in config.WORKER_SERVICES:
        if svc not in stack.services:
            continue
        worker = stack.procs[f"{svc}-worker"]
        nice = int(open(f"/proc/{worker.pid}/stat").read().rsplit(")", 1)[1].split()[16])
        assert nice == 19, svc
        api_metrics = urllib.request.urlopen(f"http://127.0.0.1:{stack.opts.metrics_ports[svc]}/metrics").read()
        worker_metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{stack.opts.worker_metrics_ports[svc]}/metrics").read()
        assert b"omo_events_consumed_total{" in worker_metrics, svc
        assert b"omo_events_consumed_total{" not in api_metrics, svc
