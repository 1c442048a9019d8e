"""The bridge's persistent store: SQLite or PostgreSQL, one schema, numbered migrations.

    store = await Store.open("sqlite:///qqbridge.db")   # or a path, or postgresql://...
    if await store.record_transaction(txn_id, events): ...
    await store.close()

Modules: `store` (the `Store` the bridge uses), `rows` (what it returns),
`migrations` (the schema), `database` with its `sqlite_backend` and `postgres_backend`
(the only code that knows which database it is), `errors`.
"""

from qqbridge.store.errors import (
    ConflictError,
    InvalidValueError,
    MigrationError,
    NotFoundError,
    SchemaTooNewError,
    StoreConnectionError,
    StoreError,
)
from qqbridge.store.migrations import LATEST_VERSION
from qqbridge.store.rows import BridgeUser, InboxEvent, InboxState, LoginState, PruneResult
from qqbridge.store.store import SEQ_MAX, Store

__all__ = [
    "LATEST_VERSION",
    "SEQ_MAX",
    "BridgeUser",
    "ConflictError",
    "InboxEvent",
    "InboxState",
    "InvalidValueError",
    "LoginState",
    "MigrationError",
    "NotFoundError",
    "PruneResult",
    "SchemaTooNewError",
    "Store",
    "StoreConnectionError",
    "StoreError",
]
