"""The bridge's persistent store: SQLite or PostgreSQL, one schema, numbered migrations.

    store = await Store.open("sqlite:///qqbridge.db")   # or a path, or postgresql://...
    if await store.record_transaction(txn_id, events): ...
    await store.close()

Modules: `store` (the `Store` the bridge uses), with `contacts` (puppets, portals,
friend requests), `messages` (the QQ inbound queue and the outbox) and `seq` (the QQ
request counter) behind it, `rows` (what it returns), `checks` (what it refuses),
`migrations` (the schema), `database` with its `sqlite_backend` and `postgres_backend`
(the only code that knows which database it is), `errors`.
"""

from qqbridge.store.contacts import UNSET
from qqbridge.store.errors import (
    ConflictError,
    InvalidValueError,
    MigrationError,
    NotFoundError,
    SchemaTooNewError,
    StoreConnectionError,
    StoreError,
)
from qqbridge.store.messages import CLTMSG_PURPOSE
from qqbridge.store.migrations import LATEST_VERSION
from qqbridge.store.rows import (
    BridgeUser,
    FriendRequest,
    FriendRequestState,
    InboundMessage,
    InboundState,
    InboxEvent,
    InboxState,
    LoginState,
    OutboxState,
    OutgoingMessage,
    Portal,
    PruneResult,
    Puppet,
)
from qqbridge.store.seq import SEQ_MAX
from qqbridge.store.store import Store

__all__ = [
    "CLTMSG_PURPOSE",
    "LATEST_VERSION",
    "SEQ_MAX",
    "UNSET",
    "BridgeUser",
    "ConflictError",
    "FriendRequest",
    "FriendRequestState",
    "InboundMessage",
    "InboundState",
    "InboxEvent",
    "InboxState",
    "InvalidValueError",
    "LoginState",
    "MigrationError",
    "NotFoundError",
    "OutboxState",
    "OutgoingMessage",
    "Portal",
    "PruneResult",
    "Puppet",
    "SchemaTooNewError",
    "Store",
    "StoreConnectionError",
    "StoreError",
]
