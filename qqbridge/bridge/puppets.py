"""Puppets: each QQ account the bridge meets is a Matrix user `@_qq_<uin>:<domain>`,
named after its QQ nickname (template `{nick} (QQ)`), its presence following QQ.

The store remembers the display name and presence last set on Matrix, so both are
set only when they change, and a restart does not repeat them.
"""

from __future__ import annotations

from typing import Any

import structlog

from qqbridge.bridge.ports import Matrix
from qqbridge.config import Config
from qqbridge.qq import errors, model

log = structlog.get_logger(__name__)

PRESENCE = {model.Status.ONLINE: "online", model.Status.BUSY: "unavailable", model.Status.OFFLINE: "offline",
            model.Status.INVISIBLE: "offline"}  # fmt: skip


class Puppets:
    def __init__(self, config: Config, store: Any, matrix: Matrix) -> None:
        self.config, self.store, self.matrix = config, store, matrix

    def mxid(self, uin: int) -> str:
        return self.config.puppet_mxid(uin)

    def displayname(self, uin: int, nick: str | None) -> str:
        return self.config.appservice.puppet_displayname.format(nick=nick or str(uin), uin=uin)

    async def nick(self, uin: int) -> str | None:
        puppet = await self.store.get_puppet(uin)
        return puppet.nick if puppet else None

    async def label(self, uin: int) -> str:
        """How a user reads a contact: `Alice (10001)`, or just the number."""
        nick = await self.nick(uin)
        return f"{nick} ({uin})" if nick else str(uin)

    async def ensure(self, uin: int, nick: str | None = None) -> str:
        """Register the puppet if needed and bring its display name up to date."""
        mxid = self.mxid(uin)
        await self.matrix.ensure_registered(mxid)
        puppet = await self.store.get_puppet(uin)
        known_nick = nick if nick is not None else (puppet.nick if puppet else None)
        wanted = self.displayname(uin, known_nick)
        if puppet is None or puppet.displayname != wanted or (nick is not None and puppet.nick != nick):
            if puppet is None or puppet.displayname != wanted:
                await self.matrix.set_displayname(mxid, wanted)
            await self.store.upsert_puppet(uin, nick=known_nick, displayname=wanted)
        return mxid

    async def learn_nick(self, qq: Any, uin: int) -> None:
        """A contact whose nickname the bridge does not know yet: ask QQ (GetInfo,
        simple), best effort; the display name follows."""
        if await self.nick(uin) is not None:
            return
        try:
            profile = await qq.profile(uin, level=0)
        except errors.QQError as exc:
            log.info("no nickname from QQ", uin=uin, error=str(exc))
            return
        await self.ensure(uin, profile.nick)

    async def set_presence(self, uin: int, status: model.Status) -> None:
        """Mirror a QQ status as Matrix presence, only when it changed."""
        status = model.Status.OFFLINE if status is model.Status.INVISIBLE else status
        puppet = await self.store.get_puppet(uin)
        if puppet is not None and puppet.presence == int(status):
            return
        mxid = await self.ensure(uin)
        await self.matrix.set_presence(mxid, PRESENCE[status])
        await self.store.upsert_puppet(uin, presence=int(status))
