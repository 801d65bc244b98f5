"""Alembic, driven programmatically. Each service keeps its own `migrations/` folder whose env.py is just
`run_env()`; the version table lives inside the service's schema."""

from __future__ import annotations

import asyncio
import pathlib

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
