"""Portals: one direct room per (Matrix user, QQ contact), where the contact's puppet
and the user chat. Opened on the first message either way or by `open <uin>`: the
bot creates the room (named after the contact), the puppet joins and invites the user
as to a direct chat; the bot stays for `!qq` commands. A stranger's portal says so in
its topic and in a first notice.

The owner is invited once, always with `is_direct: true`: a second invite replaces the
first, and one without `is_direct` makes clients list the portal outside their direct
chats. So `open` on a portal the owner is in, or invited to, invites no one; only an
owner who is neither (left, or turned the invite down, unnoticed) is invited back.

The puppet holds only the power it needs (PUPPET_POWER: messages, inviting, the room's
name and avatar), never enough to notify the whole room (`@room` takes 100, which only
the owner has). That is why the bot creates the room: in room version 12 a room's
creator has unlimited power, and a puppet says whatever QQ tells it to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import structlog

from qqbridge.bridge.contacts.puppets import Puppets
from qqbridge.bridge.notices import notice_content, txn_for
from qqbridge.bridge.ports import Matrix
from qqbridge.matrix.api import MatrixError
from qqbridge.store import Store

log = structlog.get_logger(__name__)

PUPPET_POWER = 50  # state_default, invite and m.room.name/avatar are 50; notifications.room is 100


MEGOLM = {"algorithm": "m.megolm.v1.aes-sha2"}


class Portals:
    """`encrypt(owner)`: whether the owner's new portals are created encrypted (None: never)."""

    def __init__(
        self, store: Store, matrix: Matrix, puppets: Puppets, *, encrypt: Callable[[str], Awaitable[bool]] | None = None
    ) -> None:
        self.store, self.matrix, self.puppets = store, matrix, puppets
        self._encrypt = encrypt
        self._creating: dict[tuple[str, int], asyncio.Lock] = {}

    async def room_for(self, owner: str, uin: int, *, stranger: bool) -> str:
        """The portal's room, created now if it has none."""
        lock = self._creating.setdefault((owner, uin), asyncio.Lock())
        async with lock:  # two events for a new contact must not create two rooms
            portal, _ = await self.store.portals.claim(owner, uin, stranger=stranger)
            if portal.room_id:
                if portal.stranger and not stranger:
                    await self.store.portals.set_stranger(owner, uin, False)
                return portal.room_id
            room_id = await self._create(owner, uin, stranger)
            await self.store.portals.set_room(owner, uin, room_id)
            return room_id

    async def open(self, owner: str, uin: int, *, stranger: bool) -> str:
        """`open <uin>`: the portal's room, created if need be, with the owner in it or
        invited (once, as to a direct chat)."""
        room_id = await self.room_for(owner, uin, stranger=stranger)
        puppet = self.puppets.mxid(uin)
        membership = await self._membership(room_id, owner, puppet)
        if membership not in ("invite", "join"):
            try:
                await self._invite_owner(room_id, owner, puppet)
            except MatrixError as exc:  # banned, or the puppet is gone: the link still says where
                log.warning("could not invite the owner back to a portal", room_id=room_id, owner=owner,
                            membership=membership, error=str(exc))  # fmt: skip
        return room_id

    async def owner_left(self, room_id: str, mxid: str) -> None:
        """The owner left: the puppet and the bot leave too, and the next message either
        way opens a fresh portal."""
        portal = await self.store.portals.by_room(room_id)
        if portal is None or portal.owner_mxid != mxid:
            return
        await self.store.portals.forget_room(mxid, portal.uin)
        for member in (self.puppets.mxid(portal.uin), self.matrix.bot_mxid):
            try:
                await self.matrix.leave(room_id, user_id=member)
            except MatrixError as exc:
                log.info("could not leave a closed portal", room_id=room_id, error=str(exc))

    async def _membership(self, room_id: str, user: str, puppet: str) -> str | None:
        """The user's membership in the room as the puppet sees it (None: none yet, or unknown)."""
        path = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/state/m.room.member/{quote(user, safe='')}"
        try:
            request = self.matrix.request
            answer = await request("GET", path, user_id=puppet, what=f"membership in {room_id}")
        except MatrixError as exc:
            if exc.status != 404:
                log.info("could not read a portal member", room_id=room_id, user=user, error=str(exc))
            return None
        membership = answer.get("membership")
        return membership if isinstance(membership, str) else None

    async def _invite_owner(self, room_id: str, owner: str, puppet: str) -> None:
        """The puppet invites the owner, marking the invite direct (an m.room.member
        event of our own: the plain invite API has no `is_direct`)."""
        await self.matrix.put_state(
            room_id, "m.room.member", {"membership": "invite", "is_direct": True}, owner, user_id=puppet
        )

    async def _create(self, owner: str, uin: int, stranger: bool) -> str:
        puppet = await self.puppets.ensure(uin)
        nick = await self.puppets.nick(uin)
        topic = f"QQ {uin}" + (" — not in your QQ friend list" if stranger else "")
        encrypted = self._encrypt is not None and await self._encrypt(owner)
        room_id = await self.matrix.create_room(
            initial_state=[{"type": "m.room.encryption", "state_key": "", "content": MEGOLM}] if encrypted else [],
            name=self.puppets.displayname(uin, nick),
            topic=topic,
            invite=[puppet],
            federate=False,
            # The bot creates (in room version 12 it is not listed: creators rank above
            # everyone); the owner keeps full power; the puppet gets what it needs.
            power_level_override={
                "users": {owner: 100, puppet: PUPPET_POWER},
                "users_default": 0,
                "notifications": {"room": 100},
            },
        )
        await self.matrix.join(room_id, user_id=puppet)
        await self._invite_owner(room_id, owner, puppet)  # a direct chat with the contact
        if stranger:
            label = await self.puppets.label(uin)
            text = f"{label} is not in your QQ friend list. Type `!qq add {uin}` to add them."
            await self.matrix.send(room_id, notice_content(text), txn_id=txn_for("stranger", owner, uin))
        log.info("portal created", owner=owner, uin=uin, room_id=room_id, stranger=stranger)
        return room_id
