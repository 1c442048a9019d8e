"""The bridge's persistent store: SQLite or PostgreSQL, one schema, numbered migrations.

    store = await Store.open("sqlite:///qqbridge.db")   # or a path, or postgresql://...
    if await store.inbox.record_transaction(txn_id, events): ...
    await store.close()

Modules: `store` (the `Store`, which holds one repository per aggregate), the
repositories `inbox`, `users` (users and bridge state), `seq` (the QQ request counter),
`contacts` (puppets, portals, friend requests) and `messages` (the QQ inbound queue and
the outbox) on `repository`'s base; `rows` (what they return), `checks` (what they
refuse), `migrations` (the schema), `database` (the backend interface) with its
`sqlite_backend` and `postgres_backend` (the only code that knows which database it is)
and `connect` (which chooses one), `errors`.
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
