"""The PostgreSQL backend: an asyncpg pool.

Statements outside a transaction borrow any pooled connection; `transaction()` holds
one connection for the block and makes the current task's statements use it.
Query parameters in the URL that asyncpg does not know are sent as server settings,
so `postgresql://host/db?search_path=myschema` keeps the bridge in its own schema.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg

from qqbridge.store.database import Database, Row, redact_url, sql_head
from qqbridge.store.errors import ConflictError, StoreConnectionError, StoreError

CONNECT_TIMEOUT_SECONDS = 10.0

# Errors that mean "the database failed us", as opposed to bugs in the caller.
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, UnicodeError)

# Key of the advisory lock that serialises schema upgrades: any fixed 64-bit number
# works; derived from a name so that it is recognisable and unlikely to collide.
_MIGRATION_LOCK_KEY = int.from_bytes(hashlib.sha256(b"qqbridge schema").digest()[:8], "big", signed=True)


class PostgresDatabase(Database):
    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool = pool
        self.url = url
        # The connection of the transaction the current task is in; None outside one.
        self._conn: ContextVar[asyncpg.Connection | None] = ContextVar(f"qqbridge_pg_tx_{id(self)}", default=None)

    @classmethod
    async def open(cls, dsn: str, *, pool_size: int = 10) -> PostgresDatabase:
        url = redact_url(dsn)
        try:
            # min_size=1 connects now, so a wrong URL fails at start, not at first use.
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=pool_size, timeout=CONNECT_TIMEOUT_SECONDS)
        except Exception as e:  # refused, unknown host, bad password, no such database...
            reason = _scrub(f"{type(e).__name__}: {e}", dsn)
            raise StoreConnectionError(f"cannot connect to PostgreSQL at {url}: {reason}") from None
        return cls(pool, url)

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self._run("execute", sql, args)
        # asyncpg returns the command tag: "INSERT 0 3", "UPDATE 2", "CREATE TABLE".
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(record) for record in await self._run("fetch", sql, args)]

    async def _run(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        try:
            conn = self._conn.get()
            if conn is not None:
                return await getattr(conn, method)(sql, *args)
            async with self._pool.acquire() as conn:
                return await getattr(conn, method)(sql, *args)
        except asyncpg.UniqueViolationError as e:
            raise ConflictError(f"PostgreSQL statement failed: {e} (in: {sql_head(sql)})") from e
        except _DRIVER_ERRORS as e:
            raise StoreError(f"PostgreSQL statement failed: {e} (in: {sql_head(sql)})") from e

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        conn = self._conn.get()
        if conn is not None:
            async with conn.transaction():  # nested: asyncpg makes it a savepoint
                yield
            return
        try:
            async with self._pool.acquire() as conn:
                token = self._conn.set(conn)
                try:
                    async with conn.transaction():
                        yield
                finally:
                    self._conn.reset(token)
        except _DRIVER_ERRORS as e:
            # Statements inside the block raise StoreError already; this catches the
            # BEGIN, COMMIT or a lost connection.
            raise StoreError(f"PostgreSQL transaction failed: {e}") from e

    async def migration_lock(self) -> None:
        if self._conn.get() is None:
            raise StoreError("migration_lock() must be called inside a transaction")
        # Released by the COMMIT/ROLLBACK that ends the transaction.
        await self.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY)

    async def purge_freed_data(self) -> None:
        # Nothing cheap to do: the old row version stays until (auto)vacuum reclaims it,
        # and VACUUM cannot run in a transaction nor should run per message.
        return

    async def close(self) -> None:
        await self._pool.close()  # idempotent in asyncpg


def _scrub(message: str, dsn: str) -> str:
    """Remove the URL's password from a driver's message, should it ever echo it."""
    try:
        passwords = [urlsplit(dsn).password]
        passwords += [v for k, v in parse_qsl(urlsplit(dsn).query) if k.lower() == "password"]
    except ValueError:
        return message
    for password in passwords:
        if password:
            message = message.replace(password, "***")
    return message
