"""The bridge core: takes the homeserver's stored events in order and acts on them.

    appservice endpoint ──stores──▶ inbox ──wake──▶ Bridge._inbox_loop
        └─ one worker per room, so rooms run side by side and each keeps its order:
           bot invited → control room (or a refusal) · control room message → command
           or the awaited password · owner left → control room closed
    QQAccount pollers ──events──▶ Bridge.receive_qq_events

Events from the bot and from puppets are ignored, so nothing the bridge says comes
back to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import structlog

from qqbridge.bridge.accounts import Accounts
from qqbridge.bridge.control_room import ControlRoom
from qqbridge.bridge.permissions import Permissions
from qqbridge.bridge.ports import Matrix, QQFactory
from qqbridge.config import Config
from qqbridge.matrix.api import MatrixError
from qqbridge.qq import model

log = structlog.get_logger(__name__)


def txn_for(*parts: object) -> str:
    """A Matrix transaction id derived from what caused the send: repeating the work
    after a crash repeats the id, and the homeserver returns the first event again."""
    return "qqb" + hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:32]


class Bridge:
    def __init__(self, config: Config, store: Any, matrix: Matrix, qq_factory: QQFactory) -> None:
        self.config = config
        self.store = store
        self.matrix = matrix
        self.permissions = Permissions(config.permissions)
        scale = config.qq.time_scale
        self.accounts = Accounts(
            qq_factory, store, self.receive_qq_events, self.tell_user,
            poll_fast=config.qq.poll_fast, poll_idle=config.qq.poll_idle, backoff_cap=60.0 * scale,
        )  # fmt: skip
        self.control = ControlRoom(self)
        self._wake = asyncio.Event()
        self._room_locks: dict[str, asyncio.Lock] = {}
        self._inflight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._inbox_task: asyncio.Task[None] | None = None

    # ---- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        await self.matrix.ensure_registered(self.config.bot_mxid)
        for user in await self.store.list_users():
            if user.login_state == "logged_in" and user.qq_uin and user.password_md5:
                await self.accounts.resume(user.mxid, user.qq_uin, user.password_md5)
        self._inbox_task = asyncio.create_task(self._inbox_loop(), name="inbox")
        self.wake()  # events stored before a restart are handled now

    async def stop(self) -> None:
        if self._inbox_task is not None:
            self._inbox_task.cancel()
        tasks = [t for t in (self._inbox_task, *self._tasks) if t is not None]
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.accounts.close()

    def wake(self) -> None:
        self._wake.set()

    async def user_exists(self, mxid: str) -> bool:
        """The appservice user query: the bot and any well-formed puppet exist."""
        uin = self.config.puppet_uin(mxid)
        if mxid != self.config.bot_mxid and (uin is None or not 10000 <= uin <= 4294967295):
            return False
        try:
            await self.matrix.ensure_registered(mxid)
        except MatrixError:
            log.exception("could not register a user on query", mxid=mxid)
            return False
        return True

    # ---- the inbox ---------------------------------------------------------------------

    async def _inbox_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for event in await self.store.pending_events():
                if event.event_id in self._inflight:
                    continue
                self._inflight.add(event.event_id)
                task = asyncio.create_task(self._handle_in_order(event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _handle_in_order(self, event: Any) -> None:
        lock = self._room_locks.setdefault(event.room_id, asyncio.Lock())
        async with lock:
            error = None
            try:
                await self.handle(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("event handling failed", event_id=event.event_id, type=event.type)
                error = f"{type(exc).__name__}: {exc}"
            finally:
                self._inflight.discard(event.event_id)
            await self.store.mark_event_handled(event.event_id, error)

    def is_bridge_user(self, mxid: str) -> bool:
        return mxid == self.config.bot_mxid or self.config.puppet_uin(mxid) is not None

    async def handle(self, event: Any) -> None:
        if self.is_bridge_user(event.sender):
            return  # our own echo
        content = event.content if isinstance(event.content, dict) else {}
        if event.type == "m.room.member":
            membership = content.get("membership")
            if event.state_key == self.config.bot_mxid and membership == "invite":
                await self.control.invited(event.room_id, event.sender, event.event_id)
            elif membership in ("leave", "ban") and event.state_key == event.sender:
                await self.control.member_left(event.room_id, event.sender)
        elif event.type == "m.room.message":
            await self.control.message(event.room_id, event.sender, event.event_id, content)

    # ---- talking to users --------------------------------------------------------------

    async def notice(self, room_id: str, text: str, *, txn_id: str | None = None) -> str:
        content = {"msgtype": "m.notice", "body": text}
        return await self.matrix.send(room_id, content, txn_id=txn_id or txn_for("notice", uuid.uuid4()))

    async def tell_user(self, mxid: str, text: str) -> None:
        """A notice in the user's control room; logged if they have none."""
        user = await self.store.get_user(mxid)
        if user is None or not user.control_room_id:
            log.warning("no control room to tell", mxid=mxid, text=text)
            return
        await self.notice(user.control_room_id, text)

    # ---- QQ → Matrix -------------------------------------------------------------------

    async def receive_qq_events(self, mxid: str, seq: int, events: list[model.Event]) -> None:
        """Until portals exist, QQ events are shown in the control room. Transaction ids
        come from (account, GetMsgEx SEQ, index): a batch fetched again after a crash
        shows the same events, not new ones."""
        user = await self.store.get_user(mxid)
        if user is None or not user.control_room_id:
            return
        for index, event in enumerate(events):
            await self.notice(user.control_room_id, describe_event(event), txn_id=txn_for("qq", mxid, seq, index))


def describe_event(event: model.Event) -> str:
    match event:
        case model.Message(sender, text):
            return f"{sender}: {text}"
        case model.StatusChange(uin, status):
            return f"{uin} is now {status.name.lower()}"
        case model.FriendRequest(sender, reason):
            return f"{sender} asks to be your friend: {reason}"
        case model.RequestAccepted(sender):
            return f"{sender} accepted your friend request"
        case model.RequestRejected(sender, reason):
            return f"{sender} rejected your friend request: {reason}"
        case _:
            return f"QQ sent something this bridge does not understand: {event}"
