"""The bridge core: the composition of the parts, and the router of the homeserver's
stored events, taken in order.

    appservice endpoint ──stores──▶ inbox ──wake──▶ Bridge._inbox_loop ──▶ Bridge.handle
        └─ one worker per room, so rooms run side by side and each keeps its order:
           bot invited, control room message → ControlRoom (a command, or the awaited
           password) · owner left → control room closed, Portals.owner_left
           event in a portal → PortalIntake (→ Outbox, or a `!qq` command, or a notice)
           reaction on a friend-request prompt → FriendRequests (the answer)
    QQAccount pollers ──events──▶ Inbound (stored, then relayed) · senders ◀── Outbox

Events from the bot and from puppets are ignored, so nothing the bridge says comes
back to it; in a portal only its owner is relayed.
"""

from __future__ import annotations

import asyncio
import dataclasses

import structlog

from qqbridge.bridge.contacts.avatars import Media
from qqbridge.bridge.contacts.friend_sync import FriendSync
from qqbridge.bridge.contacts.portals import Portals
from qqbridge.bridge.contacts.presence import friend_of_a_running_account
from qqbridge.bridge.contacts.puppets import Puppets
from qqbridge.bridge.control_room.commands import CommandError, CommandTable
from qqbridge.bridge.control_room.contact_commands import ContactCommands
from qqbridge.bridge.control_room.friend_requests import FriendRequests
from qqbridge.bridge.control_room.permissions import Permissions
from qqbridge.bridge.control_room.room import ControlRoom
from qqbridge.bridge.notices import one_line, txn_for
from qqbridge.bridge.notifier import Notifier
from qqbridge.bridge.ports import Matrix, QQFactory, RoomEncryption
from qqbridge.bridge.qq_sessions.account_state import AccountState
from qqbridge.bridge.qq_sessions.backoff import Backoff
from qqbridge.bridge.qq_sessions.registry import Accounts
from qqbridge.bridge.relay.inbound import Inbound
from qqbridge.bridge.relay.outbox import Outbox
from qqbridge.bridge.relay.portal_intake import PortalIntake
from qqbridge.config import Config
from qqbridge.matrix.content import json_object
from qqbridge.matrix.encryption import KeyMissing, Undecryptable
from qqbridge.matrix.homeserver_health import HomeserverHealth
from qqbridge.metrics import Metrics
from qqbridge.qq import model
from qqbridge.store import Store
from qqbridge.store.rows import InboxEvent, LoginState

log = structlog.get_logger(__name__)

INBOX_PAGE = 200  # events read from the store at a time
INBOX_IN_FLIGHT = 2000  # events in hand at once, across all rooms
HANDLING_DEADLINE = 180.0  # seconds for one event (a login waits on QQ); then it is set aside
STORE_RETRY_CAP = 30.0  # seconds at most between tries while the store fails (claiming, marking handled)


@dataclasses.dataclass
class _RoomQueue:
    """A room's events in hand: they take the lock in arrival order (asyncio.Lock is FIFO)."""

    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    waiting: int = 0


class Bridge:
    def __init__(
        self, config: Config, store: Store, matrix: Matrix, qq_factory: QQFactory, metrics: Metrics | None = None,
        *, homeserver: HomeserverHealth | None = None, media: Media | None = None,
        encryption: RoomEncryption | None = None,
    ) -> None:  # fmt: skip
        """`homeserver`: the watcher of the homeserver's health (HomeserverAPI.health),
        which the relay waits on while it is down; `media`: where the puppets' and the
        bot's pictures go (avatars.HomeserverMedia; None: no pictures); `encryption`:
        how encrypted events are read (None: they are not, and the person is told)."""
        self.config = config
        self.metrics = metrics or Metrics()
        self.metrics.refresh_with(self._refresh_metrics)
        self.started = False
        self.store = store
        self.matrix = matrix
        self.encryption = encryption
        self.permissions = Permissions(config.permissions)
        self.notifier = notifier = Notifier(store.users, matrix)
        self.puppets = Puppets(config, store, matrix, watched=self._watched, media=media)
        self.portals = Portals(store, matrix, self.puppets, encrypt=self._encrypt_portal if encryption else None)
        self.outbox = Outbox(store, matrix, self.metrics, time_scale=config.qq.time_scale)
        self.friend_sync = FriendSync(self.puppets, synced=self._synced)
        scale = config.qq.time_scale
        self.accounts = Accounts(
            qq_factory, store, self._from_qq, notifier.tell_user,
            poll_fast=config.qq.poll_fast_seconds, poll_idle=config.qq.poll_idle_seconds, backoff_cap=60.0 * scale,
            time_scale=scale, logins_per_second=config.qq.logins_per_second,
            max_requests_per_second=config.qq.max_requests_per_second,
            alert=lambda mxid, text: notifier.tell_user(mxid, text, notify=True),  # a stopped login needs an answer
            on_login=self.friend_sync.sync, sender=self.outbox.run, metrics=self.metrics,
        )  # fmt: skip
        self.friend_requests = FriendRequests(store, matrix, notifier, self.puppets, self.accounts)
        self.inbound = Inbound(
            store, matrix, notifier, self.metrics, accounts=self.accounts, puppets=self.puppets,
            portals=self.portals, friend_requests=self.friend_requests, homeserver=homeserver,
        )  # fmt: skip
        table = CommandTable()
        self.control = ControlRoom(
            store=store, matrix=matrix, notifier=notifier, permissions=self.permissions, accounts=self.accounts,
            table=table, doctor=self._doctor,
        )  # fmt: skip
        ContactCommands(
            table, accounts=self.accounts, puppets=self.puppets, portals=self.portals,
            friend_requests=self.friend_requests, requests=store.friend_requests, friend_sync=self.friend_sync,
        )  # fmt: skip
        self.portal_intake = PortalIntake(
            notifier=notifier, inbox=store.inbox, users=store.users, names=self.puppets, commands=self.control,
            accounts=self.accounts, outbox=self.outbox,
            media_base=config.homeserver.public_url or config.homeserver.url,
        )  # fmt: skip
        self._wake = asyncio.Event()
        self._rooms: dict[str, _RoomQueue] = {}  # rooms with events in hand
        self._slots = asyncio.Semaphore(INBOX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[object]] = set()
        self._inbox_task: asyncio.Task[None] | None = None

    # ---- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        await self.matrix.ensure_registered(self.config.bot_mxid)
        if self.encryption is not None:
            await self.encryption.start()
        users = await self.store.users.every()  # both read before any poller runs: 1,000 of
        waiting = await self.store.inbound.owners_with_pending()  # them slow every read down
        for user in users:
            if user.login_state == LoginState.LOGGED_IN and user.qq_uin and user.password_md5:
                await self.accounts.resume(user.mxid, user.qq_uin, user.password_md5)
        for mxid in waiting:
            self.inbound.wake(mxid)  # QQ messages stored before a restart: shown now, QQ up or not
        await self.control.interrupted_logins()
        released = await self.store.inbox.release_claimed()  # claimed when the bridge stopped
        if released:
            log.info("events being handled when the bridge stopped are handled again", count=released)
        self._inbox_task = asyncio.create_task(self._inbox_loop(), name="inbox")
        self._keep(asyncio.create_task(self._janitor(), name="janitor"))
        self._keep(asyncio.create_task(self.puppets.presence.run(), name="presence"))
        self._keep(asyncio.create_task(self.puppets.avatars.show_bot(self.config.bot_mxid), name="bot avatar"))
        self.wake()  # events stored before a restart are handled now
        self.started = True

    async def stop(self) -> None:
        if self._inbox_task is not None:
            self._inbox_task.cancel()
        tasks = [t for t in (self._inbox_task, *self._tasks) if t is not None]
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.inbound.close()
        await self.accounts.close()

    def wake(self) -> None:
        self._wake.set()

    async def _from_qq(self, owner: str, seq: int, events: list[model.Event]) -> None:
        """The pollers' delivery goes to the inbound relay (built after the accounts,
        which it consults)."""
        await self.inbound.receive(owner, seq, events)

    def _synced(self, mxid: str) -> None:
        """A friend sync is through: what waited for it goes now (QQ messages stored and
        outbox rows queued before a restart)."""
        self.inbound.wake(mxid)
        self.outbox.wake(mxid)

    async def _encrypt_portal(self, owner: str) -> bool:
        """A new portal is encrypted when the config says so (encryption.default) or the
        owner's control room is."""
        if self.encryption is None:
            return False
        if self.config.encryption.default:
            return True
        user = await self.store.users.get(owner)
        return user is not None and bool(user.control_room_id) and await self.encryption.is_encrypted(
            str(user.control_room_id)
        )

    async def _doctor(self) -> str:
        """The admin's `doctor` command: the same checks as `qqbridge doctor`."""
        from qqbridge.doctor import diagnose, report

        return report(await diagnose(self.config, store=self.store))

    def _keep(self, task: asyncio.Task[object]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _janitor(self) -> None:
        """Hourly: forget what was delivered longer ago than database.retention_days."""
        while True:
            try:
                pruned = await self.store.prune(self.config.database.retention_days * 86400)
                log.info("pruned delivered rows", **dataclasses.asdict(pruned))
            except Exception:
                log.exception("pruning failed; trying again in an hour")
            await asyncio.sleep(3600)

    async def _refresh_metrics(self) -> None:
        states = [account.state.value for account in self.accounts.running.values()]
        for state in AccountState:
            self.metrics.accounts.labels(state.value).set(states.count(state.value))
        queues = self.metrics.queue_size
        queues.labels("qq_to_matrix").set(await self.store.inbound.count_pending())
        queues.labels("matrix_to_qq").set(await self.store.outbox.count_pending())
        queues.labels("matrix_inbox").set(await self.store.inbox.count_pending())

    async def user_exists(self, mxid: str) -> bool:
        """The appservice user query: the bot and any well-formed puppet exist. Nothing is
        registered here: anyone can make the homeserver ask (by inviting a made-up puppet
        ID), and a puppet is registered only when the bridge uses it (`ensure_registered`)."""
        uin = self.config.puppet_uin(mxid)
        return mxid == self.config.bot_mxid or (uin is not None and model.legal_uin(uin))

    # ---- the inbox ---------------------------------------------------------------------

    async def _inbox_loop(self) -> None:
        """Each wake claims *every* pending event, a page at a time (a burst of 10,000
        is taken whole, not 100 a wake), starting one task per event; the room's lock
        keeps each room in order while rooms run side by side. At most
        `INBOX_IN_FLIGHT` events are in hand at once (a page more while the loop waits
        for a slot), so a flood waits in the store, not in memory.

        Exactly once by construction: an event is handled only by the task started for
        the claim that moved it from pending to handling in the store (`store.inbox.claim`),
        and no read of the inbox can return it as pending after that, whenever it ran."""
        backoff = Backoff(0.5, STORE_RETRY_CAP)
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._claim_all()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception:  # the store is failing: what is pending stays so, claimed at the next try
                pause = backoff.next()
                log.exception("could not take events from the inbox; trying again", pause=round(pause, 2))
                await asyncio.sleep(pause)
                self._wake.set()

    async def _claim_all(self) -> None:
        while True:
            await self._slots.acquire()  # never claim what cannot start soon
            try:
                batch = await self.store.inbox.claim(INBOX_PAGE)
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                return
            for index, event in enumerate(batch):
                if index:
                    await self._slots.acquire()
                self._keep(asyncio.create_task(self._handle_in_order(event), name=f"event {event.event_id}"))

    async def _handle_in_order(self, event: InboxEvent) -> None:
        room = self._rooms.setdefault(event.room_id, _RoomQueue())
        room.waiting += 1
        try:
            async with room.lock:
                error = None
                try:
                    async with asyncio.timeout(HANDLING_DEADLINE):
                        await self.handle(event)
                except TimeoutError:
                    log.error("event handling took too long; set aside", event_id=event.event_id, type=event.type)
                    error = f"it took more than {HANDLING_DEADLINE:.0f} s"
                    await self._report_failure(event, error)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.exception("event handling failed", event_id=event.event_id, type=event.type)
                    error = f"{type(exc).__name__}: {exc}"
                    await self._report_failure(event, error)
                await self._mark_handled(event, error)
        finally:
            self._slots.release()
            room.waiting -= 1
            if not room.waiting:
                self._rooms.pop(event.room_id, None)

    async def _mark_handled(self, event: InboxEvent, error: str | None) -> None:
        """Record the outcome. While the store fails, the event stays claimed (never
        handled a second time by this bridge) and the mark is tried again with pauses;
        a bridge stopped meanwhile handles it again at its next start, where the
        transaction ids of what it sent make that harmless."""
        backoff = Backoff(0.5, STORE_RETRY_CAP)
        while True:
            try:
                await self.store.inbox.mark_handled(event.event_id, error)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                pause = backoff.next()
                log.exception("could not mark an event handled; trying again", event_id=event.event_id,
                              pause=round(pause, 2))  # fmt: skip
                await asyncio.sleep(pause)

    async def _report_failure(self, event: InboxEvent, error: str) -> None:
        """A user's message the bridge could not act on is answered, never dropped silently."""
        if event.type != "m.room.message" or self.is_bridge_user(event.sender):
            return
        text = (f"⚠ The bridge could not handle this message ({error}); it was not acted on or sent. "
                "Try again, or ask the bridge's admin to look at its log.")  # fmt: skip
        try:
            await self.notifier.notice(event.room_id, text, txn_id=txn_for("failed", event.event_id), reply_to=event.event_id)
        except Exception as exc:  # the event is marked failed all the same: never handled again
            log.warning("could not report a failure to the user", event_id=event.event_id, error=str(exc))

    def is_bridge_user(self, mxid: str) -> bool:
        return self.config.is_bridge_user(mxid)

    async def handle(self, event: InboxEvent) -> None:
        if self.is_bridge_user(event.sender):
            return  # our own echo
        if self.encryption is not None:
            if event.type == "m.room.encryption" and event.state_key == "":
                self.encryption.room_encrypted(event.room_id)
            elif event.type == "m.room.member":
                self.encryption.members_changed(event.room_id)
            elif event.type == "m.room.encrypted":
                decrypted = await self._decrypted(self.encryption, event)
                if decrypted is None:
                    return
                event = decrypted
        content = event.content if isinstance(event.content, dict) else {}
        if event.type == "m.room.member":
            membership = content.get("membership")
            if event.state_key == self.config.bot_mxid and membership == "invite":
                await self.control.invited(event.room_id, event.sender, event.event_id)
            elif membership in ("leave", "ban") and event.state_key == event.sender:
                await self.control.member_left(event.room_id, event.sender)
                await self.portals.owner_left(event.room_id, event.sender)
            return
        portal = await self.store.portals.by_room(event.room_id)
        if portal is not None:
            await self.portal_intake.handle(portal, event, content)
        elif event.type == "m.room.message":
            await self.control.message(event, content)
        elif event.type == "m.room.encrypted":
            await self.control.encrypted(event.room_id, event.sender, event.event_id)
        elif event.type == "m.reaction":
            relates = json_object(content.get("m.relates_to"))
            if relates.get("rel_type") == "m.annotation" and isinstance(relates.get("key"), str):
                try:  # the answered prompt shows the outcome itself (edited in place)
                    await self.friend_requests.reacted(event.sender, str(relates.get("event_id")), relates["key"])
                except CommandError as exc:
                    await self.notifier.notice(event.room_id, str(exc), txn_id=txn_for("reaction", event.event_id),
                                      reply_to=event.event_id)  # fmt: skip

    async def _decrypted(self, encryption: RoomEncryption, event: InboxEvent) -> InboxEvent | None:
        """The event as its sender wrote it, to be routed like any other; None (and the
        person told) when it cannot be read. The plaintext is never stored or logged."""
        raw = {"event_id": event.event_id, "sender": event.sender, "room_id": event.room_id,
               "origin_server_ts": event.origin_server_ts or 0, "type": event.type, "content": event.content}  # fmt: skip
        try:
            plain = await encryption.decrypt(event.room_id, raw)
        except KeyMissing as missing:
            why = ("your client withheld its key from me" + (f" ({one_line(missing.withheld, 100)})")
                   + ". Please send it again, after verifying the bridge if your client asks for that"
                   if missing.withheld else "its key did not reach me. Please send it again")  # fmt: skip
        except Undecryptable:
            why = "it does not decrypt (damaged or replayed). Please send it again"
        else:
            content = plain.get("content")
            return dataclasses.replace(event, type=str(plain.get("type")),
                                       content=content if isinstance(content, dict) else {})  # fmt: skip
        log.info("an encrypted event could not be read", event_id=event.event_id, room_id=event.room_id)
        await self.notifier.notice(event.room_id, f"⚠ I could not read your encrypted message: {why}.",
                                   txn_id=txn_for("undecryptable", event.event_id), reply_to=event.event_id)  # fmt: skip
        return None

    def _watched(self, uin: int) -> bool:
        return friend_of_a_running_account(self.accounts, uin)
