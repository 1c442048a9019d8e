"""The backend layer: URLs, the SQLite rewrite, connection errors, and one query
interface that behaves the same on both backends."""

from __future__ import annotations

import asyncio
import socket

import pytest

from qqbridge.store import ConflictError, Store, StoreConnectionError, StoreError
from qqbridge.store.connect import connect
from qqbridge.store.database import Database, parse_url, redact_url, to_sqlite

# -- pure functions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("bridge.db", ("sqlite", "bridge.db")),
        ("/var/lib/qqbridge/bridge.db", ("sqlite", "/var/lib/qqbridge/bridge.db")),
        ("sqlite:///bridge.db", ("sqlite", "bridge.db")),
        ("sqlite:////var/lib/bridge.db", ("sqlite", "/var/lib/bridge.db")),
        ("postgresql://u:p@h/db", ("postgresql", "postgresql://u:p@h/db")),
        ("postgres://h/db", ("postgresql", "postgres://h/db")),
    ],
)
def test_parse_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["", "mysql://u:secret@h/db", "sqlite://", "sqlite:bridge.db"])
def test_parse_url_refuses_what_it_cannot_open(url: str) -> None:
    with pytest.raises(StoreError) as info:
        parse_url(url)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://bridge:s3cret@db:5432/qq", "postgresql://bridge:***@db:5432/qq"),
        ("postgresql://bridge@db/qq", "postgresql://bridge@db/qq"),
        ("postgresql://db/qq?user=bridge&password=s3cret", "postgresql://db/qq?user=bridge&password=***"),
        ("postgresql://bridge:p%40ss@db/qq", "postgresql://bridge:***@db/qq"),
    ],
)
def test_redact_url_hides_passwords(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_to_sqlite_rewrites_placeholders_and_serials_but_not_literals() -> None:
    assert to_sqlite("SELECT $1, $2, $1 WHERE x = '$1' AND y = 'it''s $3'") == (
        "SELECT ?1, ?2, ?1 WHERE x = '$1' AND y = 'it''s $3'"
    )
    assert to_sqlite("CREATE TABLE t (id BIGSERIAL PRIMARY KEY, n $10)") == (
        "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, n ?10)"
    )
    assert to_sqlite("UPDATE t SET s = $1 WHERE id IN (SELECT id FROM t LIMIT 2 FOR UPDATE SKIP LOCKED)") == (
        "UPDATE t SET s = ?1 WHERE id IN (SELECT id FROM t LIMIT 2)"
    )
    assert to_sqlite("SELECT 'FOR UPDATE SKIP LOCKED'") == "SELECT 'FOR UPDATE SKIP LOCKED'"


# -- opening ----------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


async def test_postgres_connection_failure_names_the_url_without_password() -> None:
    port = _closed_port()
    with pytest.raises(StoreConnectionError) as info:
        await Store.open(f"postgresql://bridge:hunter2@127.0.0.1:{port}/qq")
    message = str(info.value)
    assert f"postgresql://bridge:***@127.0.0.1:{port}/qq" in message
    assert "hunter2" not in message
    assert info.value.__cause__ is None  # the driver's exception (and its args) is not chained


async def test_postgres_unknown_database_is_a_connection_error(postgres_server_url: str) -> None:
    server, _, _ = postgres_server_url.partition("?")[0].rpartition("/")
    with pytest.raises(StoreConnectionError, match="qqbridge_no_such_db"):
        await Store.open(f"{server}/qqbridge_no_such_db")


async def test_sqlite_in_missing_directory_is_a_connection_error(tmp_path) -> None:
    path = tmp_path / "missing" / "bridge.db"
    with pytest.raises(StoreConnectionError, match=str(path)):
        await Store.open(str(path))


async def test_sqlite_file_that_is_not_a_database_is_a_connection_error(tmp_path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not a database, " * 100)
    with pytest.raises(StoreConnectionError, match="not a database"):
        await Store.open(f"sqlite:///{path}")
    assert path.read_bytes() == b"this is not a database, " * 100


async def test_sqlite_settings(tmp_path) -> None:
    db = await connect(str(tmp_path / "bridge.db"))
    try:
        assert await db.fetchval("PRAGMA journal_mode") == "wal"
        assert await db.fetchval("PRAGMA foreign_keys") == 1
        assert await db.fetchval("PRAGMA busy_timeout") >= 1000
        assert await db.fetchval("PRAGMA secure_delete") == 1
    finally:
        await db.close()


# -- one interface, both backends --------------------------------------------------


async def _table(db: Database) -> None:
    await db.execute("CREATE TABLE t (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE, n BIGINT)")


async def test_execute_fetch_and_row_counts(raw_db: Database) -> None:
    await _table(raw_db)
    assert await raw_db.execute("INSERT INTO t (name, n) VALUES ($1, $2), ($3, $2)", "a", 2**40, "b") == 2
    assert await raw_db.fetch("SELECT name, n FROM t ORDER BY id") == [
        {"name": "a", "n": 2**40},
        {"name": "b", "n": 2**40},
    ]
    assert await raw_db.fetchrow("SELECT name FROM t WHERE name = $1", "zzz") is None
    assert await raw_db.fetchval("SELECT COUNT(*) FROM t WHERE n = $1 AND name <> $2", 2**40, "a") == 1
    assert await raw_db.execute("UPDATE t SET n = $1", 1) == 2
    assert await raw_db.execute("DELETE FROM t WHERE name = $1", "nobody") == 0


async def test_serial_ids_increase_and_are_not_reused(raw_db: Database) -> None:
    await _table(raw_db)
    first = await raw_db.fetchval("INSERT INTO t (name) VALUES ($1) RETURNING id", "a")
    await raw_db.execute("DELETE FROM t")
    second = await raw_db.fetchval("INSERT INTO t (name) VALUES ($1) RETURNING id", "b")
    assert second > first


async def test_transaction_commits_or_rolls_back(raw_db: Database) -> None:
    await _table(raw_db)
    async with raw_db.transaction():
        await raw_db.execute("INSERT INTO t (name) VALUES ($1)", "kept")
    with pytest.raises(RuntimeError):
        async with raw_db.transaction():
            await raw_db.execute("INSERT INTO t (name) VALUES ($1)", "dropped")
            raise RuntimeError("caller failed")
    assert [r["name"] for r in await raw_db.fetch("SELECT name FROM t")] == ["kept"]


async def test_nested_transaction_is_a_savepoint(raw_db: Database) -> None:
    await _table(raw_db)
    async with raw_db.transaction():
        await raw_db.execute("INSERT INTO t (name) VALUES ($1)", "outer")
        with pytest.raises(RuntimeError):
            async with raw_db.transaction():
                await raw_db.execute("INSERT INTO t (name) VALUES ($1)", "inner")
                raise RuntimeError
        await raw_db.execute("INSERT INTO t (name) VALUES ($1)", "after")
    assert {r["name"] for r in await raw_db.fetch("SELECT name FROM t")} == {"outer", "after"}


async def test_concurrent_transactions_do_not_see_each_others_work(raw_db: Database) -> None:
    await _table(raw_db)
    inside = asyncio.Event()
    release = asyncio.Event()

    async def slow_writer() -> None:
        with pytest.raises(RuntimeError):
            async with raw_db.transaction():
                await raw_db.execute("INSERT INTO t (name) VALUES ($1)", "uncommitted")
                inside.set()
                await release.wait()
                raise RuntimeError("rolled back")

    async def reader() -> list[str]:
        await inside.wait()
        release.set()
        return [r["name"] for r in await raw_db.fetch("SELECT name FROM t")]

    _, seen = await asyncio.gather(slow_writer(), reader())
    assert seen == []


@pytest.mark.parametrize("cancels", [1, 2])
async def test_cancelled_transaction_rolls_back_and_the_database_stays_usable(raw_db: Database, cancels: int) -> None:
    await _table(raw_db)
    inside = asyncio.Event()

    async def writer() -> None:
        async with raw_db.transaction():
            await raw_db.execute("INSERT INTO t (name) VALUES ($1)", "cancelled")
            inside.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(writer())
    await inside.wait()
    for _ in range(cancels):  # the second one lands while it rolls back
        task.cancel()
        await asyncio.sleep(0)
    with pytest.raises(asyncio.CancelledError):
        await task
    async with raw_db.transaction():
        await raw_db.execute("INSERT INTO t (name) VALUES ($1)", "after")
    assert [r["name"] for r in await raw_db.fetch("SELECT name FROM t")] == ["after"]


async def test_driver_errors_become_store_errors(raw_db: Database) -> None:
    await _table(raw_db)
    with pytest.raises(StoreError, match="no_such_table"):
        await raw_db.fetch("SELECT * FROM no_such_table")
    await raw_db.execute("INSERT INTO t (name) VALUES ($1)", "a")
    with pytest.raises(ConflictError):
        await raw_db.execute("INSERT INTO t (name) VALUES ($1)", "a")
    with pytest.raises(StoreError):
        await raw_db.execute("INSERT INTO t (name, n) VALUES ($1, $2)", "big", 2**64)
    # the connection is still usable after errors
    assert await raw_db.fetchval("SELECT COUNT(*) FROM t") == 1


async def test_migration_lock_needs_a_transaction(raw_db: Database) -> None:
    with pytest.raises(StoreError, match="inside a transaction"):
        await raw_db.migration_lock()
    async with raw_db.transaction():
        await raw_db.migration_lock()


async def test_close_is_idempotent(db_url: str) -> None:
    db = await connect(db_url)
    await db.close()
    await db.close()


async def test_a_transaction_cancelled_while_it_begins_leaves_none_open(tmp_path) -> None:
    """A task cancelled while its BEGIN is on its way to SQLite's thread (a shutdown, a
    deadline): the BEGIN still runs there, and the next transaction must not find it
    open ("cannot start a transaction within a transaction")."""
    db = await connect(str(tmp_path / "x.db"))
    try:
        await db.execute("CREATE TABLE t (x INTEGER)")
        for attempt in range(50):  # the cancel lands at a different point each time

            async def writer(value: int) -> None:
                async with db.transaction():
                    await db.execute("INSERT INTO t (x) VALUES ($1)", value)

            task = asyncio.create_task(writer(attempt))
            for _ in range(attempt % 5):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await writer(-1)  # must begin, insert and commit
        assert await db.fetchval("SELECT COUNT(*) FROM t WHERE x = -1") == 50
    finally:
        await db.close()
