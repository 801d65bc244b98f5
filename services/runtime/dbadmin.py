"""Creates the database, and for each service its own login role and a schema that role owns. A role gets
no privileges anywhere else, so a service physically cannot read another service's tables."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg

from .config import role_password


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def bootstrap(admin_url: str, services: tuple[str, ...] | list[str]) -> None:
    database = urlsplit(admin_url).path.lstrip("/") or "postgres"
    conn = await asyncpg.connect(_with_database(admin_url, "postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC')
        await conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        for service in services:
            password = role_password(service).replace("'", "''")
            if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", service):
                await conn.execute(f"ALTER ROLE \"{service}\" WITH LOGIN PASSWORD '{password}'")
            else:
                await conn.execute(f"CREATE ROLE \"{service}\" LOGIN PASSWORD '{password}'")
            await conn.execute(f'GRANT CONNECT ON DATABASE "{database}" TO "{service}"')
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{service}" AUTHORIZATION "{service}"')
            await conn.execute(f'ALTER ROLE "{service}" SET search_path = "{service}"')
    finally:
        await conn.close()
