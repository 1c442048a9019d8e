"""`Store`: the bridge's persistent memory, one repository per aggregate.

    Store.open(url) ──migrates──▶ Store
        .inbox            InboxStore          homeserver transactions, the Matrix inbox (inbox.py)
        .users            UserStore           who uses the bridge, their QQ login (users.py)
        .state            BridgeStateStore    small bits of state by key (users.py)
        .seqs             SeqStore            the QQ request counter (seq.py)
        .puppets          PuppetStore         QQ contacts with a Matrix puppet (contacts.py)
        .portals          PortalStore         a user's room with a contact (contacts.py)
        .friend_requests  FriendRequestStore  requests and their prompts (contacts.py)
        .inbound          InboundStore        QQ → Matrix until relayed (messages.py)
        .outbox           OutboxStore         Matrix → QQ until QQ took it (messages.py)
        .crypto           CryptoStore         the encrypting devices' keys (crypto.py)

A part of the bridge receives the repositories it uses. Each knows SQL but not which
database: that is the backend's (`connect.py` chooses it), and the schema is
`migrations.py`'s. Every method is one database transaction (or one statement), so a
caller never sees, and a crash never leaves, half of one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from qqbridge.store.connect import connect
from qqbridge.store.contacts import FriendRequestStore, PortalStore, PuppetStore
from qqbridge.store.crypto import CryptoStore
from qqbridge.store.database import Database
from qqbridge.store.errors import InvalidValueError
from qqbridge.store.inbox import MIN_TXN_RETENTION_SECONDS, InboxStore
from qqbridge.store.messages import InboundStore, OutboxStore
from qqbridge.store.migrations import upgrade
from qqbridge.store.rows import InboxState, PruneResult
from qqbridge.store.seq import SeqStore
from qqbridge.store.users import BridgeStateStore, UserStore


class Store:
    """Open with `await Store.open(url)`; close with `await store.close()` (or `async with`)."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock
        self.inbox = InboxStore(db, clock)
        self.users = UserStore(db, clock)
        self.state = BridgeStateStore(db, clock)
        self.seqs = SeqStore(db, clock)
        self.puppets = PuppetStore(db, clock)
        self.portals = PortalStore(db, clock)
        self.friend_requests = FriendRequestStore(db, clock)
        self.inbound = InboundStore(db, clock)
        self.outbox = OutboxStore(db, clock)
        self.crypto = CryptoStore(db, clock)

    @classmethod
    async def open(cls, url: str, *, clock: Callable[[], float] = time.time, pool_size: int = 10) -> Store:
        """Open (creating if need be) and migrate the database at `url`.

        `url`: a file path or `sqlite:///path` for SQLite, `postgresql://...` for
        PostgreSQL. Raises `StoreConnectionError`, `SchemaTooNewError`, `MigrationError`.
        """
        db = await connect(url, pool_size=pool_size)
        try:
            await upgrade(db, clock=clock)
        except BaseException:
            await db.close()
            raise
        return cls(db, clock=clock)

    async def close(self) -> None:
        await self.db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def prune(self, older_than_seconds: float) -> PruneResult:
        """Forget handled events, relayed QQ events and sent outbox pieces older than
        that, and transaction ids older than that or 24 hours, whichever is longer.
        Nothing still pending (or being handled) is ever pruned."""
        now = int(self._clock() * 1000)
        db = self.db
        if not isinstance(older_than_seconds, (int, float)) or older_than_seconds < 0:
            raise InvalidValueError(f"older_than_seconds must be >= 0, not {older_than_seconds!r}")
        txn_age = max(older_than_seconds, MIN_TXN_RETENTION_SECONDS)
        async with db.transaction():
            events = await db.execute(
                "DELETE FROM matrix_inbox WHERE state IN ($1, $2) AND handled_at < $3",
                InboxState.HANDLED.value,
                InboxState.FAILED.value,
                now - int(older_than_seconds * 1000),
            )
            txns = await db.execute("DELETE FROM appservice_txn WHERE received_at < $1", now - int(txn_age * 1000))
            cutoff = now - int(older_than_seconds * 1000)
            inbound = await db.execute("DELETE FROM qq_inbound WHERE state <> 'pending' AND fetched_at < $1", cutoff)
            outgoing = await db.execute("DELETE FROM outbox WHERE state <> 'pending' AND created_at < $1", cutoff)
        return PruneResult(events=events, transactions=txns, inbound=inbound, outgoing=outgoing)