"""Alembic, driven programmatically. Each service keeps its own `migrations/` folder whose env.py is just
`run_env()`; the version table lives inside the service's schema."""

from __future__ import annotations

import asyncio
import pathlib
import uuid

import asyncpg
from alembic import command, context
from alembic.config import Config
from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from .config import asyncpg_url


def _config(service: str, migrations: pathlib.Path, url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["url"] = url
    cfg.attributes["schema"] = service
    return cfg


def upgrade(service: str, migrations: pathlib.Path, url: str, revision: str = "head") -> None:
    command.upgrade(_config(service, migrations, url), revision)


async def private_schema(admin_url: str, prefix: str, migrations: pathlib.Path, revision: str = "head") -> str:
    """A new schema `<prefix>_<random>` holding a service's tables as its migrations make them (up to
    `revision`), for a test or a benchmark that must not touch the service's own schema. Its name is returned;
    dropping it is the caller's."""
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    # Alembic runs its own event loop (run_env): not on this one.
    await asyncio.to_thread(upgrade, schema, migrations, admin_url, revision)
    return schema


def run_env() -> None:
    """Body of every service's migrations/env.py."""
    cfg = context.config
    url: str = cfg.attributes["url"]
    schema: str = cfg.attributes["schema"]

    def do_run(connection) -> None:  # type: ignore[no-untyped-def]
        connection.execute(text(f'SET search_path TO "{schema}"'))
        context.configure(
            connection=connection,
            version_table_schema=schema,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def main() -> None:
        engine = create_async_engine(asyncpg_url(url), poolclass=pool.NullPool)
        async with engine.connect() as conn:
            await conn.run_sync(do_run)
            await conn.commit()
        await engine.dispose()

    asyncio.run(main())
