"""QQ → Matrix: what GetMsgEx returned is stored first, then relayed, in order per portal.

    poller ──events──▶ store.inbound.add_batch (idempotent by account, GetMsgEx SEQ, index)
        ──▶ relay the pending rows, one lane per contact side by side:
            MT=9   the puppet posts the text in the portal (created if need be), plain text
            MT=99  the puppet's presence, set only on change
            MT=2   a friend-request prompt in the control room
            MT=3/4 a notice that the contact accepted / rejected the user's request
                   (accepted: the new friend's presence is shown at once)
        Matrix send transaction ids come from the stored row, so relaying it again after
        a crash returns the event already sent instead of a second one.

Order is kept where a person sees it, per portal: a contact's rows (its messages,
friend request and answers) go one after another, in the order QQ gave them, while
the lanes of different contacts go side by side, up to USER_SENDS relays in flight per
user and ALL_SENDS for the whole bridge, so a burst from many friends moves at the
homeserver's pace rather than one round trip at a time. A contact's status changes
(MT=99) have lanes and bounds of their own (USER_STATUSES, ALL_STATUSES): presence never
waits behind a queue of messages.

A homeserver (or database) that is down leaves rows pending, while the poller goes on
fetching and storing. For the homeserver, the relay task waits on the bridge's one
homeserver watcher (`matrix.homeserver_health`, which probes it once a second) and
goes the moment it answers, so every user's relay resumes within a probe of its
return; for anything else that may pass (a 5xx, the database) it backs off. Either
way no lane starts another row once one has met such a failure, so a lane never skips
a row. A row that cannot be relayed for a reason that will not pass — a sender that is
not a QQ number (the server lied), content or a value the homeserver or the store
refuses — is set aside (marked failed) with one notice to the user, and the rows after
it flow: one poison row never blocks a user's later messages. An error nobody foresaw
(a bug) gets UNKNOWN_TRIES tries, then is set aside the same way.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING

import structlog

from qqbridge.bridge.notices import one_line, quoted, txn_for
from qqbridge.bridge.notifier import Notifier
from qqbridge.bridge.ports import Matrix
from qqbridge.bridge.qq_sessions.backoff import Backoff
from qqbridge.matrix.api import MatrixError
from qqbridge.matrix.homeserver_health import AlwaysAnswering, HomeserverHealth
from qqbridge.metrics import Metrics
from qqbridge.qq import errors, model
from qqbridge.store import Store
from qqbridge.store.errors import ConflictError, InvalidValueError, NotFoundError
from qqbridge.store.rows import InboundMessage

if TYPE_CHECKING:
    from qqbridge.bridge.contacts.portals import Portals
    from qqbridge.bridge.contacts.puppets import Puppets
    from qqbridge.bridge.control_room.friend_requests import FriendRequests
    from qqbridge.bridge.qq_sessions.accounts import QQAccount
    from qqbridge.bridge.qq_sessions.registry import Accounts

log = structlog.get_logger(__name__)

UNKNOWN_TRIES = 5  # about 5 s of backoff
USER_SENDS = 16  # a user's messages and notices being relayed at once (each lane one at a time)
ALL_SENDS = 64  # the same for the whole bridge
USER_STATUSES = 8  # a user's contacts' status changes being shown at once
ALL_STATUSES = 32  # the same for the whole bridge
IN_HAND = 256  # rows of one user read from the store and not yet done, at most
PAGE = 128  # rows read beyond those in hand at a time
RECHECK_OUTAGE = 60.0  # while the homeserver is down, look again anyway this often (no request goes out)
_KINDS: dict[int, str] = {model.EventKind.MESSAGE: "message", model.EventKind.STATUS_CHANGE: "status change",
          model.EventKind.FRIEND_REQUEST: "friend request", model.EventKind.REQUEST_ACCEPTED: "friend request answer",
          model.EventKind.REQUEST_REJECTED: "friend request answer"}  # fmt: skip
_QUOTED = (model.EventKind.MESSAGE, model.EventKind.FRIEND_REQUEST, model.EventKind.REQUEST_REJECTED)


class Unrelayable(Exception):
    """A stored row that can never be relayed as it is (the message says why)."""


def passing(exc: BaseException) -> bool:
    """Worth trying again and again: the homeserver was unreachable, busy or failing, or
    the network was. (A store error is not: the database being down stops the relay
    before any row, at `store.inbound.pending`; one that strikes a row gets UNKNOWN_TRIES.)"""
    if isinstance(exc, MatrixError):
        return exc.status in (0, 429) or exc.status >= 500
    return isinstance(exc, (OSError, TimeoutError))


def hopeless(exc: BaseException) -> bool:
    """Will fail the same way however often it is tried."""
    return isinstance(exc, (Unrelayable, MatrixError, InvalidValueError, NotFoundError, ConflictError, errors.QQError))


class Inbound:
    """Storing is the pollers' part; relaying runs in one task per user, so a slow or
    absent homeserver never stops the pollers from fetching (the QQ server would drop
    the oldest messages past 1,000 waiting; stored here, they wait safely)."""

    def __init__(
        self, store: Store, matrix: Matrix, notifier: Notifier, metrics: Metrics, *, accounts: Accounts,
        puppets: Puppets, portals: Portals, friend_requests: FriendRequests,
        homeserver: HomeserverHealth | AlwaysAnswering | None = None,
    ) -> None:  # fmt: skip
        """`homeserver`: the watcher that says when a homeserver that was down answers
        again (matrix.homeserver_health); without one, the relay backs off on its own."""
        self.store, self.matrix, self.notifier, self.metrics = store, matrix, notifier, metrics
        self.accounts, self.puppets, self.portals, self.friend_requests = accounts, puppets, portals, friend_requests
        self._wakers: dict[str, asyncio.Event] = {}
        self._relayers: dict[str, asyncio.Task[None]] = {}
        self._tries: dict[int, int] = {}  # inbound_id → failures of a kind nobody foresaw
        self._runs: dict[str, _Run] = {}  # the users whose rows are being relayed now
        self.user_sends, self.user_statuses = USER_SENDS, USER_STATUSES
        self.all_sends, self.all_statuses = asyncio.Semaphore(ALL_SENDS), asyncio.Semaphore(ALL_STATUSES)
        self.homeserver: HomeserverHealth | AlwaysAnswering = homeserver or AlwaysAnswering()
        if isinstance(homeserver, HomeserverHealth):
            homeserver.watch(metrics, waiting=self.store.inbound.count_pending)

    async def receive(self, owner: str, seq: int, events: list[model.Event]) -> None:
        """The pollers' delivery: store (raising keeps the SEQ for a refetch), then
        hand over to the user's relay task."""
        account = self.accounts.get(owner)
        user = None if account else await self.store.users.get(owner)
        uin = account.uin if account else user.qq_uin if user else None
        if uin is None:
            log.warning("QQ events for a user who is no longer bridged", owner=owner, count=len(events))
            return
        await self.store.inbound.add_batch(owner, uin, seq, [model.event_fields(event) for event in events])
        self.wake(owner)

    def wake(self, owner: str) -> None:
        """Relay what is stored for `owner`, starting the relay task if need be."""
        self._wakers.setdefault(owner, asyncio.Event()).set()
        run = self._runs.get(owner)
        if run is not None:
            run.stir()  # a relay under way reads the new rows too
        task = self._relayers.get(owner)
        if task is None or task.done():
            self._relayers[owner] = asyncio.create_task(self._relay_forever(owner), name=f"relay {owner}")

    async def close(self) -> None:
        for task in self._relayers.values():
            task.cancel()
        await asyncio.gather(*self._relayers.values(), return_exceptions=True)

    async def _relay_forever(self, owner: str) -> None:
        wake = self._wakers[owner]
        backoff = Backoff(0.5, 60.0)
        while True:
            await wake.wait()
            wake.clear()
            try:
                await self.relay_pending(owner)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the homeserver is down or failing: the rows stay pending
                self.metrics.failures.labels("matrix_unreachable").inc()
                if passing(exc) and not self.homeserver.answering:
                    # An outage: the watcher tells it once and wakes everyone when it ends.
                    log.debug("relay to Matrix waits for the homeserver", owner=owner, error=str(exc))
                    await self.homeserver.wait_answering(RECHECK_OUTAGE)
                else:
                    pause = backoff.next()
                    log.warning("relay to Matrix failed; trying again", owner=owner, error=str(exc),
                                pause=round(pause, 1))  # fmt: skip
                    await asyncio.sleep(pause)
                wake.set()

    async def relay_pending(self, owner: str) -> None:
        """Relay every stored row of `owner`: each lane (a contact's messages and
        notices, or a contact's status) in order, lanes side by side (see _Run). Raises
        when the homeserver or the database is unreachable or failing (the rest stays
        pending, and no lane starts another row); a row that cannot be relayed for good
        is set aside, and the next one goes."""
        run = _Run(self, owner)
        self._runs[owner] = run
        try:
            await run.go()
        finally:
            if self._runs.get(owner) is run:
                del self._runs[owner]

    async def relay_row(self, owner: str, row: InboundMessage) -> None:
        """Relay one row and mark it relayed, or set it aside; raises (the row stays
        pending) on a failure that may pass, or on a bug's first UNKNOWN_TRIES - 1 tries."""
        try:
            event_id = await self._relay(owner, row)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if passing(exc):
                raise
            if not hopeless(exc):
                tries = self._tries[row.inbound_id] = self._tries.get(row.inbound_id, 0) + 1
                log.exception("relay failed", inbound_id=row.inbound_id, tries=tries)
                if tries < UNKNOWN_TRIES:
                    raise
            await self._set_aside(owner, row, exc)
            return
        self._tries.pop(row.inbound_id, None)
        await self.store.inbound.mark_relayed(row.inbound_id, event_id)
        if row.kind == model.EventKind.MESSAGE:
            self.metrics.messages.labels("qq_to_matrix").inc()
            self.metrics.latency.labels("qq_to_matrix").observe(time.time() - row.fetched_at / 1000)

    async def _set_aside(self, owner: str, row: InboundMessage, exc: Exception) -> None:
        """Mark the row failed, telling the user once what it was and why (the notice's
        transaction id comes from the row, so a retry never says it twice)."""
        self._tries.pop(row.inbound_id, None)
        why = _why(exc)
        log.warning("QQ event set aside", owner=owner, inbound_id=row.inbound_id, kind=row.kind, error=str(exc))
        kind = "matrix_refused" if isinstance(exc, MatrixError) else "qq_protocol" if hopeless(exc) else "internal"
        self.metrics.failures.labels(kind).inc()
        who = str(row.sender_uin)
        if model.legal_uin(row.sender_uin):
            try:
                who = await self.puppets.label(row.sender_uin)
            except Exception:  # the label is a nicety; the notice is not
                log.warning("no label for a set-aside event's sender", uin=row.sender_uin, exc_info=True)
        what = _KINDS.get(row.kind, f"event (MT={row.kind})")
        said = f": {quoted(row.content, 100)}" if row.content and row.kind in _QUOTED else ""
        text = f"⚠ A QQ {what} from {who} could not be shown here, and was set aside: {why}{said}"
        try:
            await self.notifier.notice_user(owner, text, txn_id=txn_for("set-aside", row.inbound_id))
        except MatrixError as notice_exc:
            if passing(notice_exc):
                raise  # the row stays pending; the same notice is tried again with it
            log.warning("could not tell the user about a set-aside event", owner=owner, error=str(notice_exc))
        await self.store.inbound.mark_failed(row.inbound_id, f"{type(exc).__name__}: {exc}")

    async def _relay(self, owner: str, row: InboundMessage) -> str | None:
        sender = row.sender_uin
        if not model.legal_uin(sender):
            raise Unrelayable(f"{sender} is not a QQ number ({model.MIN_UIN} to {model.MAX_UIN}); the QQ server sent a bad sender")
        match model.event_from(row.kind, sender, row.content):
            case model.Message(_, text):
                return await self._message(owner, sender, text, row.inbound_id)
            case model.StatusChange(_, status):
                await self.puppets.set_presence(sender, status)
                return None
            case model.FriendRequest(_, reason):
                account = self.accounts.get(owner)
                if account is not None:
                    await self.puppets.learn_nick(account.qq, sender)
                return await self.friend_requests.prompt(owner, sender, reason, cause=row.inbound_id)
            case model.RequestAccepted():
                account = self.accounts.get(owner)
                if account is not None:
                    account.friends.add(sender)
                    await self._befriended(account, sender)
                text = f"{await self.puppets.label(sender)} accepted your friend request."
            case model.RequestRejected(_, reason):
                label = await self.puppets.label(sender)
                text = f"{label} rejected your friend request" + (f": {quoted(reason)}" if reason else ".")
            case model.UnknownEvent(kind, _, content):
                label = await self.puppets.label(sender)
                text = f"QQ sent something this bridge does not understand (MT={kind} from {label}: {quoted(content)})."
        return await self.notifier.notice_user(owner, text, txn_id=txn_for("in", row.inbound_id))

    async def _message(self, owner: str, sender: int, text: str, inbound_id: int) -> str:
        """MT=9: the puppet says it in the portal (created if need be), plain text."""
        account = self.accounts.get(owner)
        if account is not None:
            await self.puppets.learn_nick(account.qq, sender)
        stranger = account is not None and sender not in account.friends
        # The portal's room as stored, read without a write in the common case (a
        # burst spends its time in the store's one writer otherwise); room_for when
        # there is none yet, or a stranger's portal to mark as a friend's.
        portal = await self.store.portals.get(owner, sender)
        if portal is not None and portal.room_id and (stranger or not portal.stranger):
            room_id = portal.room_id
        else:
            room_id = await self.portals.room_for(owner, sender, stranger=stranger)
        puppet = await self.puppets.ensure(sender)
        # Plain text, never HTML; and it mentions no one, so `@room` from QQ pings nobody.
        content = {"msgtype": "m.text", "body": text, "m.mentions": {}}
        return await self.matrix.send(room_id, content, txn_id=txn_for("in", inbound_id), user_id=puppet)

    async def _befriended(self, account: QQAccount, uin: int) -> None:
        """A contact accepted the user's request: their presence now, not at the next
        status change or sync. A failure that may pass keeps the row pending (it is
        tried again with it); any other is logged: the notice matters more."""
        try:
            await self.puppets.befriended(account.qq, uin)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if passing(exc):
                raise
            log.warning("could not show a new friend's presence", uin=uin, error=str(exc))


Lane = tuple[str, int]  # ("contact" or "status", the contact's UIN)


def lane_of(row: InboundMessage) -> Lane:
    """The rows that must go one after another: a contact's status changes, and
    everything else the contact sent (messages in their portal, a friend request and
    its answer in the control room)."""
    return ("status" if row.kind == model.EventKind.STATUS_CHANGE else "contact", row.sender_uin)


class _Run:
    """One pass over a user's pending rows (`Inbound.relay_pending`).

    Reads the oldest pending rows (up to IN_HAND not yet done), hands each to its lane
    in order, and each lane relays its rows one after another, taking a slot of the
    user's and of the bridge's bound for each (status lanes their own). A row leaves
    the hand only once the store says relayed or failed, so a row is never read again
    while in a lane; and a row done while a read is under way stays known as done
    until that read has returned (`done_during_read`): on PostgreSQL the read may run
    on another pooled connection and still see it pending. The first failure that is raised (one that may pass, or a bug's
    early tries) stops every lane before its next row; the rows left stay pending, and
    it is raised once what was in flight is done."""

    def __init__(self, inbound: Inbound, owner: str) -> None:
        self.inbound, self.owner = inbound, owner
        self.lanes: dict[Lane, collections.deque[InboundMessage]] = {}
        self.workers: set[asyncio.Task[None]] = set()
        self.in_hand: set[int] = set()
        self.reading = False  # a read of the pending rows is under way
        self.done_during_read: set[int] = set()  # rows that read may still return as pending
        self.failure: BaseException | None = None
        self.changed = asyncio.Event()  # a row done, a lane stopped, or new rows stored
        self.stirred = False
        self.sends = asyncio.Semaphore(inbound.user_sends)
        self.statuses = asyncio.Semaphore(inbound.user_statuses)

    def stir(self) -> None:
        self.stirred = True
        self.changed.set()

    async def go(self) -> None:
        try:
            while self.failure is None:
                self.stirred = False
                more = await self._take()
                if not self.in_hand:
                    break
                # Read again when rows are left in the store (or were stored since) and
                # there is room for a good part of a page, or when all is done.
                while self.failure is None and self.in_hand:
                    if (more or self.stirred) and len(self.in_hand) <= IN_HAND - PAGE // 2:
                        break
                    self.changed.clear()
                    await self.changed.wait()
            if self.workers:
                await asyncio.gather(*self.workers, return_exceptions=True)
        finally:
            for worker in self.workers:
                worker.cancel()
            if self.workers:
                await asyncio.gather(*self.workers, return_exceptions=True)
        if self.failure is not None:
            raise self.failure

    async def _take(self) -> bool:
        """Read the pending rows and hand the new ones to their lanes; whether more
        may be waiting in the store."""
        limit = len(self.in_hand) + PAGE
        self.reading = True
        try:
            rows = await self.inbound.store.inbound.pending(self.owner, limit=limit)
        finally:
            self.reading = False
        done, self.done_during_read = self.done_during_read, set()
        more = len(rows) == limit
        for row in rows:
            if row.inbound_id in self.in_hand or row.inbound_id in done:
                continue
            if len(self.in_hand) >= IN_HAND:
                return True  # the rest (all newer) wait for room
            self.in_hand.add(row.inbound_id)
            lane = lane_of(row)
            queue = self.lanes.get(lane)
            if queue is None:
                queue = self.lanes[lane] = collections.deque()
                worker = asyncio.create_task(self._lane(lane, queue), name=f"relay {self.owner} {lane}")
                self.workers.add(worker)
                worker.add_done_callback(self.workers.discard)
            queue.append(row)
        return more

    async def _lane(self, lane: Lane, queue: collections.deque[InboundMessage]) -> None:
        inbound = self.inbound
        status = lane[0] == "status"
        mine, everyone = (self.statuses, inbound.all_statuses) if status else (self.sends, inbound.all_sends)
        try:
            while queue and self.failure is None:
                row = queue[0]
                async with mine, everyone:
                    if self.failure is not None:
                        break
                    try:
                        await inbound.relay_row(self.owner, row)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # the row stays pending; so does every row after it
                        if self.failure is None:
                            self.failure = exc
                        break
                queue.popleft()
                self.in_hand.discard(row.inbound_id)
                if self.reading:
                    self.done_during_read.add(row.inbound_id)
                self.changed.set()
        finally:
            if self.lanes.get(lane) is queue:
                del self.lanes[lane]
            for row in queue:  # left pending, read again by the next pass
                self.in_hand.discard(row.inbound_id)
            self.changed.set()


def _why(exc: Exception) -> str:
    """Why a row was set aside, on one line, for the user."""
    if isinstance(exc, Unrelayable):
        return str(exc)
    if isinstance(exc, MatrixError):
        return f"the homeserver refused it ({exc.errcode}, HTTP {exc.status})"
    return one_line(f"{type(exc).__name__}: {exc}", 200)
