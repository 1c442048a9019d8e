"""Bridge state (key -> text) and the QQ request SEQ counter."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from qqbridge.store import SEQ_MAX, InvalidValueError, NotFoundError, Store
from tests.store.clock import FakeClock

OpenStore = Callable[[], Awaitable[Store]]

ALICE, BOB = "@alice:example.org", "@bob:example.org"


async def test_state_get_set_forget(open_store: OpenStore) -> None:
    store = await open_store()
    assert await store.state.get("sync.last") is None
    await store.state.set("sync.last", "1")
    await store.state.set("sync.last", "2")
    await store.state.set("bot.displayname", "QQ bridge 桥")
    await store.close()

    store = await open_store()
    assert await store.state.get("sync.last") == "2"
    assert await store.state.get("bot.displayname") == "QQ bridge 桥"
    await store.state.set("sync.last", None)
    assert await store.state.get("sync.last") is None
    await store.state.set("sync.last", None)  # forgetting twice is fine
    with pytest.raises(InvalidValueError):
        await store.state.set("n", 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        await store.state.get("")


async def test_seq_increases_and_is_remembered_per_purpose(store: Store) -> None:
    await store.users.upsert(ALICE)
    seqs = [await store.seqs.next(ALICE, purpose) for purpose in ("GetMsgEx", "CLTMSG", "GetMsgEx", "Login")]
    assert seqs == list(range(seqs[0], seqs[0] + 4))
    assert all(1 <= s <= SEQ_MAX for s in seqs)
    assert await store.seqs.last(ALICE, "GetMsgEx") == seqs[2]
    assert await store.seqs.last(ALICE, "CLTMSG") == seqs[1]
    assert await store.seqs.last(ALICE, "Change_Stat") is None


async def test_seq_is_stored_before_it_is_returned(open_store: OpenStore) -> None:
    store = await open_store()
    await store.users.upsert(ALICE)
    issued = await store.seqs.next(ALICE, "CLTMSG")
    await store.close()  # "crash" right after the request went out

    store = await open_store()
    assert await store.seqs.last(ALICE, "CLTMSG") == issued  # retry with the same SEQ
    assert await store.seqs.next(ALICE, "CLTMSG") == issued + 1  # never reused


async def test_counters_are_per_user_and_never_fall_behind_the_clock(store: Store, clock: FakeClock) -> None:
    await store.users.upsert(ALICE)
    await store.users.upsert(BOB)
    first_alice = await store.seqs.next(ALICE, "p")
    assert first_alice == int(clock.now * 1000) % SEQ_MAX + 1
    assert await store.seqs.next(ALICE, "p") == first_alice + 1
    clock.advance(60)
    # A minute later every counter is at least 60,000 higher: a counter recreated, or
    # another user taking over the same QQ account, cannot reuse a SEQ the server
    # still remembers (per QQ account, for 10 minutes).
    assert await store.seqs.next(BOB, "p") == first_alice + 60_000
    assert await store.seqs.next(ALICE, "p") == first_alice + 60_000


async def test_seq_wraps_to_the_clock(store: Store, clock: FakeClock) -> None:
    await store.users.upsert(ALICE)
    await store.seqs.next(ALICE, "p")
    await store.db.execute("UPDATE qq_seq SET last_seq = $1 WHERE mxid = $2", SEQ_MAX - 1, ALICE)
    now = int(clock.now * 1000) % SEQ_MAX + 1
    assert [await store.seqs.next(ALICE, "p") for _ in range(3)] == [SEQ_MAX, now, now + 1]
    assert await store.seqs.last(ALICE, "p") == now + 1


async def test_concurrent_seqs_are_distinct(open_store: OpenStore) -> None:
    first, second = await open_store(), await open_store()
    await first.users.upsert(ALICE)
    seqs = await asyncio.gather(*(s.seqs.next(ALICE, "p") for _ in range(20) for s in (first, second)))
    assert sorted(seqs) == list(range(min(seqs), min(seqs) + 40))


async def test_seq_needs_a_known_user(store: Store) -> None:
    with pytest.raises(NotFoundError, match=ALICE):
        await store.seqs.next(ALICE, "p")
    with pytest.raises(InvalidValueError):
        await store.seqs.next(ALICE, "")


async def test_a_reserved_block_of_seqs_is_never_issued_again(open_store: OpenStore) -> None:
    store = await open_store()
    await store.users.upsert(ALICE)
    block = await store.seqs.reserve(ALICE, "getmsg", 100)
    assert len(block) == 100
    await store.close()  # a crash with most of the block unused

    store = await open_store()
    after = await store.seqs.next(ALICE, "CLTMSG")  # the outbox shares the counter
    assert after == block[-1] + 1
    assert (await store.seqs.reserve(ALICE, "getmsg", 100))[0] == after + 1
    await store.close()


async def test_a_block_that_would_pass_the_end_wraps_to_the_clock(store: Store, clock: FakeClock) -> None:
    await store.users.upsert(ALICE)
    await store.seqs.next(ALICE, "p")
    await store.db.execute("UPDATE qq_seq SET last_seq = $1 WHERE mxid = $2", SEQ_MAX - 50, ALICE)
    now = int(clock.now * 1000) % SEQ_MAX + 1
    assert await store.seqs.reserve(ALICE, "p", 50) == range(SEQ_MAX - 49, SEQ_MAX + 1)  # just fits
    await store.db.execute("UPDATE qq_seq SET last_seq = $1 WHERE mxid = $2", SEQ_MAX - 10, ALICE)
    assert await store.seqs.reserve(ALICE, "p", 50) == range(now, now + 50)
    with pytest.raises(ValueError):
        await store.seqs.reserve(ALICE, "p", 0)
