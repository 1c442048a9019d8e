"""Migrations: from empty, reopen, refusal of a newer schema, failure and races."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from qqbridge.store import LATEST_VERSION, MigrationError, SchemaTooNewError, Store
from qqbridge.store.database import Database, connect
from qqbridge.store.migrations import MIGRATIONS, schema_version, upgrade

OpenStore = Callable[[], Awaitable[Store]]

TABLES = ["appservice_txn", "matrix_inbox", "bridge_user", "bridge_state", "qq_seq", "qq_seq_issued"]


async def snapshot(db: Database) -> dict[str, Any]:
    """Every row of every table the store knows, to show that nothing changed."""
    tables = ["schema_version", *TABLES]
    return {t: await db.fetch(f"SELECT * FROM {t} ORDER BY 1") for t in tables}


async def fill(store: Store) -> None:
    await store.record_transaction("txn1", [{"event_id": "$e1", "room_id": "!r", "sender": "@a:x", "type": "m.t"}])
    await store.set_control_room("@a:x", "!control")
    await store.complete_login("@a:x", 123456, "0" * 32)
    await store.set_state("k", "v")
    await store.next_seq("@a:x", "GetMsgEx")


async def test_empty_database_is_migrated_to_the_latest_version(store: Store) -> None:
    assert LATEST_VERSION == len(MIGRATIONS) >= 1
    assert await schema_version(store.db) == LATEST_VERSION
    rows = await store.db.fetch("SELECT version FROM schema_version ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, LATEST_VERSION + 1))
    for table in TABLES:
        assert await store.db.fetchval(f"SELECT COUNT(*) FROM {table}") == 0


async def test_reopen_is_a_no_op(open_store: OpenStore) -> None:
    store = await open_store()
    await fill(store)
    before = await snapshot(store.db)
    await store.close()
    again = await open_store()
    assert await snapshot(again.db) == before


async def test_newer_schema_is_refused_and_left_unchanged(open_store: OpenStore, db_url: str) -> None:
    store = await open_store()
    await fill(store)
    newer = LATEST_VERSION + 3
    await store.db.execute("INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)", newer, 1)
    before = await snapshot(store.db)
    await store.close()

    with pytest.raises(SchemaTooNewError) as info:
        await Store.open(db_url)
    assert str(info.value) == (
        f"database schema version {newer} is newer than this qqbridge (knows up to {LATEST_VERSION}); upgrade qqbridge"
    )
    assert (info.value.found, info.value.known) == (newer, LATEST_VERSION)

    db = await connect(db_url)
    try:
        assert await snapshot(db) == before
    finally:
        await db.close()


async def test_refusal_is_before_any_migration_runs(raw_db: Database) -> None:
    await raw_db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")
    await raw_db.execute("INSERT INTO schema_version (version, applied_at) VALUES (2, 0)")
    ran: list[int] = []

    async def v1(db: Database) -> None:
        ran.append(1)

    with pytest.raises(SchemaTooNewError, match=r"version 2 is newer .*knows up to 1\)"):
        await upgrade(raw_db, [v1])
    assert ran == []


async def test_each_migration_is_its_own_transaction(raw_db: Database) -> None:
    async def v1_good(db: Database) -> None:
        await db.execute("CREATE TABLE good (x INTEGER)")

    async def v2_bad(db: Database) -> None:
        await db.execute("CREATE TABLE half_done (x INTEGER)")
        await db.execute("INSERT INTO good (x) VALUES (1)")
        raise RuntimeError("bug in migration 2")

    with pytest.raises(MigrationError, match=r"migration 2 \(v2_bad\) failed.*bug in migration 2"):
        await upgrade(raw_db, [v1_good, v2_bad])
    # Migration 1 stays applied; nothing of migration 2 does (DDL included).
    assert await schema_version(raw_db) == 1
    assert await raw_db.fetchval("SELECT COUNT(*) FROM good") == 0
    with pytest.raises(Exception, match="half_done"):
        await raw_db.fetch("SELECT * FROM half_done")

    async def v2_fixed(db: Database) -> None:
        await db.execute("CREATE TABLE half_done (x INTEGER)")

    assert await upgrade(raw_db, [v1_good, v2_fixed]) == 2


async def test_failed_first_migration_leaves_an_empty_database(raw_db: Database) -> None:
    async def v1_bad(db: Database) -> None:
        raise RuntimeError("nope")

    with pytest.raises(MigrationError):
        await upgrade(raw_db, [v1_bad])
    with pytest.raises(Exception, match="schema_version"):
        await raw_db.fetch("SELECT * FROM schema_version")


async def test_concurrent_opens_migrate_once(open_store: OpenStore) -> None:
    stores = await asyncio.gather(*(open_store() for _ in range(8)))
    rows = await stores[0].db.fetch("SELECT version FROM schema_version ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, LATEST_VERSION + 1))


async def test_migrations_have_names_and_docstrings() -> None:
    # The log line and MigrationError name each migration; a docstring says what it adds.
    for number, migration in enumerate(MIGRATIONS, start=1):
        assert migration.__name__.startswith(f"v{number}_")
        assert migration.__doc__
