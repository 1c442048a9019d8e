"""Schema migrations: numbered upgrade functions, run in order when the store opens.

    version 0 (empty database) --MIGRATIONS[0]--> 1 --MIGRATIONS[1]--> 2 ...

- `MIGRATIONS[i]` upgrades a version-i database to version i+1.
- Each upgrade runs in its own transaction, holding the migration lock, and records
  its number in `schema_version` in that same transaction: it applies fully or not
  at all, and two bridges starting at once cannot both apply it.
- A database whose version is newer than this code knows is refused with
  `SchemaTooNewError` before anything is written: an old bridge must not run on, or
  "fix", tables it does not understand.

To change the schema: write `async def vN_what_it_adds(db)` below the last one and
append it to `MIGRATIONS`. Never edit a migration that has been released; databases
in the field have already run it. SQL is PostgreSQL-spelled with `$n` placeholders;
the backend layer (`database.py`) rewrites what SQLite spells differently, so one
function serves both. Times are BIGINT Unix milliseconds; UINs and SEQs are BIGINT
(they pass 2^31).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

import structlog

from qqbridge.store.database import Database
from qqbridge.store.errors import MigrationError, SchemaTooNewError

log = structlog.get_logger(__name__)

Migration = Callable[[Database], Awaitable[None]]


async def v1_matrix_side(db: Database) -> None:
    """Appservice transactions and their events, bridge users, bridge state, QQ SEQs."""
    # Transaction ids the homeserver has sent, so a retried transaction is ignored.
    # Kept at least 24 h (Store.prune), across restarts.
    await db.execute(
        """CREATE TABLE appservice_txn (
            txn_id      TEXT PRIMARY KEY,
            received_at BIGINT NOT NULL,
            event_count INTEGER NOT NULL
        )"""
    )
    await db.execute("CREATE INDEX appservice_txn_received_at ON appservice_txn (received_at)")
    # Every event of every transaction, stored before the homeserver gets its 200, and
    # handled from here; inbox_id gives the order of arrival. No foreign key to
    # appservice_txn: the two are pruned on different schedules.
    await db.execute(
        """CREATE TABLE matrix_inbox (
            inbox_id         BIGSERIAL PRIMARY KEY,
            event_id         TEXT NOT NULL UNIQUE,
            txn_id           TEXT NOT NULL,
            room_id          TEXT NOT NULL,
            sender           TEXT NOT NULL,
            type             TEXT NOT NULL,
            state_key        TEXT,
            content          TEXT NOT NULL,
            origin_server_ts BIGINT,
            event_json       TEXT NOT NULL,
            state            TEXT NOT NULL DEFAULT 'pending',
            error            TEXT,
            received_at      BIGINT NOT NULL,
            handled_at       BIGINT
        )"""
    )
    await db.execute("CREATE INDEX matrix_inbox_state ON matrix_inbox (state, inbox_id)")
    # A Matrix user who uses the bridge. UNIQUE qq_uin: two pollers for one QQ account
    # would share its session and take each other's messages.
    await db.execute(
        """CREATE TABLE bridge_user (
            mxid              TEXT PRIMARY KEY,
            control_room_id   TEXT UNIQUE,
            qq_uin            BIGINT UNIQUE,
            password_md5      TEXT,
            login_state       TEXT NOT NULL DEFAULT 'logged_out',
            pending_login_uin BIGINT,
            created_at        BIGINT NOT NULL,
            updated_at        BIGINT NOT NULL
        )"""
    )
    # Small things the bridge wants to remember (key -> text).
    await db.execute(
        """CREATE TABLE bridge_state (
            key        TEXT PRIMARY KEY,
            value      TEXT NOT NULL,
            updated_at BIGINT NOT NULL
        )"""
    )
    # The last SEQ issued to each user's QQ requests, and per purpose the last one
    # issued for it, so a request can be retried with its SEQ after a crash.
    await db.execute(
        """CREATE TABLE qq_seq (
            mxid     TEXT PRIMARY KEY REFERENCES bridge_user (mxid) ON DELETE CASCADE,
            last_seq BIGINT NOT NULL CHECK (last_seq BETWEEN 1 AND 9999999999)
        )"""
    )
    await db.execute(
        """CREATE TABLE qq_seq_issued (
            mxid      TEXT NOT NULL REFERENCES bridge_user (mxid) ON DELETE CASCADE,
            purpose   TEXT NOT NULL,
            seq       BIGINT NOT NULL,
            issued_at BIGINT NOT NULL,
            PRIMARY KEY (mxid, purpose)
        )"""
    )


async def v2_bridging(db: Database) -> None:
    """Puppets, portals, the QQ inbound queue, the outbox to QQ, friend requests."""
    # A QQ account the bridge has met, and what it last set for it on Matrix, so a
    # nickname or status change is passed on once.
    await db.execute(
        """CREATE TABLE puppet (
            uin         BIGINT PRIMARY KEY,
            nick        TEXT,
            displayname TEXT,
            presence    INTEGER,
            updated_at  BIGINT NOT NULL
        )"""
    )
    # One direct room per (bridge user, QQ account); room_id is NULL while the room is
    # being created (the row claims the pair first, so two messages cannot create two
    # rooms) and after the user left it.
    await db.execute(
        """CREATE TABLE portal (
            owner_mxid TEXT NOT NULL REFERENCES bridge_user (mxid) ON DELETE CASCADE,
            uin        BIGINT NOT NULL,
            room_id    TEXT UNIQUE,
            stranger   BOOLEAN NOT NULL DEFAULT false,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (owner_mxid, uin)
        )"""
    )
    # What GetMsgEx returned, stored before it is relayed. (owner, SEQ, position) is
    # unique: a reply fetched again with the same SEQ after a crash is stored once.
    # kind is BIGINT, not INTEGER: whatever MT the server sends must be storable.
    await db.execute(
        """CREATE TABLE qq_inbound (
            inbound_id      BIGSERIAL PRIMARY KEY,
            owner_mxid      TEXT NOT NULL REFERENCES bridge_user (mxid) ON DELETE CASCADE,
            account_uin     BIGINT NOT NULL,
            getmsg_seq      BIGINT NOT NULL,
            idx             INTEGER NOT NULL,
            kind            BIGINT NOT NULL,
            sender_uin      BIGINT NOT NULL,
            content         TEXT NOT NULL,
            state           TEXT NOT NULL DEFAULT 'pending',
            matrix_event_id TEXT,
            error           TEXT,
            fetched_at      BIGINT NOT NULL,
            relayed_at      BIGINT,
            UNIQUE (owner_mxid, getmsg_seq, idx)
        )"""
    )
    await db.execute("CREATE INDEX qq_inbound_state ON qq_inbound (state, inbound_id)")
    await db.execute("CREATE INDEX qq_inbound_owner_state ON qq_inbound (owner_mxid, state, inbound_id)")
    # What Matrix sent, one row per CLTMSG, stored with its SEQ before it is sent, so a
    # resend uses the same SEQ and QQ delivers it once. (event_id, part) is unique: a
    # Matrix event handled again is not queued again.
    await db.execute(
        """CREATE TABLE outbox (
            outbox_id  BIGSERIAL PRIMARY KEY,
            owner_mxid TEXT NOT NULL REFERENCES bridge_user (mxid) ON DELETE CASCADE,
            room_id    TEXT NOT NULL,
            event_id   TEXT NOT NULL,
            part       INTEGER NOT NULL,
            target_uin BIGINT NOT NULL,
            text       TEXT NOT NULL,
            seq        BIGINT NOT NULL,
            state      TEXT NOT NULL DEFAULT 'pending',
            attempts   INTEGER NOT NULL DEFAULT 0,
            error      TEXT,
            created_at BIGINT NOT NULL,
            sent_at    BIGINT,
            UNIQUE (event_id, part)
        )"""
    )
    await db.execute("CREATE INDEX outbox_state ON outbox (state, outbox_id)")
    await db.execute("CREATE INDEX outbox_owner_state ON outbox (owner_mxid, state, outbox_id)")
    # The latest friend request from each QQ account, until and after it is answered;
    # the prompt is the bot's message in the control room that a reaction answers.
    await db.execute(
        """CREATE TABLE friend_request (
            owner_mxid      TEXT NOT NULL REFERENCES bridge_user (mxid) ON DELETE CASCADE,
            from_uin        BIGINT NOT NULL,
            reason          TEXT NOT NULL,
            state           TEXT NOT NULL DEFAULT 'pending',
            prompt_room_id  TEXT,
            prompt_event_id TEXT UNIQUE,
            created_at      BIGINT NOT NULL,
            answered_at     BIGINT,
            PRIMARY KEY (owner_mxid, from_uin)
        )"""
    )


async def v3_password_after(db: Database) -> None:
    """Where a login's password may come from: the inbox id of its `login` command,
    so that only a message stored after it is ever taken for the password (issue 15)."""
    await db.execute("ALTER TABLE bridge_user ADD COLUMN password_after BIGINT")


async def v4_encryption(db: Database) -> None:
    """End-to-bridge encryption (issue 17): each Matrix identity of the bridge that
    encrypts (the bot, a puppet) has one device, whose Olm account, Olm sessions,
    Megolm room keys and the devices it knows are kept here, as vodozemac pickles and
    JSON (matrix/encryption/keystore.py)."""
    await db.execute(
        """CREATE TABLE crypto_account (
            user_id    TEXT PRIMARY KEY,
            device_id  TEXT NOT NULL,
            pickle     TEXT NOT NULL,
            shared     BOOLEAN NOT NULL,
            updated_at BIGINT NOT NULL
        )"""
    )
    await db.execute(
        """CREATE TABLE crypto_olm_session (
            user_id     TEXT NOT NULL,
            sender_key  TEXT NOT NULL,
            session_id  TEXT NOT NULL,
            pickle      TEXT NOT NULL,
            created_at  DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (user_id, sender_key, session_id)
        )"""
    )
    await db.execute(
        """CREATE TABLE crypto_megolm_inbound (
            user_id          TEXT NOT NULL,
            room_id          TEXT NOT NULL,
            sender_key       TEXT NOT NULL,
            session_id       TEXT NOT NULL,
            signing_key      TEXT NOT NULL,
            forwarding_chain TEXT NOT NULL,
            pickle           TEXT NOT NULL,
            PRIMARY KEY (user_id, room_id, sender_key, session_id)
        )"""
    )
    await db.execute(
        """CREATE TABLE crypto_device (
            user_id      TEXT NOT NULL,
            owner        TEXT NOT NULL,
            device_id    TEXT NOT NULL,
            keys         TEXT NOT NULL,
            display_name TEXT,
            deleted      BOOLEAN NOT NULL,
            trust        TEXT NOT NULL,
            PRIMARY KEY (user_id, owner, device_id)
        )"""
    )


async def v5_cross_signing(db: Database) -> None:
    """Each encrypting identity's cross-signing keys (private halves, Ed25519 seeds), so
    a person's client sees its device as signed by its owner."""
    await db.execute(
        """CREATE TABLE crypto_cross_signing (
            user_id      TEXT PRIMARY KEY,
            master       TEXT NOT NULL,
            self_signing TEXT NOT NULL,
            user_signing TEXT NOT NULL,
            created_at   BIGINT NOT NULL
        )"""
    )


MIGRATIONS: list[Migration] = [
    v1_matrix_side,
    v2_bridging,
    v3_password_after,
    v4_encryption,
    v5_cross_signing,
]

LATEST_VERSION = len(MIGRATIONS)


async def upgrade(
    db: Database,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    clock: Callable[[], float] = time.time,
) -> int:
    """Bring `db` to the newest version in `migrations`; return that version.

    Raises `SchemaTooNewError` (database newer than the code) or `MigrationError`.
    """
    known = len(migrations)
    while True:
        async with db.transaction():
            await db.migration_lock()
            # Created inside the first migration's transaction, so a failed first
            # migration leaves a truly empty database.
            await db.execute(
                """CREATE TABLE IF NOT EXISTS schema_version (
                    version    INTEGER PRIMARY KEY,
                    applied_at BIGINT NOT NULL
                )"""
            )
            # Read under the lock: another process may have upgraded meanwhile.
            current = int(await db.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
            if current > known:
                raise SchemaTooNewError(current, known)
            if current == known:
                return current
            migration = migrations[current]
            name = getattr(migration, "__name__", repr(migration))
            try:
                await migration(db)
            except Exception as e:
                raise MigrationError(
                    f"database migration {current + 1} ({name}) failed on {db.url}, nothing of it was applied: {e}"
                ) from e
            await db.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
                current + 1,
                int(clock() * 1000),
            )
        log.info("database migrated", version=current + 1, migration=name, url=db.url)


async def schema_version(db: Database) -> int:
    """The version recorded in `db` (the database must have been opened by the store)."""
    return int(await db.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
