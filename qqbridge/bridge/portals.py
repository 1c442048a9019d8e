"""Portals: one direct room per (Matrix user, QQ contact), where the contact's puppet
and the user chat. Created by the puppet on the first message either way or by
`open <uin>`, marked direct, the user and the bot invited (the bot answers `!qq`
commands there), named after the contact. A stranger's portal says so in its topic
and in a first notice."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from qqbridge.bridge.notices import notice_content, txn_for
from qqbridge.bridge.ports import Matrix
from qqbridge.bridge.puppets import Puppets

log = structlog.get_logger(__name__)


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
        bot = self.matrix.bot_mxid
        topic = f"QQ {uin}" + (" — not in your QQ friend list" if stranger else "")
        room_id = await self.matrix.create_room(
            user_id=puppet,
            name=self.puppets.displayname(uin, nick),
            topic=topic,
            is_direct=True,
            invite=[owner, bot],
            federate=False,
            # The owner and the bot get full power beside the creating puppet (which room
            # version 12 ranks above everyone and refuses to list here).
            power_level_override={"users": {bot: 100, owner: 100}},
        )
        await self.matrix.join(room_id)  # the bot, for `!qq` commands and read markers
        if stranger:
            text = f"{nick or uin} ({uin}) is not in your QQ friend list. Type `!qq add {uin}` to add them."
            await self.matrix.send(room_id, notice_content(text), txn_id=txn_for("stranger", owner, uin))
        log.info("portal created", owner=owner, uin=uin, room_id=room_id, stranger=stranger)
        return room_id
