"""Puppets, portals and friend requests: created once, changed only as asked, kept
across restarts, and their owner's rows gone with the owner."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from qqbridge.store import (
    UNSET,
    ConflictError,
    FriendRequestState,
    InvalidValueError,
    NotFoundError,
    Store,
)
from tests.store.clock import FakeClock

OpenStore = Callable[[], Awaitable[Store]]

ALICE, BOB = "@alice:example.org", "@bob:example.org"
T0 = 1_700_000_000_000  # the fake clock's start, in ms


@pytest.fixture
async def users(store: Store) -> Store:
    """The store, with Alice and Bob as bridge users (Alice's control room: !control)."""
    await store.users.set_control_room(ALICE, "!control")
    await store.users.upsert(BOB)
    return store


# -- puppets --------------------------------------------------------------------------


async def test_puppet_fields_change_only_when_given(store: Store, clock: FakeClock) -> None:
    assert await store.puppets.get(123456) is None
    created = await store.puppets.upsert(123456)
    assert (created.uin, created.nick, created.displayname, created.presence) == (123456, None, None, None)
    assert created.updated_at == T0

    clock.advance(1)
    assert await store.puppets.upsert(123456) == created  # nothing given: nothing changes
    puppet = await store.puppets.upsert(123456, nick="小明")
    assert (puppet.nick, puppet.displayname, puppet.presence, puppet.updated_at) == ("小明", None, None, T0 + 1000)
    puppet = await store.puppets.upsert(123456, displayname="小明 (QQ)", presence=30)
    assert (puppet.nick, puppet.displayname, puppet.presence) == ("小明", "小明 (QQ)", 30)
    puppet = await store.puppets.upsert(123456, nick=None, presence=UNSET)  # None clears
    assert (puppet.nick, puppet.displayname, puppet.presence) == (None, "小明 (QQ)", 30)
    puppet = await store.puppets.upsert(123456, nick="", presence=10)  # an empty nickname is a nickname
    assert (puppet.nick, puppet.presence) == ("", 10)
    assert await store.puppets.get(123456) == puppet

    # Created with fields: they are set at once.
    other = await store.puppets.upsert(4_294_967_295, nick="n", displayname="d", presence=20)
    assert (other.nick, other.displayname, other.presence) == ("n", "d", 20)


async def test_puppets_survive_a_restart(open_store: OpenStore) -> None:
    store = await open_store()
    before = await store.puppets.upsert(123456, nick="n", displayname="n (QQ)", presence=10)
    await store.close()
    assert await (await open_store()).puppets.get(123456) == before


@pytest.mark.parametrize(
    ("field", "bad"),
    [("presence", 40), ("presence", 0), ("presence", True), ("presence", "10"), ("nick", 5), ("nick", "a\x00b")],
)
async def test_bad_puppet_fields_are_refused(store: Store, field: str, bad: object) -> None:
    with pytest.raises(InvalidValueError):
        await store.puppets.upsert(123456, **{field: bad})  # type: ignore[arg-type]
    assert await store.puppets.get(123456) is None
    with pytest.raises(InvalidValueError, match="not a QQ number"):
        await store.puppets.upsert(9999)


# -- portals --------------------------------------------------------------------------


async def test_portal_lifecycle(users: Store, clock: FakeClock) -> None:
    store = users
    assert await store.portals.get(ALICE, 123456) is None
    portal, created = await store.portals.claim(ALICE, 123456, stranger=True)  # first message: claim, then create
    assert created is True
    assert (portal.owner_mxid, portal.uin, portal.room_id, portal.stranger) == (ALICE, 123456, None, True)
    assert portal.created_at == portal.updated_at == T0

    clock.advance(1)
    again, created = await store.portals.claim(ALICE, 123456, stranger=False)  # a second message meanwhile
    assert created is False and again == portal  # returned as it is, stranger untouched

    portal = await store.portals.set_room(ALICE, 123456, "!dm1")
    assert portal.room_id == "!dm1" and portal.updated_at == T0 + 1000 and portal.created_at == T0
    assert await store.portals.by_room("!dm1") == portal
    assert await store.portals.set_room(ALICE, 123456, "!dm1") == portal  # again: fine
    portal = await store.portals.set_stranger(ALICE, 123456, False)  # became a friend
    assert portal.stranger is False

    portal = await store.portals.forget_room(ALICE, 123456)  # the user left the room
    assert portal.room_id is None and portal.stranger is False
    assert await store.portals.by_room("!dm1") is None
    portal, created = await store.portals.claim(ALICE, 123456, stranger=False)
    assert created is False and portal.room_id is None  # the caller makes a new room
    assert (await store.portals.set_room(ALICE, 123456, "!dm2")).room_id == "!dm2"


async def test_portals_are_per_user_and_listed_by_uin(users: Store) -> None:
    store = users
    for uin in (300000, 100000, 200000):
        await store.portals.claim(ALICE, uin, stranger=False)
    await store.portals.claim(BOB, 100000, stranger=True)  # Bob's own portal to the same contact
    assert [p.uin for p in await store.portals.of_owner(ALICE)] == [100000, 200000, 300000]
    assert [(p.owner_mxid, p.stranger) for p in await store.portals.of_owner(BOB)] == [(BOB, True)]
    assert await store.portals.of_owner("@nobody:example.org") == []
    assert (await store.portals.get(BOB, 100000)).stranger is True  # type: ignore[union-attr]
    assert (await store.portals.get(ALICE, 100000)).stranger is False  # type: ignore[union-attr]


async def test_a_room_is_one_portal(users: Store) -> None:
    store = users
    await store.portals.claim(ALICE, 100000, stranger=False)
    await store.portals.claim(BOB, 200000, stranger=False)
    await store.portals.set_room(ALICE, 100000, "!dm")
    with pytest.raises(ConflictError, match=f"!dm is already the portal of {ALICE} with 100000"):
        await store.portals.set_room(BOB, 200000, "!dm")
    with pytest.raises(ConflictError, match=f"!control is the control room of {ALICE}"):
        await store.portals.set_room(BOB, 200000, "!control")
    assert (await store.portals.get(BOB, 200000)).room_id is None  # type: ignore[union-attr]
    await store.portals.forget_room(ALICE, 100000)
    assert (await store.portals.set_room(BOB, 200000, "!dm")).room_id == "!dm"  # free again


async def test_portal_mistakes(users: Store) -> None:
    store = users
    with pytest.raises(NotFoundError, match="no bridge user @carol"):
        await store.portals.claim("@carol:example.org", 123456, stranger=False)
    for action in (
        store.portals.set_room(ALICE, 123456, "!r"),
        store.portals.set_stranger(ALICE, 123456, True),
        store.portals.forget_room(ALICE, 123456),
    ):
        with pytest.raises(NotFoundError, match=f"no portal of {ALICE} with 123456"):
            await action
    with pytest.raises(InvalidValueError):
        await store.portals.claim(ALICE, 123456, stranger=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        await store.portals.claim(ALICE, 99, stranger=False)
    with pytest.raises(InvalidValueError):
        await store.portals.by_room("")
    assert await store.portals.of_owner(ALICE) == []


async def test_concurrent_claims_create_one_portal(open_store: OpenStore) -> None:
    first, second = await open_store(), await open_store()
    await first.users.upsert(ALICE)
    results = await asyncio.gather(
        *(s.portals.claim(ALICE, 123456, stranger=False) for _ in range(10) for s in (first, second))
    )
    assert sum(created for _, created in results) == 1
    assert len({portal for portal, _ in results}) == 1


async def test_portals_survive_a_restart(open_store: OpenStore) -> None:
    store = await open_store()
    await store.users.upsert(ALICE)
    await store.portals.claim(ALICE, 123456, stranger=True)
    before = await store.portals.set_room(ALICE, 123456, "!dm")
    await store.close()
    store = await open_store()
    assert await store.portals.by_room("!dm") == before
    assert (await store.portals.claim(ALICE, 123456, stranger=False)) == (before, False)


# -- friend requests ------------------------------------------------------------------


async def test_friend_request_lifecycle(users: Store, clock: FakeClock) -> None:
    store = users
    assert await store.friend_requests.get(ALICE, 123456) is None
    request = await store.friend_requests.add(ALICE, 123456, "我是小明")  # MT=2
    assert request.state == FriendRequestState.PENDING and request.reason == "我是小明"
    assert (request.prompt_room_id, request.prompt_event_id, request.answered_at) == (None, None, None)
    assert request.created_at == T0

    request = await store.friend_requests.set_prompt(ALICE, 123456, "!control", "$prompt1")
    assert (request.prompt_room_id, request.prompt_event_id) == ("!control", "$prompt1")
    assert await store.friend_requests.by_prompt("$prompt1") == request  # a ✅ reaction on it
    assert await store.friend_requests.get(ALICE, 123456) == request

    clock.advance(5)
    answered = await store.friend_requests.answer(ALICE, 123456, FriendRequestState.ACCEPTED)
    assert answered.state == "accepted" and answered.answered_at == T0 + 5000
    assert answered.prompt_event_id == "$prompt1"  # the prompt is then updated with the outcome
    assert await store.friend_requests.pending(ALICE) == []

    # Answering again (`accept` and a ✅ racing, or `reject` afterwards): refused, unchanged.
    for state in ("accepted", "rejected"):
        with pytest.raises(ConflictError, match="the friend request from 123456 was already accepted"):
            await store.friend_requests.answer(ALICE, 123456, state)
    assert await store.friend_requests.get(ALICE, 123456) == answered


async def test_a_new_request_reopens_an_old_one(users: Store, clock: FakeClock) -> None:
    store = users
    await store.friend_requests.add(ALICE, 123456, "first")
    await store.friend_requests.set_prompt(ALICE, 123456, "!control", "$p1")
    await store.friend_requests.answer(ALICE, 123456, "rejected")
    clock.advance(60)
    again = await store.friend_requests.add(ALICE, 123456, "second try")
    assert (again.state, again.reason, again.created_at, again.answered_at) == (
        "pending",
        "second try",
        T0 + 60_000,
        None,
    )
    assert (again.prompt_room_id, again.prompt_event_id) == (None, None)
    assert await store.friend_requests.by_prompt("$p1") is None
    # And while still pending: the newer reason wins, the old prompt is dropped.
    await store.friend_requests.set_prompt(ALICE, 123456, "!control", "$p2")
    again = await store.friend_requests.add(ALICE, 123456, "")  # no reason given
    assert (again.state, again.reason, again.prompt_event_id) == ("pending", "", None)
    assert (await store.friend_requests.answer(ALICE, 123456, "accepted")).state == "accepted"


async def test_pending_requests_oldest_first_and_per_user(users: Store, clock: FakeClock) -> None:
    store = users
    await store.friend_requests.add(ALICE, 300000, "c")
    clock.advance(1)
    await store.friend_requests.add(ALICE, 200000, "b")
    await store.friend_requests.add(ALICE, 100000, "a")  # same time as b: by uin
    await store.friend_requests.add(BOB, 300000, "to bob")
    await store.friend_requests.answer(ALICE, 200000, "rejected")
    assert [r.from_uin for r in await store.friend_requests.pending(ALICE)] == [300000, 100000]
    assert [(r.owner_mxid, r.reason) for r in await store.friend_requests.pending(BOB)] == [(BOB, "to bob")]


async def test_pending_requests_survive_a_restart(open_store: OpenStore) -> None:
    store = await open_store()
    await store.users.upsert(ALICE)
    await store.friend_requests.add(ALICE, 123456, "hi")
    before = await store.friend_requests.set_prompt(ALICE, 123456, "!control", "$p")
    await store.close()
    store = await open_store()
    assert await store.friend_requests.pending(ALICE) == [before]
    assert await store.friend_requests.by_prompt("$p") == before


async def test_friend_request_mistakes(users: Store) -> None:
    store = users
    with pytest.raises(NotFoundError, match="no bridge user @carol"):
        await store.friend_requests.add("@carol:example.org", 123456, "hi")
    with pytest.raises(NotFoundError, match=f"no friend request from 123456 to {ALICE}"):
        await store.friend_requests.answer(ALICE, 123456, "accepted")
    with pytest.raises(NotFoundError, match=f"no friend request from 123456 to {ALICE}"):
        await store.friend_requests.set_prompt(ALICE, 123456, "!control", "$p")
    await store.friend_requests.add(ALICE, 123456, "hi")
    for state in ("pending", "maybe", "", None):
        with pytest.raises(InvalidValueError, match="'accepted' or 'rejected'"):
            await store.friend_requests.answer(ALICE, 123456, state)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        await store.friend_requests.add(ALICE, 123456, None)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        await store.friend_requests.add(ALICE, 5, "hi")
    # One prompt asks about one request.
    await store.friend_requests.add(ALICE, 200000, "hello")
    await store.friend_requests.set_prompt(ALICE, 123456, "!control", "$p")
    with pytest.raises(ConflictError, match="already the prompt for the request from 123456"):
        await store.friend_requests.set_prompt(ALICE, 200000, "!control", "$p")
    assert (await store.friend_requests.get(ALICE, 123456)).state == "pending"  # type: ignore[union-attr]


async def test_concurrent_answers_one_wins(open_store: OpenStore) -> None:
    first, second = await open_store(), await open_store()
    await first.users.upsert(ALICE)
    await first.friend_requests.add(ALICE, 123456, "hi")
    results = await asyncio.gather(
        first.friend_requests.answer(ALICE, 123456, "accepted"),
        second.friend_requests.answer(ALICE, 123456, "rejected"),
        return_exceptions=True,
    )
    assert sum(isinstance(r, ConflictError) for r in results) == 1
    winner = next(r for r in results if not isinstance(r, BaseException))
    assert await first.friend_requests.get(ALICE, 123456) == winner


# -- the owner's rows go with the owner -----------------------------------------------


async def test_deleting_a_user_deletes_their_rows(users: Store) -> None:
    store = users
    for owner in (ALICE, BOB):
        await store.portals.claim(owner, 123456, stranger=False)
        await store.friend_requests.add(owner, 123456, "hi")
        await store.inbound.add_batch(owner, 200000, 7, [(9, 123456, "hello")])
        await store.outbox.enqueue(owner, f"!dm-{owner}", f"$ev-{owner}", 123456, ["hi"])
    await store.puppets.upsert(123456, nick="n")

    # No store method deletes a user today; the schema makes sure nothing of theirs is
    # left behind when one is.
    await store.db.execute("DELETE FROM bridge_user WHERE mxid = $1", ALICE)
    for table in ("portal", "friend_request", "qq_inbound", "outbox", "qq_seq", "qq_seq_issued"):
        column = "mxid" if table.startswith("qq_seq") else "owner_mxid"
        owners = await store.db.fetch(f"SELECT DISTINCT {column} AS owner FROM {table}")
        assert owners == [{"owner": BOB}], table
    assert await store.puppets.get(123456) is not None  # a puppet is nobody's
