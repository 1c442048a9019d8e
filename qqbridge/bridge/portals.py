"""Portals: one direct room per (Matrix user, QQ contact), where the contact's puppet
and the user chat. Opened on the first message either way or by `open <uin>`: the
bot creates the room (named after the contact), the puppet joins and invites the user
as to a direct chat; the bot stays for `!qq` commands. A stranger's portal says so in
its topic and in a first notice.

The puppet holds only the power it needs (PUPPET_POWER: messages, inviting, the room's
name and avatar), never enough to notify the whole room (`@room` takes 100, which only
the owner has). That is why the bot creates the room: in room version 12 a room's
creator has unlimited power, and a puppet says whatever QQ tells it to.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from qqbridge.bridge.notices import notice_content, txn_for
from qqbridge.bridge.ports import Matrix
from qqbridge.bridge.puppets import Puppets

log = structlog.get_logger(__name__)

PUPPET_POWER = 50  # state_default, invite and m.room.name/avatar are 50; notifications.room is 100


class Portals:
    def __init__(self, store: Any, matrix: Matrix, puppets: Puppets) -> None:
        self.store, self.matrix, self.puppets = store, matrix, puppets
        self._creating: dict[tuple[str, int], asyncio.Lock] = {}

    async def room_for(self, owner: str, uin: int, *, stranger: bool) -> str:
        """The portal's room, created now if it has none."""
        lock = self._creating.setdefault((owner, uin), asyncio.Lock())
        async with lock:  # two events for a new contact must not create two rooms
            portal, _ = await self.store.claim_portal(owner, uin, stranger=stranger)
            if portal.room_id:
                if portal.stranger and not stranger:
                    await self.store.set_portal_stranger(owner, uin, False)
                return portal.room_id
            room_id = await self._create(owner, uin, stranger)
            await self.store.set_portal_room(owner, uin, room_id)
            return room_id

    async def _create(self, owner: str, uin: int, stranger: bool) -> str:
        puppet = await self.puppets.ensure(uin)
        nick = await self.puppets.nick(uin)
        topic = f"QQ {uin}" + (" — not in your QQ friend list" if stranger else "")
        room_id = await self.matrix.create_room(
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
        # A direct chat with the contact: the puppet invites, marking the invite direct.
        await self.matrix.put_state(
            room_id, "m.room.member", {"membership": "invite", "is_direct": True}, owner, user_id=puppet
        )
        if stranger:
            label = await self.puppets.label(uin)
            text = f"{label} is not in your QQ friend list. Type `!qq add {uin}` to add them."
            await self.matrix.send(room_id, notice_content(text), txn_id=txn_for("stranger", owner, uin))
        log.info("portal created", owner=owner, uin=uin, room_id=room_id, stranger=stranger)
        return room_id
