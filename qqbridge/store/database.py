"""The backend layer: one small `Database` interface over SQLite and PostgreSQL.

This module owns everything that differs between the two backends, and nothing else
in the store may know which one it is talking to:

- URLs: a filesystem path or `sqlite:///relative.db` / `sqlite:////absolute.db`
  (SQLAlchemy's and mautrix's convention) opens SQLite; `postgresql://...` (or
  `postgres://...`) opens an asyncpg pool. `redact_url` hides passwords in messages.
- SQL dialect: SQL is written once, in PostgreSQL's spelling, with `$1` placeholders.
  The SQLite backend rewrites the three things SQLite spells differently:
  `$n` -> `?n` (numbered, so a parameter may be used twice),
  `BIGSERIAL PRIMARY KEY` -> `INTEGER PRIMARY KEY AUTOINCREMENT` (an ever-increasing
  row id that is never reused, which ordered queues rely on), and a subquery's
  `FOR UPDATE SKIP LOCKED` is dropped (one writer: nothing to lock). Everything else the
  store writes (`ON CONFLICT`, `RETURNING`, `CASE`, `BIGINT`, `TEXT`) means the same
  on both.
- Results: rows come back as plain `dict`s; `execute` returns the number of rows it
  changed; driver exceptions come back as `StoreError`.
- Transactions: `async with db.transaction():` makes every `db.execute/fetch...` the
  current task runs inside the block use that transaction (tracked in a context
  variable, so concurrent tasks each get their own). Nesting makes a savepoint. Do
  not start tasks inside a transaction block: they would share its connection.
- `migration_lock()` serialises schema upgrades between processes;
  `purge_freed_data()` scrubs what was deleted, as far as the backend can.
"""

from __future__ import annotations

import functools
import re
from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from qqbridge.store.errors import StoreError

Row = dict[str, Any]


class Database(ABC):
    """A connection (SQLite) or pool (PostgreSQL) with one small query interface."""

    #: the URL this database was opened from, password hidden; for messages and logs
    url: str

    @abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return how many rows it inserted, updated or deleted."""

    @abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Run one query; return all its rows."""

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        """Run one query; return its first row, or None when it returned none."""
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """Run one query; return the first column of its first row (None if no row)."""
        row = await self.fetchrow(sql, *args)
        return None if row is None else next(iter(row.values()))

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[None]:
        """`async with db.transaction():` — all statements of this task inside it are
        one transaction, committed at the end of the block, rolled back on an exception."""

    @abstractmethod
    async def migration_lock(self) -> None:
        """Inside a transaction: wait until no other process is upgrading the schema."""

    @abstractmethod
    async def purge_freed_data(self) -> None:
        """Outside a transaction: make deleted or overwritten data (a forgotten password
        message) unrecoverable from the database's files, as far as the backend can."""

    @abstractmethod
    async def close(self) -> None:
        """Close the connection or pool. Idempotent."""


def parse_url(url: str) -> tuple[str, str]:
    """Return ("sqlite", path) or ("postgresql", dsn) for a store URL."""
    if not isinstance(url, str) or not url.strip():
        raise StoreError("the database URL is empty")
    scheme, sep, rest = url.partition("://")
    if not sep:
        if url.startswith("sqlite:"):
            raise StoreError(f"cannot read database URL {url!r}: write sqlite:///path")
        return "sqlite", url  # a plain filesystem path
    scheme = scheme.lower()
    if scheme in ("postgresql", "postgres"):
        return "postgresql", url
    if scheme == "sqlite":
        # "sqlite:///x.db" is x.db relative to the working directory and
        # "sqlite:////var/x.db" is absolute, as in SQLAlchemy and mautrix.
        if not rest.startswith("/") or rest == "/":
            raise StoreError(f"cannot read database URL {redact_url(url)!r}: write sqlite:///path")
        return "sqlite", rest[1:]
    raise StoreError(
        f"unsupported database URL {redact_url(url)!r}: use a file path, sqlite:///path or postgresql://..."
    )


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***` (in the user info or the query)."""
    if "@" not in url and "password" not in url.lower():
        return url  # nothing secret; and urlunsplit would drop the empty host of sqlite:///path
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if has_password else netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() == "password" for k, _ in pairs):
            pairs = [(k, "***" if k.lower() == "password" else v) for k, v in pairs]
            query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# A single-quoted SQL literal (skipped untouched), a placeholder, a serial column, or a
# row lock (SQLite has one writer and a statement is atomic: nothing to lock or skip).
_SQLITE_REWRITE = re.compile(
    r"'(?:[^']|'')*'|\$(\d+)|\bBIGSERIAL PRIMARY KEY\b|\s+FOR UPDATE SKIP LOCKED\b", re.IGNORECASE
)


@functools.lru_cache(maxsize=1024)  # the store's statements are a few hundred constants
def to_sqlite(sql: str) -> str:
    """Rewrite PostgreSQL-spelled SQL for SQLite (see the module docstring)."""

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text.startswith("'"):
            return text
        if match.group(1) is not None:
            return "?" + match.group(1)
        if text.upper().endswith("SKIP LOCKED"):
            return ""
        return "INTEGER PRIMARY KEY AUTOINCREMENT"

    return _SQLITE_REWRITE.sub(replace, sql)


def sql_head(sql: str) -> str:
    """The start of a statement on one line, for error messages."""
    text = " ".join(sql.split())
    return text if len(text) <= 80 else text[:77] + "..."
