"""The server interceptor: request context (id, deadline, principal), logs and metrics, error mapping and
input validation for every RPC."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import protovalidate
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from . import log, metrics, reqctx
from .errors import DomainError, InvalidArgument
from .ids import new_id

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
_log = log.get("rpc")
# The trailer that carries a failure's google.rpc.Status (with its details), as grpc-status writes it.
DETAILS_KEY = "grpc-status-details-bin"


_PASS_THROUGH = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
}


def to_status(err: DomainError) -> status_pb2.Status:
    code = getattr(code_pb2, err.code)
    status = status_pb2.Status(code=code, message=err.message)
    detail = any_pb2.Any()
    if isinstance(err, InvalidArgument):
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in err.violations
                ]
            )
        )
        status.details.append(detail)
    elif err.reason:
        detail.Pack(error_details_pb2.ErrorInfo(reason=err.reason, domain="omo", metadata=err.metadata))
        status.details.append(detail)
    return status


class RpcInterceptor:
    """Everything an RPC goes through, in this order: request context (id, remaining deadline, principal),
    one log line and one latency observation, error mapping, protovalidate enforcement.

    Not a grpc.aio.ServerInterceptor: grpc.aio runs an interceptor's `intercept_service` coroutine on every
    call, which measured ~90 us of CPU per call before any of our own work. Instead each unary handler is
    wrapped once, when the service registers it (`register`), and the wrapped handler is what grpc calls.
    Streaming handlers (reflection) are registered untouched."""

    def __init__(self) -> None:
        self._validator = protovalidate.Validator()

    def register(self, add: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server) -> None:
        """`add_XServicer_to_server(servicer, server)` with every unary handler wrapped."""
        registrar = _Registrar(server, self._wrap)
        add(servicer, registrar)
        if not registrar.registered:
            raise RuntimeError(f"{add.__name__} registered no method handlers the runtime can wrap")

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self._behavior(handler.unary_unary, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _behavior(self, inner: Behavior, method: str) -> Behavior:
        requests = metrics.RPC_REQUESTS
        # Children resolved once: a labels() lookup per call is measurable at thousands of calls a second.
        ok = requests.labels(metrics.SERVICE.name, method, "OK")
        latency = metrics.RPC_LATENCY.labels(metrics.SERVICE.name, method)
        debug, info, warning = _log.debug, _log.info, _log.warning

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            rid = who = None
            for k, v in context.invocation_metadata() or ():
                if k == reqctx.REQUEST_ID_HEADER:
                    rid = v
                elif k == reqctx.PRINCIPAL_HEADER and isinstance(v, str):
                    who = reqctx.Principal.parse(v)
            if not isinstance(rid, str) or not rid:
                rid = new_id("req")
            reqctx.bind(rid, context.time_remaining(), who)
            context.set_trailing_metadata(((reqctx.REQUEST_ID_HEADER, rid),))
            start = time.perf_counter()
            code = "OK"
            try:
                return await self._answer(inner, request, context)
            except BaseException:
                code = context.code().name if context.code() is not None else "UNKNOWN"
                raise
            finally:
                elapsed = time.perf_counter() - start
                (ok if code == "OK" else requests.labels(metrics.SERVICE.name, method, code)).inc()
                latency.observe(elapsed)
                # Failures and slow calls at info/warning; every call at debug (a no-op below that level).
                level = debug if code == "OK" and elapsed <= 0.5 else info if code == "OK" else warning
                level("rpc", method=method, code=code, ms=round(elapsed * 1000, 2), request_id=rid)

        return behavior

    async def _answer(self, inner: Behavior, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """DomainError -> its status code with google.rpc details; a dependency's refusal passes on; anything
        else is a bug -> INTERNAL."""
        try:
            check(self._validator, request)
            return await inner(request, context)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as exc:
            status = status_of(exc)
            await context.abort(_CODES[status.code], status.message,
                                _details_trailer(status) if status.details else None)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _details_trailer(status: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    return ((DETAILS_KEY, status.SerializeToString()),)


def check(validator: protovalidate.Validator, request: Any) -> None:
    """The protovalidate rules of the request's message type, as INVALID_ARGUMENT naming each field."""
    try:
        validator.validate(request)
    except protovalidate.ValidationError as exc:
        raise InvalidArgument([(_field_path(v), v.proto.message) for v in exc.violations]) from None


def status_of(exc: BaseException) -> status_pb2.Status:
    """The google.rpc.Status a failure is answered with, for one RPC or for one item of a batch RPC:
    DomainError -> its code with google.rpc details; a dependency's refusal passes on (status and details);
    a dependency's other failures are UNAVAILABLE; a timeout is UNAVAILABLE (safe to retry); anything else is
    a bug -> INTERNAL, logged."""
    if isinstance(exc, DomainError):
        return to_status(exc)
    if isinstance(exc, grpc.aio.AioRpcError):
        # A dependency refused. Its status (and its google.rpc details) is the most honest answer for what
        # the caller sent; anything else from it is our problem, not the caller's.
        code = exc.code()
        if code in _PASS_THROUGH:
            for key, value in exc.trailing_metadata() or ():
                if key == DETAILS_KEY:
                    passed = status_pb2.Status.FromString(value)
                    if passed.code == code.value[0]:
                        return passed
            return status_pb2.Status(code=code.value[0], message=exc.details() or code.name)
        _log.error("dependency call failed", code=code.name, details=exc.details())
        return status_pb2.Status(code=code_pb2.UNAVAILABLE, message=f"dependency failed: {code.name}")
    if isinstance(exc, TimeoutError):
        return status_pb2.Status(code=code_pb2.UNAVAILABLE, message="timed out, safe to retry")
    _log.error("unhandled error", request_id=reqctx.request_id(), exc_info=exc)
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")


def _field_path(violation: Any) -> str:
    """`lines[0].sku_id` from protovalidate's structured field path."""
    parts: list[str] = []
    for element in violation.proto.field.elements:
        name = element.field_name
        subscript = element.subscript
        if subscript is not None:
            value = subscript.value
            name += f"[{value}]" if subscript.field == "index" else f"[{value!r}]"
        parts.append(name)
    return ".".join(parts)


class _Registrar:
    """Stands in for the server while generated code registers a servicer's handlers, and registers them
    with the real server wrapped."""

    def __init__(self, server: grpc.aio.Server, wrap: Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler]):
        self.server = server
        self.wrap = wrap
        self.registered = False

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Generated code registers the same handlers both ways; the registered ones below are the ones kept
        (and registered both ways, wrapped)."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        wrapped = {method: self.wrap(h, method) for method, h in handlers.items()}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        self.server.add_registered_method_handlers(service, wrapped)
        self.registered = True
