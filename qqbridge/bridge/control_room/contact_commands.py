"""The commands about QQ contacts (BRIDGE.md §3): friends, whois, add, remove,
requests, accept, reject, open, sync. Each needs a logged-in QQ account."""

from __future__ import annotations

import argparse

from qqbridge.bridge.contacts.friend_sync import FriendSync
from qqbridge.bridge.contacts.portals import Portals
from qqbridge.bridge.contacts.puppets import Puppets
from qqbridge.bridge.control_room.commands import CommandError, CommandTable, joined, qq_number, rest_of_line
from qqbridge.bridge.control_room.friend_requests import FriendRequests
from qqbridge.bridge.control_room.reply import Reply
from qqbridge.bridge.notices import BULLET, one_line, quoted
from qqbridge.bridge.qq_sessions.accounts import QQAccount
from qqbridge.bridge.qq_sessions.registry import Accounts
from qqbridge.qq import errors, model
from qqbridge.store.contacts import FriendRequestStore
from qqbridge.store.rows import BridgeUser

DEFAULT_REASON = "Hello! I'd like to add you as a friend."
_PROFILE_LINES = [
    ("Nickname", "nick"), ("Real name", "real_name"), ("Age", "age"), ("Gender", "gender"),
    ("Blood type", "blood_type"), ("Constellation", "constellation"), ("Chinese zodiac", "zodiac"),
    ("Country", "country"), ("Province", "province"), ("City", "city"), ("Address", "address"),
    ("Zip code", "zip_code"), ("Email", "email"), ("Homepage", "homepage"), ("Phone", "phone"),
    ("Mobile", "mobile"), ("Job", "job"), ("School", "school"), ("About", "introduction"),
]  # fmt: skip


def describe_profile(profile: model.Profile) -> str:
    lines = [f"QQ {profile.uin}"]
    for label, name in _PROFILE_LINES:
        value = getattr(profile, name)
        text = value.label if hasattr(value, "label") else value
        if text not in (None, ""):  # what QQ says, on one line each: no forged lines
            lines.append(f"{label}: {one_line(str(text))}")
    if profile.face is not None:
        lines.append(f"Avatar: {model.avatar_file(profile.face)}")
    return "\n".join(lines)


def _uin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uin", type=qq_number, metavar="QQ number", help="a QQ number")


def _uin_and_reason(parser: argparse.ArgumentParser) -> None:
    _uin(parser)
    rest_of_line(parser, "reason", "what they are told")


class ContactCommands:
    """Adds its commands to the control room's `table`."""

    def __init__(
        self, table: CommandTable, *, accounts: Accounts, puppets: Puppets, portals: Portals,
        friend_requests: FriendRequests, requests: FriendRequestStore, friend_sync: FriendSync,
    ) -> None:  # fmt: skip
        self.accounts, self.puppets, self.portals = accounts, puppets, portals
        self.friend_requests, self._requests, self._friend_sync = friend_requests, requests, friend_sync
        uin = _uin
        table.add("friends", "your QQ friends with nickname and status", self.friends, needs_login=True,
                  arguments=lambda p: p.add_argument("online", nargs="?", choices=["online"]))
        table.add("whois", "a QQ account's profile", self.whois, needs_login=True, arguments=uin)
        table.add("add", "add a QQ friend (asks them when they want to be asked)", self.add, needs_login=True,
                  arguments=_uin_and_reason)
        table.add("remove", "remove a QQ friend from your list", self.remove, needs_login=True, arguments=uin)
        table.add("requests", "pending friend requests", self.requests)
        table.add("accept", "accept a friend request", self.accept, needs_login=True, arguments=uin)
        table.add("reject", "reject a friend request", self.reject, needs_login=True, arguments=_uin_and_reason)
        table.add("open", "open (or create) the portal to a QQ account", self.open, needs_login=True, arguments=uin)
        table.add("sync", "refresh friends, nicknames and presence now", self.sync, needs_login=True)  # fmt: skip

    def _account(self, user: BridgeUser) -> QQAccount:
        account = self.accounts.get(user.mxid)
        if account is None:
            raise CommandError("That needs a QQ login; type `login <QQ number>` first.")
        return account

    async def friends(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        account = self._account(user)
        try:
            uins = await account.qq.friends()
            online = {friend.uin: friend for friend in await account.qq.online_friends()}
        except errors.QQError as exc:
            raise CommandError(f"QQ did not list your friends: {exc}") from None
        account.friends = set(uins)
        lines = []
        for uin in uins:
            friend = online.get(uin)
            if args.online and friend is None:
                continue
            if friend is not None:
                await self.puppets.ensure(uin, friend.nick, face=friend.face)
            else:
                await self.puppets.learn_nick(account.qq, uin)
            status = friend.status.name.lower() if friend else "offline"
            lines.append(f"{BULLET}{await self.puppets.label(uin)} — {status}")
        empty = "None of your QQ friends is online." if args.online else "Your QQ friend list is empty."
        await reply("\n".join(lines) or empty)

    async def whois(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        profile = await self._profile(self._account(user), args.uin, level=3)
        await reply(describe_profile(profile))

    async def _profile(self, account: QQAccount, uin: int, level: int) -> model.Profile:
        """GetInfo, refreshing the puppet's nickname on the way."""
        try:
            profile = await account.qq.profile(uin, level=level)
        except errors.IllegalAccount:
            raise CommandError(f"QQ says {uin} is not an account it knows.") from None
        except errors.QQError as exc:
            raise CommandError(f"QQ did not answer: {exc}") from None
        await self.puppets.ensure(uin, profile.nick, face=profile.face)
        return profile

    async def add(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        account = self._account(user)
        await self.puppets.learn_nick(account.qq, args.uin)
        label = await self.puppets.label(args.uin)
        try:
            result = await account.qq.add_friend(args.uin)
            if result.policy is model.AddPolicy.ADDED:
                account.friends.add(args.uin)
                await reply(f"{label} is now in your QQ friend list.")
            elif result.policy is model.AddPolicy.REFUSES_ALL:
                await reply(f"{label} accepts no friend requests; QQ did not add them.")
            else:
                await self._request(account, args.uin, joined(args.reason) or DEFAULT_REASON)
                await reply(f"{label} must agree first: your friend request was sent. "
                            "You will be told here when they answer.")  # fmt: skip
        except errors.IllegalAccount:
            raise CommandError(f"QQ says {args.uin} is not an account you can add.") from None
        except errors.QQError as exc:
            raise CommandError(f"QQ did not take the request: {exc}") from None

    async def _request(self, account: QQAccount, uin: int, reason: str) -> None:
        """Ack_AddToList CD=2; the seed saw it refused (RES=3) once before it went through."""
        for attempt in range(3):
            try:
                await account.qq.request_friendship(uin, reason)
                return
            except errors.RateLimited:
                if attempt == 2:
                    raise

    async def remove(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        account = self._account(user)
        try:
            await account.qq.remove_friend(args.uin)
        except errors.RateLimited:
            raise CommandError("QQ refuses to remove the same friend twice within 30 s.") from None
        except errors.IllegalAccount:
            raise CommandError(f"QQ says {args.uin} is not an account it knows.") from None
        except errors.QQError as exc:
            raise CommandError(f"QQ did not remove them: {exc}") from None
        account.friends.discard(args.uin)
        await reply(f"{await self.puppets.label(args.uin)} is no longer in your QQ friend list.")

    async def requests(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        pending = await self._requests.pending(user.mxid)
        lines = [f"{BULLET}{await self.puppets.label(r.from_uin)}: {quoted(r.reason)}" for r in pending]
        await reply("Pending friend requests:\n" + "\n".join(lines) if lines else "No pending friend requests.")

    async def accept(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        await reply(await self.friend_requests.answer(user.mxid, args.uin, True))

    async def reject(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        await reply(await self.friend_requests.answer(user.mxid, args.uin, False, joined(args.reason)))

    async def open(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        account = self._account(user)
        await self._profile(account, args.uin, level=2)  # a number QQ does not know gets no portal
        room_id = await self.portals.open(user.mxid, args.uin, stranger=args.uin not in account.friends)
        await reply(f"Your portal with {await self.puppets.label(args.uin)}: "
                    f"https://matrix.to/#/{room_id}")  # fmt: skip

    async def sync(self, user: BridgeUser, args: argparse.Namespace, reply: Reply) -> None:
        account = self._account(user)
        try:
            online = await self._friend_sync.sync(account)
        except errors.QQError as exc:
            raise CommandError(f"QQ did not answer: {exc}") from None
        await reply(f"Synced: {len(account.friends)} friends, {online} online.")
