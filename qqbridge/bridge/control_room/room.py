"""The control room (BRIDGE.md §3): a direct chat with the bot where a user logs into
QQ and manages the bridge. Commands are plain messages; each one answers, and a
malformed one answers with its usage and changes nothing."""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from qqbridge.bridge.control_room.commands import CommandError, CommandTable, qq_number
from qqbridge.bridge.control_room.permissions import Permissions
from qqbridge.bridge.control_room.reply import Reply
from qqbridge.bridge.notices import ENCRYPTED, txn_for
from qqbridge.bridge.notifier import Notifier
from qqbridge.bridge.ports import Matrix
from qqbridge.bridge.qq_sessions.account_state import AccountState
from qqbridge.bridge.qq_sessions.accounts import QQAccount
from qqbridge.bridge.qq_sessions.outages import clock_time, duration
from qqbridge.bridge.qq_sessions.registry import Accounts
from qqbridge.matrix.api import MatrixError
from qqbridge.matrix.content import json_object
from qqbridge.qq import errors, model, password_md5
from qqbridge.store import ConflictError, Store
from qqbridge.store.rows import BridgeUser, InboxEvent, LoginState

log = structlog.get_logger(__name__)

WELCOME = "Hello! This is your QQ bridge control room. Type `login <QQ number>` to bridge your QQ account."
STATUSES = {"online": model.Status.ONLINE, "busy": model.Status.BUSY,
            "invisible": model.Status.INVISIBLE, "offline": model.Status.OFFLINE}  # fmt: skip


class ControlRoom:
    """`table`: the command table, which this room fills with its own commands (others,
    such as contact_commands, add theirs); `doctor`: the admin's `doctor` report."""

    def __init__(
        self, *, store: Store, matrix: Matrix, notifier: Notifier, permissions: Permissions, accounts: Accounts,
        table: CommandTable, doctor: Callable[[], Awaitable[str]],
    ) -> None:  # fmt: skip
        self.store, self.matrix, self.notifier = store, matrix, notifier
        self.permissions, self.accounts, self._doctor = permissions, accounts, doctor
        self.table = table
        table.add("help", "list the commands", self.cmd_help)
        table.add("login", "log into a QQ account (the password is asked next)", self.cmd_login,
                  arguments=lambda p: p.add_argument("uin", type=qq_number, metavar="QQ number", help="your QQ number"),
                  control_room_only=True)
        table.add("logout", "log the QQ account out and stop bridging it", self.cmd_logout, needs_login=True)
        table.add("ping", "the QQ session's state, last poll and queues", self.cmd_ping)
        table.add("status", "show or set your QQ status", self.cmd_status, needs_login=True,
                  arguments=lambda p: p.add_argument("status", nargs="?", choices=list(STATUSES)))
        table.add("cancel", "stop waiting for a password", self.cmd_cancel)
        table.add("accounts", "every bridged account and its state", self.cmd_accounts, admin=True)
        table.add("doctor", "check the homeserver, QQ server, database and permissions", self.cmd_doctor, admin=True)
        table.add("logout-user", "force a user's QQ account out", self.cmd_logout_user, admin=True,
                  arguments=lambda p: p.add_argument("mxid", metavar="Matrix ID", help="the Matrix ID"))  # fmt: skip

    # ---- room membership ---------------------------------------------------------------

    async def invited(self, room_id: str, inviter: str, event_id: str) -> None:
        matrix = self.matrix
        reply = Reply(self.notifier, room_id, event_id)
        await matrix.join(room_id)
        if not self.permissions.may_use(inviter):
            log.info("refused a user without permission", mxid=inviter)
            await reply(f"Sorry, {inviter} is not allowed to use this bridge. Ask its administrator to "
                        "add you to `permissions` in the bridge's config.")  # fmt: skip
            await matrix.leave(room_id)
            return
        before = await self.store.users.get(inviter)
        await self.store.users.set_control_room(inviter, room_id)
        await reply(WELCOME + "\n\n" + self.table.help_text(admin=self.permissions.is_admin(inviter)))
        old_room = before.control_room_id if before is not None else None
        if old_room and old_room != room_id:  # a second direct chat with the bot takes over, and the first says so
            try:
                await self.notifier.notice(old_room, "This is no longer your control room: the direct chat you opened "
                                         "with me since then is. Give your commands there.", txn_id=txn_for("moved", event_id))  # fmt: skip
            except MatrixError as exc:
                log.info("could not tell the old control room it moved", room_id=old_room, error=str(exc))


    async def member_left(self, room_id: str, mxid: str) -> None:
        user = await self.store.users.by_control_room(room_id)
        if user is not None and user.mxid == mxid:
            await self.store.users.set_control_room(mxid, None)
            try:
                await self.matrix.leave(room_id)
            except MatrixError as exc:
                log.info("could not leave a closed control room", room_id=room_id, error=str(exc))

    # ---- messages ----------------------------------------------------------------------

    async def message(self, event: InboxEvent, content: dict[str, Any]) -> None:
        room_id, sender, event_id = event.room_id, event.sender, event.event_id
        user = await self.store.users.by_control_room(room_id)
        reply = Reply(self.notifier, room_id, event_id)
        if user is None:
            await self._not_a_control_room(room_id, sender, reply)
            return
        if sender != user.mxid:
            await reply(f"Only {user.mxid} can give commands in this room.")
            return
        if not self.permissions.may_use(sender):
            await reply("You are no longer allowed to use this bridge.")
            return
        if not content:
            return  # redacted, or the password message blanked before a restart: nothing to answer
        body = content.get("body")
        if not isinstance(body, str) or content.get("msgtype") not in ("m.text", "m.notice"):
            await reply("Commands are plain text messages; type `help` for the list.")
            return
        if user.login_state == LoginState.AWAITING_PASSWORD:
            if event.inbox_id <= (user.password_after or 0):
                # The `login` command itself, or a message before it, seen again: never
                # the password (the inbox hands out each event once; this stays a guard).
                log.error("a message from before the password prompt came back; not taken as the password",
                          event_id=event_id, inbox_id=event.inbox_id, password_after=user.password_after)  # fmt: skip
                return
            await self._password(user, room_id, event_id, body, reply)
            return
        await self.run_command(user, room_id, event_id, body, inbox_id=event.inbox_id)

    async def _not_a_control_room(self, room_id: str, sender: str, reply: Reply) -> None:
        """A message in a room the bot is in that is neither a portal nor a control room
        (a control room since replaced, a room the bot was left in): answered, never
        dropped silently, for anyone allowed to use the bridge."""
        if not self.permissions.may_use(sender):
            return  # users without permission get nothing
        user = await self.store.users.get(sender)
        if user is not None and user.control_room_id:
            await reply("This is not your control room; your commands go to the direct chat with me where I "
                        "last welcomed you.")  # fmt: skip
        else:
            await reply("This room is not a control room. Start a direct chat with me to get one.")

    async def encrypted(self, room_id: str, sender: str, event_id: str) -> None:
        """An encrypted message in a room the bot cannot read: say so, and how to fix it."""
        if not self.permissions.may_use(sender):
            return
        await Reply(self.notifier, room_id, event_id)(ENCRYPTED)

    async def run_command(
        self, user: BridgeUser, room_id: str, event_id: str, body: str, *, inbox_id: int, in_portal: bool = False
    ) -> None:
        """A command typed in the control room, or after `!qq` in a portal; `inbox_id`
        is its event's place in the inbox (a `login` takes only a later message for
        the password)."""
        reply = Reply(self.notifier, room_id, event_id, inbox_id)
        text = body.strip().removeprefix("!qq").strip()
        try:
            command, args = self.table.parse(text)
            if in_portal and command.control_room_only:
                # The password would follow in this room, where messages go to a QQ contact.
                raise CommandError(f"`{command.name}` works only in your control room (the direct chat with "
                                   "the bridge bot), never in a chat with a QQ contact. Nothing was changed.")  # fmt: skip
            if command.admin and not self.permissions.is_admin(user.mxid):
                raise CommandError(f"`{command.name}` is for bridge admins only")
            if command.needs_login and self.accounts.get(user.mxid) is None:
                raise CommandError(f"`{command.name}` needs a QQ login; type `login <QQ number>` first")
            await command.handler(user, args, reply)
        except CommandError as exc:
            await reply(str(exc))

    async def awaiting_password(self, mxid: str) -> bool:
        user = await self.store.users.get(mxid)
        return user is not None and user.login_state == LoginState.AWAITING_PASSWORD

    async def cannot_redact(self, room_id: str) -> str | None:
        """Why the bot could not redact someone else's message in the room, or None
        when it can (or the power levels cannot be read: the redaction itself tells)."""
        bot = self.matrix.bot_mxid
        try:
            create = await self.matrix.get_state(room_id, "m.room.create")
            if bot in (create.get("additional_creators") or ()):  # room v12: a creator outranks every level
                return None
            levels = await self.matrix.get_state(room_id, "m.room.power_levels")
        except MatrixError as exc:
            log.info("could not read a room's power levels", room_id=room_id, error=exc.errcode)
            return None
        users = json_object(levels.get("users"))
        mine, needed = users.get(bot, levels.get("users_default", 0)), levels.get("redact", 50)
        if isinstance(mine, int) and isinstance(needed, int) and mine < needed:
            return f"that takes power level {needed}; I have {mine}"
        return None

    async def redact_quietly(self, room_id: str, event_id: str) -> bool:
        """Redact a message that may hold a password; False if the homeserver refused."""
        try:
            await self.matrix.redact(room_id, event_id, txn_id=f"redact-{event_id}", reason="QQ password")
        except MatrixError as exc:
            log.warning("could not redact a password message", room_id=room_id, error=exc.errcode)
            return False
        return True

    def _state_before_login(self, mxid: str) -> LoginState:
        """Where the user stood before `login`: a running QQ session goes on after a
        cancelled or failed new login, and must still be resumed after a restart."""
        account = self.accounts.get(mxid)
        if account is None:
            return LoginState.LOGGED_OUT
        return LoginState.BAD_PASSWORD if account.state is AccountState.BAD_PASSWORD else LoginState.LOGGED_IN

    async def _password(self, user: BridgeUser, room_id: str, event_id: str, body: str, reply: Reply) -> None:
        """The message after `login <uin>`: redact it and forget it first, and leave the
        'awaiting password' state in the same breath (so a restart in the middle never
        takes the *next* message for a password); keep only its MD5, try it."""
        redacted = await self.redact_quietly(room_id, event_id)
        await self.store.inbox.forget_content(event_id)
        uin = user.pending_login_uin
        before = self._state_before_login(user.mxid)
        if uin is None:  # awaiting a password always has the QQ number it is for (UserStore.begin_login)
            await self.store.users.abandon_login(user.mxid, before)
            await reply("No login is waiting for a password; type `login <QQ number>` to start one.")
            return
        if body.strip().lower() == "cancel":
            await self.store.users.abandon_login(user.mxid, before)
            await reply("Login cancelled." + (" Your QQ session goes on as before." if before is LoginState.LOGGED_IN else ""))
            return
        await self.store.users.set_login_state(user.mxid, before)  # pending_login_uin stays: an attempt in flight
        if not redacted:
            await reply("I could not redact your password message (I lack the power to); please delete it yourself.")
        account = self.accounts.new(user.mxid, uin, password_md5(body))
        try:
            await account.login()
        except (errors.QQError, OSError) as exc:
            await account.qq.aclose()
            await self.store.users.abandon_login(user.mxid, before)
            await reply(_login_failure(uin, exc) + (" Your QQ session goes on as before." if before is LoginState.LOGGED_IN else ""))
            return
        try:
            await self.store.users.complete_login(user.mxid, uin, password_md5(body))
        except ConflictError:
            await account.stop(logout=True)
            await self.store.users.abandon_login(user.mxid, before)
            await reply(f"QQ {uin} was bridged for another Matrix user meanwhile; nothing was stored.")
            return
        await self.accounts.begin(account)
        await reply(f"Logged into QQ as {uin}. Each QQ contact who writes to you gets a direct chat of their own "
                    "(a portal), where you answer them; type `open <QQ number>` to start one, `friends` for your list.")  # fmt: skip

    async def interrupted_logins(self) -> None:
        """At start-up: a login that was being tried when the bridge stopped is told
        about, never silently dropped, and its password message never re-read."""
        for user in await self.store.users.every():
            if user.pending_login_uin is not None and user.login_state != LoginState.AWAITING_PASSWORD:
                await self.store.users.abandon_login(user.mxid, LoginState(user.login_state))
                try:
                    await self.notifier.tell_user(user.mxid, f"Your login to QQ {user.pending_login_uin} was interrupted "
                                                f"by a bridge restart. Type `login {user.pending_login_uin}` to try again.")  # fmt: skip
                except MatrixError as exc:
                    log.warning("could not tell a user their login was interrupted", mxid=user.mxid, error=str(exc))

    # ---- commands ----------------------------------------------------------------------

    async def cmd_help(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        await reply(self.table.help_text(admin=self.permissions.is_admin(user.mxid)))

    async def cmd_login(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        try:
            await self.store.users.begin_login(user.mxid, args.uin, password_after=reply.inbox_id)
        except ConflictError:
            raise CommandError(f"QQ {args.uin} is already bridged for another Matrix user") from None
        ask = f"Send your QQ password for {args.uin} as your next message (or `cancel`)."
        cannot = await self.cannot_redact(reply.room_id)
        if cannot is None:
            await reply(f"{ask} I will redact it at once and keep only its MD5, which is what QQ needs.")
            return
        # Said before the password comes, while there is time to fix it or cancel.
        await reply(f"⚠ I cannot delete messages in this room ({cannot}), so your password would stay visible "
                    "here. Give me moderator rights in the room's settings first, or type `cancel` and start a "
                    f"new direct chat with me. {ask} I keep only its MD5, which is what QQ needs.")  # fmt: skip

    async def cmd_cancel(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        await reply("Nothing to cancel: no login is waiting for a password.")

    async def cmd_logout(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        account = await self.accounts.end(user.mxid, logout=True)
        await self.store.users.logout(user.mxid)
        await reply(f"Logged out of QQ {account.uin if account else ''}. Your portals stay; "
                    "type `login <QQ number>` to bridge again.")  # fmt: skip

    async def cmd_ping(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        account = self.accounts.get(user.mxid)
        if account is None:
            stopped = f"stopped: bad password; type `login {user.qq_uin or '<QQ number>'}` again"
            await reply(f"QQ: {stopped if user.login_state == LoginState.BAD_PASSWORD else 'not logged in'}.")
            return
        waiting_in = await self.store.inbound.count_pending(user.mxid)
        waiting_out = await self.store.outbox.count_pending(user.mxid)
        lines = [f"QQ {account.uin}: {account_state(account)}",
                 f"{last_good_poll(account)}; messages fetched: {account.fetched}",
                 f"queued: {waiting_in} from QQ to Matrix, {waiting_out} from Matrix to QQ"]  # fmt: skip
        if account.last_error:
            lines.append(f"last problem: {account.last_error}")
        await reply("\n".join(lines))

    async def cmd_status(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        account = self.accounts.get(user.mxid)
        assert account is not None  # needs_login
        if args.status is None:
            await reply(f"Your QQ status is {account.status.name.lower()}.")
            return
        try:
            await account.qq.set_status(STATUSES[args.status])
        except errors.RateLimited:
            await reply("QQ says you changed your status too often; try again in a little while.")
            return
        except errors.QQError as exc:
            await reply(f"QQ did not change your status: {exc}")
            return
        account.status = account.wanted_status = STATUSES[args.status]
        await reply(f"Your QQ status is now {args.status}.")

    async def cmd_accounts(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        lines = []
        for bridged in await self.store.users.every():
            account = self.accounts.get(bridged.mxid)
            if account is not None:
                state = f"{account_state(account)}; {last_good_poll(account)}"
            else:
                state = "stopped: bad password" if bridged.login_state == LoginState.BAD_PASSWORD else bridged.login_state
            lines.append(f"{bridged.mxid}: QQ {bridged.qq_uin or '-'}, {state}")
        await reply("\n".join(lines) or "Nobody uses the bridge yet.")

    async def cmd_doctor(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        await reply(await self._doctor())

    async def cmd_logout_user(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        target = await self.store.users.get(args.mxid)
        if target is None:
            raise CommandError(f"{args.mxid} does not use this bridge")
        account = await self.accounts.end(args.mxid, logout=True)
        await self.store.users.logout(args.mxid)
        await self.notifier.tell_user(args.mxid, f"An administrator ({user.mxid}) logged your QQ account out.")
        await reply(f"Logged {args.mxid} out" + (f" of QQ {account.uin}." if account else " (no running session)."))


def _login_failure(uin: int, exc: BaseException) -> str:
    if isinstance(exc, errors.WrongPassword):
        return f"QQ refused the password for {uin}: {exc.reason or 'wrong password'}. Type `login {uin}` to try again."
    if isinstance(exc, errors.IllegalAccount):
        return f"QQ says {uin} is not an account it knows. Nothing was stored."
    if isinstance(exc, errors.RateLimited):
        return "QQ says to slow down; wait a little, then type `login` again. Nothing was stored."
    return f"Could not log in: the QQ server did not answer properly ({exc}). Nothing was stored; try again later."


def account_state(account: QQAccount) -> str:
    """What `ping` and `accounts` say of a running account: the truth, not the last hope."""
    if account.state is AccountState.BAD_PASSWORD:
        return f"stopped: bad password; type `login {account.uin}` again"
    if account.state is AccountState.STOPPED:
        return "stopped"
    since = account.unreachable_since
    if since is None and account.server.down:  # found out by another account on the same server
        since = account.server.down_since
    if since is not None:
        return f"unreachable since {clock_time(since)} ({duration(time.time() - since)})"
    if account.state is AccountState.ONLINE:
        return f"online, status {account.status.name.lower()}"
    return account.state.value


def last_good_poll(account: QQAccount) -> str:
    if account.last_poll is None:
        return "last good poll: none yet"
    return f"last good poll: {clock_time(account.last_poll)} ({duration(time.time() - account.last_poll)} ago)"
