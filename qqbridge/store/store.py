"""`Store`: the bridge's persistent memory, in the bridge's own words.

It owns what the bridge must not forget across a restart: which homeserver
transactions it has already taken (and their events, until handled), who uses the
bridge and how their QQ login stands, small bits of bridge state, and the QQ
request counter (SEQ). It knows SQL but not which database: that is `database.py`'s
job, and the schema is `migrations.py`'s.

Every method is one database transaction (or one statement), so a caller never sees,
and a crash never leaves, half of one.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from qqbridge.store.database import Database, connect
from qqbridge.store.errors import ConflictError, InvalidValueError, NotFoundError
from qqbridge.store.migrations import upgrade
from qqbridge.store.rows import BridgeUser, InboxEvent, InboxState, LoginState, PruneResult

# SEQ is 1 to 10 decimal digits (PROTOCOL.md section 2); the counter wraps to 1.
SEQ_MAX = 9_999_999_999
# QQ numbers the protocol accepts (PROTOCOL.md section 3, RES=5).
UIN_MIN, UIN_MAX = 10_000, 4_294_967_295
# The homeserver may retry a transaction for a long while; its id must outlive that.
MIN_TXN_RETENTION_SECONDS = 24 * 60 * 60

_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")
_USER_COLUMNS = "mxid, control_room_id, qq_uin, password_md5, login_state, pending_login_uin, created_at, updated_at"
_INBOX_COLUMNS = (
    "inbox_id, event_id, txn_id, room_id, sender, type, state_key, content, origin_server_ts,"
    " event_json, state, error, received_at, handled_at"
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

    # -- appservice transactions and the Matrix inbox -------------------------------

    async def record_transaction(self, txn_id: str, events: list[dict[str, Any]]) -> bool:
        """Store a homeserver transaction's events, once per transaction id.

        Returns False, storing nothing, when `txn_id` was recorded before. Otherwise
        stores the id and every event (state 'pending') and returns True. All or
        nothing: if any event cannot be stored, neither is the id, so the
        homeserver's retry is taken afresh. An event id already in the inbox (from
        another transaction) is skipped, not an error.
        """
        _text("txn_id", txn_id)
        if not isinstance(events, list):
            raise InvalidValueError(f"transaction {txn_id}: events must be a list")
        rows = [_inbox_values(txn_id, index, event) for index, event in enumerate(events)]
        now = self._now_ms()
        async with self.db.transaction():
            recorded = await self.db.fetchval(
                "INSERT INTO appservice_txn (txn_id, received_at, event_count) VALUES ($1, $2, $3)"
                " ON CONFLICT (txn_id) DO NOTHING RETURNING txn_id",
                txn_id,
                now,
                len(events),
            )
            if recorded is None:
                return False
            for values in rows:
                await self.db.execute(
                    "INSERT INTO matrix_inbox (event_id, txn_id, room_id, sender, type, state_key, content,"
                    " origin_server_ts, event_json, state, received_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                    " ON CONFLICT (event_id) DO NOTHING",
                    *values,
                    InboxState.PENDING.value,
                    now,
                )
        return True

    async def pending_events(self, limit: int = 100) -> list[InboxEvent]:
        """Events not yet handled, oldest first."""
        if not isinstance(limit, int) or limit < 1:
            raise InvalidValueError(f"limit must be a positive integer, not {limit!r}")
        rows = await self.db.fetch(
            f"SELECT {_INBOX_COLUMNS} FROM matrix_inbox WHERE state = $1 ORDER BY inbox_id LIMIT $2",
            InboxState.PENDING.value,
            limit,
        )
        return [InboxEvent.from_row(row) for row in rows]

    async def count_pending_events(self) -> int:
        """How many events wait to be handled (for `ping` and the metrics)."""
        return int(
            await self.db.fetchval("SELECT COUNT(*) FROM matrix_inbox WHERE state = $1", InboxState.PENDING.value)
        )

    async def mark_event_handled(self, event_id: str, error: str | None = None) -> None:
        """The event has been handled: 'handled', or 'failed' with `error` saying why."""
        _text("event_id", event_id)
        state = InboxState.HANDLED if error is None else InboxState.FAILED
        changed = await self.db.execute(
            "UPDATE matrix_inbox SET state = $2, error = $3, handled_at = $4 WHERE event_id = $1",
            event_id,
            state.value,
            None if error is None else _printable(str(error)),
            self._now_ms(),
        )
        if not changed:
            raise NotFoundError(f"no event {event_id} in the inbox")

    async def forget_event_content(self, event_id: str) -> None:
        """Blank what an inbox event said, as a Matrix redaction does: its content, and
        `unsigned` (which may repeat it). For the password message after `login`,
        whose text must not stay on disk. An event not in the inbox is nothing to do."""
        _text("event_id", event_id)
        async with self.db.transaction():
            raw = await self.db.fetchval("SELECT event_json FROM matrix_inbox WHERE event_id = $1", event_id)
            if raw is None:
                return
            event = json.loads(raw)
            event["content"] = {}
            event.pop("unsigned", None)
            await self.db.execute(
                "UPDATE matrix_inbox SET content = $2, event_json = $3 WHERE event_id = $1",
                event_id,
                "{}",
                _json(event),
            )
        await self.db.purge_freed_data()

    async def prune(self, older_than_seconds: float) -> PruneResult:
        """Forget handled events older than that, and transaction ids older than that
        or 24 hours, whichever is longer. Pending events are never pruned."""
        if not isinstance(older_than_seconds, (int, float)) or older_than_seconds < 0:
            raise InvalidValueError(f"older_than_seconds must be >= 0, not {older_than_seconds!r}")
        now = self._now_ms()
        txn_age = max(older_than_seconds, MIN_TXN_RETENTION_SECONDS)
        async with self.db.transaction():
            events = await self.db.execute(
                "DELETE FROM matrix_inbox WHERE state <> $1 AND handled_at < $2",
                InboxState.PENDING.value,
                now - int(older_than_seconds * 1000),
            )
            txns = await self.db.execute("DELETE FROM appservice_txn WHERE received_at < $1", now - int(txn_age * 1000))
        return PruneResult(events=events, transactions=txns)

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

    async def begin_login(self, mxid: str, uin: int) -> BridgeUser:
        """`login <uin>`: wait for the password. `ConflictError` if another user has
        bridged that QQ account (said now, before the user types the password)."""
        uin = _uin(uin)
        async with self.db.transaction():
            await self._check_uin_free(mxid, uin)
            return await self._update_user(
                mxid, "pending_login_uin = $2, login_state = $3", uin, LoginState.AWAITING_PASSWORD.value
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
        _text("mxid", mxid)
        _text("purpose", purpose)
        # A new counter starts from the clock (tenths of a second, modulo the range),
        # not from 1: a counter recreated after a database reset, or another Matrix
        # user taking over the same QQ account, then does not reuse a SEQ the server
        # may still remember (it does for 10 minutes).
        now = self._clock()
        seed = int(now * 10) % SEQ_MAX + 1
        async with self.db.transaction():
            await self._require_user(mxid)
            seq = await self.db.fetchval(
                "INSERT INTO qq_seq (mxid, last_seq) VALUES ($1, $2) ON CONFLICT (mxid) DO UPDATE"
                " SET last_seq = CASE WHEN qq_seq.last_seq >= $3 THEN 1 ELSE qq_seq.last_seq + 1 END"
                " RETURNING last_seq",
                mxid,
                seed,
                SEQ_MAX,
            )
            await self.db.execute(
                "INSERT INTO qq_seq_issued (mxid, purpose, seq, issued_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (mxid, purpose) DO UPDATE SET seq = excluded.seq, issued_at = excluded.issued_at",
                mxid,
                purpose,
                seq,
                int(now * 1000),
            )
        return int(seq)

    async def last_seq(self, mxid: str, purpose: str) -> int | None:
        """The SEQ last issued to the user for `purpose`, or None."""
        _text("mxid", mxid)
        _text("purpose", purpose)
        seq = await self.db.fetchval("SELECT seq FROM qq_seq_issued WHERE mxid = $1 AND purpose = $2", mxid, purpose)
        return None if seq is None else int(seq)


def _text(name: str, value: Any) -> str:
    """Check a required text value: a non-empty str that both databases can store."""
    if not isinstance(value, str) or not value:
        raise InvalidValueError(f"{name} must be a non-empty string, not {value!r}")
    _storable(name, value)
    return value


def _storable(name: str, value: str) -> None:
    # PostgreSQL text cannot hold NUL, and neither driver can encode a lone surrogate;
    # refusing both here makes the two backends agree.
    if "\x00" in value:
        raise InvalidValueError(f"{name} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValueError(f"{name} is not valid Unicode text") from None


def _printable(text: str) -> str:
    """Free text (an error message) made storable on both backends, not refused."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _uin(uin: Any) -> int:
    if isinstance(uin, bool) or not isinstance(uin, int) or not UIN_MIN <= uin <= UIN_MAX:
        raise InvalidValueError(f"{uin!r} is not a QQ number ({UIN_MIN} to {UIN_MAX})")
    return uin


def _inbox_values(txn_id: str, index: int, event: Any) -> tuple[Any, ...]:
    """The inbox columns for one event, or `InvalidValueError` saying what is wrong."""
    where = f"event {index} of transaction {txn_id}"
    if not isinstance(event, Mapping):
        raise InvalidValueError(f"{where} is not a JSON object")
    event_id, room_id, sender, type_ = (
        _text(f"{where}: {name}", event.get(name)) for name in ("event_id", "room_id", "sender", "type")
    )
    state_key = event.get("state_key")
    if state_key is not None:
        if not isinstance(state_key, str):
            raise InvalidValueError(f"{where}: state_key must be a string")
        _storable(f"{where}: state_key", state_key)
    content = event.get("content", {})
    if not isinstance(content, Mapping):
        raise InvalidValueError(f"{where}: content must be a JSON object")
    ts = event.get("origin_server_ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int) or not -(2**63) <= ts < 2**63):
        raise InvalidValueError(f"{where}: origin_server_ts must be a 64-bit integer")
    try:
        content_json, event_json = _json(content), _json(event)
    except (TypeError, ValueError) as e:
        raise InvalidValueError(f"{where} is not storable as JSON: {e}") from e
    return (event_id, txn_id, room_id, sender, type_, state_key, content_json, ts, event_json)


def _json(value: Any) -> str:
    # ASCII JSON: storable whatever odd characters (NUL, lone surrogates) the strings
    # hold; no NaN, which is not JSON.
    return json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
