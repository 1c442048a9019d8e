"""The SQLite backend: one aiosqlite connection to a WAL-mode file.

One connection, not a pool: SQLite allows one writer at a time anyway, and a single
connection guarded by an `asyncio.Lock` makes every statement and every transaction
of this process run one after another, so a transaction never sees another task's
half-done work. Other processes (say, an admin command run beside the bridge) are
kept out by SQLite's own locking: transactions start with `BEGIN IMMEDIATE`, taking
the write lock up front, and wait up to the busy timeout for it.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import aiosqlite
import structlog

from qqbridge.store.database import Database, Row, sql_head, to_sqlite
from qqbridge.store.errors import ConflictError, StoreConnectionError, StoreError

log = structlog.get_logger(__name__)

# How long a statement waits for another process's write lock before failing.
BUSY_TIMEOUT_SECONDS = 10.0

_UNIQUE_VIOLATIONS = ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")

# The database holds QQ password hashes (enough to log in): its files are for this
# user only. SQLite creates -wal and -shm (and -journal) with the main file's mode.
PRIVATE = 0o600
_FILES = ("", "-wal", "-shm", "-journal")


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


async def _enter_wal_mode(conn: aiosqlite.Connection) -> str:
    """Switch to WAL (readers never block the writer; a crash cannot corrupt the file)
    and return the journal mode now in force.

    Switching needs an exclusive lock and SQLite reports "database is locked" at once,
    without waiting the busy timeout, when another connection holds one (e.g. another
    process opening a new database at the same moment): so retry until the timeout.
    """
    deadline = asyncio.get_running_loop().time() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            rows = await conn.execute_fetchall("PRAGMA journal_mode = WAL")
            return str(next(iter(rows))["journal_mode"])
        except sqlite3.OperationalError as e:
            if not e.sqlite_errorname.startswith("SQLITE_BUSY") or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.02)


def _keep_private(path: str) -> None:
    """Create the database file 0600 whatever the umask, before SQLite creates it with
    the umask's mode; and tighten to 0600 any of its files that others may use."""
    if path in ("", ":memory:"):
        return  # in memory, or a temporary file SQLite deletes
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), PRIVATE)
    except FileExistsError:
        pass
    except OSError as e:
        raise StoreConnectionError(f"cannot open SQLite database {path}: {e.strerror or e}") from e
    else:
        try:
            os.fchmod(fd, PRIVATE)  # a umask like 0277 would have left it read-only
        finally:
            os.close(fd)
        log.info("created the SQLite database, readable by this user only", path=path, mode=f"{PRIVATE:04o}")
    for name in (path + suffix for suffix in _FILES):
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
        except OSError:
            continue  # not there (or not ours to see): SQLite says what is wrong, if anything
        if not mode & 0o077:
            continue
        try:
            os.chmod(name, PRIVATE)
        except OSError as e:
            log.warning("others may read this database file and it cannot be made private; it holds "
                        "QQ password hashes", file=name, mode=f"{mode:04o}", error=e.strerror,
                        fix=f"chmod 600 {name}")  # fmt: skip
        else:
            log.warning("made a database file private: others could read it, and it holds QQ password hashes",
                        file=name, old_mode=f"{mode:04o}", mode=f"{PRIVATE:04o}")  # fmt: skip


async def _reap_worker(conn: aiosqlite.Connection) -> None:
    """After a failed connect, aiosqlite stops its worker thread without waiting for
    it; the thread then reports to the event loop, and raises in its thread if the
    loop has closed meanwhile. Wait for it while the loop still runs."""
    thread = getattr(conn, "_thread", None)
    if thread is not None and thread.is_alive():
        await asyncio.to_thread(thread.join, BUSY_TIMEOUT_SECONDS)


class SQLiteDatabase(Database):
    def __init__(self, conn: aiosqlite.Connection, path: str) -> None:
        self._conn = conn
        self.url = path
        self._lock = asyncio.Lock()
        # Savepoint depth of the transaction the current task is in; None outside one.
        self._depth: ContextVar[int | None] = ContextVar(f"qqbridge_sqlite_tx_{id(self)}", default=None)
        self._closed = False
        self._pending_rollback: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, path: str) -> SQLiteDatabase:
        _keep_private(path)
        # isolation_level=None: no implicit BEGINs; transaction() issues them itself.
        conn = aiosqlite.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_SECONDS)
        try:
            await conn
        except (sqlite3.Error, OSError) as e:
            await _reap_worker(conn)
            raise StoreConnectionError(f"cannot open SQLite database {path}: {e}") from e
        try:
            conn.row_factory = _dict_row  # type: ignore[assignment]  # typed as a class; any callable works
            await conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            mode = await _enter_wal_mode(conn)
            if mode.lower() != "wal":
                raise StoreConnectionError(f"cannot put SQLite database {path} in WAL mode (it is in {mode} mode)")
            await conn.execute("PRAGMA foreign_keys = ON")
            # FULL: a committed transaction survives a power cut, not only a crash; the
            # bridge promises that what it acknowledged is kept.
            await conn.execute("PRAGMA synchronous = FULL")
            # Zero deleted and overwritten content instead of leaving it in free space.
            await conn.execute("PRAGMA secure_delete = ON")
        except (sqlite3.Error, OSError) as e:
            await conn.close()
            raise StoreConnectionError(f"cannot open SQLite database {path}: {e}") from e
        except BaseException:
            await conn.close()
            raise
        return cls(conn, path)

    async def execute(self, sql: str, *args: Any) -> int:
        count: int = await self._run(to_sqlite(sql), args, fetch=False)
        return count

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        rows: list[Row] = await self._run(to_sqlite(sql), args, fetch=True)
        return rows

    async def _run(self, sql: str, args: tuple[Any, ...], *, fetch: bool) -> Any:
        if self._depth.get() is not None:  # this task holds the lock in transaction()
            return await self._on_connection(sql, args, fetch=fetch)
        async with self._lock:
            return await self._on_connection(sql, args, fetch=fetch)

    async def _on_connection(self, sql: str, args: tuple[Any, ...], *, fetch: bool) -> Any:
        if self._closed:
            raise StoreError(f"the database {self.url} is closed")
        try:
            if fetch:
                return list(await self._conn.execute_fetchall(sql, args))
            cursor = await self._conn.execute(sql, args)
            count = cursor.rowcount
            if cursor.description is not None:  # rows to read (RETURNING, SELECT): end the statement
                await cursor.close()
            # A write without rows is done and reset already: closing its cursor would be
            # one more trip to aiosqlite's thread for every write (a third of its cost).
            return max(count, 0)  # -1 for statements that change no rows (DDL)
        except sqlite3.IntegrityError as e:
            error = ConflictError if e.sqlite_errorname in _UNIQUE_VIOLATIONS else StoreError
            raise error(f"SQLite statement failed: {e} (in: {sql_head(sql)})") from e
        except (sqlite3.Error, OverflowError, UnicodeError) as e:  # OverflowError: int beyond 64 bits
            raise StoreError(f"SQLite statement failed: {e} (in: {sql_head(sql)})") from e

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        depth = self._depth.get()
        if depth is not None:
            async with self._savepoint(depth + 1):
                yield
            return
        async with self._lock:
            await self._settle()
            token = self._depth.set(0)
            try:
                # Inside the try: a task cancelled while its BEGIN is on its way still has
                # the BEGIN run by aiosqlite's thread, and must end that transaction too.
                await self._on_connection("BEGIN IMMEDIATE", (), fetch=False)
                yield
                await self._on_connection("COMMIT", (), fetch=False)
            except BaseException:
                await self._rollback()
                raise
            finally:
                self._depth.reset(token)

    async def _rollback(self) -> None:
        """Roll back, even when this task is being cancelled: the ROLLBACK runs as its
        own task, which the next transaction waits for (`_settle`). The worker thread
        runs statements in order, so it comes after every statement of this
        transaction; if it fails, there was nothing left to roll back (a cancelled
        COMMIT that went through, say)."""
        self._pending_rollback = asyncio.ensure_future(self._quietly("ROLLBACK"))
        await asyncio.shield(self._pending_rollback)

    async def _settle(self) -> None:
        """Before BEGIN: let an interrupted rollback finish, and end anything left open."""
        pending, self._pending_rollback = self._pending_rollback, None
        if pending is not None:
            await pending
        if not self._closed and self._conn.in_transaction:
            await self._quietly("ROLLBACK")

    async def _quietly(self, sql: str) -> None:
        try:
            await self._on_connection(sql, (), fetch=False)
        except StoreError as e:
            log.debug("statement failed, nothing to undo", statement=sql, error=str(e), url=self.url)

    @asynccontextmanager
    async def _savepoint(self, depth: int) -> AsyncIterator[None]:
        name = f"qqbridge_sp{depth}"
        await self._on_connection(f"SAVEPOINT {name}", (), fetch=False)
        token = self._depth.set(depth)
        try:
            yield
        except BaseException:
            await self._on_connection(f"ROLLBACK TO {name}", (), fetch=False)
            await self._on_connection(f"RELEASE {name}", (), fetch=False)
            raise
        else:
            await self._on_connection(f"RELEASE {name}", (), fetch=False)
        finally:
            self._depth.reset(token)

    async def migration_lock(self) -> None:
        # Nothing to do: BEGIN IMMEDIATE already holds the database's only write lock.
        if self._depth.get() is None:
            raise StoreError("migration_lock() must be called inside a transaction")

    async def purge_freed_data(self) -> None:
        # secure_delete zeroes freed space in the database file; old page versions may
        # still sit in the WAL, so copy the WAL back and truncate it. Best effort: a
        # reader in another process can keep the WAL from being truncated.
        await self.fetch("PRAGMA wal_checkpoint(TRUNCATE)")

    async def close(self) -> None:
        if self._closed:
            return
        async with self._lock:
            self._closed = True
            await self._conn.close()
