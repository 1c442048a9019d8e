"""Puppets: each QQ account the bridge meets is a Matrix user `@_qq_<uin>:<domain>`,
named after its QQ nickname (template `{nick} (QQ)`), its presence following QQ.

The store remembers the display name and presence last set on Matrix, so a name is
set only when it changes and a restart does not repeat it. Presence is said again
while it is true (presence.PresenceKeeper: a homeserver lets an online puppet lapse to
offline within a minute), and at every login sync and `sync` whatever the store says.
A puppet's picture follows its QQ face (avatars.Avatars).

A nickname is whatever the QQ server says, so it is shown tamed: on one line, without
control characters, and short enough for the homeserver (Synapse refuses display
names over 256 characters, which would fail the login sync for ever). A display name
the homeserver refuses anyway is logged and passed over: it never blocks the relay.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from qqbridge.bridge.contacts.avatars import Avatars, Media
from qqbridge.bridge.contacts.presence import PresenceKeeper
from qqbridge.bridge.notices import clip, one_line, shown_name
from qqbridge.bridge.ports import QQ, Matrix
from qqbridge.config import Config
from qqbridge.matrix.api import MatrixError
from qqbridge.qq import errors, model
from qqbridge.store import Store

log = structlog.get_logger(__name__)

PRESENCE = {model.Status.ONLINE: "online", model.Status.BUSY: "unavailable", model.Status.OFFLINE: "offline",
            model.Status.INVISIBLE: "offline"}  # fmt: skip
MAX_DISPLAYNAME = 256  # characters: Synapse's cap on display names
MAX_NICK = 1024  # characters of a nickname kept in the store


class Puppets:
    def __init__(
        self,
        config: Config,
        store: Store,
        matrix: Matrix,
        *,
        watched: Callable[[int], bool] = lambda uin: True,
        media: Media | None = None,
    ) -> None:
        """`watched(uin)`: whether a running account still learns that puppet's QQ status
        (presence.friend_of_a_running_account); `media`: where pictures go (the
        homeserver's media repository, `avatars.HomeserverMedia`; None: no pictures)."""
        self.config, self.store, self.matrix = config, store, matrix
        self.presence = PresenceKeeper(self._put_presence, watched=watched)
        self.avatars = Avatars(store, media)

    def mxid(self, uin: int) -> str:
        return self.config.puppet_mxid(uin)

    def displayname(self, uin: int, nick: str | None) -> str:
        """The template filled in, the nickname on one line and clipped (by characters,
        ending with `…`) so the whole fits MAX_DISPLAYNAME with the template's suffix."""
        template = self.config.appservice.puppet_displayname
        name = one_line(nick or "", MAX_DISPLAYNAME) or str(uin)
        fixed = len(template.format(nick="", uin=uin))
        room = max((MAX_DISPLAYNAME - fixed) // max(template.count("{nick}"), 1), 1)
        return clip(template.format(nick=clip(name, room), uin=uin), MAX_DISPLAYNAME)

    async def nick(self, uin: int) -> str | None:
        puppet = await self.store.puppets.get(uin)
        return puppet.nick if puppet else None

    async def label(self, uin: int) -> str:
        """How a bot notice names a contact: `Alice (10001)`, a nickname that is more than
        a plain name quoted (`“SYSTEM: …” (10001)`, see notices.shown_name), or just the number."""
        nick = await self.nick(uin)
        return f"{shown_name(nick)} ({uin})" if nick else str(uin)

    async def ensure(self, uin: int, nick: str | None = None, *, face: int | None = None) -> str:
        """Register the puppet if needed and bring its display name (and, given its QQ
        face, its picture) up to date."""
        if not model.legal_uin(uin):
            raise errors.LocalProtocolError(f"{uin} is not a QQ number: no puppet for it")
        mxid = self.mxid(uin)
        await self.matrix.ensure_registered(mxid)
        puppet = await self.store.puppets.get(uin)
        nick = None if nick is None else clip(nick, MAX_NICK)
        known_nick = nick if nick is not None else (puppet.nick if puppet else None)
        wanted = self.displayname(uin, known_nick)
        if puppet is None or puppet.displayname != wanted or (nick is not None and puppet.nick != nick):
            if puppet is None or puppet.displayname != wanted:
                await self._set_displayname(mxid, wanted)
            await self.store.puppets.upsert(uin, nick=known_nick, displayname=wanted)
        if face is not None:
            await self.avatars.show_face(mxid, face)
        return mxid

    async def _set_displayname(self, mxid: str, name: str) -> None:
        """Set it; a refusal for good is logged and passed over (the name is cosmetic,
        the messages are not), while a passing failure reaches the caller to retry."""
        try:
            await self.matrix.set_displayname(mxid, name)
        except MatrixError as exc:
            if exc.status in (0, 429) or exc.status >= 500:
                raise
            log.warning("the homeserver refused a puppet's display name", mxid=mxid, error=str(exc))

    async def learn_nick(self, qq: QQ, uin: int) -> None:
        """A contact whose nickname the bridge does not know yet: ask QQ (GetInfo,
        normal: the nickname and the face), best effort; the display name and the
        picture follow."""
        if await self.nick(uin) is not None:
            return
        try:
            profile = await qq.profile(uin, level=2)
        except errors.QQError as exc:
            log.info("no nickname from QQ", uin=uin, error=str(exc))
            return
        await self.ensure(uin, profile.nick, face=profile.face)

    async def set_presence(self, uin: int, status: model.Status, *, force: bool = False) -> None:
        """Mirror a QQ status as Matrix presence. Said when it changed, when it may have
        lapsed on the homeserver (online or busy, and not said within the keeper's
        interval), or when `force`d (the login sync and `sync`: the store may think
        nothing changed while the homeserver has moved on)."""
        status = model.Status.OFFLINE if status is model.Status.INVISIBLE else status
        presence = PRESENCE[status]
        puppet = await self.store.puppets.get(uin)
        unchanged = puppet is not None and puppet.presence == int(status)
        if unchanged and not force and (status is model.Status.OFFLINE or self.presence.fresh(uin, presence)):
            return
        await self.ensure(uin)
        await self.presence.say(uin, presence)
        if not unchanged:
            await self.store.puppets.upsert(uin, presence=int(status))

    async def _put_presence(self, uin: int, presence: str) -> None:
        await self.matrix.set_presence(self.mxid(uin), presence)

    async def befriended(self, qq: QQ, uin: int) -> None:
        """A new QQ friend (a request accepted either way): QQ tells its status changes
        from now on, but not the status it has now, so ask (Query_Stat) and show it."""
        try:
            online = {friend.uin: friend for friend in await qq.online_friends()}
        except errors.QQError as exc:
            log.info("no status from QQ for a new friend; the next sync shows it", uin=uin, error=str(exc))
            return
        friend = online.get(uin)
        if friend is not None:
            await self.ensure(uin, friend.nick, face=friend.face)
        await self.set_presence(uin, friend.status if friend is not None else model.Status.OFFLINE, force=True)
