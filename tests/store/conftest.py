"""Fixtures for the store tests: every test that takes `db_url` (or a fixture built on
it) runs once on SQLite and once on PostgreSQL.

SQLite: a file in the test's tmp_path. PostgreSQL: a fresh schema per test in the
database named by `QQBRIDGE_TEST_POSTGRES_URL` (default: the local server's
`postgres` database as user `postgres`), selected through the URL's `search_path`
and dropped afterwards. When that server cannot be reached the PostgreSQL cases are
skipped, saying so; set `QQBRIDGE_TEST_REQUIRE_POSTGRES=1` (as CI with a database
should) to make that a failure instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from qqbridge.store import Store
from qqbridge.store.connect import connect
from qqbridge.store.database import Database, redact_url
from tests.store.clock import FakeClock

POSTGRES_URL = os.environ.get("QQBRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_POSTGRES = os.environ.get("QQBRIDGE_TEST_REQUIRE_POSTGRES", "") not in ("", "0")

# Whether PostgreSQL was reachable: checked once per session (None = not yet checked).
_postgres_problem: list[str | None] = []


async def _admin_connection() -> asyncpg.Connection:
    if not _postgres_problem:
        try:
            conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        except Exception as e:  # refused, no such user/database, timeout...
            _postgres_problem.append(f"PostgreSQL is not reachable at {redact_url(POSTGRES_URL)}: {e}")
        else:
            _postgres_problem.append(None)
            return conn
    problem = _postgres_problem[0]
    if problem is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(problem + " (and QQBRIDGE_TEST_REQUIRE_POSTGRES is set)")
        pytest.skip(problem + " (set QQBRIDGE_TEST_POSTGRES_URL to point at one)")
    return await asyncpg.connect(POSTGRES_URL, timeout=5)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def db_url(backend: str, tmp_path) -> AsyncIterator[str]:
    """A URL naming an empty database of the backend under test."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'bridge.db'}"  # tmp_path is absolute: sqlite:////tmp/...
        return
    admin = await _admin_connection()
    schema = f"qqbridge_test_{uuid.uuid4().hex[:16]}"
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in POSTGRES_URL else "?"
        yield f"{POSTGRES_URL}{separator}search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


@pytest.fixture
async def postgres_server_url() -> str:
    """The PostgreSQL server's URL (skips, or fails, like the PostgreSQL cases)."""
    await (await _admin_connection()).close()
    return POSTGRES_URL


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def open_store(db_url: str, clock: FakeClock) -> AsyncIterator[Callable[[], Awaitable[Store]]]:
    """`await open_store()` opens (again) a Store on the test's database; all are
    closed at the end, so a test can close one and reopen to play a restart."""
    opened: list[Store] = []

    async def open_() -> Store:
        store = await Store.open(db_url, clock=clock)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: Callable[[], Awaitable[Store]]) -> Store:
    return await open_store()


@pytest.fixture
async def raw_db(db_url: str) -> AsyncIterator[Database]:
    """The backend layer alone, on the test's (empty, unmigrated) database."""
    db = await connect(db_url)
    yield db
    await db.close()
