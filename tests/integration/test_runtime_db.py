"""The runtime's database layer against the real Postgres: named parameters and casts, rows by attribute,
command-tag row counts, transactions that roll back, JSON, and SQLAlchemy's error vocabulary."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from services.runtime import db

SCHEMA = "db_probe"


@pytest.fixture(scope="module")
async def database(stack):
    conn = await asyncpg.connect(stack.admin_url)
    await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}")
    await conn.execute(f"CREATE TABLE {SCHEMA}.items (id text PRIMARY KEY, qty bigint NOT NULL CHECK (qty >= 0),"
                       " doc jsonb)")
    await conn.close()
    database = db.create_engine(stack.admin_url, SCHEMA, pool_size=3)
    yield database
    await database.dispose()


async def test_named_parameters_casts_rows_and_counts(database):
    async with database.connect() as conn:
        inserted = await conn.execute(
            text("INSERT INTO items (id, qty) SELECT i, q::bigint FROM unnest(CAST(:ids AS text[]), "
                 "CAST(:qtys AS bigint[])) AS t(i, q)"),
            {"ids": ["a", "b", "c"], "qtys": [1, 2, 3]},
        )
        assert inserted.rowcount == 3 and inserted.all() == []
        updated = await conn.execute(text("UPDATE items SET qty = qty + :d WHERE id = ANY(:ids)"),
                                     {"d": 10, "ids": ["a", "b"]})
        assert updated.rowcount == 2
        rows = (await conn.execute(text("SELECT id, qty FROM items WHERE qty > :min ORDER BY id"), {"min": 5})).all()
        assert [(r.id, r.qty) for r in rows] == [("a", 11), ("b", 12)]
        assert [tuple(r) for r in rows] == [("a", 11), ("b", 12)]
        assert (await conn.execute(text("SELECT count(*) FROM items"))).scalar_one() == 3
        assert (await conn.execute(text("SELECT qty FROM items WHERE id = :id"), {"id": "zz"})).first() is None
        with pytest.raises(AttributeError):
            _ = rows[0].missing


async def test_a_failed_transaction_leaves_nothing_behind(database):
    with pytest.raises(RuntimeError):
        async with database.begin() as conn:
            await conn.execute(text("INSERT INTO items (id, qty) VALUES ('tx', 1)"))
            raise RuntimeError("the effect failed half way")
    async with database.connect() as conn:
        assert (await conn.execute(text("SELECT 1 FROM items WHERE id = 'tx'"))).first() is None


async def test_errors_keep_sqlalchemys_vocabulary(database):
    async with database.connect() as conn:
        await conn.execute(text("INSERT INTO items (id, qty) VALUES ('dup', 1)"))
        with pytest.raises(IntegrityError) as unique:
            await conn.execute(text("INSERT INTO items (id, qty) VALUES ('dup', 2)"))
        assert unique.value.orig.sqlstate == "23505"
        with pytest.raises(IntegrityError) as check:
            await conn.execute(text("UPDATE items SET qty = -1 WHERE id = 'dup'"))
        assert check.value.orig.sqlstate == "23514"
        with pytest.raises(DBAPIError) as syntax:
            await conn.execute(text("SELEC 1"))
        assert syntax.value.orig.sqlstate == "42601"


async def test_json_comes_back_decoded(database):
    async with database.begin() as conn:
        for i in range(4):
            await conn.execute(text("INSERT INTO items (id, qty, doc) VALUES (:id, :qty, :doc)"),
                               {"id": f"m{i}", "qty": i, "doc": f'{{"n": {i}}}'})
    async with database.connect() as conn:
        docs = (await conn.execute(text("SELECT doc FROM items WHERE id LIKE 'm%' ORDER BY id"))).scalars()
    assert docs == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}]


async def test_a_read_only_snapshot_refuses_writes(database):
    with pytest.raises(DBAPIError) as refused:
        async with database.begin(isolation="repeatable_read", readonly=True) as conn:
            assert (await conn.execute(text("SHOW transaction_isolation"))).scalar_one() == "repeatable read"
            await conn.execute(text("INSERT INTO items (id, qty) VALUES ('ro', 1)"))
    assert refused.value.orig.sqlstate == "25006"


async def test_a_failed_script_leaves_no_transaction_behind(database):
    async with database.connect() as conn:
        with pytest.raises(DBAPIError):
            await conn.run_script("BEGIN; SET LOCAL synchronous_commit = off; "
                                  "INSERT INTO items (id, qty) VALUES ('script', -1); COMMIT;")
        assert not conn.raw.is_in_transaction()
        await conn.run_script("BEGIN; SET LOCAL synchronous_commit = off; "
                              "INSERT INTO items (id, qty) VALUES ('script', 1); COMMIT;")
        assert (await conn.execute(text("SELECT qty FROM items WHERE id = 'script'"))).scalar_one() == 1
