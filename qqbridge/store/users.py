"""Who uses the bridge and how their QQ login stands (table `bridge_user`), and small
bits of bridge state by key (table `bridge_state`).

    logged_out ──begin_login──▶ awaiting_password ──complete_login──▶ logged_in
         ▲                          └──abandon_login──▶ (where they stood)  │
         └──────────────────────── logout ◀──────────────────────────────────┘
"""

from __future__ import annotations

import re
from typing import Any

from qqbridge.store.checks import text as _text
from qqbridge.store.checks import uin as _uin
from qqbridge.store.errors import ConflictError, InvalidValueError, NotFoundError
from qqbridge.store.repository import Repository
from qqbridge.store.rows import BridgeUser, LoginState

_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")
_USER_COLUMNS = (
    "mxid, control_room_id, qq_uin, password_md5, login_state, pending_login_uin, password_after, created_at, updated_at"
)


class UserStore(Repository):
    """The bridge's users, each with their control room and QQ login."""

    async def get(self, mxid: str) -> BridgeUser | None:
        return await self._where("mxid = $1", _text("mxid", mxid))

    async def by_control_room(self, room_id: str) -> BridgeUser | None:
        return await self._where("control_room_id = $1", _text("room_id", room_id))

    async def by_uin(self, uin: int) -> BridgeUser | None:
        """The user whose logged-in (or last logged-in) QQ account is `uin`."""
        return await self._where("qq_uin = $1", _uin(uin))

    async def every(self, login_state: str | None = None) -> list[BridgeUser]:
        """Every bridge user, by mxid; only those in `login_state` if given."""
        if login_state is None:
            rows = await self._db.fetch(f"SELECT {_USER_COLUMNS} FROM bridge_user ORDER BY mxid")
        else:
            rows = await self._db.fetch(
                f"SELECT {_USER_COLUMNS} FROM bridge_user WHERE login_state = $1 ORDER BY mxid", str(login_state)
            )
        return [BridgeUser.from_row(row) for row in rows]

    async def upsert(self, mxid: str) -> BridgeUser:
        """The user `mxid`, created (logged out, no control room) if new."""
        _text("mxid", mxid)
        async with self._db.transaction():
            await self._db.execute(
                "INSERT INTO bridge_user (mxid, login_state, created_at, updated_at) VALUES ($1, $2, $3, $3)"
                " ON CONFLICT (mxid) DO NOTHING",
                mxid,
                LoginState.LOGGED_OUT.value,
                self._now_ms(),
            )
            return await self._require(mxid)

    async def set_control_room(self, mxid: str, room_id: str | None) -> BridgeUser:
        """Make `room_id` the user's control room (creating the user if new); None
        forgets it. `ConflictError` if it is another user's control room."""
        _text("mxid", mxid)
        if room_id is not None:
            _text("room_id", room_id)
        now = self._now_ms()
        async with self._db.transaction():
            if room_id is not None:
                owner = await self._db.fetchval("SELECT mxid FROM bridge_user WHERE control_room_id = $1", room_id)
                if owner is not None and owner != mxid:
                    raise ConflictError(f"room {room_id} is already the control room of {owner}")
            row = await self._db.fetchrow(
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
        async with self._db.transaction():
            await self._check_uin_free(mxid, uin)
            return await self._update(
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
        async with self._db.transaction():
            await self._check_uin_free(mxid, uin)
            return await self._update(
                mxid,
                "qq_uin = $2, password_md5 = $3, login_state = $4, pending_login_uin = NULL",
                uin,
                password_md5.lower(),
                LoginState.LOGGED_IN.value,
            )

    async def set_login_state(self, mxid: str, state: str) -> BridgeUser:
        """Record where the login stands (e.g. 'bad_password' when QQ refused the hash)."""
        _text("state", state)
        return await self._update(mxid, "login_state = $2", str(state))

    async def abandon_login(self, mxid: str, state: str) -> BridgeUser:
        """A login attempt ended without success (cancelled, refused, interrupted):
        forget the pending QQ number and go back to `state`, where the user stood
        before (a running session stays 'logged_in')."""
        _text("state", state)
        return await self._update(mxid, "pending_login_uin = NULL, login_state = $2", str(state))

    async def logout(self, mxid: str) -> BridgeUser:
        """Forget the QQ account, the hash and any pending login; keep the control room
        (and the SEQ counter, which must keep increasing)."""
        return await self._update(
            mxid,
            "qq_uin = NULL, password_md5 = NULL, pending_login_uin = NULL, login_state = $2",
            LoginState.LOGGED_OUT.value,
        )

    async def _where(self, condition: str, value: Any) -> BridgeUser | None:
        row = await self._db.fetchrow(f"SELECT {_USER_COLUMNS} FROM bridge_user WHERE {condition}", value)
        return None if row is None else BridgeUser.from_row(row)

    async def _require(self, mxid: str) -> BridgeUser:
        user = await self.get(mxid)
        if user is None:
            raise NotFoundError(f"no bridge user {mxid}")
        return user

    async def _update(self, mxid: str, assignments: str, *values: Any) -> BridgeUser:
        """UPDATE the user's row: `assignments` uses $2, $3...; $1 is the mxid."""
        _text("mxid", mxid)
        updated_at = f"${len(values) + 2}"
        row = await self._db.fetchrow(
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
        owner = await self._db.fetchval("SELECT mxid FROM bridge_user WHERE qq_uin = $1", uin)
        if owner is not None and owner != mxid:
            raise ConflictError(f"QQ account {uin} is already bridged by {owner}")


class BridgeStateStore(Repository):
    """Small bits of bridge state, text under a key (a poller's last GetMsgEx SEQ, ...)."""

    async def get(self, key: str) -> str | None:
        _text("key", key)
        value = await self._db.fetchval("SELECT value FROM bridge_state WHERE key = $1", key)
        return None if value is None else str(value)

    async def set(self, key: str, value: str | None) -> None:
        """Remember `value` under `key`; None forgets the key."""
        _text("key", key)
        if value is None:
            await self._db.execute("DELETE FROM bridge_state WHERE key = $1", key)
            return
        if not isinstance(value, str):
            raise InvalidValueError(f"state values are text, not {type(value).__name__}")
        await self._db.execute(
            "INSERT INTO bridge_state (key, value, updated_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            key,
            value,
            self._now_ms(),
        )
