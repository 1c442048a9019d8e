"""Looking at a database without changing it: what `qqbridge doctor` needs.

`Store.open` creates a missing SQLite file, switches it to WAL mode, tightens its
mode and migrates the schema: right for `qqbridge run`, wrong for a check. `inspect`
only reads:

- SQLite: a missing file is reported, not created; an existing one is opened
  read-only (`mode=ro`), or `immutable=1` when it has no write-ahead log beside it
  (nobody is writing it then, and `mode=ro` on a WAL database would create the
  `-wal` and `-shm` files and leave them behind).
- PostgreSQL: one connection whose transactions are read-only
  (`default_transaction_read_only`), closed at once.

Either way it tells whether the database exists, the schema version it is at (0:
empty), and whether the bridge could write there, as far as can be seen without
writing.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from qqbridge.store.database import parse_url, redact_url
from qqbridge.store.errors import StoreConnectionError, StoreError
from qqbridge.store.migrations import LATEST_VERSION

CONNECT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class DatabaseState:
    """What `inspect` found. `version` is 0 for a database without the bridge's schema."""

    url: str  # password hidden
    exists: bool
    version: int = 0
    latest: int = LATEST_VERSION
    #: where a SQLite file is (absolute), None for PostgreSQL
    path: Path | None = None
    #: why the bridge could not create or write it, when that can be seen; else None
    unwritable: str | None = None


async def inspect(url: str) -> DatabaseState:
    """What the database at `url` is, changing nothing. Raises `StoreError` (with the
    URL's password hidden) when it exists but cannot be read."""
    kind, target = parse_url(url)
    if kind == "sqlite":
        return await asyncio.to_thread(_inspect_sqlite, redact_url(url), target)
    return await _inspect_postgres(target)


def _inspect_sqlite(url: str, target: str) -> DatabaseState:
    if target in ("", ":memory:"):
        return DatabaseState(url, exists=False)  # a fresh one each time the bridge opens it
    path = Path(os.path.abspath(target))
    if not path.exists():
        return DatabaseState(url, exists=False, path=path, unwritable=_cannot_create(path))
    if not path.is_file():
        raise StoreConnectionError(f"{path} is not a file")
    wal = Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists()
    uri = f"file:{quote(str(path))}?{'mode=ro' if wal else 'immutable=1'}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=CONNECT_TIMEOUT_SECONDS)
    except sqlite3.Error as e:
        raise StoreConnectionError(f"cannot open SQLite database {path}: {e}") from e
    try:
        has_schema = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        version = 0
        if has_schema:
            version = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
    except sqlite3.Error as e:
        raise StoreError(f"cannot read SQLite database {path}: {e}") from e
    finally:
        conn.close()
    unwritable = None
    if not os.access(path, os.W_OK):
        unwritable = f"{path} is not writable by this user"
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        unwritable = f"its directory {path.parent} is not writable by this user (SQLite keeps its log there)"
    return DatabaseState(url, exists=True, version=int(version), path=path, unwritable=unwritable)


def _cannot_create(path: Path) -> str | None:
    """Why `qqbridge run` could not create the file at `path`, or None."""
    directory = path.parent
    if not directory.exists():
        return f"its directory {directory} does not exist"
    if not directory.is_dir():
        return f"{directory} is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"its directory {directory} is not writable by this user"
    return None


async def _inspect_postgres(dsn: str) -> DatabaseState:
    import asyncpg

    from qqbridge.store.postgres_backend import _scrub

    url = redact_url(dsn)
    try:
        conn = await asyncpg.connect(
            dsn, timeout=CONNECT_TIMEOUT_SECONDS, server_settings={"default_transaction_read_only": "on"}
        )
    except Exception as e:  # refused, unknown host, bad password, no such database...
        reason = _scrub(f"{type(e).__name__}: {e}", dsn)
        raise StoreConnectionError(f"cannot connect to PostgreSQL at {url}: {reason}") from None
    try:
        table = await conn.fetchval("SELECT to_regclass('schema_version')::text")
        version = 0
        if table is not None:
            version = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            may_write = await conn.fetchval("SELECT has_table_privilege('schema_version', 'INSERT')")
        else:
            may_write = await conn.fetchval(
                "SELECT current_schema() IS NOT NULL AND has_schema_privilege(current_schema(), 'CREATE')"
            )
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as e:
        raise StoreError(f"cannot read PostgreSQL database {url}: {_scrub(str(e), dsn)}") from None
    finally:
        await conn.close()
    unwritable = None if may_write else (
        "this database user may not write the bridge's tables" if table is not None
        else "this database user may not create tables in its schema (search_path)"
    )  # fmt: skip
    return DatabaseState(url, exists=True, version=int(version), unwritable=unwritable)
