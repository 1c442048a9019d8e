"""Matrix → QQ: the outbox. What the portal's owner sends is stored, split into pieces
of at most 700 bytes, each with its CLTMSG SEQ, before anything goes to QQ; one sender
per QQ account then sends the pieces in order (so each portal keeps its order).

    portal message ──enqueue (SEQ stored)──▶ outbox ──CLTMSG, same SEQ on every retry──▶ QQ
        RES=0 ─▶ sent; when every piece of the event is sent, the bot marks it read
        RES=3 ─▶ the reply itself came after the penalty window: send the same piece again
        RES=20 ─▶ log in again, then the same piece · no answer ─▶ backoff, same SEQ
        NULL / RES=5 / unsendable ─▶ failed, and a reply notice in the portal says why

The sender also paces itself to the server's limit (5 messages in 5 s), so a burst
waits a few seconds instead of earning a 20 s penalty; the pacing starts from the
stored send times, so a restarted bridge does not send a sixth message too soon.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING, Any

import structlog

from qqbridge.bridge.accounts import Backoff, QQAccount
from qqbridge.bridge.notices import notice_content, txn_for
from qqbridge.matrix.api import MatrixError
from qqbridge.qq import errors, split_message

if TYPE_CHECKING:
    from qqbridge.bridge.core import Bridge

log = structlog.get_logger(__name__)

RATE_COUNT, RATE_WINDOW = 5, 5.0  # PROTOCOL.md §5 CLTMSG: a sixth message within 5 s is refused


class Outbox:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.store = bridge.store
        self._wakers: dict[str, asyncio.Event] = {}
        self._scale = bridge.config.qq.time_scale
        self._receipts: set[asyncio.Task[None]] = set()

    async def enqueue(self, owner: str, room_id: str, event_id: str, target: int, text: str) -> None:
        """Store the pieces with their SEQs (a repeated event stores nothing), then wake the sender."""
        await self.store.enqueue_outgoing(owner, room_id, event_id, target, split_message(text))
        self.wake(owner)

    def wake(self, owner: str) -> None:
        self._wakers.setdefault(owner, asyncio.Event()).set()

    async def run(self, account: QQAccount) -> None:
        """The sender of one QQ account; runs as long as the account does."""
        wake = self._wakers.setdefault(account.mxid, asyncio.Event())
        sent_at: collections.deque[float] = collections.deque(maxlen=RATE_COUNT)
        # What this account sent before a restart still counts on QQ's side.
        for when_ms in await self.store.recent_send_times(account.mxid, RATE_COUNT):
            sent_at.append(time.monotonic() - max(0.0, time.time() - when_ms / 1000))
        backoff = Backoff(0.5 * self._scale, 60.0 * self._scale)
        while True:
            wake.clear()
            rows = await self.store.pending_outgoing(account.mxid)
            if not rows:
                await wake.wait()
                continue
            for row in rows:
                await self._pace(sent_at)
                if await self._send(account, row, backoff):
                    sent_at.append(time.monotonic())
                else:
                    break  # something passing went wrong: read the outbox again after the pause

    async def _pace(self, sent_at: collections.deque[float]) -> None:
        if len(sent_at) == RATE_COUNT:
            wait = sent_at[0] + RATE_WINDOW * self._scale * 1.05 - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    async def _send(self, account: QQAccount, row: Any, backoff: Backoff) -> bool:
        """One piece. True when it is done with (sent or failed for good)."""
        try:
            await account.qq.send_message(row.target_uin, row.text, seq=row.seq)
        except errors.RateLimited:
            log.warning("QQ said too fast (RES=3): its penalty window delays this user's messages",
                        uin=account.uin, outbox_id=row.outbox_id)  # fmt: skip
            self.bridge.metrics.failures.labels("qq_rate_limited").inc()
            await self.store.note_outgoing_attempt(row.outbox_id, "QQ: too fast (RES=3)")
            return False  # the refusal arrived after its window: go again
        except errors.NotLoggedIn:
            try:
                await account.session_lost()
            except errors.QQError as exc:
                await self.store.note_outgoing_attempt(row.outbox_id, str(exc))
                await asyncio.sleep(backoff.next())
            return False
        except (errors.ServerUnavailable, errors.OutcomeUnknown, errors.RemoteProtocolError) as exc:
            await self.store.note_outgoing_attempt(row.outbox_id, str(exc))
            await asyncio.sleep(backoff.next())
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
        backoff.reset()
        await self.store.mark_outgoing_sent(row.outbox_id)
        await self._mark_read_when_complete(row)
        return True

    async def _failed(self, row: Any, why: str) -> None:
        log.info("message refused by QQ", outbox_id=row.outbox_id, why=why)
        self.bridge.metrics.failures.labels("qq_refused").inc()
        await self.store.mark_outgoing_failed(row.outbox_id, why)
        content = notice_content(f"⚠ Not delivered: {why}", reply_to=row.event_id)
        await self.bridge.matrix.send(row.room_id, content, txn_id=txn_for("refused", row.outbox_id))

    async def _mark_read_when_complete(self, row: Any) -> None:
        pieces = await self.store.get_outgoing_by_event(row.event_id)
        if all(piece.state == "sent" for piece in pieces):
            self.bridge.metrics.messages.labels("matrix_to_qq").inc()
            self.bridge.metrics.latency.labels("matrix_to_qq").observe(time.time() - row.created_at / 1000)
            # The receipt is for the user's eyes: the next piece need not wait for it.
            task = asyncio.create_task(self._mark_read(row.room_id, row.event_id))
            self._receipts.add(task)
            task.add_done_callback(self._receipts.discard)

    async def _mark_read(self, room_id: str, event_id: str) -> None:
        try:
            await self.bridge.matrix.mark_read(room_id, event_id)
        except MatrixError as exc:
            log.info("could not mark a message read", event_id=event_id, error=str(exc))
