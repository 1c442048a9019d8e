"""Appservice transactions and the Matrix inbox: once per transaction id, all or
nothing, in order, across restarts and concurrent deliveries."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from qqbridge.store import InboxState, InvalidValueError, NotFoundError, Store, StoreError
from tests.store.clock import FakeClock

OpenStore = Callable[[], Awaitable[Store]]


def event(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"$event{n}",
        "room_id": "!portal:example.org",
        "sender": "@alice:example.org",
        "type": "m.room.message",
        "content": {"msgtype": "m.text", "body": f"message {n}"},
        "origin_server_ts": 1_700_000_000_000 + n,
        "unsigned": {"age": 5},
        **extra,
    }


async def inbox_size(store: Store) -> int:
    return await store.db.fetchval("SELECT COUNT(*) FROM matrix_inbox")


async def txn_recorded(store: Store, txn_id: str) -> bool:
    """Recorded under its id (with the digest of its event ids that follows it)."""
    count = await store.db.fetchval("SELECT COUNT(*) FROM appservice_txn WHERE txn_id LIKE $1", txn_id + "#%")
    return count == 1


async def test_events_are_stored_with_their_fields(store: Store) -> None:
    state_event = event(2, type="m.room.member", state_key="@alice:example.org", content={"membership": "join"})
    chinese = event(3, content={"msgtype": "m.text", "body": "你好 \u0000 \U0001f600"})
    assert await store.inbox.record_transaction("t1", [event(1), state_event, chinese]) is True

    pending = await store.inbox.pending()
    assert [e.event_id for e in pending] == ["$event1", "$event2", "$event3"]
    first, member, text = pending
    assert (first.txn_id, first.room_id, first.sender, first.type) == (
        "t1",
        "!portal:example.org",
        "@alice:example.org",
        "m.room.message",
    )
    assert first.state_key is None and member.state_key == "@alice:example.org"
    assert first.content == {"msgtype": "m.text", "body": "message 1"}
    assert first.origin_server_ts == 1_700_000_000_001
    assert first.event == event(1)  # the whole event, unknown keys included
    assert text.content["body"] == "你好 \u0000 \U0001f600"
    assert first.state == InboxState.PENDING and first.error is None and first.handled_at is None
    assert first.received_at == 1_700_000_000_000
    assert first.inbox_id < member.inbox_id < text.inbox_id


async def test_same_transaction_twice_is_stored_once(store: Store) -> None:
    assert await store.inbox.record_transaction("t1", [event(1), event(2)]) is True
    assert await store.inbox.record_transaction("t1", [event(1), event(2)]) is False
    assert await inbox_size(store) == 2


async def test_a_reused_transaction_id_with_new_events_is_a_new_transaction(store: Store) -> None:
    # Synapse on SQLite numbers transactions from 1 again after a restart.
    assert await store.inbox.record_transaction("1", [event(1)]) is True
    assert await store.inbox.record_transaction("1", [event(2)]) is True
    assert await store.inbox.record_transaction("1", [event(2)]) is False
    assert await inbox_size(store) == 2


async def test_transaction_ids_survive_a_restart(open_store: OpenStore) -> None:
    store = await open_store()
    assert await store.inbox.record_transaction("t1", [event(1)]) is True
    await store.inbox.mark_handled("$event1")
    await store.close()

    restarted = await open_store()
    assert await restarted.inbox.record_transaction("t1", [event(1)]) is False
    assert await inbox_size(restarted) == 1
    assert await restarted.inbox.pending() == []


async def test_empty_transaction_is_recorded(store: Store) -> None:
    assert await store.inbox.record_transaction("t-empty", []) is True
    assert await store.inbox.record_transaction("t-empty", []) is False


async def test_repeated_event_id_across_transactions_is_ignored(store: Store) -> None:
    assert await store.inbox.record_transaction("t1", [event(1)]) is True
    assert await store.inbox.record_transaction("t2", [event(1), event(2)]) is True
    assert await store.inbox.record_transaction("t3", [event(3), event(3)]) is True  # twice in one
    pending = await store.inbox.pending()
    assert [(e.event_id, e.txn_id) for e in pending] == [("$event1", "t1"), ("$event2", "t2"), ("$event3", "t3")]


@pytest.mark.parametrize(
    "bad",
    [
        "not an object",
        {"room_id": "!r", "sender": "@a:x", "type": "m.t"},  # no event_id
        {"event_id": "$x", "room_id": None, "sender": "@a:x", "type": "m.t"},
        {"event_id": "$x", "room_id": "!r", "sender": "@a:x", "type": 5},
        {"event_id": "$x\u0000", "room_id": "!r", "sender": "@a:x", "type": "m.t"},
        {"event_id": "$x\ud800", "room_id": "!r", "sender": "@a:x", "type": "m.t"},
        {"event_id": "$x", "room_id": "!r", "sender": "@a:x", "type": "m.t", "content": []},
        {"event_id": "$x", "room_id": "!r", "sender": "@a:x", "type": "m.t", "state_key": 1},
        {"event_id": "$x", "room_id": "!r", "sender": "@a:x", "type": "m.t", "origin_server_ts": "1"},
        {"event_id": "$x", "room_id": "!r", "sender": "@a:x", "type": "m.t", "origin_server_ts": 2**63},
        {"event_id": "$x", "room_id": "!r", "sender": "@a:x", "type": "m.t", "content": {"n": float("nan")}},
    ],
)
async def test_a_bad_event_stores_nothing_of_its_transaction(store: Store, bad: Any) -> None:
    with pytest.raises(InvalidValueError, match="event 1 of transaction t1"):
        await store.inbox.record_transaction("t1", [event(1), bad, event(3)])
    assert not await txn_recorded(store, "t1")
    assert await inbox_size(store) == 0
    # The homeserver's retry, with the event fixed, is taken afresh.
    assert await store.inbox.record_transaction("t1", [event(1), event(3)]) is True
    assert await inbox_size(store) == 2


async def test_a_database_failure_stores_nothing_of_its_transaction(store: Store, backend: str) -> None:
    # A trigger makes the database itself refuse the second event, when the id and the
    # first event are already written in the transaction: a real rollback.
    if backend == "sqlite":
        await store.db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON matrix_inbox WHEN NEW.event_id = '$event2'"
            " BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END"
        )
    else:
        await store.db.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.event_id = '$event2' THEN RAISE EXCEPTION 'refused by test trigger'; END IF;"
            " RETURN NEW; END $$"
        )
        await store.db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON matrix_inbox FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    with pytest.raises(StoreError, match="refused by test trigger"):
        await store.inbox.record_transaction("t1", [event(1), event(2), event(3)])
    assert not await txn_recorded(store, "t1")
    assert await inbox_size(store) == 0
    # The store is still usable afterwards.
    assert await store.inbox.record_transaction("t2", [event(1)]) is True


async def test_pending_and_handled(store: Store, clock: FakeClock) -> None:
    await store.inbox.record_transaction("t1", [event(n) for n in range(1, 6)])
    assert await store.inbox.count_pending() == 5
    assert [e.event_id for e in await store.inbox.pending(limit=2)] == ["$event1", "$event2"]

    clock.advance(2)
    await store.inbox.mark_handled("$event1")
    await store.inbox.mark_handled("$event3", error="QQ refused it: RES=5")
    assert [e.event_id for e in await store.inbox.pending()] == ["$event2", "$event4", "$event5"]
    assert await store.inbox.count_pending() == 3

    rows = await store.db.fetch("SELECT event_id, state, error, handled_at FROM matrix_inbox")
    by_id = {r.pop("event_id"): r for r in rows}
    assert by_id["$event1"] == {"state": "handled", "error": None, "handled_at": 1_700_000_002_000}
    assert by_id["$event3"]["state"] == "failed" and by_id["$event3"]["error"] == "QQ refused it: RES=5"

    await store.inbox.mark_handled("$event4", error="odd \x00 text \ud800 from an exception")
    stored = await store.db.fetchval("SELECT error FROM matrix_inbox WHERE event_id = $1", "$event4")
    assert stored == "odd \\x00 text \\ud800 from an exception"

    with pytest.raises(NotFoundError):
        await store.inbox.mark_handled("$never-seen")
    with pytest.raises(InvalidValueError):
        await store.inbox.pending(limit=0)


async def test_pending_events_keep_arrival_order_across_transactions(open_store: OpenStore) -> None:
    store = await open_store()
    await store.inbox.record_transaction("t1", [event(9)])
    await store.inbox.record_transaction("t2", [event(1)])  # older ts, but it arrived later
    await store.inbox.mark_handled("$event9")
    await store.close()
    store = await open_store()
    await store.inbox.record_transaction("t3", [event(5)])
    assert [e.event_id for e in await store.inbox.pending()] == ["$event1", "$event5"]


async def test_prune_keeps_pending_events_and_recent_transaction_ids(store: Store, clock: FakeClock) -> None:
    await store.inbox.record_transaction("old", [event(1), event(2)])
    await store.inbox.mark_handled("$event1")
    clock.advance(3600)
    await store.inbox.record_transaction("new", [event(3)])
    await store.inbox.mark_handled("$event3")

    # An hour later: the old handled event goes, the new one is too recent, the
    # pending one stays, and no transaction id is younger than 24 hours' retention.
    clock.advance(1800)
    result = await store.prune(older_than_seconds=3000)
    assert (result.events, result.transactions) == (1, 0)
    assert {e.event_id for e in await store.inbox.pending()} == {"$event2"}
    assert await store.inbox.record_transaction("old", [event(1), event(2)]) is False

    # Past 24 hours, the old id may go, and a prune of 0 s still keeps younger ids.
    clock.advance(24 * 3600 - 3600)
    result = await store.prune(older_than_seconds=0)
    assert (result.events, result.transactions) == (1, 1)
    assert await txn_recorded(store, "new") and not await txn_recorded(store, "old")
    assert await store.inbox.count_pending() == 1

    with pytest.raises(InvalidValueError):
        await store.prune(-1)


async def test_concurrent_deliveries_of_one_transaction_store_it_once(store: Store) -> None:
    events = [event(n) for n in range(10)]
    results = await asyncio.gather(*(store.inbox.record_transaction("t1", events) for _ in range(25)))
    assert results.count(True) == 1
    assert await inbox_size(store) == 10


async def test_two_bridge_processes_racing_store_it_once(open_store: OpenStore) -> None:
    # Two Store objects: two connections (SQLite) or two pools (PostgreSQL), as two
    # processes would have.
    first, second = await open_store(), await open_store()
    events = [event(n) for n in range(10)]
    for round_ in range(5):
        txn = f"t{round_}"
        results = await asyncio.gather(*(s.inbox.record_transaction(txn, events) for _ in range(5) for s in (first, second)))
        assert results.count(True) == 1
    assert await inbox_size(first) == 10
    assert await first.db.fetchval("SELECT COUNT(*) FROM appservice_txn") == 5


async def test_forget_event_content_blanks_a_password_message(store: Store, backend: str, db_url: str) -> None:
    password = "correct-horse-battery-staple-一二三"
    secret = event(2, content={"msgtype": "m.text", "body": password}, unsigned={"age": 1, "body": password})
    await store.inbox.record_transaction("t1", [event(1), secret])
    await store.inbox.forget_content("$event2")
    await store.inbox.forget_content("$event2")  # again: nothing left to do
    await store.inbox.forget_content("$never-seen")  # not in the inbox: nothing to do

    forgotten = (await store.inbox.pending())[1]
    assert forgotten.content == {} and "unsigned" not in forgotten.event
    assert forgotten.event["event_id"] == "$event2" and forgotten.room_id == "!portal:example.org"
    assert password not in repr(await store.db.fetch("SELECT * FROM matrix_inbox"))
    if backend == "sqlite":
        # Nor in the files: secure_delete zeroed the old row, the WAL was emptied.
        path = Path(db_url.removeprefix("sqlite:///"))
        for file in (path, path.with_name(path.name + "-wal")):
            if file.exists():
                assert b"correct-horse" not in file.read_bytes(), file


async def test_a_claim_takes_each_pending_event_once_oldest_first(store: Store, clock: FakeClock) -> None:
    await store.inbox.record_transaction("t1", [event(n) for n in range(1, 6)])
    first = await store.inbox.claim(limit=2)
    assert [e.event_id for e in first] == ["$event1", "$event2"]
    assert {e.state for e in first} == {InboxState.HANDLING}
    # A claimed event is no longer pending: no read or claim returns it again.
    assert [e.event_id for e in await store.inbox.pending()] == ["$event3", "$event4", "$event5"]
    assert [e.event_id for e in await store.inbox.claim(limit=10)] == ["$event3", "$event4", "$event5"]
    assert await store.inbox.claim(limit=10) == []
    assert await store.inbox.count_pending() == 5  # waiting or in hand: still to be handled
    clock.advance(1)
    await store.inbox.mark_handled("$event1")
    await store.inbox.mark_handled("$event2", error="boom")
    assert await store.inbox.count_pending() == 3
    # Pruning never takes an event in hand.
    clock.advance(10)
    assert (await store.prune(older_than_seconds=0)).events == 2
    assert await store.inbox.count_pending() == 3


async def test_claims_left_by_a_stopped_bridge_are_released_at_its_start(open_store: OpenStore) -> None:
    store = await open_store()
    await store.inbox.record_transaction("t1", [event(n) for n in range(1, 4)])
    await store.inbox.claim(limit=2)
    await store.inbox.mark_handled("$event1")
    await store.close()  # stopped with $event2 in hand
    store = await open_store()
    assert await store.inbox.release_claimed() == 1
    assert [e.event_id for e in await store.inbox.claim()] == ["$event2", "$event3"]


async def test_concurrent_claims_never_take_one_event_twice(store: Store) -> None:
    """Many claims at once (on PostgreSQL each on its own pooled connection), while
    events are still arriving: every event is claimed exactly once."""
    claimed: list[str] = []

    async def claimer() -> None:
        for _ in range(40):
            claimed.extend(e.event_id for e in await store.inbox.claim(limit=7))
            await asyncio.sleep(0)

    async def deliver() -> None:
        for t in range(20):
            await store.inbox.record_transaction(f"t{t}", [event(t * 10 + n) for n in range(10)])

    await asyncio.gather(deliver(), *(claimer() for _ in range(6)))
    claimed.extend(e.event_id for e in await store.inbox.claim(limit=500))
    assert sorted(claimed) == sorted(f"$event{n}" for n in range(200))
