"""What plan a service's statement really runs with, as the tests of each service's plans need it.

Every statement a service sends is a prepared statement on its connection, and its generic plan is kept until
its tables are analyzed again. `PlanProbe` is one such connection, on a private copy of a service's schema,
that reports the plan of every statement it runs, nested ones included (a database function's, a trigger's),
through auto_explain. A test makes the plans as a fresh deployment does, on empty tables (or on filled tables
never analyzed, or after an ANALYZE), fills the tables with many rows, and looks at what the kept plans
scan."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from services.runtime import db, migrate

SERVICES = pathlib.Path(__file__).resolve().parents[2] / "services"


async def scratch_schema(admin_url: str, service: str) -> str:
    """A new schema holding the service's tables (its migrations, run there), with autovacuum off so that
    nothing but the test analyzes them."""
    schema = await migrate.private_schema(admin_url, f"plans_{service}", SERVICES / service / "migrations")
    conn = await asyncpg.connect(admin_url)
    try:
        for table in await tables(conn, schema):
            await conn.execute(f'ALTER TABLE "{schema}"."{table}" SET (autovacuum_enabled = false)')
    finally:
        await conn.close()
    return schema


def schema_fixture(service: str):  # type: ignore[no-untyped-def]
    """A module's scratch schema of `service`, dropped after its tests."""

    @pytest.fixture(scope="module")
    async def schema(stack):  # type: ignore[no-untyped-def]
        name = await scratch_schema(stack.admin_url, service)
        yield name
        await drop_schema(stack.admin_url, name)

    return schema


async def prime(probe: PlanProbe, effects: Iterable[Callable[[db.Connection], Awaitable[object]]],
                tolerate: tuple[type[BaseException], ...]) -> None:
    """Make the plans of `effects` on the probe's connection. On empty tables the effects find none of their
    rows and may fail as `tolerate` says (a broken invariant, a missing foreign key): the plans they made are
    kept all the same, and only those matter there."""
    for effect in effects:
        async def tolerant(conn: db.Connection, effect=effect) -> None:  # type: ignore[no-untyped-def]
            try:
                await effect(conn)
            except tolerate:
                pass
        await probe.plans(tolerant)


async def tables(conn: asyncpg.Connection, schema: str) -> list[str]:
    return [r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)]


async def drop_schema(admin_url: str, schema: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()


async def run_sql(admin_url: str, schema: str, *statements: str, args: tuple = ()) -> None:
    """Statements on another connection (filling tables sends no invalidation: the probe keeps its plans).
    Triggers are off, as for a bulk load: the rows are made up to be planned against, not checked."""
    conn = await asyncpg.connect(admin_url, server_settings={"search_path": schema,
                                                             "session_replication_role": "replica"})
    try:
        for sql in statements:
            await conn.execute(sql, *args)
    finally:
        await conn.close()


async def analyze(admin_url: str, schema: str) -> None:
    """ANALYZE the schema's tables (a bare ANALYZE would do every schema of the database)."""
    conn = await asyncpg.connect(admin_url)
    try:
        names = ", ".join(f'"{schema}"."{t}"' for t in await tables(conn, schema))
        await conn.execute(f"ANALYZE {names}")
    finally:
        await conn.close()


@dataclass(frozen=True)
class Scan:
    node: str
    relation: str
    index: str
    condition: str


@dataclass(frozen=True)
class Plan:
    query: str
    root: dict[str, Any]

    def nodes(self) -> Iterator[dict[str, Any]]:
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.get("Plans", []))

    def scans(self) -> list[Scan]:
        """Every node that reads a table or an index (a bitmap index scan names no table)."""
        return [Scan(n["Node Type"], n.get("Relation Name", ""), n.get("Index Name", ""),
                     n.get("Index Cond", "") or n.get("TID Cond", ""))
                for n in self.nodes() if n.get("Relation Name") or n.get("Index Name")]


class PlanProbe:
    """One connection with a service's view of the database: the services' session settings (runtime.db,
    seq scans off), its schema first on the search path, generic plans kept per prepared statement
    (`force_generic_plan`: the plan a statement settles on after a few executions), and every plan
    reported. A statement no index can serve still scans its table, or reads an index whole: what the
    checks below catch."""

    def __init__(self, admin_url: str, schema: str):
        self.engine = db.create_engine(admin_url, schema, pool_size=1)
        self._notices: list[str] = []

    async def __aenter__(self) -> PlanProbe:
        self._raw = await (await self.engine.pool()).acquire()
        await self._raw.execute(
            "SET plan_cache_mode = force_generic_plan; LOAD 'auto_explain'; "
            "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on; "
            "SET auto_explain.log_format = json; SET auto_explain.log_level = notice")
        self._raw.add_log_listener(self._heard)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._raw.remove_log_listener(self._heard)
        await (await self.engine.pool()).release(self._raw)
        await self.engine.dispose()

    def _heard(self, _conn: object, message: asyncpg.PostgresLogMessage) -> None:
        self._notices.append(message.message)

    async def plans(self, effect: Callable[[db.Connection], Awaitable[object]]) -> list[Plan]:
        """Run `effect` in a transaction that is rolled back and return the plans of what it ran (statements
        and their nested ones; foreign-key checks left out)."""
        self._notices.clear()
        conn = db.Connection(self._raw, in_transaction=True)
        transaction = self._raw.transaction()
        await transaction.start()
        try:
            await effect(conn)
        finally:
            await transaction.rollback()
        for _ in range(3):  # the notices are handed to the listener by the event loop
            await asyncio.sleep(0)
        plans = []
        for notice in self._notices:
            doc = json.loads(notice[notice.index("{"):])
            query = doc.get("Query Text", "")
            if not query.startswith("SELECT 1 FROM ONLY"):
                plans.append(Plan(query, doc["Plan"]))
        return plans


def assert_reads_by_index(plans: list[Plan], tables: set[str], avoid: frozenset[str] = frozenset(),
                          walks: frozenset[str] = frozenset()) -> None:
    """No plan reads one of `tables` whole (no sequential scan, no index scan without a condition but for a
    queue's index in `walks`, read in its order up to a LIMIT), and none uses an index of `avoid`."""
    for plan in plans:
        for scan in plan.scans():
            assert scan.index not in avoid, f"{scan.index} serves: {plan.query}"
            if scan.relation not in tables:
                continue
            assert scan.node != "Seq Scan", f"{scan.relation} scanned whole by: {plan.query}"
            if scan.node in ("Index Scan", "Index Only Scan") and scan.index not in walks:
                assert scan.condition, f"all of {scan.index} read by: {plan.query}"


def indexes_used(plans: list[Plan]) -> set[str]:
    return {scan.index for plan in plans for scan in plan.scans() if scan.index}
