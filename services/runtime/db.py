"""Database access: one async engine per service process, connected as the service's own role with its
own schema first on the search path, so SQL in a service never names a schema."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .config import asyncpg_url


def create_engine(url: str, schema: str, *, pool_size: int = 10, application_name: str = "") -> AsyncEngine:
    return create_async_engine(
        asyncpg_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args={
            "server_settings": {
                "search_path": schema,
                "application_name": application_name or schema,
                # A statement that runs this long is a bug, not a slow query: fail it.
                "statement_timeout": "15000",
                "lock_timeout": "5000",
                "idle_in_transaction_session_timeout": "60000",
            },
            "command_timeout": 20,
        },
    )
