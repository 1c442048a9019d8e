"""`qqbridge.store.inspect`: what `qqbridge doctor` sees of a database, on both backends,
changing nothing: a missing SQLite file is not created, an old schema is not migrated."""

from __future__ import annotations

from pathlib import Path

import pytest

from qqbridge.store import LATEST_VERSION, StoreError
from qqbridge.store.database import Database
from qqbridge.store.inspect import inspect
from qqbridge.store.migrations import MIGRATIONS, schema_version, upgrade


async def tables(db: Database, backend: str) -> set[str]:
    if backend == "sqlite":
        rows = await db.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row["name"] for row in rows if not row["name"].startswith("sqlite_")}
    rows = await db.fetch(
        "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema()"
    )
    return {row["name"] for row in rows}


async def test_a_missing_sqlite_database_is_not_created(tmp_path: Path) -> None:
    state = await inspect(f"sqlite:///{tmp_path / 'bridge.db'}")
    assert not state.exists and state.version == 0 and state.latest == LATEST_VERSION
    assert state.path == tmp_path / "bridge.db" and state.unwritable is None
    assert list(tmp_path.iterdir()) == []


async def test_an_empty_database_is_seen_as_such(backend: str, raw_db: Database, db_url: str) -> None:
    state = await inspect(db_url)
    assert state.exists and state.version == 0 and state.unwritable is None
    assert "schema_version" not in await tables(raw_db, backend)


async def test_an_old_schema_is_reported_not_migrated(backend: str, raw_db: Database, db_url: str) -> None:
    await upgrade(raw_db, MIGRATIONS[:1])
    before = await tables(raw_db, backend)
    state = await inspect(db_url)
    assert state.exists and state.version == 1 and state.latest == LATEST_VERSION
    assert await schema_version(raw_db) == 1 and await tables(raw_db, backend) == before


async def test_a_current_schema(raw_db: Database, db_url: str) -> None:
    await upgrade(raw_db)
    state = await inspect(db_url)
    assert state.version == LATEST_VERSION and state.unwritable is None


async def test_the_sqlite_files_are_left_as_they_were(tmp_path: Path) -> None:
    """A WAL database closed cleanly has no -wal or -shm file; reading it read-only
    must not leave them behind (SQLite's mode=ro would)."""
    from qqbridge.store.connect import connect

    path = tmp_path / "bridge.db"
    db = await connect(str(path))
    await upgrade(db)
    await db.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    assert before == ["bridge.db"]
    state = await inspect(str(path))
    assert state.version == LATEST_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == before


async def test_postgresql_that_does_not_answer_is_an_error_without_its_password() -> None:
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL") as error:
        await inspect("postgresql://qq:s3cret-pw@127.0.0.1:1/x")
    assert "s3cret-pw" not in str(error.value)
