"""Who the bridge knows on QQ and where they meet on Matrix: puppets, portals and
friend requests (tables `puppet`, `portal`, `friend_request`).

Three repositories (`store.puppets`, `store.portals`, `store.friend_requests`); each
method is one statement or one transaction.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from qqbridge.store import checks
from qqbridge.store.errors import ConflictError, InvalidValueError, NotFoundError
from qqbridge.store.repository import Repository
from qqbridge.store.rows import FriendRequest, FriendRequestState, Portal, Puppet


class Unset(Enum):
    """The type of `UNSET`: "leave this field as it is", as opposed to None ("clear it")."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET

# QQ statuses a puppet's Matrix presence is set from (MT=99): online, offline, busy.
PRESENCES = (10, 20, 30)

_PUPPET_COLUMNS = "uin, nick, displayname, presence, updated_at"
_PORTAL_COLUMNS = "owner_mxid, uin, room_id, stranger, created_at, updated_at"
_REQUEST_COLUMNS = "owner_mxid, from_uin, reason, state, prompt_room_id, prompt_event_id, created_at, answered_at"
_ANSWERS = (FriendRequestState.ACCEPTED, FriendRequestState.REJECTED)

# -- puppets --------------------------------------------------------------------------


# -- portals --------------------------------------------------------------------------


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidValueError(f"{name} must be True or False, not {value!r}")
    return value


# -- friend requests ------------------------------------------------------------------


class PuppetStore(Repository):
    """The QQ contacts the bridge has a Matrix puppet for (table `puppet`)."""

    async def get(self, uin: int) -> Puppet | None:
        row = await self._db.fetchrow(f"SELECT {_PUPPET_COLUMNS} FROM puppet WHERE uin = $1", checks.uin(uin))
        return None if row is None else Puppet.from_row(row)

    async def upsert(
        self,
        uin: int,
        *,
        nick: str | Unset | None = UNSET,
        displayname: str | Unset | None = UNSET,
        presence: int | Unset | None = UNSET,
    ) -> Puppet:
        """The puppet `uin`, created if new, with the fields given set (None clears one);
        fields not given keep their value. `updated_at` moves only when a field is given."""
        now_ms = self._now_ms()
        uin = checks.uin(uin)
        changes: dict[str, str | int | None] = {}
        if not isinstance(nick, Unset):
            changes["nick"] = checks.optional_text("nick", nick)
        if not isinstance(displayname, Unset):
            changes["displayname"] = checks.optional_text("displayname", displayname)
        if not isinstance(presence, Unset):
            if presence is not None and (isinstance(presence, bool) or presence not in PRESENCES):
                raise InvalidValueError(f"presence must be a QQ status {PRESENCES} or None, not {presence!r}")
            changes["presence"] = None if presence is None else int(presence)
        columns = ["uin", "updated_at", *changes]
        if changes:
            update = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
        else:
            update = "updated_at = puppet.updated_at"  # a no-op, so that RETURNING gives the row
        row = await self._db.fetchrow(
            f"INSERT INTO puppet ({', '.join(columns)}) VALUES ({', '.join(f'${i}' for i in range(1, len(columns) + 1))})"
            f" ON CONFLICT (uin) DO UPDATE SET {update} RETURNING {_PUPPET_COLUMNS}",
            uin,
            now_ms,
            *changes.values(),
        )
        assert row is not None  # an upsert always returns its row
        return Puppet.from_row(row)


class PortalStore(Repository):
    """Each user's direct room with a QQ contact (table `portal`)."""

    async def get(self, owner_mxid: str, uin: int) -> Portal | None:
        return await self._where("owner_mxid = $1 AND uin = $2", checks.text("owner_mxid", owner_mxid), checks.uin(uin))

    async def by_room(self, room_id: str) -> Portal | None:
        return await self._where("room_id = $1", checks.text("room_id", room_id))

    async def of_owner(self, owner_mxid: str) -> list[Portal]:
        """The user's portals, by QQ number."""
        rows = await self._db.fetch(
            f"SELECT {_PORTAL_COLUMNS} FROM portal WHERE owner_mxid = $1 ORDER BY uin",
            checks.text("owner_mxid", owner_mxid),
        )
        return [Portal.from_row(row) for row in rows]

    async def claim(self, owner_mxid: str, uin: int, *, stranger: bool) -> tuple[Portal, bool]:
        """The portal of (`owner_mxid`, `uin`), and whether this call created it (without a
        room: the caller that gets True creates the room, then `set_room`). An
        existing portal is returned as it is. `NotFoundError` for an unknown user."""
        now_ms = self._now_ms()
        checks.text("owner_mxid", owner_mxid)
        uin = checks.uin(uin)
        _bool("stranger", stranger)
        async with self._db.transaction():
            await checks.user_exists(self._db, owner_mxid)
            row = await self._db.fetchrow(
                "INSERT INTO portal (owner_mxid, uin, stranger, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)"
                f" ON CONFLICT (owner_mxid, uin) DO NOTHING RETURNING {_PORTAL_COLUMNS}",
                owner_mxid,
                uin,
                stranger,
                now_ms,
            )
            if row is not None:
                return Portal.from_row(row), True
            existing = await self._where("owner_mxid = $1 AND uin = $2", owner_mxid, uin)
        assert existing is not None  # the insert found it there
        return existing, False

    async def set_room(self, owner_mxid: str, uin: int, room_id: str) -> Portal:
        """The portal's room is `room_id`. `ConflictError` if that room is another portal
        or a control room; `NotFoundError` if there is no such portal."""
        checks.text("room_id", room_id)
        async with self._db.transaction():
            other = await self._db.fetchrow("SELECT owner_mxid, uin FROM portal WHERE room_id = $1", room_id)
            if other is not None and (other["owner_mxid"], other["uin"]) != (owner_mxid, uin):
                raise ConflictError(f"room {room_id} is already the portal of {other['owner_mxid']} with {other['uin']}")
            control = await self._db.fetchval("SELECT mxid FROM bridge_user WHERE control_room_id = $1", room_id)
            if control is not None:
                raise ConflictError(f"room {room_id} is the control room of {control}")
            return await self._update(owner_mxid, uin, "room_id = $4", room_id)

    async def set_stranger(self, owner_mxid: str, uin: int, stranger: bool) -> Portal:
        """Whether the contact is a stranger (not in the owner's friend list)."""
        return await self._update(owner_mxid, uin, "stranger = $4", _bool("stranger", stranger))

    async def forget_room(self, owner_mxid: str, uin: int) -> Portal:
        """The portal has no room any more (the user left it); the next message or `open`
        makes a new one."""
        return await self._update(owner_mxid, uin, "room_id = NULL")

    async def _where(self, condition: str, *values: object) -> Portal | None:
        row = await self._db.fetchrow(f"SELECT {_PORTAL_COLUMNS} FROM portal WHERE {condition}", *values)
        return None if row is None else Portal.from_row(row)

    async def _update(
        self, owner_mxid: str, uin: int, assignments: str, *values: object
    ) -> Portal:
        """UPDATE one portal: `assignments` uses $4...; $1 owner, $2 uin, $3 the time."""
        now_ms = self._now_ms()
        row = await self._db.fetchrow(
            f"UPDATE portal SET {assignments}, updated_at = $3 WHERE owner_mxid = $1 AND uin = $2"
            f" RETURNING {_PORTAL_COLUMNS}",
            checks.text("owner_mxid", owner_mxid),
            checks.uin(uin),
            now_ms,
            *values,
        )
        if row is None:
            raise NotFoundError(f"no portal of {owner_mxid} with {uin}")
        return Portal.from_row(row)


class FriendRequestStore(Repository):
    """QQ friend requests to a user, with the prompt that shows each (table `friend_request`)."""

    async def add(self, owner_mxid: str, from_uin: int, reason: str) -> FriendRequest:
        """A friend request from `from_uin` (MT=2), pending. A new request from someone who
        asked before replaces the old one, answered or not: pending again, the new reason,
        no prompt yet. `NotFoundError` for an unknown user."""
        now_ms = self._now_ms()
        checks.text("owner_mxid", owner_mxid)
        from_uin = checks.uin(from_uin)
        if not isinstance(reason, str):
            raise InvalidValueError(f"reason must be a string, not {reason!r}")
        checks.storable("reason", reason)
        async with self._db.transaction():
            await checks.user_exists(self._db, owner_mxid)
            row = await self._db.fetchrow(
                "INSERT INTO friend_request (owner_mxid, from_uin, reason, state, created_at) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (owner_mxid, from_uin) DO UPDATE SET reason = excluded.reason, state = excluded.state,"
                " prompt_room_id = NULL, prompt_event_id = NULL, created_at = excluded.created_at, answered_at = NULL"
                f" RETURNING {_REQUEST_COLUMNS}",
                owner_mxid,
                from_uin,
                reason,
                FriendRequestState.PENDING.value,
                now_ms,
            )
        assert row is not None  # an upsert always returns its row
        return FriendRequest.from_row(row)

    async def get(self, owner_mxid: str, from_uin: int) -> FriendRequest | None:
        return await self._where("owner_mxid = $1 AND from_uin = $2", checks.text("owner_mxid", owner_mxid), checks.uin(from_uin))

    async def by_prompt(self, prompt_event_id: str) -> FriendRequest | None:
        """The request a prompt in the control room asks about (for a ✅/❌ reaction)."""
        return await self._where("prompt_event_id = $1", checks.text("prompt_event_id", prompt_event_id))

    async def pending(self, owner_mxid: str) -> list[FriendRequest]:
        """The user's unanswered requests, oldest first."""
        rows = await self._db.fetch(
            f"SELECT {_REQUEST_COLUMNS} FROM friend_request WHERE owner_mxid = $1 AND state = $2"
            " ORDER BY created_at, from_uin",
            checks.text("owner_mxid", owner_mxid),
            FriendRequestState.PENDING.value,
        )
        return [FriendRequest.from_row(row) for row in rows]

    async def set_prompt(
        self, owner_mxid: str, from_uin: int, room_id: str, event_id: str
    ) -> FriendRequest:
        """The bot asked about the request with message `event_id` in `room_id`.
        `ConflictError` if that event is another request's prompt."""
        checks.text("owner_mxid", owner_mxid)
        from_uin = checks.uin(from_uin)
        checks.text("room_id", room_id)
        checks.text("event_id", event_id)
        async with self._db.transaction():
            other = await self._where("prompt_event_id = $1", event_id)
            if other is not None and (other.owner_mxid, other.from_uin) != (owner_mxid, from_uin):
                raise ConflictError(f"event {event_id} is already the prompt for the request from {other.from_uin}")
            row = await self._db.fetchrow(
                "UPDATE friend_request SET prompt_room_id = $3, prompt_event_id = $4 WHERE owner_mxid = $1"
                f" AND from_uin = $2 RETURNING {_REQUEST_COLUMNS}",
                owner_mxid,
                from_uin,
                room_id,
                event_id,
            )
        if row is None:
            raise NotFoundError(f"no friend request from {from_uin} to {owner_mxid}")
        return FriendRequest.from_row(row)

    async def answer(self, owner_mxid: str, from_uin: int, state: str) -> FriendRequest:
        """Record the answer, 'accepted' or 'rejected', to a pending request.

        `ConflictError` if it was answered already (an `accept` and a ✅ reaction racing:
        only the first counts); `NotFoundError` if there is no request from `from_uin`."""
        now_ms = self._now_ms()
        checks.text("owner_mxid", owner_mxid)
        from_uin = checks.uin(from_uin)
        if state not in _ANSWERS:
            raise InvalidValueError(f"a friend request is answered 'accepted' or 'rejected', not {state!r}")
        async with self._db.transaction():
            row = await self._db.fetchrow(
                "UPDATE friend_request SET state = $3, answered_at = $4 WHERE owner_mxid = $1 AND from_uin = $2"
                f" AND state = $5 RETURNING {_REQUEST_COLUMNS}",
                owner_mxid,
                from_uin,
                str(state),
                now_ms,
                FriendRequestState.PENDING.value,
            )
            if row is not None:
                return FriendRequest.from_row(row)
            current = await self.get(owner_mxid, from_uin)
        if current is None:
            raise NotFoundError(f"no friend request from {from_uin} to {owner_mxid}")
        raise ConflictError(f"the friend request from {from_uin} was already {current.state}")

    async def _where(self, condition: str, *values: object) -> FriendRequest | None:
        row = await self._db.fetchrow(f"SELECT {_REQUEST_COLUMNS} FROM friend_request WHERE {condition}", *values)
        return None if row is None else FriendRequest.from_row(row)
