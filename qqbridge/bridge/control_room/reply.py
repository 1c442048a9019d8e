"""The bot's answers to one command in the control room (or after `!qq` in a portal)."""

from __future__ import annotations

from qqbridge.bridge.notices import txn_for
from qqbridge.bridge.notifier import Notifier


class Reply:
    """Answers to one command, each with a transaction id derived from the command's
    event, so handling the same event again after a crash sends nothing new.
    `inbox_id`: the command's place in the inbox, for a `login` to wait on what follows."""

    def __init__(self, notifier: Notifier, room_id: str, cause: str, inbox_id: int = 0) -> None:
        self._notifier, self.room_id, self._cause, self._count = notifier, room_id, cause, 0
        self.inbox_id = inbox_id

    async def __call__(self, text: str) -> None:
        self._count += 1
        await self._notifier.notice(self.room_id, text, txn_id=txn_for("reply", self._cause, self._count))
