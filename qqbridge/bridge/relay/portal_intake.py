"""Matrix → QQ intake: what the owner of a portal does there, and what becomes of it.

    router ──portal event──▶ PortalIntake.handle
        from anyone but the owner ─▶ nothing (only the owner is relayed)
        redaction · reaction · encrypted ─▶ a notice: QQ cannot carry it
        a message while a login waits for the password ─▶ forgotten, redacted, told
        `!qq <command>` ─▶ the control room's command table
        text, media, sticker ─▶ matrix_to_qq.outgoing_text ─▶ Outbox.enqueue (stored
                                 with its SEQ), and the poller looks for the answer soon
"""

from __future__ import annotations

from typing import Any, Protocol

from qqbridge.bridge.notices import ENCRYPTED, txn_for
from qqbridge.bridge.notifier import Notifier
from qqbridge.bridge.qq_sessions.registry import Accounts
from qqbridge.bridge.relay.matrix_to_qq import outgoing_text
from qqbridge.bridge.relay.outbox import Outbox
from qqbridge.store.inbox import InboxStore
from qqbridge.store.rows import BridgeUser, InboxEvent, Portal
from qqbridge.store.users import UserStore


class ContactNames(Protocol):
    """How a contact is named in a notice (contacts.puppets.Puppets.label)."""

    async def label(self, uin: int) -> str: ...


class PortalCommands(Protocol):
    """What the control room does for a portal (control_room.room.ControlRoom): the
    password guard, and `!qq` commands."""

    async def awaiting_password(self, mxid: str) -> bool: ...
    async def redact_quietly(self, room_id: str, event_id: str) -> bool: ...
    async def run_command(
        self, user: BridgeUser, room_id: str, event_id: str, body: str, *, inbox_id: int, in_portal: bool = False
    ) -> None: ...


class PortalIntake:
    """`media_base`: the homeserver's public URL, for the download links of media."""

    def __init__(
        self, *, notifier: Notifier, inbox: InboxStore, users: UserStore, names: ContactNames,
        commands: PortalCommands, accounts: Accounts, outbox: Outbox, media_base: str,
    ) -> None:  # fmt: skip
        self._notifier, self._inbox, self._users, self._names = notifier, inbox, users, names
        self._commands, self._accounts, self._outbox, self._media_base = commands, accounts, outbox, media_base

    async def handle(self, portal: Portal, event: InboxEvent, content: dict[str, Any]) -> None:
        if event.sender != portal.owner_mxid:
            return
        notice, room, cause = self._notifier.notice, event.room_id, event.event_id
        contact = await self._names.label(portal.uin)
        if event.type == "m.room.redaction":
            await notice(room, f"QQ cannot unsend messages: {contact} keeps what was sent.",
                         txn_id=txn_for("redaction", cause))  # fmt: skip
            return
        if event.type == "m.reaction":
            await notice(room, f"QQ has no reactions: {contact} did not see this one.",
                         txn_id=txn_for("reaction", cause), reply_to=cause)  # fmt: skip
            return
        if event.type == "m.room.encrypted":
            await notice(room, ENCRYPTED + f" This message was not sent to {contact}.",
                         txn_id=txn_for("encrypted", cause), reply_to=cause)  # fmt: skip
            return
        body = content.get("body")
        if event.type == "m.room.message" and await self._commands.awaiting_password(event.sender):
            # It may well be the password, typed in the wrong room: never relay or keep it.
            await self._inbox.forget_content(cause)
            gone = await self._commands.redact_quietly(room, cause)
            await notice(room, "Not sent: your login is waiting for your QQ password, which goes in your "
                         "control room only. This message was not sent to QQ and not kept"
                         + (" (and I removed it here, in case it was your password). " if gone else
                            "; if it was your password, delete it. ")
                         + "Send your password in the control room, then anything else here again.",
                         txn_id=txn_for("password", cause))  # fmt: skip
            return
        if event.type == "m.room.message" and isinstance(body, str) and body.lstrip().startswith("!qq"):
            user = await self._users.get(event.sender)
            if user is not None:
                await self._commands.run_command(user, room, cause, body, inbox_id=event.inbox_id, in_portal=True)
            return
        if event.type not in ("m.room.message", "m.sticker"):
            return
        text = outgoing_text(event.type, content, self._media_base)
        if text is None:
            await notice(room, "This message has nothing QQ can carry; it was not sent.", txn_id=txn_for("empty", cause))
            return
        account = self._accounts.get(event.sender)
        if account is None:
            await notice(room, "Not sent: you are not logged into QQ. Type `login <QQ number>` in your control "
                         "room, then send it again.", txn_id=txn_for("offline", cause))  # fmt: skip
            return
        await self._outbox.enqueue(event.sender, room, cause, portal.uin, text)
        account.poke()  # a chat is active: look for the answer soon
