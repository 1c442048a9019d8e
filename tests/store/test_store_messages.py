"""Messages each way (BRIDGE.md section 6: none lost, none doubled): what GetMsgEx
returned is stored once per (user, SEQ, position) before it is relayed; what Matrix
sent is stored once per event, with its CLTMSG SEQs, before it is sent."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from qqbridge.store import (
    CLTMSG_PURPOSE,
    SEQ_MAX,
    ConflictError,
    InboundState,
    InvalidValueError,
    NotFoundError,
    OutboxState,
    Store,
    StoreError,
)
from tests.store.clock import FakeClock

OpenStore = Callable[[], Awaitable[Store]]

ALICE, BOB = "@alice:example.org", "@bob:example.org"
ALICE_QQ, BOB_QQ = 111111, 222222
T0 = 1_700_000_000_000  # the fake clock's start, in ms
BATCH = [(9, 123456, "你好"), (99, 123456, "30"), (2, 654321, "let me in"), (3, 777777, "")]


@pytest.fixture
async def users(store: Store) -> Store:
    await store.users.upsert(ALICE)
    await store.users.upsert(BOB)
    return store


async def rows_in(store: Store, table: str) -> int:
    return int(await store.db.fetchval(f"SELECT COUNT(*) FROM {table}"))


async def refuse_inserts(store: Store, backend: str, table: str, condition: str) -> None:
    """Make the database itself refuse some rows, mid-transaction: a real rollback."""
    if backend == "sqlite":
        await store.db.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON {table} WHEN {condition.replace('row.', 'NEW.')}"
            " BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END"
        )
    else:
        await store.db.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF {condition.replace('row.', 'NEW.')} THEN RAISE EXCEPTION 'refused by test trigger'; END IF;"
            " RETURN NEW; END $$"
        )
        await store.db.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION refuse()")


# -- QQ -> Matrix ---------------------------------------------------------------------


async def test_a_fetched_batch_is_stored_in_order(users: Store) -> None:
    store = users
    assert await store.inbound.add_batch(ALICE, ALICE_QQ, 42, BATCH) == 4
    pending = await store.inbound.pending()
    assert [(m.kind, m.sender_uin, m.content) for m in pending] == BATCH
    assert [m.idx for m in pending] == [0, 1, 2, 3]
    assert [m.inbound_id for m in pending] == sorted(m.inbound_id for m in pending)
    first = pending[0]
    assert (first.owner_mxid, first.account_uin, first.getmsg_seq) == (ALICE, ALICE_QQ, 42)
    assert first.state == InboundState.PENDING and first.fetched_at == T0
    assert (first.matrix_event_id, first.error, first.relayed_at) == (None, None, None)
    assert await store.inbound.count_pending() == 4
    assert await store.inbound.batch_stored(ALICE, 42) is True
    assert await store.inbound.batch_stored(ALICE, 43) is False
    assert await store.inbound.batch_stored(BOB, 42) is False


async def test_a_batch_fetched_again_is_stored_once(open_store: OpenStore) -> None:
    store = await open_store()
    await store.users.upsert(ALICE)
    assert await store.inbound.add_batch(ALICE, ALICE_QQ, 42, BATCH) == 4
    assert await store.inbound.add_batch(ALICE, ALICE_QQ, 42, BATCH) == 0  # the retry's same reply
    await store.inbound.mark_relayed((await store.inbound.pending())[0].inbound_id, "$relayed")
    await store.close()  # crash: the poller retries the SEQ it had stored

    store = await open_store()
    assert await store.inbound.add_batch(ALICE, ALICE_QQ, 42, BATCH) == 0
    assert await rows_in(store, "qq_inbound") == 4
    assert [m.idx for m in await store.inbound.pending()] == [1, 2, 3]  # relayed stays relayed
    # Only what is not there yet is added; the same SEQ of another user is another reply.
    assert await store.inbound.add_batch(ALICE, ALICE_QQ, 42, [*BATCH, (9, 123456, "more")]) == 1
    await store.users.upsert(BOB)
    assert await store.inbound.add_batch(BOB, BOB_QQ, 42, BATCH) == 4


async def test_a_reused_seq_with_other_messages_is_refused(users: Store) -> None:
    # The server forgets a SEQ after 10 minutes; a retry after that fetches *new*
    # messages under the old SEQ. Skipping them as "already stored" would lose them.
    store = users
    await store.inbound.add_batch(ALICE, ALICE_QQ, 42, BATCH[:2])
    with pytest.raises(ConflictError, match=f"SEQ 42 of {ALICE} was stored before with other messages"):
        await store.inbound.add_batch(ALICE, ALICE_QQ, 42, [BATCH[0], (9, 123456, "new"), (9, 123456, "newer")])
    assert await rows_in(store, "qq_inbound") == 2  # all or nothing


async def test_a_database_failure_stores_nothing_of_the_batch(users: Store, backend: str) -> None:
    store = users
    await refuse_inserts(store, backend, "qq_inbound", "row.idx = 2")
    with pytest.raises(StoreError, match="refused by test trigger"):
        await store.inbound.add_batch(ALICE, ALICE_QQ, 42, BATCH)
    assert await rows_in(store, "qq_inbound") == 0
    assert await store.inbound.batch_stored(ALICE, 42) is False  # so the poller retries it


async def test_inbound_text_is_kept_as_it_came(users: Store) -> None:
    store = users
    odd = "tab\t, comma, emoji \U0001f600, NUL \x00 end"
    unknown_kind = (12345, 0, "whatever MT=12345 carried")  # unreadable: stored, to be reported
    assert await store.inbound.add_batch(ALICE, ALICE_QQ, SEQ_MAX, [(9, 123456, odd), unknown_kind]) == 2
    text, unknown = await store.inbound.pending()
    assert text.content == "tab\t, comma, emoji \U0001f600, NUL \\x00 end"  # NUL: PostgreSQL cannot
    assert (unknown.kind, unknown.sender_uin, unknown.content) == unknown_kind
    assert text.getmsg_seq == SEQ_MAX


async def test_an_empty_batch_stores_nothing(users: Store) -> None:
    assert await users.inbound.add_batch(ALICE, ALICE_QQ, 42, []) == 0
    assert await users.inbound.batch_stored(ALICE, 42) is False


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((ALICE, 99, 42, BATCH), "not a QQ number"),
        ((ALICE, ALICE_QQ, 0, BATCH), "getmsg_seq"),
        ((ALICE, ALICE_QQ, SEQ_MAX + 1, BATCH), "getmsg_seq"),
        ((ALICE, ALICE_QQ, 42, "9,123456,hi"), "events must be a list"),
        ((ALICE, ALICE_QQ, 42, [BATCH[0], (9, 123456)]), "event 1 must be"),
        ((ALICE, ALICE_QQ, 42, [(9, 123456, None)]), "event 0: content"),
        ((ALICE, ALICE_QQ, 42, [(-1, 123456, "x")]), "event 0: kind"),
        ((ALICE, ALICE_QQ, 42, [(9, 2**63, "x")]), "event 0: sender_uin"),
        ((ALICE, ALICE_QQ, 42, [(True, 123456, "x")]), "event 0: kind"),
        (("", ALICE_QQ, 42, BATCH), "owner_mxid"),
    ],
)
async def test_bad_batches_are_refused(users: Store, args: tuple, match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        await users.inbound.add_batch(*args)
    assert await rows_in(users, "qq_inbound") == 0


async def test_inbound_needs_a_known_user(store: Store) -> None:
    with pytest.raises(NotFoundError, match=ALICE):
        await store.inbound.add_batch(ALICE, ALICE_QQ, 42, BATCH)


async def test_pending_inbound_per_user_in_order(users: Store) -> None:
    store = users
    await store.inbound.add_batch(ALICE, ALICE_QQ, 50, BATCH[:2])
    await store.inbound.add_batch(BOB, BOB_QQ, 7, BATCH[2:])
    await store.inbound.add_batch(ALICE, ALICE_QQ, 49, BATCH[2:3])  # a lower SEQ, fetched later
    everyone = await store.inbound.pending()
    assert [(m.owner_mxid, m.getmsg_seq, m.idx) for m in everyone] == [
        (ALICE, 50, 0),
        (ALICE, 50, 1),
        (BOB, 7, 0),
        (BOB, 7, 1),
        (ALICE, 49, 0),
    ]
    assert [m.getmsg_seq for m in await store.inbound.pending(ALICE)] == [50, 50, 49]
    assert [m.idx for m in await store.inbound.pending(ALICE, limit=2)] == [0, 1]
    assert (await store.inbound.count_pending(ALICE), await store.inbound.count_pending(BOB)) == (3, 2)
    assert await store.inbound.count_pending("@nobody:example.org") == 0
    with pytest.raises(InvalidValueError, match="limit"):
        await store.inbound.pending(limit=0)


async def test_relayed_and_failed(users: Store, clock: FakeClock) -> None:
    store = users
    await store.inbound.add_batch(ALICE, ALICE_QQ, 42, BATCH)
    first, second, third, _ = await store.inbound.pending()
    clock.advance(3)
    relayed = await store.inbound.mark_relayed(first.inbound_id, "$posted")
    assert (relayed.state, relayed.matrix_event_id, relayed.relayed_at) == ("relayed", "$posted", T0 + 3000)
    failed = await store.inbound.mark_failed(second.inbound_id, "M_FORBIDDEN \x00")
    assert (failed.state, failed.error, failed.relayed_at) == (InboundState.FAILED, "M_FORBIDDEN \\x00", None)
    assert [m.inbound_id for m in await store.inbound.pending()] == [third.inbound_id, third.inbound_id + 1]
    assert await store.inbound.count_pending() == 2

    # Marked again as it is (a retry after a crash): nothing changes. Otherwise: refused.
    assert await store.inbound.mark_relayed(first.inbound_id, "$posted-again") == relayed
    assert await store.inbound.mark_failed(second.inbound_id, "other") == failed
    with pytest.raises(ConflictError, match=f"inbound message {first.inbound_id} is already relayed"):
        await store.inbound.mark_failed(first.inbound_id, "late")
    with pytest.raises(ConflictError, match="is already failed, it cannot become relayed"):
        await store.inbound.mark_relayed(second.inbound_id, "$late")
    with pytest.raises(NotFoundError, match="no inbound message 999999"):
        await store.inbound.mark_relayed(999_999, "$x")
    with pytest.raises(InvalidValueError):
        await store.inbound.mark_relayed(third.inbound_id, "")
    with pytest.raises(InvalidValueError):
        await store.inbound.mark_failed("1", "x")  # type: ignore[arg-type]


# -- Matrix -> QQ ---------------------------------------------------------------------


async def test_enqueued_parts_get_increasing_stored_seqs(open_store: OpenStore) -> None:
    store = await open_store()
    await store.users.upsert(ALICE)
    before = await store.seqs.next(ALICE, "getmsg")
    parts = await store.outbox.enqueue(ALICE, "!dm", "$long", 123456, ["part one", "part two", "part three"])
    assert [p.part for p in parts] == [0, 1, 2]
    assert [p.text for p in parts] == ["part one", "part two", "part three"]
    assert [p.seq for p in parts] == [before + 1, before + 2, before + 3]  # the user's one counter
    assert [p.outbox_id for p in parts] == sorted(p.outbox_id for p in parts)
    first = parts[0]
    assert (first.owner_mxid, first.room_id, first.event_id, first.target_uin) == (ALICE, "!dm", "$long", 123456)
    assert (first.state, first.attempts, first.error, first.sent_at) == (OutboxState.PENDING, 0, None, None)
    assert first.created_at == T0
    assert await store.seqs.last(ALICE, CLTMSG_PURPOSE) == before + 3
    await store.close()  # crash before CLTMSG

    store = await open_store()
    assert await store.outbox.pending() == parts  # resent with the same SEQs
    assert await store.outbox.by_event("$long") == parts
    assert await store.seqs.next(ALICE, "getmsg") == before + 4  # never reused


async def test_a_repeated_event_is_queued_once(open_store: OpenStore) -> None:
    store = await open_store()
    await store.users.upsert(ALICE)
    parts = await store.outbox.enqueue(ALICE, "!dm", "$e", 123456, ["a", "b"])
    # The same event handled again, even split differently: the stored rows, no new SEQ.
    assert await store.outbox.enqueue(ALICE, "!dm", "$e", 123456, ["a", "b"]) == parts
    assert await store.outbox.enqueue(ALICE, "!dm", "$e", 123456, ["ab"]) == parts
    await store.close()
    store = await open_store()
    assert await store.outbox.enqueue(ALICE, "!dm", "$e", 123456, ["a", "b"]) == parts
    assert await rows_in(store, "outbox") == 2
    assert await store.seqs.last(ALICE, CLTMSG_PURPOSE) == parts[-1].seq
    # Sent ones too: a redelivered event is not sent again.
    await store.outbox.mark_sent(parts[0].outbox_id)
    again = await store.outbox.enqueue(ALICE, "!dm", "$e", 123456, ["a", "b"])
    assert [p.state for p in again] == ["sent", "pending"]


async def test_an_event_belongs_to_one_conversation(users: Store) -> None:
    store = users
    await store.outbox.enqueue(ALICE, "!dm", "$e", 123456, ["a"])
    for owner, room, target in ((BOB, "!dm", 123456), (ALICE, "!other", 123456), (ALICE, "!dm", 654321)):
        with pytest.raises(ConflictError, match=rf"event \$e is already queued for {ALICE} in !dm to 123456"):
            await store.outbox.enqueue(owner, room, "$e", target, ["a"])


async def test_concurrent_enqueues_of_one_event_store_it_once(open_store: OpenStore) -> None:
    first, second = await open_store(), await open_store()
    await first.users.upsert(ALICE)
    results = await asyncio.gather(
        *(s.outbox.enqueue(ALICE, "!dm", "$e", 123456, ["a", "b"]) for _ in range(5) for s in (first, second))
    )
    assert all(r == results[0] for r in results)
    assert await rows_in(first, "outbox") == 2
    # The losers' SEQs were rolled back with the rest of their transactions.
    assert await first.seqs.last(ALICE, CLTMSG_PURPOSE) == results[0][1].seq
    assert await first.seqs.next(ALICE, "x") == results[0][1].seq + 1


async def test_a_database_failure_queues_nothing_and_issues_no_seq(users: Store, backend: str) -> None:
    store = users
    last = await store.seqs.next(ALICE, "getmsg")
    await refuse_inserts(store, backend, "outbox", "row.part = 1")
    with pytest.raises(StoreError, match="refused by test trigger"):
        await store.outbox.enqueue(ALICE, "!dm", "$e", 123456, ["a", "b", "c"])
    assert await rows_in(store, "outbox") == 0
    assert await store.seqs.last(ALICE, CLTMSG_PURPOSE) is None
    assert await store.seqs.next(ALICE, "getmsg") == last + 1


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((ALICE, "!dm", "$e", 123456, []), InvalidValueError),
        ((ALICE, "!dm", "$e", 123456, "text"), InvalidValueError),
        ((ALICE, "!dm", "$e", 123456, ["a", ""]), InvalidValueError),
        ((ALICE, "!dm", "$e", 123456, ["a\x00"]), InvalidValueError),
        ((ALICE, "!dm", "$e", 99, ["a"]), InvalidValueError),
        ((ALICE, "", "$e", 123456, ["a"]), InvalidValueError),
        ((ALICE, "!dm", "", 123456, ["a"]), InvalidValueError),
        (("@carol:example.org", "!dm", "$e", 123456, ["a"]), NotFoundError),
    ],
)
async def test_bad_outgoing_is_refused(users: Store, args: tuple, error: type[Exception]) -> None:
    with pytest.raises(error):
        await users.outbox.enqueue(*args)
    assert await rows_in(users, "outbox") == 0
    assert await users.db.fetchval("SELECT COUNT(*) FROM qq_seq") == 0  # no SEQ spent


async def test_pending_outgoing_in_order_per_user(users: Store) -> None:
    store = users
    a1 = await store.outbox.enqueue(ALICE, "!a", "$a1", 123456, ["1", "2"])
    b1 = await store.outbox.enqueue(BOB, "!b", "$b1", 123456, ["x"])
    a2 = await store.outbox.enqueue(ALICE, "!a2", "$a2", 654321, ["3"])
    assert await store.outbox.pending() == [*a1, *b1, *a2]
    assert await store.outbox.pending(ALICE) == [*a1, *a2]
    assert await store.outbox.pending(ALICE, limit=1) == a1[:1]
    assert (await store.outbox.count_pending(), await store.outbox.count_pending(BOB)) == (4, 1)
    assert await store.outbox.by_event("$never") == []


async def test_attempts_sent_and_failed(users: Store, clock: FakeClock) -> None:
    store = users
    one, two, three = await store.outbox.enqueue(ALICE, "!dm", "$e", 123456, ["1", "2", "3"])
    noted = await store.outbox.note_attempt(one.outbox_id, "QQ: too fast (RES=3)")
    assert (noted.attempts, noted.error, noted.state) == (1, "QQ: too fast (RES=3)", "pending")
    noted = await store.outbox.note_attempt(one.outbox_id, None)  # no new reason: the last one stays
    assert (noted.attempts, noted.error) == (2, "QQ: too fast (RES=3)")
    noted = await store.outbox.note_attempt(one.outbox_id, "timeout")
    assert (noted.attempts, noted.error, noted.seq) == (3, "timeout", one.seq)  # same SEQ on every try

    clock.advance(2)
    sent = await store.outbox.mark_sent(one.outbox_id)
    assert (sent.state, sent.sent_at, sent.attempts) == (OutboxState.SENT, T0 + 2000, 3)
    failed = await store.outbox.mark_failed(two.outbox_id, "QQ refused this message")
    assert (failed.state, failed.error, failed.sent_at) == ("failed", "QQ refused this message", None)
    assert await store.outbox.pending() == [three]
    assert await store.outbox.count_pending(ALICE) == 1

    assert await store.outbox.mark_sent(one.outbox_id) == sent  # again: nothing changes
    with pytest.raises(ConflictError, match=f"outgoing message {one.outbox_id} is already sent"):
        await store.outbox.mark_failed(one.outbox_id, "late")
    with pytest.raises(ConflictError, match="is already failed"):
        await store.outbox.mark_sent(two.outbox_id)
    with pytest.raises(ConflictError, match=f"outgoing message {one.outbox_id} is sent, not pending"):
        await store.outbox.note_attempt(one.outbox_id, "late")
    for action in (
        store.outbox.mark_sent(999_999),
        store.outbox.mark_failed(999_999, "x"),
        store.outbox.note_attempt(999_999, None),
    ):
        with pytest.raises(NotFoundError, match="no outgoing message 999999"):
            await action
    with pytest.raises(InvalidValueError):
        await store.outbox.mark_sent(0)
    assert [p.state for p in await store.outbox.by_event("$e")] == ["sent", "failed", "pending"]


async def test_prune_forgets_delivered_messages_but_never_pending_ones(users: Store, clock: FakeClock) -> None:
    store = users
    await store.inbound.add_batch(ALICE, ALICE_QQ, 7, [(9, BOB_QQ, "relayed"), (9, BOB_QQ, "still pending")])
    first, _ = await store.inbound.pending(ALICE)
    await store.inbound.mark_relayed(first.inbound_id, "$shown")
    sent, waiting = await store.outbox.enqueue(ALICE, "!dm:x", "$out", BOB_QQ, ["sent", "waiting"])
    await store.outbox.mark_sent(sent.outbox_id)
    clock.advance(3600)
    result = await store.prune(older_than_seconds=60)
    assert (result.inbound, result.outgoing) == (1, 1)
    assert [m.content for m in await store.inbound.pending(ALICE)] == ["still pending"]
    assert [m.text for m in await store.outbox.pending(ALICE)] == ["waiting"]
    assert (await store.prune(older_than_seconds=60)).inbound == 0
