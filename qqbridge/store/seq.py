"""The QQ request counter (SEQ), per bridge user, kept in `qq_seq` and `qq_seq_issued`.

`issue` is the one place a SEQ is made. It writes but opens no transaction of its own:
`SeqStore.reserve` runs it in one, and `OutboxStore.enqueue` runs it inside the
transaction that stores the outgoing message with its SEQ, so the two are kept, or
lost, together.
"""

from __future__ import annotations

from qqbridge.store import checks
from qqbridge.store.checks import text as _text
from qqbridge.store.database import Database
from qqbridge.store.repository import Repository

# SEQ is 1 to 10 decimal digits (docs/protocol.md section 2); past the end the counter
# wraps to the clock.
SEQ_MAX = 9_999_999_999


async def issue(db: Database, mxid: str, purpose: str, now_ms: int, count: int = 1) -> int:
    """The next SEQ of `mxid` (who must exist), also remembered as the last for
    `purpose`; with `count` > 1, the first of that many consecutive SEQs, all reserved
    (the counter moves past them). Call inside a transaction; `now_ms` is the clock,
    Unix milliseconds."""
    if not 1 <= count <= 1_000_000:
        raise ValueError(f"a SEQ reservation is 1 to 1,000,000 SEQs, not {count}")
    # The server remembers a SEQ per QQ account (not per bridge user) for 10 minutes.
    # So the counter never falls behind the clock in milliseconds (modulo the range):
    # a counter recreated after a database reset, or another Matrix user taking over
    # the same QQ account, cannot reuse a SEQ the server still remembers, as long as
    # nobody issues more than one SEQ a millisecond.
    clock = now_ms % SEQ_MAX + 1
    if clock + count - 1 > SEQ_MAX:
        clock = 1
    last = await db.fetchval(
        "INSERT INTO qq_seq (mxid, last_seq) VALUES ($1, CAST($2 AS BIGINT) + CAST($4 AS BIGINT) - 1)"
        " ON CONFLICT (mxid) DO UPDATE"
        " SET last_seq = (CASE WHEN qq_seq.last_seq > CAST($3 AS BIGINT) - CAST($4 AS BIGINT) THEN $2"
        " WHEN qq_seq.last_seq + 1 > $2 THEN qq_seq.last_seq + 1 ELSE $2 END) + $4 - 1"
        " RETURNING last_seq",
        mxid,
        clock,
        SEQ_MAX,
        count,
    )
    seq = int(last) - count + 1
    await db.execute(
        "INSERT INTO qq_seq_issued (mxid, purpose, seq, issued_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (mxid, purpose) DO UPDATE SET seq = excluded.seq, issued_at = excluded.issued_at",
        mxid,
        purpose,
        seq,
        now_ms,
    )
    return seq


async def last(db: Database, mxid: str, purpose: str) -> int | None:
    """The SEQ last issued to `mxid` for `purpose`, or None."""
    seq = await db.fetchval("SELECT seq FROM qq_seq_issued WHERE mxid = $1 AND purpose = $2", mxid, purpose)
    return None if seq is None else int(seq)


class SeqStore(Repository):
    """The SEQs of each user's QQ requests: issued here, never twice."""

    async def next(self, mxid: str, purpose: str) -> int:
        """The SEQ for the user's next QQ request, stored before it is returned.

        Strictly increasing per user, 1..9999999999, wrapping to 1. Also remembered
        as the last SEQ for `purpose` (e.g. "GetMsgEx"), so after a crash the request
        can be retried with the same SEQ (`last`), which the server answers
        idempotently.
        """
        return (await self.reserve(mxid, purpose, 1))[0]

    async def reserve(self, mxid: str, purpose: str, count: int) -> range:
        """`count` consecutive SEQs for the user's next QQ requests, all stored as
        issued at once (the counter moves past them), so a caller may hand them out
        from memory: one write for many requests. After a crash the unused ones are
        simply skipped."""
        _text("mxid", mxid)
        _text("purpose", purpose)
        async with self._db.transaction():
            await checks.user_exists(self._db, mxid)
            first = await issue(self._db, mxid, purpose, self._now_ms(), count)
        return range(first, first + count)

    async def last(self, mxid: str, purpose: str) -> int | None:
        """The SEQ last issued to the user for `purpose`, or None."""
        return await last(self._db, _text("mxid", mxid), _text("purpose", purpose))
