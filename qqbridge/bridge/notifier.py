"""The bot speaking to people: a notice in a room, or in a user's control room. Every
part that tells a person something gets this one object, not the bridge.

    part ──notice(room, text, txn_id)──▶ the room
         ──notice_user(mxid, text, txn_id)──▶ the user's control room (logged if none)
"""

from __future__ import annotations

import uuid

import structlog

from qqbridge.bridge.notices import notice_content, txn_for
from qqbridge.bridge.ports import Matrix
from qqbridge.store.users import UserStore

log = structlog.get_logger(__name__)


class Notifier:
    def __init__(self, users: UserStore, matrix: Matrix) -> None:
        self._users, self._matrix = users, matrix

    async def notice(
        self, room_id: str, text: str, *, txn_id: str | None = None, reply_to: str | None = None, notify: bool = False
    ) -> str:
        """The bot says `text`; `notify` when it needs the person's answer (notices.notice_content)."""
        content = notice_content(text, reply_to=reply_to, notify=notify)
        return await self._matrix.send(room_id, content, txn_id=txn_id or txn_for("notice", uuid.uuid4()))

    async def tell_user(self, mxid: str, text: str, *, notify: bool = False) -> None:
        """A notice in the user's control room, under a transaction id of its own."""
        await self.notice_user(mxid, text, txn_id=txn_for("tell", uuid.uuid4()), notify=notify)

    async def notice_user(self, mxid: str, text: str, *, txn_id: str, notify: bool = False) -> str | None:
        """A notice in the user's control room; None (and a log line) if they have none."""
        user = await self._users.get(mxid)
        if user is None or not user.control_room_id:
            log.warning("no control room to tell", mxid=mxid, text=text)
            return None
        return await self.notice(user.control_room_id, text, txn_id=txn_id, notify=notify)
