"""The appservice transactions the bridge has taken, and the Matrix inbox: every event
stored once, by its id, before the transaction is answered, and handled (or set aside
as failed) in order; `store.inbox`.

An event's state goes pending → handling → handled (or failed). `claim` moves
the oldest pending ones to 'handling' in one statement, and only the claimer handles
them: an event is claimed once, whatever else reads the inbox meanwhile, on SQLite and
on PostgreSQL alike (docs/reliability.md, "Exactly once"). Claims left by a bridge that
stopped in the middle are released at its next start.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from qqbridge.store.checks import inbox_event as _inbox_values
from qqbridge.store.checks import limit as _limit
from qqbridge.store.checks import printable as _printable
from qqbridge.store.checks import text as _text
from qqbridge.store.checks import to_json as _json
from qqbridge.store.errors import InvalidValueError, NotFoundError
from qqbridge.store.repository import Repository
from qqbridge.store.rows import InboxEvent, InboxState

# The homeserver may retry a transaction for a long while; its id must outlive that.
MIN_TXN_RETENTION_SECONDS = 24 * 60 * 60

_INBOX_COLUMNS = (
    "inbox_id, event_id, txn_id, room_id, sender, type, state_key, content, origin_server_ts,"
    " event_json, state, error, received_at, handled_at"
)


class InboxStore(Repository):
    """The homeserver's transactions and the Matrix inbox: each event stored once, claimed once, handled once."""

    async def record_transaction(self, txn_id: str, events: list[dict[str, Any]]) -> bool:
        """Store a homeserver transaction's events, once per transaction.

        A transaction is known by its id together with its event ids: Synapse on
        SQLite numbers transactions from 1 again after a restart once everything was
        delivered, so an id alone would make the bridge deaf to new events. Returns
        False, storing nothing, for a transaction recorded before. Otherwise stores
        it and every event (state 'pending') and returns True. All or nothing: if any
        event cannot be stored, neither is the transaction, so the homeserver's retry
        is taken afresh. An event id already in the inbox (from another transaction)
        is skipped, not an error.
        """
        now = self._now_ms()
        _text("txn_id", txn_id)
        if not isinstance(events, list):
            raise InvalidValueError(f"transaction {txn_id}: events must be a list")
        rows = [_inbox_values(txn_id, index, event) for index, event in enumerate(events)]
        digest = hashlib.sha256("\x00".join(str(values[0]) for values in rows).encode()).hexdigest()[:16]
        async with self._db.transaction():
            recorded = await self._db.fetchval(
                "INSERT INTO appservice_txn (txn_id, received_at, event_count) VALUES ($1, $2, $3)"
                " ON CONFLICT (txn_id) DO NOTHING RETURNING txn_id",
                f"{txn_id}#{digest}",
                now,
                len(events),
            )
            if recorded is None:
                return False
            for values in rows:
                await self._db.execute(
                    "INSERT INTO matrix_inbox (event_id, txn_id, room_id, sender, type, state_key, content,"
                    " origin_server_ts, event_json, state, received_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                    " ON CONFLICT (event_id) DO NOTHING",
                    *values,
                    InboxState.PENDING.value,
                    now,
                )
        return True

    async def pending(self, limit: int = 100, *, after: int = 0) -> list[InboxEvent]:
        """Events not yet handled, oldest first; those stored after inbox id `after`
        (a cursor, for paging through a long inbox)."""
        _limit(limit)
        rows = await self._db.fetch(
            f"SELECT {_INBOX_COLUMNS} FROM matrix_inbox WHERE state = $1 AND inbox_id > $2"
            " ORDER BY inbox_id LIMIT $3",
            InboxState.PENDING.value,
            int(after),
            limit,
        )
        return [InboxEvent.from_row(row) for row in rows]

    async def claim(self, limit: int = 100) -> list[InboxEvent]:
        """Take the oldest pending events for handling, oldest first: 'pending' becomes
        'handling' in one statement, so no other read (a page read on another pooled
        connection, another claim) can take them too. On PostgreSQL the rows are chosen
        once (a materialized CTE: a LIMIT in an IN-subquery may be evaluated again and take
        more) and locked as they are chosen, skipping those another claim holds (claims
        locking rows in different orders would deadlock); the outer `state = pending` is
        checked again on each row as it is updated, so two claims never both take one
        event. SQLite has one writer: the statement alone is enough."""
        _limit(limit)
        rows = await self._db.fetch(
            "WITH chosen AS MATERIALIZED (SELECT inbox_id FROM matrix_inbox WHERE state = $2"
            " ORDER BY inbox_id LIMIT $3 FOR UPDATE SKIP LOCKED)"
            " UPDATE matrix_inbox SET state = $1 WHERE state = $2 AND inbox_id IN (SELECT inbox_id FROM chosen)"
            f" RETURNING {_INBOX_COLUMNS}",
            InboxState.HANDLING.value,
            InboxState.PENDING.value,
            limit,
        )
        return sorted((InboxEvent.from_row(row) for row in rows), key=lambda event: event.inbox_id)

    async def release_claimed(self) -> int:
        """At start-up: events claimed by a bridge that stopped before it finished them go
        back to pending, to be handled now (a reply's transaction id comes from its event,
        so one that was sent already is not sent again). How many there were."""
        return await self._db.execute(
            "UPDATE matrix_inbox SET state = $1 WHERE state = $2", InboxState.PENDING.value, InboxState.HANDLING.value
        )

    async def count_pending(self) -> int:
        """How many events wait to be handled or are being handled (for `ping` and the metrics)."""
        return int(
            await self._db.fetchval(
                "SELECT COUNT(*) FROM matrix_inbox WHERE state IN ($1, $2)",
                InboxState.PENDING.value,
                InboxState.HANDLING.value,
            ))

    async def mark_handled(self, event_id: str, error: str | None = None) -> None:
        """The event has been handled: 'handled', or 'failed' with `error` saying why."""
        now = self._now_ms()
        _text("event_id", event_id)
        state = InboxState.HANDLED if error is None else InboxState.FAILED
        changed = await self._db.execute(
            "UPDATE matrix_inbox SET state = $2, error = $3, handled_at = $4 WHERE event_id = $1",
            event_id,
            state.value,
            None if error is None else _printable(str(error)),
            now,
        )
        if not changed:
            raise NotFoundError(f"no event {event_id} in the inbox")

    async def forget_content(self, event_id: str) -> None:
        """Blank what an inbox event said, as a Matrix redaction does: its content, and
        `unsigned` (which may repeat it). For the password message after `login`,
        whose text must not stay on disk. An event not in the inbox is nothing to do."""
        _text("event_id", event_id)
        async with self._db.transaction():
            raw = await self._db.fetchval("SELECT event_json FROM matrix_inbox WHERE event_id = $1", event_id)
            if raw is None:
                return
            event = json.loads(raw)
            event["content"] = {}
            event.pop("unsigned", None)
            await self._db.execute(
                "UPDATE matrix_inbox SET content = $2, event_json = $3 WHERE event_id = $1",
                event_id,
                "{}",
                _json(event),
            )
        await self._db.purge_freed_data()
