"""Database access: one asyncpg pool per service process, connected as the service's own role with its own
schema first on the search path, so SQL in a service never names a schema.

Why not SQLAlchemy's AsyncEngine here: measured on this suite's hot path, its checkout + greenlet-adapted
execute cost ~0.5 ms of CPU per statement against ~0.1 ms for the same prepared statement on a bare asyncpg
connection, and the services do nothing but run hand-written SQL. So statements stay SQLAlchemy `text()`
constructs (named `:params`, compiled once to asyncpg's `$n` form by SQLAlchemy's own asyncpg dialect), and
this module runs them on asyncpg with the small slice of the AsyncConnection/Result API the stores use.
Errors keep SQLAlchemy's vocabulary (`DBAPIError`, `IntegrityError`, `.orig.sqlstate`). Alembic migrations
still run on SQLAlchemy (`migrate.py`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.elements import TextClause

from .config import asyncpg_url
from .errors import Unavailable

_DIALECT = PGDialect_asyncpg(paramstyle="numeric_dollar")


class Row(asyncpg.Record):
    """A result row readable by column name as an attribute (`row.order_id`), by index and by key."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Result:
    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Row], rowcount: int):
        self.rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def all(self) -> list[Row]:
        return self.rows

    def first(self) -> Row | None:
        return self.rows[0] if self.rows else None

    def one(self) -> Row:
        if len(self.rows) != 1:
            raise LookupError(f"expected exactly one row, got {len(self.rows)}")
        return self.rows[0]

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalars(self) -> list[Any]:
        return [row[0] for row in self.rows]


@lru_cache(maxsize=1024)
def _compile(sql: str) -> tuple[str, tuple[str, ...]]:
    """`... :name ...` -> (`... $1 ...`, ("name", ...)), with SQLAlchemy's own text() parsing rules."""
    compiled = TextClause(sql).compile(dialect=_DIALECT)
    return compiled.string, tuple(compiled.positiontup or ())


def _rowcount(status: bytes | str | None) -> int:
    """Rows a command touched, from its tag: b'UPDATE 3', b'INSERT 0 2', b'SELECT 5'."""
    if not status:
        return -1
    tag = status.decode() if isinstance(status, bytes) else status
    last = tag.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


def _translated(err: asyncpg.PostgresError, sql: str, params: Any) -> DBAPIError:
    """SQLAlchemy's exception for a database error, wrapping the asyncpg one (`.orig.sqlstate`)."""
    error = IntegrityError if err.sqlstate.startswith("23") else DBAPIError
    return error(sql, params, err)


class Connection:
    """One pooled connection; `execute` runs one statement."""

    __slots__ = ("_committed", "raw")

    def __init__(self, raw: asyncpg.Connection, *, in_transaction: bool = False):
        self.raw = raw
        # Callbacks for when what this connection wrote is committed: None outside a transaction, where every
        # statement commits by itself.
        self._committed: list[Callable[[], None]] | None = [] if in_transaction else None

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the writes so far are committed: at the end of the transaction (never, if it
        rolls back), or at once outside one."""
        if self._committed is None:
            callback()
        else:
            self._committed.append(callback)

    async def execute(self, statement: TextClause | str, params: Mapping[str, Any] | None = None) -> Result:
        sql, names = _compile(statement.text if isinstance(statement, TextClause) else statement)
        args = [params[n] for n in names] if names and params is not None else []
        try:
            # The private `_execute` is asyncpg's own `execute`/`fetch` core: it returns the rows and the
            # command tag in one round trip on the cached prepared statement (`fetch` drops the tag, which
            # `rowcount` needs).
            rows, status, _ = await self.raw._execute(sql, args, 0, None, return_status=True, record_class=Row)
        except asyncpg.PostgresError as err:
            raise _translated(err, sql, params) from err
        return Result(rows, _rowcount(status))

    async def run_script(self, sql: str) -> None:
        """Several statements in one simple-protocol round trip, without parameters (their values must be
        literals the caller made safe) and without results."""
        try:
            await self.raw.execute(sql)
        except asyncpg.PostgresError as err:
            # A failed statement leaves a script's BEGIN open and aborted: end it before the connection goes
            # back to the pool (which does not reset connections).
            if self.raw.is_in_transaction():
                await self.raw.execute("ROLLBACK")
            raise _translated(err, sql, None) from err


async def _init_connection(con: asyncpg.Connection) -> None:
    # JSON columns come back decoded, as with SQLAlchemy's asyncpg dialect; parameters are passed as text.
    for name in ("json", "jsonb"):
        await con.set_type_codec(name, encoder=str, decoder=json.loads, schema="pg_catalog")


async def _no_reset(con: asyncpg.Connection) -> None:
    """Connections go back to the pool as they are: every transaction here has ended by then and sessions change
    no settings, so asyncpg's default reset (one more round trip per checkout) buys nothing."""


class Database:
    """The service's pool. `begin()` is a transaction; `connect()` runs each statement in its own (autocommit),
    for reads and for single statements that are atomic by themselves."""

    def __init__(self, url: str, schema: str, *, pool_size: int = 6, application_name: str = ""):
        self.url = asyncpg_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)
        self.schema = schema
        self.pool_size = pool_size
        self.application_name = application_name or schema
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self.url,
                        min_size=min(4, self.pool_size),
                        max_size=self.pool_size,
                        init=_init_connection,
                        reset=_no_reset,
                        statement_cache_size=512,
                        command_timeout=20,
                        server_settings={
                            "search_path": self.schema,
                            "application_name": self.application_name,
                            # A statement that runs this long is a bug, not a slow query: fail it.
                            "statement_timeout": "15000",
                            "lock_timeout": "5000",
                            "idle_in_transaction_session_timeout": "60000",
                            # Every statement a service sends reads by key, as a prepared statement whose generic
                            # plan is kept until its tables are next analyzed; made on the near-empty tables of a
                            # fresh deployment, such a plan scans whole tables that then grow with every order
                            # (measured: the payment statement read 377 buffers a call at 4,400 orders, 89 with
                            # scans off; the orders service's Postgres CPU 1.42 -> 0.87 ms an order). With seq
                            # scans off the planner takes an index whenever one serves the statement and still
                            # scans a table that has none.
                            "enable_seqscan": "off",
                        },
                    )
        return self._pool

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Connection]:
        async with (await self.pool()).acquire() as raw:
            yield Connection(raw)

    @asynccontextmanager
    async def begin(self, *, isolation: str = "read_committed", readonly: bool = False) -> AsyncIterator[Connection]:
        """A transaction; `isolation="repeatable_read", readonly=True` reads many statements from one snapshot."""
        async with (await self.pool()).acquire() as raw:
            conn = Connection(raw, in_transaction=True)
            async with raw.transaction(isolation=isolation, readonly=readonly):
                yield conn
            for callback in conn._committed or ():
                callback()

    async def dispose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


# SQLSTATEs worth one more try of the whole transaction: it lost a lock cycle or a serialization race.
_RETRYABLE = {"40P01", "40001"}
_LOCK_TIMEOUT = "55P03"
_UNIQUE_VIOLATION = "23505"
T = TypeVar("T")


def sqlstate(err: DBAPIError) -> str | None:
    return getattr(err.orig, "sqlstate", None)


def is_unique_violation(err: DBAPIError) -> bool:
    return sqlstate(err) == _UNIQUE_VIOLATION


async def retry_conflicts(attempt: Callable[[], Awaitable[T]], tries: int = 4) -> T:
    """Run a whole transaction again if the database chose it as a deadlock victim (or it lost a serialization
    race); a lock that stays busy past lock_timeout is UNAVAILABLE (safe to retry with the same idempotency
    key), never INTERNAL."""
    for n in range(tries):
        try:
            return await attempt()
        except DBAPIError as err:
            code = sqlstate(err)
            if code == _LOCK_TIMEOUT:
                raise Unavailable("the data is busy, retry with the same idempotency key",
                                  reason="LOCK_TIMEOUT") from err
            if code not in _RETRYABLE or n == tries - 1:
                raise
            await asyncio.sleep(0.005 * (n + 1))
    raise AssertionError("unreachable")


def create_engine(url: str, schema: str, *, pool_size: int = 6, application_name: str = "") -> Database:
    return Database(url, schema, pool_size=pool_size, application_name=application_name)
