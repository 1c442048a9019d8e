"""Matrix → QQ: the outbox. What the portal's owner sends is stored, split into pieces
of at most 700 bytes, each with its CLTMSG SEQ, before anything goes to QQ; one sender
per QQ account then sends the pieces in order (so each portal keeps its order).

    portal message ──enqueue (SEQ stored)──▶ outbox ──CLTMSG, same SEQ on every retry──▶ QQ
        RES=0 ─▶ sent; when every piece of the event is sent, the bot marks it read
        RES=3 ─▶ the reply itself came after the penalty window: send the same piece again
        RES=20 ─▶ log in again, then the same piece (again at once: with backoff)
        no answer / garbled ─▶ the same SEQ once the server answers again: its probe
            (qq_sessions/outages.py) says so within a second; the sender's backoff otherwise
        NULL / RES=5 / unsendable ─▶ failed, and a reply notice in the portal says why
    waiting more than WAITING_NOTICE ─▶ one reply notice "waiting for QQ…" in the portal

The sender also paces itself to the server's limit (5 messages in 5 s), so a burst
waits a few seconds instead of earning a 20 s penalty; the pacing starts from the
stored send times, so a restarted bridge does not send a sixth message too soon.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time

import structlog

from qqbridge.bridge.notices import notice_content, txn_for
from qqbridge.bridge.ports import Matrix
from qqbridge.bridge.qq_sessions.accounts import QQAccount
from qqbridge.bridge.qq_sessions.backoff import Backoff
from qqbridge.bridge.qq_sessions.outages import QQServer, clock_time, outage_reason
from qqbridge.matrix.api import MatrixError
from qqbridge.metrics import Metrics
from qqbridge.qq import errors, split_message
from qqbridge.store import Store
from qqbridge.store.rows import OutgoingMessage

log = structlog.get_logger(__name__)

RATE_COUNT, RATE_WINDOW = 5, 5.0  # docs/protocol.md §5 CLTMSG: a sixth message within 5 s is refused
WAITING_NOTICE = 30.0  # protocol seconds (scaled by qq.time_scale) before "waiting for QQ…"
WAITING_NOTICE_FLOOR = 1.0  # real seconds: never sooner, however small the scale


@dataclasses.dataclass
class _Trouble:
    """One sender's recent failures: its backoff, and RES=20s in a row."""

    backoff: Backoff
    losses: int = 0


class Outbox:
    """`store`: the outbox's rows; `matrix`: its notices and read receipts; `time_scale`:
    the protocol's seconds (qq.time_scale)."""

    def __init__(self, store: Store, matrix: Matrix, metrics: Metrics, *, time_scale: float = 1.0) -> None:
        self.store, self.matrix, self.metrics = store, matrix, metrics
        self._wakers: dict[str, asyncio.Event] = {}
        self._enqueued: dict[str, asyncio.Event] = {}  # for the waiting-notice watchers
        self._scale = time_scale
        self._receipts: set[asyncio.Task[None]] = set()

    async def enqueue(self, owner: str, room_id: str, event_id: str, target: int, text: str) -> None:
        """Store the pieces with their SEQs (a repeated event stores nothing), then wake the sender."""
        await self.store.outbox.enqueue(owner, room_id, event_id, target, split_message(text))
        self.wake(owner)

    def wake(self, owner: str) -> None:
        self._wakers.setdefault(owner, asyncio.Event()).set()
        self._enqueued.setdefault(owner, asyncio.Event()).set()

    async def run(self, account: QQAccount) -> None:
        """The sender of one QQ account; runs as long as the account does."""
        wake = self._wakers.setdefault(account.mxid, asyncio.Event())
        sent_at: collections.deque[float] = collections.deque(maxlen=RATE_COUNT)
        # What this account sent before a restart still counts on QQ's side.
        for when_ms in await self.store.outbox.recent_send_times(account.mxid, RATE_COUNT):
            sent_at.append(time.monotonic() - max(0.0, time.time() - when_ms / 1000))
        trouble = _Trouble(Backoff(0.5 * self._scale, 60.0 * self._scale))
        server = account.server
        watcher = asyncio.create_task(self._tell_waiting(account), name=f"waiting notices {account.uin}")
        try:
            while True:
                wake.clear()
                rows = await self.store.outbox.pending(account.mxid)
                if not rows:
                    await wake.wait()
                    continue
                for row in rows:
                    await server.until_up()  # while QQ is out, only its probe talks to it
                    await self._pace(sent_at)
                    if await self._send(account, row, trouble):
                        sent_at.append(time.monotonic())
                    else:
                        break  # something passing went wrong: read the outbox again after the pause
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _pace(self, sent_at: collections.deque[float]) -> None:
        if len(sent_at) == RATE_COUNT:
            wait = sent_at[0] + RATE_WINDOW * self._scale * 1.05 - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    async def _send(self, account: QQAccount, row: OutgoingMessage, trouble: _Trouble) -> bool:
        """One piece. True when it is done with (sent or failed for good)."""
        server = account.server
        mark, began = server.recoveries, time.time()
        try:
            await account.qq.send_message(row.target_uin, row.text, seq=row.seq)
        except errors.RateLimited:
            log.warning("QQ said too fast (RES=3): its penalty window delays this user's messages",
                        uin=account.uin, outbox_id=row.outbox_id)  # fmt: skip
            self.metrics.failures.labels("qq_rate_limited").inc()
            await self.store.outbox.note_attempt(row.outbox_id, "QQ: too fast (RES=3)")
            return False  # the refusal arrived after its window: go again
        except errors.NotLoggedIn:
            # Once: log in again and resend at once. Again right after a new login: the
            # server ends every session, and a login-CLTMSG loop must have pauses.
            trouble.losses += 1
            if trouble.losses > 1:
                await asyncio.sleep(trouble.backoff.next())
            try:
                await account.session_lost()
            except errors.QQError as exc:
                await self.store.outbox.note_attempt(row.outbox_id, str(exc))
                await self._wait_for_qq(server, exc, mark, began, trouble)
            return False
        except (errors.ServerUnavailable, errors.OutcomeUnknown, errors.RemoteProtocolError) as exc:
            await self.store.outbox.note_attempt(row.outbox_id, str(exc))
            await self._wait_for_qq(server, exc, mark, began, trouble)
            return False
        except errors.NullReply:
            await self._failed(row, "QQ refused this message (it answered with an empty reply).")
            return True
        except errors.IllegalAccount:
            await self._failed(row, f"QQ says {row.target_uin} is not an account it knows.")
            return True
        except errors.QQError as exc:
            await self._failed(row, f"QQ did not take this message: {exc}")
            return True
        trouble.backoff.reset()
        trouble.losses = 0
        await self.store.outbox.mark_sent(row.outbox_id)
        await self._mark_read_when_complete(row)
        return True

    @staticmethod
    async def _wait_for_qq(server: QQServer, exc: errors.QQError, mark: int, began: float, trouble: _Trouble) -> None:
        """After a failure: until the server answers again if it is out (its probe
        tells, within a second of its return), else the sender's own backoff."""
        if outage_reason(exc) is not None:
            await server.failed(exc, began, mark, trouble.backoff.next())
        else:
            await asyncio.sleep(trouble.backoff.next())

    async def _tell_waiting(self, account: QQAccount) -> None:
        """A message still here WAITING_NOTICE (scaled) after it was written gets one reply
        notice in its portal ("waiting for QQ…"); its read receipt follows once QQ took
        it. One notice covers what waits in that portal at the time, so an outage with
        a busy chat says it once per WAITING_NOTICE, not once per message."""
        limit = max(WAITING_NOTICE * self._scale, WAITING_NOTICE_FLOOR)
        enqueued = self._enqueued.setdefault(account.mxid, asyncio.Event())
        told: set[str] = set()  # events covered by a notice
        while True:
            try:
                enqueued.clear()
                rows = await self.store.outbox.pending(account.mxid)
                told &= {row.event_id for row in rows}  # the sent ones need no memory
                waiting = [row for row in rows if row.event_id not in told]
                if not waiting:
                    await enqueued.wait()
                    continue
                oldest = waiting[0]
                due = oldest.created_at / 1000 + limit - time.time()
                if due > 0:
                    await asyncio.sleep(due)  # anything enqueued meanwhile is younger
                    continue
                events = list(dict.fromkeys(row.event_id for row in waiting if row.room_id == oldest.room_id))
                told.update(events)
                await self._say_waiting(account, oldest, len(events) - 1)
            except asyncio.CancelledError:
                raise
            except Exception:  # the store or the homeserver: try again in a while
                log.warning("could not tell about waiting messages", uin=account.uin, exc_info=True)
                await asyncio.sleep(limit)

    async def _say_waiting(self, account: QQAccount, row: OutgoingMessage, more: int) -> None:
        since = account.unreachable_since
        if since is not None:
            why = f"QQ is out of reach since {clock_time(since)}"
        elif account.server.down:
            why = "QQ does not answer"
        else:
            why = f"QQ has not taken it yet (it takes {RATE_COUNT} messages in {RATE_WINDOW:g} s at most; a burst waits its turn)"
        after = f" (and the {more} after it here)" if more else ""
        text = (f"⏳ Waiting for QQ… this message{after} is not sent yet: {why}. It is kept and will be sent, in "
                "order, as soon as QQ takes it; I mark it read then.")  # fmt: skip
        try:
            await self.matrix.send(row.room_id, notice_content(text, reply_to=row.event_id),
                                          txn_id=txn_for("waiting", row.event_id))  # fmt: skip
        except MatrixError as exc:
            log.info("could not say a message waits for QQ", event_id=row.event_id, error=str(exc))

    async def _failed(self, row: OutgoingMessage, why: str) -> None:
        log.info("message refused by QQ", outbox_id=row.outbox_id, why=why)
        self.metrics.failures.labels("qq_refused").inc()
        await self.store.outbox.mark_failed(row.outbox_id, why)
        content = notice_content(f"⚠ Not delivered: {why}", reply_to=row.event_id)
        await self.matrix.send(row.room_id, content, txn_id=txn_for("refused", row.outbox_id))

    async def _mark_read_when_complete(self, row: OutgoingMessage) -> None:
        pieces = await self.store.outbox.by_event(row.event_id)
        if all(piece.state == "sent" for piece in pieces):
            self.metrics.messages.labels("matrix_to_qq").inc()
            self.metrics.latency.labels("matrix_to_qq").observe(time.time() - row.created_at / 1000)
            # The receipt is for the user's eyes: the next piece need not wait for it.
            task = asyncio.create_task(self._mark_read(row.room_id, row.event_id))
            self._receipts.add(task)
            task.add_done_callback(self._receipts.discard)

    async def _mark_read(self, room_id: str, event_id: str) -> None:
        try:
            await self.matrix.mark_read(room_id, event_id)
        except MatrixError as exc:
            log.info("could not mark a message read", event_id=event_id, error=str(exc))
