"""`Store`: the bridge's persistent memory, in the bridge's own words.

It owns what the bridge must not forget across a restart: which homeserver
transactions it has already taken (and their events, until handled), who uses the
bridge and how their QQ login stands, small bits of bridge state, and the QQ
request counter (SEQ), all here; the homeserver transactions and the Matrix inbox
(`inbox.py`), puppets, portals and friend requests (`contacts.py`), and the messages
each way until they crossed (`messages.py`), whose functions `Store` exposes as
methods of the same name, so that the bridge holds one object. It knows SQL but not which database: that is `database.py`'s job, and the
schema is `migrations.py`'s.

Every method is one database transaction (or one statement), so a caller never sees,
and a crash never leaves, half of one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from qqbridge.store import contacts, inbox, messages, seq
from qqbridge.store.checks import text as _text
from qqbridge.store.checks import uin as _uin
from qqbridge.store.contacts import UNSET, Unset
from qqbridge.store.database import Database, connect
from qqbridge.store.errors import ConflictError, InvalidValueError, NotFoundError
from qqbridge.store.migrations import upgrade
from qqbridge.store.rows import (
    BridgeUser,
    FriendRequest,
    InboundMessage,
    InboxEvent,
    LoginState,
    OutgoingMessage,
    Portal,
    PruneResult,
    Puppet,
)

_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")
_USER_COLUMNS = (
    "mxid, control_room_id, qq_uin, password_md5, login_state, pending_login_uin, password_after, created_at, updated_at"
)


class Store:
    """Open with `await Store.open(url)`; close with `await store.close()` (or `async with`)."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock

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

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- appservice transactions and the Matrix inbox: inbox.py ----------------------

    async def record_transaction(self, txn_id: str, events: list[dict[str, Any]]) -> bool:
        return await inbox.record_transaction(self.db, self._now_ms(), txn_id, events)

    async def pending_events(self, limit: int = 100, *, after: int = 0) -> list[InboxEvent]:
        return await inbox.pending_events(self.db, limit, after=after)

    async def claim_events(self, limit: int = 100) -> list[InboxEvent]:
        return await inbox.claim_events(self.db, limit)

    async def release_claimed_events(self) -> int:
        return await inbox.release_claimed_events(self.db)

    async def count_pending_events(self) -> int:
        return await inbox.count_pending_events(self.db)

    async def mark_event_handled(self, event_id: str, error: str | None = None) -> None:
        await inbox.mark_event_handled(self.db, self._now_ms(), event_id, error)

    async def forget_event_content(self, event_id: str) -> None:
        await inbox.forget_event_content(self.db, event_id)

    async def prune(self, older_than_seconds: float) -> PruneResult:
        return await inbox.prune(self.db, self._now_ms(), older_than_seconds)

    # -- bridge users ---------------------------------------------------------------

    async def get_user(self, mxid: str) -> BridgeUser | None:
        return await self._user_where("mxid = $1", _text("mxid", mxid))

    async def get_user_by_control_room(self, room_id: str) -> BridgeUser | None:
        return await self._user_where("control_room_id = $1", _text("room_id", room_id))

    async def get_user_by_uin(self, uin: int) -> BridgeUser | None:
        """The user whose logged-in (or last logged-in) QQ account is `uin`."""
        return await self._user_where("qq_uin = $1", _uin(uin))

    async def list_users(self, login_state: str | None = None) -> list[BridgeUser]:
        """Every bridge user, by mxid; only those in `login_state` if given."""
        if login_state is None:
            rows = await self.db.fetch(f"SELECT {_USER_COLUMNS} FROM bridge_user ORDER BY mxid")
        else:
            rows = await self.db.fetch(
                f"SELECT {_USER_COLUMNS} FROM bridge_user WHERE login_state = $1 ORDER BY mxid", str(login_state)
            )
        return [BridgeUser.from_row(row) for row in rows]

    async def upsert_user(self, mxid: str) -> BridgeUser:
        """The user `mxid`, created (logged out, no control room) if new."""
        _text("mxid", mxid)
        async with self.db.transaction():
            await self.db.execute(
                "INSERT INTO bridge_user (mxid, login_state, created_at, updated_at) VALUES ($1, $2, $3, $3)"
                " ON CONFLICT (mxid) DO NOTHING",
                mxid,
                LoginState.LOGGED_OUT.value,
                self._now_ms(),
            )
            return await self._require_user(mxid)

    async def set_control_room(self, mxid: str, room_id: str | None) -> BridgeUser:
        """Make `room_id` the user's control room (creating the user if new); None
        forgets it. `ConflictError` if it is another user's control room."""
        _text("mxid", mxid)
        if room_id is not None:
            _text("room_id", room_id)
        now = self._now_ms()
        async with self.db.transaction():
            if room_id is not None:
                owner = await self.db.fetchval("SELECT mxid FROM bridge_user WHERE control_room_id = $1", room_id)
                if owner is not None and owner != mxid:
                    raise ConflictError(f"room {room_id} is already the control room of {owner}")
            row = await self.db.fetchrow(
                "INSERT INTO bridge_user (mxid, control_room_id, login_state, created_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $4)"
                " ON CONFLICT (mxid) DO UPDATE SET control_room_id = excluded.control_room_id,"
                " updated_at = excluded.updated_at"
                f" RETURNING {_USER_COLUMNS}",
                mxid,
                room_id,
                LoginState.LOGGED_OUT.value,
                now,
            )
        assert row is not None  # an upsert always returns its row
        return BridgeUser.from_row(row)

    async def begin_login(self, mxid: str, uin: int, *, password_after: int = 0) -> BridgeUser:
        """`login <uin>`: wait for the password, which is a message stored in the inbox
        after inbox id `password_after` (the command's own). `ConflictError` if another
        user has bridged that QQ account (said now, before the user types the password)."""
        uin = _uin(uin)
        if not isinstance(password_after, int) or isinstance(password_after, bool) or password_after < 0:
            raise InvalidValueError(f"password_after must be an inbox id (an int >= 0), not {password_after!r}")
        async with self.db.transaction():
            await self._check_uin_free(mxid, uin)
            return await self._update_user(
                mxid,
                "pending_login_uin = $2, login_state = $3, password_after = $4",
                uin,
                LoginState.AWAITING_PASSWORD.value,
                password_after,
            )

    async def complete_login(self, mxid: str, uin: int, password_md5: str) -> BridgeUser:
        """QQ accepted the login: keep the account and the password's MD5 (for quiet
        re-logins), clear the pending login, state 'logged_in'."""
        uin = _uin(uin)
        if not isinstance(password_md5, str) or not _MD5_HEX.fullmatch(password_md5):
            # A guard against ever storing the password itself by mistake.
            raise InvalidValueError("password_md5 must be the MD5 digest as 32 hex digits")
        async with self.db.transaction():
            await self._check_uin_free(mxid, uin)
            return await self._update_user(
                mxid,
                "qq_uin = $2, password_md5 = $3, login_state = $4, pending_login_uin = NULL",
                uin,
                password_md5.lower(),
                LoginState.LOGGED_IN.value,
            )

    async def set_login_state(self, mxid: str, state: str) -> BridgeUser:
        """Record where the login stands (e.g. 'bad_password' when QQ refused the hash)."""
        _text("state", state)
        return await self._update_user(mxid, "login_state = $2", str(state))

    async def abandon_login(self, mxid: str, state: str) -> BridgeUser:
        """A login attempt ended without success (cancelled, refused, interrupted):
        forget the pending QQ number and go back to `state`, where the user stood
        before (a running session stays 'logged_in')."""
        _text("state", state)
        return await self._update_user(mxid, "pending_login_uin = NULL, login_state = $2", str(state))

    async def logout(self, mxid: str) -> BridgeUser:
        """Forget the QQ account, the hash and any pending login; keep the control room
        (and the SEQ counter, which must keep increasing)."""
        return await self._update_user(
            mxid,
            "qq_uin = NULL, password_md5 = NULL, pending_login_uin = NULL, login_state = $2",
            LoginState.LOGGED_OUT.value,
        )

    async def _user_where(self, condition: str, value: Any) -> BridgeUser | None:
        row = await self.db.fetchrow(f"SELECT {_USER_COLUMNS} FROM bridge_user WHERE {condition}", value)
        return None if row is None else BridgeUser.from_row(row)

    async def _require_user(self, mxid: str) -> BridgeUser:
        user = await self.get_user(mxid)
        if user is None:
            raise NotFoundError(f"no bridge user {mxid}")
        return user

    async def _update_user(self, mxid: str, assignments: str, *values: Any) -> BridgeUser:
        """UPDATE the user's row: `assignments` uses $2, $3...; $1 is the mxid."""
        _text("mxid", mxid)
        updated_at = f"${len(values) + 2}"
        row = await self.db.fetchrow(
            f"UPDATE bridge_user SET {assignments}, updated_at = {updated_at} WHERE mxid = $1"
            f" RETURNING {_USER_COLUMNS}",
            mxid,
            *values,
            self._now_ms(),
        )
        if row is None:
            raise NotFoundError(f"no bridge user {mxid}")
        return BridgeUser.from_row(row)

    async def _check_uin_free(self, mxid: str, uin: int) -> None:
        owner = await self.db.fetchval("SELECT mxid FROM bridge_user WHERE qq_uin = $1", uin)
        if owner is not None and owner != mxid:
            raise ConflictError(f"QQ account {uin} is already bridged by {owner}")

    # -- bridge state ---------------------------------------------------------------

    async def get_state(self, key: str) -> str | None:
        _text("key", key)
        value = await self.db.fetchval("SELECT value FROM bridge_state WHERE key = $1", key)
        return None if value is None else str(value)

    async def set_state(self, key: str, value: str | None) -> None:
        """Remember `value` under `key`; None forgets the key."""
        _text("key", key)
        if value is None:
            await self.db.execute("DELETE FROM bridge_state WHERE key = $1", key)
            return
        if not isinstance(value, str):
            raise InvalidValueError(f"state values are text, not {type(value).__name__}")
        await self.db.execute(
            "INSERT INTO bridge_state (key, value, updated_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            key,
            value,
            self._now_ms(),
        )

    # -- QQ request SEQ -------------------------------------------------------------

    async def next_seq(self, mxid: str, purpose: str) -> int:
        """The SEQ for the user's next QQ request, stored before it is returned.

        Strictly increasing per user, 1..9999999999, wrapping to 1. Also remembered
        as the last SEQ for `purpose` (e.g. "GetMsgEx"), so after a crash the request
        can be retried with the same SEQ (`last_seq`), which the server answers
        idempotently.
        """
        return (await self.reserve_seqs(mxid, purpose, 1))[0]

    async def reserve_seqs(self, mxid: str, purpose: str, count: int) -> range:
        """`count` consecutive SEQs for the user's next QQ requests, all stored as
        issued at once (the counter moves past them), so a caller may hand them out
        from memory: one write for many requests. After a crash the unused ones are
        simply skipped."""
        _text("mxid", mxid)
        _text("purpose", purpose)
        async with self.db.transaction():
            await self._require_user(mxid)
            first = await seq.issue(self.db, mxid, purpose, self._now_ms(), count)
        return range(first, first + count)

    async def last_seq(self, mxid: str, purpose: str) -> int | None:
        """The SEQ last issued to the user for `purpose`, or None."""
        return await seq.last(self.db, _text("mxid", mxid), _text("purpose", purpose))

    # -- puppets, portals, friend requests: contacts.py says what each does ---------

    async def get_puppet(self, uin: int) -> Puppet | None:
        return await contacts.get_puppet(self.db, uin)

    async def upsert_puppet(
        self,
        uin: int,
        *,
        nick: str | Unset | None = UNSET,
        displayname: str | Unset | None = UNSET,
        presence: int | Unset | None = UNSET,
    ) -> Puppet:
        return await contacts.upsert_puppet(
            self.db, self._now_ms(), uin, nick=nick, displayname=displayname, presence=presence
        )

    async def get_portal(self, owner_mxid: str, uin: int) -> Portal | None:
        return await contacts.get_portal(self.db, owner_mxid, uin)

    async def get_portal_by_room(self, room_id: str) -> Portal | None:
        return await contacts.get_portal_by_room(self.db, room_id)

    async def list_portals(self, owner_mxid: str) -> list[Portal]:
        return await contacts.list_portals(self.db, owner_mxid)

    async def claim_portal(self, owner_mxid: str, uin: int, *, stranger: bool) -> tuple[Portal, bool]:
        return await contacts.claim_portal(self.db, self._now_ms(), owner_mxid, uin, stranger=stranger)

    async def set_portal_room(self, owner_mxid: str, uin: int, room_id: str) -> Portal:
        return await contacts.set_portal_room(self.db, self._now_ms(), owner_mxid, uin, room_id)

    async def set_portal_stranger(self, owner_mxid: str, uin: int, stranger: bool) -> Portal:
        return await contacts.set_portal_stranger(self.db, self._now_ms(), owner_mxid, uin, stranger)

    async def forget_portal_room(self, owner_mxid: str, uin: int) -> Portal:
        return await contacts.forget_portal_room(self.db, self._now_ms(), owner_mxid, uin)

    async def add_friend_request(self, owner_mxid: str, from_uin: int, reason: str) -> FriendRequest:
        return await contacts.add_friend_request(self.db, self._now_ms(), owner_mxid, from_uin, reason)

    async def get_friend_request(self, owner_mxid: str, from_uin: int) -> FriendRequest | None:
        return await contacts.get_friend_request(self.db, owner_mxid, from_uin)

    async def get_friend_request_by_prompt(self, prompt_event_id: str) -> FriendRequest | None:
        return await contacts.get_friend_request_by_prompt(self.db, prompt_event_id)

    async def pending_friend_requests(self, owner_mxid: str) -> list[FriendRequest]:
        return await contacts.pending_friend_requests(self.db, owner_mxid)

    async def set_friend_request_prompt(
        self, owner_mxid: str, from_uin: int, room_id: str, event_id: str
    ) -> FriendRequest:
        return await contacts.set_friend_request_prompt(self.db, owner_mxid, from_uin, room_id, event_id)

    async def answer_friend_request(self, owner_mxid: str, from_uin: int, state: str) -> FriendRequest:
        return await contacts.answer_friend_request(self.db, self._now_ms(), owner_mxid, from_uin, state)

    # -- messages each way, stored before they cross: messages.py -------------------

    async def store_inbound(
        self, owner_mxid: str, account_uin: int, getmsg_seq: int, events: Sequence[tuple[int, int, str]]
    ) -> int:
        return await messages.store_inbound(self.db, self._now_ms(), owner_mxid, account_uin, getmsg_seq, events)

    async def inbound_batch_stored(self, owner_mxid: str, getmsg_seq: int) -> bool:
        return await messages.inbound_batch_stored(self.db, owner_mxid, getmsg_seq)

    async def pending_inbound(self, owner_mxid: str | None = None, limit: int = 100) -> list[InboundMessage]:
        return await messages.pending_inbound(self.db, owner_mxid, limit)

    async def count_pending_inbound(self, owner_mxid: str | None = None) -> int:
        return await messages.count_pending_inbound(self.db, owner_mxid)

    async def owners_with_pending_inbound(self) -> set[str]:
        """The users with QQ messages stored and not yet shown in Matrix."""
        return await messages.owners_with_pending_inbound(self.db)

    async def mark_inbound_relayed(self, inbound_id: int, matrix_event_id: str | None) -> InboundMessage:
        return await messages.mark_inbound_relayed(self.db, self._now_ms(), inbound_id, matrix_event_id)

    async def mark_inbound_failed(self, inbound_id: int, error: str) -> InboundMessage:
        return await messages.mark_inbound_failed(self.db, inbound_id, error)

    async def enqueue_outgoing(
        self, owner_mxid: str, room_id: str, event_id: str, target_uin: int, parts: Sequence[str]
    ) -> list[OutgoingMessage]:
        return await messages.enqueue_outgoing(
            self.db, self._now_ms(), owner_mxid, room_id, event_id, target_uin, parts
        )

    async def get_outgoing_by_event(self, event_id: str) -> list[OutgoingMessage]:
        return await messages.get_outgoing_by_event(self.db, event_id)

    async def pending_outgoing(self, owner_mxid: str | None = None, limit: int = 100) -> list[OutgoingMessage]:
        return await messages.pending_outgoing(self.db, owner_mxid, limit)

    async def recent_send_times(self, owner_mxid: str, count: int) -> list[int]:
        return await messages.recent_send_times(self.db, owner_mxid, count)

    async def count_pending_outgoing(self, owner_mxid: str | None = None) -> int:
        return await messages.count_pending_outgoing(self.db, owner_mxid)

    async def mark_outgoing_sent(self, outbox_id: int) -> OutgoingMessage:
        return await messages.mark_outgoing_sent(self.db, self._now_ms(), outbox_id)

    async def mark_outgoing_failed(self, outbox_id: int, error: str) -> OutgoingMessage:
        return await messages.mark_outgoing_failed(self.db, outbox_id, error)

    async def note_outgoing_attempt(self, outbox_id: int, error: str | None) -> OutgoingMessage:
        return await messages.note_outgoing_attempt(self.db, outbox_id, error)
