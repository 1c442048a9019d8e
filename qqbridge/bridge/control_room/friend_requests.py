"""Friend requests (QQ `MT=2`) as prompts in the control room.

The prompt names who asks (nickname and UIN) and why — both from QQ, so each shown on
one line, the reason quoted (notices.quoted, puppets.label) — and how to answer: `accept` /
`reject [reason]`, or a ✅ / ❌ reaction on the prompt (the bot offers both). The
answer goes to QQ by Ack_AddToList, and the prompt is edited to show the outcome.
Requests are stored, so pending ones survive a restart.
"""

from __future__ import annotations

import structlog

from qqbridge.bridge.contacts.puppets import Puppets
from qqbridge.bridge.control_room.commands import CommandError
from qqbridge.bridge.notices import notice_content, quoted, txn_for
from qqbridge.bridge.notifier import Notifier
from qqbridge.bridge.ports import Matrix
from qqbridge.bridge.qq_sessions.registry import Accounts
from qqbridge.matrix.api import MatrixError
from qqbridge.qq import errors
from qqbridge.store import FriendRequestState, Store

log = structlog.get_logger(__name__)

ACCEPT, REJECT = "✅", "❌"


def reaction_answer(key: str) -> bool | None:
    """True for ✅, False for ❌ (with or without the emoji variation selector)."""
    key = key.replace("\ufe0f", "")
    return True if key == ACCEPT else False if key == REJECT else None


class FriendRequests:
    """`accounts`: the running QQ accounts, which answer on QQ; `puppets`: who asks."""

    def __init__(self, store: Store, matrix: Matrix, notifier: Notifier, puppets: Puppets, accounts: Accounts) -> None:
        self.store, self.matrix, self.notifier = store, matrix, notifier
        self.puppets, self.accounts = puppets, accounts

    def _prompt_text(self, label: str, uin: int, reason: str, outcome: str | None = None) -> str:
        said = quoted(reason) if reason else "(no reason given)"  # QQ's text: one line, clipped
        text = f"Friend request from {label}: {said}"
        if outcome:
            return f"{text}\n{outcome}"
        return (f"{text}\nAnswer with `accept {uin}` or `reject {uin} [reason]`, "
                f"or react {ACCEPT} or {REJECT} to this message.")  # fmt: skip

    async def prompt(self, owner: str, uin: int, reason: str, *, cause: object) -> str | None:
        await self.store.friend_requests.add(owner, uin, reason)
        user = await self.store.users.get(owner)
        if user is None or not user.control_room_id:
            log.warning("friend request kept, but no control room to show it in", owner=owner, uin=uin)
            return None
        room = user.control_room_id
        label = await self.puppets.label(uin)
        # It needs an answer, so it notifies (m.text raises the room's notification count).
        text = self._prompt_text(label, uin, reason)
        event_id = await self.notifier.notice(room, text, txn_id=txn_for("prompt", cause), notify=True)
        await self.store.friend_requests.set_prompt(owner, uin, room, event_id)
        offers = []
        for key in (ACCEPT, REJECT):  # one click answers
            annotation = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
            offers.append(await self.matrix.send(room, annotation, event_type="m.reaction",
                                                        txn_id=txn_for("offer", event_id, key)))  # fmt: skip
        await self.store.state.set(_offers_key(event_id), " ".join(offers))
        return event_id

    async def answer(self, owner: str, uin: int, accept: bool, reason: str = "") -> str:
        """Send the answer to QQ, record it, edit the prompt; the text to tell the user."""
        request = await self.store.friend_requests.get(owner, uin)
        if request is None or request.state != FriendRequestState.PENDING:
            raise CommandError(f"There is no pending friend request from {uin}; type `requests` to see them.")
        account = self.accounts.get(owner)
        if account is None:
            raise CommandError("Answering needs a QQ login; type `login <QQ number>` first.")
        try:
            if accept:
                await account.qq.accept_request(uin)
            else:
                await account.qq.reject_request(uin, reason)
        except errors.QQError as exc:
            raise CommandError(f"QQ did not take the answer: {exc}. The request is still pending.") from None
        await self.store.friend_requests.answer(owner, uin, FriendRequestState.ACCEPTED if accept else FriendRequestState.REJECTED)
        label = await self.puppets.label(uin)
        if accept:
            account.friends.add(uin)
            await self.puppets.ensure(uin)
            outcome = f"{ACCEPT} Accepted: {label} is now your friend."
        else:
            outcome = f"{REJECT} Rejected" + (f": {reason}" if reason else ".")
        if request.prompt_room_id and request.prompt_event_id:
            await self._edit_prompt(request.prompt_room_id, request.prompt_event_id,
                                    self._prompt_text(label, uin, request.reason, outcome))  # fmt: skip
            await self._withdraw_offers(request.prompt_room_id, request.prompt_event_id)
        if accept:
            await self.puppets.befriended(account.qq, uin)  # their presence, at once
        return outcome

    async def _edit_prompt(self, room: str, event_id: str, text: str) -> None:
        """The prompt now shows its outcome, edited in place (no second message)."""
        new = notice_content(text)
        content = {**notice_content(f"* {text}"), "m.new_content": new,
                   "m.relates_to": {"rel_type": "m.replace", "event_id": event_id}}  # fmt: skip
        await self.matrix.send(room, content, txn_id=txn_for("outcome", event_id, text))

    async def _withdraw_offers(self, room: str, prompt_event_id: str) -> None:
        """The bot's own ✅/❌ go once the request is answered: nothing left to click."""
        key = _offers_key(prompt_event_id)
        for offer in (await self.store.state.get(key) or "").split():
            try:
                await self.matrix.redact(room, offer, txn_id=txn_for("withdraw", offer), reason="answered")
            except MatrixError as exc:
                log.info("could not withdraw a reaction offer", event_id=offer, error=str(exc))
        await self.store.state.set(key, None)

    async def reacted(self, owner: str, prompt_event_id: str, key: str) -> str | None:
        """A reaction on a prompt: the outcome text, or None if it was not an answer."""
        answer = reaction_answer(key)
        request = await self.store.friend_requests.by_prompt(prompt_event_id)
        if answer is None or request is None or request.owner_mxid != owner or request.state != FriendRequestState.PENDING:
            return None
        return await self.answer(owner, request.from_uin, answer)


def _offers_key(prompt_event_id: str) -> str:
    return f"offers:{prompt_event_id}"
