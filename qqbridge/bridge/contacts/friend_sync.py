"""After a login and on `sync`: the QQ friend list, nicknames and presence, brought
into Matrix. (The status the user chose is the QQ session's to restore.)

    QQAccount logged in ──on_login──▶ FriendSync.sync(account)
        List · Query_Stat
        ──▶ puppets: ensure (nickname, face) · presence, said again for everyone
        ──▶ synced(mxid): the relay looks again at what waited meanwhile
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog

from qqbridge.bridge.qq_sessions.accounts import QQAccount
from qqbridge.qq import model

log = structlog.get_logger(__name__)


class FriendPuppets(Protocol):
    """The puppets, as far as showing a friend's name and presence goes (contacts.puppets)."""

    async def ensure(self, uin: int, nick: str | None = None, *, face: int | None = None) -> str: ...
    async def set_presence(self, uin: int, status: model.Status, *, force: bool = False) -> None: ...


class FriendSync:
    """`synced(mxid)`: called after each sync, for what waited on it (stored QQ messages
    and outbox rows from before a restart)."""

    def __init__(self, puppets: FriendPuppets, synced: Callable[[str], None]) -> None:
        self._puppets = puppets
        self._synced = synced

    async def sync(self, account: QQAccount) -> int:
        """Friends, nicknames and presence from QQ; how many friends are online."""
        friends = await account.qq.friends()
        online = await account.qq.online_friends()
        account.friends = set(friends)
        for friend in online:  # said again even if the store saw no change: it may have lapsed
            await self._puppets.ensure(friend.uin, friend.nick, face=friend.face)
            await self._puppets.set_presence(friend.uin, friend.status, force=True)
        online_uins = {friend.uin for friend in online}
        for uin in friends:
            if uin not in online_uins:
                await self._puppets.set_presence(uin, model.Status.OFFLINE)
        self._synced(account.mxid)
        return len(online)
