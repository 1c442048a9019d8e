"""Messages each way, stored before they cross: the QQ inbound queue (`qq_inbound`,
what GetMsgEx returned, until relayed to Matrix) and the outbox (`outbox`, what
Matrix sent, with its CLTMSG SEQ, until QQ accepted it). BRIDGE.md section 6.

    inbound.add_batch ──> pending ──mark_relayed──> relayed
                             └─────mark_failed──> failed
    outbox.enqueue ──> pending ──mark_sent──> sent
     (SEQ stored)       │  ↺ note_attempt
                        └────mark_failed──> failed

Only a pending row moves, so a message is never both relayed and failed; marking a
row again with the state it has is a no-op (a retry after a crash), with another
state a `ConflictError`. Two repositories: `store.inbound` and `store.outbox`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from qqbridge.store import checks, seq
from qqbridge.store.database import Database, Row
from qqbridge.store.errors import ConflictError, InvalidValueError, NotFoundError
from qqbridge.store.repository import Repository
from qqbridge.store.rows import InboundMessage, InboundState, OutboxState, OutgoingMessage

# The purpose the outbox's SEQs are issued under (`store.seqs.last(mxid, CLTMSG_PURPOSE)`).
CLTMSG_PURPOSE = "cltmsg"

_INBOUND_COLUMNS = (
    "inbound_id, owner_mxid, account_uin, getmsg_seq, idx, kind, sender_uin, content, state,"
    " matrix_event_id, error, fetched_at, relayed_at"
)
_OUTGOING_COLUMNS = (
    "outbox_id, owner_mxid, room_id, event_id, part, target_uin, text, seq, state, attempts, error, created_at, sent_at"
)
_PENDING = "pending"  # the same text in InboundState and OutboxState

T = TypeVar("T")

# -- QQ -> Matrix ---------------------------------------------------------------------


def _inbound_values(idx: int, event: Any) -> tuple[int, int, str]:
    where = f"event {idx}"
    if not isinstance(event, (tuple, list)) or len(event) != 3:
        raise InvalidValueError(f"{where} must be (kind, sender_uin, content), not {event!r}")
    kind, sender_uin, content = event
    # What the server sent, checked only as far as the columns need: an event the
    # bridge cannot read must still be stored, to be reported rather than lost.
    kind = checks.integer(f"{where}: kind", kind, 0, checks.BIGINT_MAX)
    sender_uin = checks.integer(f"{where}: sender_uin", sender_uin, 0, checks.BIGINT_MAX)
    if not isinstance(content, str):
        raise InvalidValueError(f"{where}: content must be a string, not {content!r}")
    return kind, sender_uin, checks.printable(content)


# -- Matrix -> QQ ---------------------------------------------------------------------


# -- shared ---------------------------------------------------------------------------

# table -> (its id column, its columns, what to call a row in messages)
_TABLES = {
    "qq_inbound": ("inbound_id", _INBOUND_COLUMNS, "inbound message"),
    "outbox": ("outbox_id", _OUTGOING_COLUMNS, "outgoing message"),
}


async def _finish(
    db: Database, table: str, from_row: Callable[[Row], T], row_id: int, state: str, assignments: str, *values: Any
) -> T:
    """Move a pending row to `state`, setting `assignments` ($1 is the id, $2 the
    state, $3... `values`). Already in `state`: returned unchanged. Else an error."""
    key, columns, what = _TABLES[table]
    row_id = _row_id(row_id)
    async with db.transaction():
        row = await db.fetchrow(
            f"UPDATE {table} SET state = $2, {assignments} WHERE {key} = $1 AND state = ${len(values) + 3}"
            f" RETURNING {columns}",
            row_id,
            str(state),
            *values,
            _PENDING,
        )
        if row is None:
            row = await db.fetchrow(f"SELECT {columns} FROM {table} WHERE {key} = $1", row_id)
    if row is None:
        raise NotFoundError(f"no {what} {row_id}")
    if row["state"] != state:
        raise ConflictError(f"{what} {row_id} is already {row['state']}, it cannot become {state}")
    return from_row(row)


def _pending_where(owner_mxid: str | None) -> tuple[str, list[Any]]:
    if owner_mxid is None:
        return "state = $1", [_PENDING]
    return "owner_mxid = $1 AND state = $2", [checks.text("owner_mxid", owner_mxid), _PENDING]


def _row_id(value: Any) -> int:
    return checks.integer("id", value, 1, checks.BIGINT_MAX)


class InboundStore(Repository):
    """QQ -> Matrix: what GetMsgEx returned, until relayed (table `qq_inbound`)."""

    async def add_batch(
        self, owner_mxid: str, account_uin: int, getmsg_seq: int, events: Sequence[Any]
    ) -> int:
        """Store one GetMsgEx reply, `events` being its (MT, UN, MG) triples oldest first;
        return how many were new. All or nothing, in one transaction.

        A reply fetched again with the same SEQ (a retry after a crash, which the server
        answers with the same reply) is not stored twice: events already stored at their
        position are skipped. If a stored position holds a *different* event, the SEQ was
        reused for another reply (a retry after the server forgot it, 10 minutes on):
        `ConflictError`, nothing stored — skipping would lose those messages silently.
        Message text is kept as it came; the NUL PostgreSQL cannot store becomes `\\x00`.
        An empty reply stores nothing and does not touch the database.
        """
        now_ms = self._now_ms()
        checks.text("owner_mxid", owner_mxid)
        account_uin = checks.uin(account_uin)
        getmsg_seq = checks.integer("getmsg_seq", getmsg_seq, 1, seq.SEQ_MAX)
        if not isinstance(events, (list, tuple)):
            raise InvalidValueError(f"events must be a list of (kind, sender_uin, content), not {events!r}")
        rows = [_inbound_values(idx, event) for idx, event in enumerate(events)]
        if not rows:
            return 0
        new = 0
        async with self._db.transaction():
            await checks.user_exists(self._db, owner_mxid)
            stored = await self._db.fetch(
                "SELECT idx, kind, sender_uin, content FROM qq_inbound WHERE owner_mxid = $1 AND getmsg_seq = $2",
                owner_mxid,
                getmsg_seq,
            )
            known = {row["idx"]: (row["kind"], row["sender_uin"], row["content"]) for row in stored}
            for idx, values in enumerate(rows):
                if idx in known:
                    if known[idx] != values:
                        raise ConflictError(
                            f"GetMsgEx SEQ {getmsg_seq} of {owner_mxid} was stored before with other messages"
                            f" (event {idx} differs): the SEQ was reused for a new reply"
                        )
                    continue
                new += await self._db.execute(
                    "INSERT INTO qq_inbound (owner_mxid, account_uin, getmsg_seq, idx, kind, sender_uin, content,"
                    " state, fetched_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                    " ON CONFLICT (owner_mxid, getmsg_seq, idx) DO NOTHING",
                    owner_mxid,
                    account_uin,
                    getmsg_seq,
                    idx,
                    *values,
                    InboundState.PENDING.value,
                    now_ms,
                )
        return new

    async def batch_stored(self, owner_mxid: str, getmsg_seq: int) -> bool:
        """Whether a non-empty reply to GetMsgEx `getmsg_seq` is stored: then retrying that
        SEQ is pointless (and, once the server forgot it, would fetch new messages under
        an old SEQ). An empty reply stores nothing, and retrying it is harmless."""
        row = await self._db.fetchval(
            "SELECT 1 FROM qq_inbound WHERE owner_mxid = $1 AND getmsg_seq = $2 LIMIT 1",
            checks.text("owner_mxid", owner_mxid),
            checks.integer("getmsg_seq", getmsg_seq, 1, seq.SEQ_MAX),
        )
        return row is not None

    async def pending(self, owner_mxid: str | None = None, limit: int = 100) -> list[InboundMessage]:
        """Events not yet relayed, oldest first: everyone's, or `owner_mxid`'s."""
        where, values = _pending_where(owner_mxid)
        rows = await self._db.fetch(
            f"SELECT {_INBOUND_COLUMNS} FROM qq_inbound WHERE {where} ORDER BY inbound_id LIMIT ${len(values) + 1}",
            *values,
            checks.limit(limit),
        )
        return [InboundMessage.from_row(row) for row in rows]

    async def count_pending(self, owner_mxid: str | None = None) -> int:
        where, values = _pending_where(owner_mxid)
        return int(await self._db.fetchval(f"SELECT COUNT(*) FROM qq_inbound WHERE {where}", *values))

    async def owners_with_pending(self) -> set[str]:
        where, values = _pending_where(None)
        rows = await self._db.fetch(f"SELECT DISTINCT owner_mxid FROM qq_inbound WHERE {where}", *values)
        return {str(row["owner_mxid"]) for row in rows}

    async def mark_relayed(
        self, inbound_id: int, matrix_event_id: str | None
    ) -> InboundMessage:
        """The event was relayed: posted to Matrix as `matrix_event_id`, or (None) shown
        without an event of its own, as a presence change is."""
        now_ms = self._now_ms()
        return await _finish(
            self._db,
            "qq_inbound",
            InboundMessage.from_row,
            inbound_id,
            InboundState.RELAYED,
            "matrix_event_id = $3, relayed_at = $4",
            None if matrix_event_id is None else checks.text("matrix_event_id", matrix_event_id),
            now_ms,
        )

    async def mark_failed(self, inbound_id: int, error: str) -> InboundMessage:
        """The event will not be relayed; `error` says why."""
        return await _finish(
            self._db,
            "qq_inbound",
            InboundMessage.from_row,
            inbound_id,
            InboundState.FAILED,
            "error = $3",
            checks.printable(str(error)),
        )


class OutboxStore(Repository):
    """Matrix -> QQ: what a user sent, with its CLTMSG SEQ, until QQ took it (table `outbox`)."""

    async def enqueue(
        self, owner_mxid: str, room_id: str, event_id: str, target_uin: int, parts: Sequence[str]
    ) -> list[OutgoingMessage]:
        """Queue a Matrix event for QQ: one row per part (CLTMSG), each with a fresh SEQ
        issued in the same transaction, so a part is never sent without its SEQ stored.

        An event queued before is not queued again: its rows are returned as they were
        stored (the same SEQs, whatever `parts` says now). `ConflictError` if it was
        queued for another user, room or QQ account; `NotFoundError` for an unknown user.
        """
        now_ms = self._now_ms()
        checks.text("owner_mxid", owner_mxid)
        checks.text("room_id", room_id)
        checks.text("event_id", event_id)
        target_uin = checks.uin(target_uin)
        if not isinstance(parts, (list, tuple)) or not parts:
            raise InvalidValueError(f"parts must be a non-empty list of texts, not {parts!r}")
        for part, text in enumerate(parts):
            checks.text(f"part {part}", text)
        try:
            async with self._db.transaction():
                existing = await self.by_event(event_id)
                if not existing:
                    await checks.user_exists(self._db, owner_mxid)
                    for part, text in enumerate(parts):
                        row = await self._db.fetchrow(
                            "INSERT INTO outbox (owner_mxid, room_id, event_id, part, target_uin, text, seq, state,"
                            " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                            f" RETURNING {_OUTGOING_COLUMNS}",
                            owner_mxid,
                            room_id,
                            event_id,
                            part,
                            target_uin,
                            text,
                            await seq.issue(self._db, owner_mxid, CLTMSG_PURPOSE, now_ms),
                            OutboxState.PENDING.value,
                            now_ms,
                        )
                        assert row is not None  # an INSERT ... RETURNING returns its row
                        existing.append(OutgoingMessage.from_row(row))
                    return existing
        except ConflictError:
            # Another task queued the same event meanwhile (both found none, its insert
            # came first); everything of ours was rolled back, SEQs included.
            existing = await self.by_event(event_id)
            if not existing:
                raise
        first = existing[0]
        if (first.owner_mxid, first.room_id, first.target_uin) != (owner_mxid, room_id, target_uin):
            raise ConflictError(
                f"event {event_id} is already queued for {first.owner_mxid} in {first.room_id} to {first.target_uin}"
            )
        return existing

    async def by_event(self, event_id: str) -> list[OutgoingMessage]:
        """The parts queued for a Matrix event, in order (empty if none)."""
        rows = await self._db.fetch(
            f"SELECT {_OUTGOING_COLUMNS} FROM outbox WHERE event_id = $1 ORDER BY part", checks.text("event_id", event_id))
        return [OutgoingMessage.from_row(row) for row in rows]

    async def recent_send_times(self, owner_mxid: str, count: int) -> list[int]:
        """When QQ accepted the user's latest `count` pieces (Unix ms, oldest first): the
        sender's pacing, rebuilt after a restart so it never earns QQ's penalty."""
        rows = await self._db.fetch(
            "SELECT sent_at FROM outbox WHERE owner_mxid = $1 AND sent_at IS NOT NULL ORDER BY sent_at DESC LIMIT $2",
            checks.text("owner_mxid", owner_mxid),
            checks.limit(count),
        )
        return sorted(int(row["sent_at"]) for row in rows)

    async def pending(self, owner_mxid: str | None = None, limit: int = 100) -> list[OutgoingMessage]:
        """Parts not yet sent, in the order queued: everyone's, or `owner_mxid`'s."""
        where, values = _pending_where(owner_mxid)
        rows = await self._db.fetch(
            f"SELECT {_OUTGOING_COLUMNS} FROM outbox WHERE {where} ORDER BY outbox_id LIMIT ${len(values) + 1}",
            *values,
            checks.limit(limit),
        )
        return [OutgoingMessage.from_row(row) for row in rows]

    async def count_pending(self, owner_mxid: str | None = None) -> int:
        where, values = _pending_where(owner_mxid)
        return int(await self._db.fetchval(f"SELECT COUNT(*) FROM outbox WHERE {where}", *values))

    async def mark_sent(self, outbox_id: int) -> OutgoingMessage:
        """QQ accepted the part (RES=0)."""
        now_ms = self._now_ms()
        return await _finish(self._db, "outbox", OutgoingMessage.from_row, outbox_id, OutboxState.SENT, "sent_at = $3", now_ms)

    async def mark_failed(self, outbox_id: int, error: str) -> OutgoingMessage:
        """The part will not be sent (QQ refused it for good); `error` says why."""
        return await _finish(
            self._db,
            "outbox",
            OutgoingMessage.from_row,
            outbox_id,
            OutboxState.FAILED,
            "error = $3",
            checks.printable(str(error)),
        )

    async def note_attempt(self, outbox_id: int, error: str | None) -> OutgoingMessage:
        """One more attempt at sending a pending part, and why it did not go through
        (`error`, kept; None keeps the previous error). `ConflictError` if it is not pending."""
        outbox_id = _row_id(outbox_id)
        note = None if error is None else checks.printable(str(error))
        row = await self._db.fetchrow(
            "UPDATE outbox SET attempts = attempts + 1, error = COALESCE($2, error)"
            f" WHERE outbox_id = $1 AND state = $3 RETURNING {_OUTGOING_COLUMNS}",
            outbox_id,
            note,
            _PENDING,
        )
        if row is not None:
            return OutgoingMessage.from_row(row)
        current = await self._db.fetchval("SELECT state FROM outbox WHERE outbox_id = $1", outbox_id)
        if current is None:
            raise NotFoundError(f"no outgoing message {outbox_id}")
        raise ConflictError(f"outgoing message {outbox_id} is {current}, not pending")
