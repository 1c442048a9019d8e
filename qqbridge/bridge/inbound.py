"""QQ → Matrix: what GetMsgEx returned is stored first, then relayed in order.

    poller ──events──▶ store_inbound (idempotent by account, GetMsgEx SEQ, index)
        ──▶ relay each pending row:
            MT=9   the puppet posts the text in the portal (created if need be), plain text
            MT=99  the puppet's presence, set only on change
            MT=2   a friend-request prompt in the control room
            MT=3/4 a notice that the contact accepted / rejected the user's request
        Matrix send transaction ids come from the stored row, so relaying it again after
        a crash returns the event already sent instead of a second one.

A homeserver (or database) that is down leaves rows pending, while the poller goes on
fetching and storing. For the homeserver, the relay task waits on the bridge's one
homeserver watcher (`matrix.homeserver_health`, which probes it once a second) and
goes the moment it answers, so every user's relay resumes within a probe of its
return; for anything else that may pass (a 5xx, the database) it backs off. A row that
cannot be relayed for a reason that will not pass — a sender that is not a QQ number
(the server lied), content or a value the homeserver or the store refuses — is set
aside (marked failed) with one notice to the user, and the rows after it flow: one
poison row never blocks a user's later messages. An error nobody foresaw (a bug) gets
UNKNOWN_TRIES tries, then is set aside the same way.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from qqbridge.bridge.accounts import Backoff
from qqbridge.bridge.notices import one_line, quoted, txn_for
from qqbridge.matrix.api import MatrixError
from qqbridge.matrix.homeserver_health import AlwaysAnswering, HomeserverHealth
from qqbridge.qq import errors, model
from qqbridge.store.errors import ConflictError, InvalidValueError, NotFoundError

if TYPE_CHECKING:
    from qqbridge.bridge.core import Bridge

log = structlog.get_logger(__name__)

UNKNOWN_TRIES = 5  # about 5 s of backoff
RECHECK_OUTAGE = 60.0  # while the homeserver is down, look again anyway this often (no request goes out)
_KINDS = {9: "message", 99: "status change", 2: "friend request", 3: "friend request answer",
          4: "friend request answer"}  # fmt: skip


class Unrelayable(Exception):
    """A stored row that can never be relayed as it is (the message says why)."""


def as_row(event: model.Event) -> tuple[int, int, str]:
    """(MT, sender, content) as the protocol carried it."""
    match event:
        case model.Message(sender, text):
            return 9, sender, text
        case model.StatusChange(uin, status):
            return 99, uin, str(int(status))
        case model.FriendRequest(sender, reason):
            return 2, sender, reason
        case model.RequestAccepted(sender):
            return 3, sender, ""
        case model.RequestRejected(sender, reason):
            return 4, sender, reason
        case model.UnknownEvent(kind, sender, content):
            return kind, sender, content
    raise TypeError(event)


def passing(exc: BaseException) -> bool:
    """Worth trying again and again: the homeserver was unreachable, busy or failing, or
    the network was. (A store error is not: the database being down stops the relay
    before any row, at `pending_inbound`; one that strikes a row gets UNKNOWN_TRIES.)"""
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

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.store = bridge.store
        self._wakers: dict[str, asyncio.Event] = {}
        self._relayers: dict[str, asyncio.Task[None]] = {}
        self._tries: dict[int, int] = {}  # inbound_id → failures of a kind nobody foresaw
        watcher = getattr(bridge.matrix, "health", None)
        self.homeserver: HomeserverHealth | AlwaysAnswering = AlwaysAnswering()
        if isinstance(watcher, HomeserverHealth):
            self.homeserver = watcher
            watcher.watch(bridge.metrics, waiting=self.store.count_pending_inbound)

    async def receive(self, owner: str, seq: int, events: list[model.Event]) -> None:
        """The pollers' delivery: store (raising keeps the SEQ for a refetch), then
        hand over to the user's relay task."""
        account = self.bridge.accounts.get(owner)
        user = None if account else await self.store.get_user(owner)
        uin = account.uin if account else user.qq_uin if user else None
        if uin is None:
            log.warning("QQ events for a user who is no longer bridged", owner=owner, count=len(events))
            return
        await self.store.store_inbound(owner, uin, seq, [as_row(event) for event in events])
        self.wake(owner)

    def wake(self, owner: str) -> None:
        """Relay what is stored for `owner`, starting the relay task if need be."""
        self._wakers.setdefault(owner, asyncio.Event()).set()
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
                self.bridge.metrics.failures.labels("matrix_unreachable").inc()
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
        """Relay every stored row of `owner`, in order. Raises when the homeserver or the
        database is unreachable or failing (the rest stays pending); a row that cannot
        be relayed for good is set aside, and the next one goes."""
        while rows := await self.store.pending_inbound(owner):
            for row in rows:
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
                    continue
                self._tries.pop(row.inbound_id, None)
                await self.store.mark_inbound_relayed(row.inbound_id, event_id)
                if row.kind == 9:
                    self.bridge.metrics.messages.labels("qq_to_matrix").inc()
                    self.bridge.metrics.latency.labels("qq_to_matrix").observe(time.time() - row.fetched_at / 1000)

    async def _set_aside(self, owner: str, row: Any, exc: Exception) -> None:
        """Mark the row failed, telling the user once what it was and why (the notice's
        transaction id comes from the row, so a retry never says it twice)."""
        self._tries.pop(row.inbound_id, None)
        why = _why(exc)
        log.warning("QQ event set aside", owner=owner, inbound_id=row.inbound_id, kind=row.kind, error=str(exc))
        kind = "matrix_refused" if isinstance(exc, MatrixError) else "qq_protocol" if hopeless(exc) else "internal"
        self.bridge.metrics.failures.labels(kind).inc()
        who = str(row.sender_uin)
        if model.legal_uin(row.sender_uin):
            try:
                who = await self.bridge.puppets.label(row.sender_uin)
            except Exception:  # the label is a nicety; the notice is not
                log.warning("no label for a set-aside event's sender", uin=row.sender_uin, exc_info=True)
        what = _KINDS.get(row.kind, f"event (MT={row.kind})")
        said = f": {quoted(row.content, 100)}" if row.content and row.kind in (9, 2, 4) else ""
        text = f"⚠ A QQ {what} from {who} could not be shown here, and was set aside: {why}{said}"
        try:
            await self.bridge.notice_user(owner, text, txn_id=txn_for("set-aside", row.inbound_id))
        except MatrixError as notice_exc:
            if passing(notice_exc):
                raise  # the row stays pending; the same notice is tried again with it
            log.warning("could not tell the user about a set-aside event", owner=owner, error=str(notice_exc))
        await self.store.mark_inbound_failed(row.inbound_id, f"{type(exc).__name__}: {exc}")

    async def _relay(self, owner: str, row: Any) -> str | None:
        bridge, sender = self.bridge, row.sender_uin
        if not model.legal_uin(sender):
            raise Unrelayable(f"{sender} is not a QQ number (10000 to 4294967295); the QQ server sent a bad sender")
        if row.kind == 9:
            account = bridge.accounts.get(owner)
            if account is not None:
                await bridge.puppets.learn_nick(account.qq, sender)
            stranger = account is not None and sender not in account.friends
            room_id = await bridge.portals.room_for(owner, sender, stranger=stranger)
            puppet = await bridge.puppets.ensure(sender)
            # Plain text, never HTML; and it mentions no one, so `@room` from QQ pings nobody.
            content = {"msgtype": "m.text", "body": row.content, "m.mentions": {}}
            return await bridge.matrix.send(room_id, content, txn_id=txn_for("in", row.inbound_id), user_id=puppet)
        if row.kind == 99 and row.content in ("10", "20", "30"):
            await bridge.puppets.set_presence(sender, model.Status(int(row.content)))
            return None
        if row.kind == 2:
            account = bridge.accounts.get(owner)
            if account is not None:
                await bridge.puppets.learn_nick(account.qq, sender)
            return await bridge.friend_requests.prompt(owner, sender, row.content, cause=row.inbound_id)
        label = await bridge.puppets.label(sender)
        if row.kind == 3:
            account = bridge.accounts.get(owner)
            if account is not None:
                account.friends.add(sender)
            text = f"{label} accepted your friend request."
        elif row.kind == 4:
            text = f"{label} rejected your friend request" + (f": {quoted(row.content)}" if row.content else ".")
        else:
            text = f"QQ sent something this bridge does not understand (MT={row.kind} from {label}: {quoted(row.content)})."
        return await bridge.notice_user(owner, text, txn_id=txn_for("in", row.inbound_id))


def _why(exc: Exception) -> str:
    """Why a row was set aside, on one line, for the user."""
    if isinstance(exc, Unrelayable):
        return str(exc)
    if isinstance(exc, MatrixError):
        return f"the homeserver refused it ({exc.errcode}, HTTP {exc.status})"
    return one_line(f"{type(exc).__name__}: {exc}", 200)
