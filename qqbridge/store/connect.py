"""The backend factory: a store URL becomes the `Database` that speaks to it.

    connect("sqlite:///x.db")          ─▶ SQLiteDatabase   (sqlite_backend.py)
    connect("postgresql://host/db")    ─▶ PostgresDatabase (postgres_backend.py)

Kept apart from `database.py`, the base both backends build on, so that nothing imports
back: the backends import the base, this module imports the backends.
"""

from __future__ import annotations

from qqbridge.store.database import Database, parse_url


async def connect(url: str, *, pool_size: int = 10) -> Database:
    """Open the database `url` names. Raises `StoreConnectionError` when it cannot."""
    # Imported here so that using one backend never needs the other's driver loaded.
    kind, target = parse_url(url)
    if kind == "sqlite":
        from qqbridge.store.sqlite_backend import SQLiteDatabase

        return await SQLiteDatabase.open(target)
    from qqbridge.store.postgres_backend import PostgresDatabase

    return await PostgresDatabase.open(target, pool_size=pool_size)
