"""Migrations: from empty, reopen, refusal of a newer schema, failure and races."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from qqbridge.store import LATEST_VERSION, MigrationError, SchemaTooNewError, Store, seq
from qqbridge.store.connect import connect
from qqbridge.store.database import Database
from qqbridge.store.migrations import MIGRATIONS, schema_version, upgrade

OpenStore = Callable[[], Awaitable[Store]]

V1_TABLES = ["appservice_txn", "matrix_inbox", "bridge_user", "bridge_state", "qq_seq", "qq_seq_issued"]
V2_TABLES = ["puppet", "portal", "qq_inbound", "outbox", "friend_request"]
TABLES = V1_TABLES + V2_TABLES


async def snapshot(db: Database, tables: list[str] = TABLES) -> dict[str, Any]:
    """Every row of every table the store knows, to show that nothing changed."""
    return {t: await db.fetch(f"SELECT * FROM {t} ORDER BY 1, 2") for t in ["schema_version", *tables]}


async def fill_v1(store: Store) -> None:
    """What a bridge of the first release stored. The user row is written as that
    release's table has it: today's store reads and writes columns added since."""
    await store.inbox.record_transaction("txn1", [{"event_id": "$e1", "room_id": "!r", "sender": "@a:x", "type": "m.t"}])
    await store.db.execute(
        "INSERT INTO bridge_user (mxid, control_room_id, qq_uin, password_md5, login_state, created_at, updated_at)"
        " VALUES ('@a:x', '!control', 123456, $1, 'logged_in', 1, 2)",
        "0" * 32,
    )
    await store.state.set("k", "v")
    await seq.issue(store.db, "@a:x", "GetMsgEx", 3, 1)


async def fill(store: Store) -> None:
    await fill_v1(store)
    await store.puppets.upsert(200000, nick="n", presence=10)
    await store.portals.claim("@a:x", 200000, stranger=True)
    await store.portals.set_room("@a:x", 200000, "!dm")
    await store.inbound.add_batch("@a:x", 123456, 5, [(9, 200000, "hi")])
    await store.outbox.enqueue("@a:x", "!dm", "$out", 200000, ["hello"])
    await store.friend_requests.add("@a:x", 300000, "please")


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


async def test_a_version_1_database_is_upgraded_keeping_its_data(raw_db: Database, db_url: str) -> None:
    # A database a bridge of the previous release made, and used.
    assert await upgrade(raw_db, MIGRATIONS[:1]) == 1
    await fill_v1(Store(raw_db))
    before = await snapshot(raw_db, V1_TABLES)

    store = await Store.open(db_url)
    try:
        after = await snapshot(store.db, V1_TABLES)
        assert [row["version"] for row in after.pop("schema_version")] == list(range(1, LATEST_VERSION + 1))
        # v3 added bridge_user.password_after: empty for a user who is not logging in.
        assert [user.pop("password_after") for user in after["bridge_user"]] == [None]
        assert after == {t: rows for t, rows in before.items() if t != "schema_version"}
        for table in V2_TABLES:
            assert await store.db.fetchval(f"SELECT COUNT(*) FROM {table}") == 0
        # The new tables work with the old rows: the user's SEQ counter goes on.
        last = await store.seqs.last("@a:x", "GetMsgEx")
        parts = await store.outbox.enqueue("@a:x", "!dm", "$out", 200000, ["hello"])
        assert last is not None and parts[0].seq > last  # the counter goes on, never back
        assert (await store.portals.claim("@a:x", 200000, stranger=False))[1] is True
    finally:
        await store.close()


async def test_the_previous_release_refuses_this_ones_database(store: Store) -> None:
    await fill(store)
    before = await snapshot(store.db)
    with pytest.raises(SchemaTooNewError, match=rf"version {LATEST_VERSION} is newer .*knows up to 1\)"):
        await upgrade(store.db, MIGRATIONS[:1])
    assert await snapshot(store.db) == before


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
