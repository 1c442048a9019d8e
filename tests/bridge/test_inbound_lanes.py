"""QQ → Matrix relays portals side by side (issue 11, item 3): a contact's rows keep
their order, different contacts' go at once up to the user's and the bridge's bounds,
status changes never wait behind messages, and a failure that may pass stops every
lane before its next row (nothing skipped, nothing doubled). The core with a real
store (SQLite) and a homeserver double that records order and concurrency."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qqbridge.bridge.core import Bridge
from qqbridge.bridge.relay import inbound as inbound_module
from qqbridge.config import Config
from qqbridge.matrix.api import MatrixError
from qqbridge.qq import errors, model
from qqbridge.store import Store

OWNER, OTHER = "@bob:example.org", "@carol:example.org"
CONTROLS = {OWNER: "!control-bob:example.org", OTHER: "!control-carol:example.org"}


class Homeserver:
    """Each send takes `delay` s (or waits for `gate`); it records what was sent where,
    by transaction id, and how many sends were in flight at most."""

    bot_mxid = "@qqbridge:example.org"

    def __init__(self) -> None:
        self.delay = 0.005
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = 0
        self.most_in_flight = 0
        self.sent: list[tuple[str, str, str]] = []  # (room, body, txn_id)
        self.txns: dict[str, str] = {}  # txn_id → event id: a second send is the same event
        self.rooms = 0
        self.presence: list[tuple[str, str]] = []
        self.fail: dict[str, Exception] = {}  # body → what sending it raises (once)

    async def send(self, room_id: str, content: dict[str, Any], *, txn_id: str, **_: Any) -> str:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            await self.gate.wait()
            if content.get("body") in self.fail:
                raise self.fail.pop(content["body"])
            if txn_id not in self.txns:
                self.sent.append((room_id, content["body"], txn_id))
                self.txns[txn_id] = f"$e{len(self.txns)}"
            return self.txns[txn_id]
        finally:
            self.in_flight -= 1

    async def create_room(self, **_: Any) -> str:
        self.rooms += 1
        return f"!portal{self.rooms}:example.org"

    async def set_presence(self, user_id: str, presence: str, status_msg: str | None = None) -> None:
        self.presence.append((user_id, presence))

    async def ensure_registered(self, mxid: str) -> None: ...
    async def join(self, room_id: str, **_: Any) -> None: ...
    async def put_state(self, *_: Any, **__: Any) -> None: ...
    async def set_displayname(self, user_id: str, name: str) -> None: ...


@pytest.fixture
async def bridge(tmp_path: Path):
    config = Config(homeserver={"url": "http://hs", "domain": "example.org"}, permissions={"example.org": "user"})
    store = await Store.open(str(tmp_path / "bridge.db"))
    for owner, control in CONTROLS.items():
        await store.users.upsert(owner)
        await store.users.set_control_room(owner, control)
    bridge = Bridge(config, store, Homeserver(), qq_factory=lambda uin: None)
    yield bridge
    await bridge.inbound.close()
    await store.close()


def burst(friends: int, each: int, first: int = 20002) -> list[tuple[int, int, str]]:
    """`each` messages from every one of `friends` friends, interleaved as QQ would."""
    return [(9, first + f, f"{first + f} #{n}") for n in range(each) for f in range(friends)]


async def store_in_batches(bridge: Bridge, owner: str, rows: list[tuple[int, int, str]], seq: int = 1) -> None:
    for start in range(0, len(rows), 50):  # GetMsgEx returns 50 at most
        await bridge.store.inbound.add_batch(owner, 10001, seq + start // 50, rows[start : start + 50])


def by_room(matrix: Homeserver, owner_rooms: set[str] | None = None) -> dict[str, list[str]]:
    rooms: dict[str, list[str]] = {}
    for room, body, _ in matrix.sent:
        if owner_rooms is None or room in owner_rooms:
            rooms.setdefault(room, []).append(body)
    return rooms


async def states(bridge: Bridge) -> dict[str, int]:
    rows = await bridge.store.db.fetch("SELECT state, COUNT(*) AS n FROM qq_inbound GROUP BY state")
    return {row["state"]: row["n"] for row in rows}


async def test_a_burst_from_many_friends_goes_side_by_side_each_portal_in_order(bridge: Bridge) -> None:
    matrix: Homeserver = bridge.matrix  # type: ignore[assignment]
    await store_in_batches(bridge, OWNER, burst(60, 15))  # the 900 from 60 friends
    await bridge.inbound.relay_pending(OWNER)
    assert await states(bridge) == {"relayed": 900}
    rooms = by_room(matrix)
    assert len(rooms) == 60
    for bodies in rooms.values():
        sender = bodies[0].split()[0]
        assert bodies == [f"{sender} #{n}" for n in range(15)]  # each portal in QQ's order, each once
    assert len({txn for _, _, txn in matrix.sent}) == 900
    assert 1 < matrix.most_in_flight <= inbound_module.USER_SENDS
    assert matrix.most_in_flight == inbound_module.USER_SENDS  # the bound is used, not just respected


async def test_one_chatty_friend_is_one_lane(bridge: Bridge) -> None:
    """A single portal is relayed one message at a time, in order."""
    matrix: Homeserver = bridge.matrix  # type: ignore[assignment]
    await store_in_batches(bridge, OWNER, burst(1, 120))
    await bridge.inbound.relay_pending(OWNER)
    [bodies] = by_room(matrix).values()
    assert bodies == [f"20002 #{n}" for n in range(120)]
    assert matrix.most_in_flight == 1


async def test_the_bridge_wide_bound_holds_across_users(bridge: Bridge) -> None:
    matrix: Homeserver = bridge.matrix  # type: ignore[assignment]
    bridge.inbound.all_sends = asyncio.Semaphore(5)
    await store_in_batches(bridge, OWNER, burst(20, 5))
    await store_in_batches(bridge, OTHER, burst(20, 5, first=30002))
    await asyncio.gather(bridge.inbound.relay_pending(OWNER), bridge.inbound.relay_pending(OTHER))
    assert await states(bridge) == {"relayed": 200}
    assert matrix.most_in_flight == 5


async def test_rows_stored_during_a_relay_join_it_and_the_store_holds_the_rest(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More pending rows than a run holds in hand: read page by page as lanes finish,
    and rows stored meanwhile (a wake) are taken up by the run under way."""
    monkeypatch.setattr(inbound_module, "IN_HAND", 40)
    monkeypatch.setattr(inbound_module, "PAGE", 16)
    matrix: Homeserver = bridge.matrix  # type: ignore[assignment]
    rows = burst(30, 10)
    await store_in_batches(bridge, OWNER, rows[:150])
    bridge.inbound.wake(OWNER)
    await asyncio.sleep(0.05)
    await store_in_batches(bridge, OWNER, rows[150:], seq=100)
    bridge.inbound.wake(OWNER)
    for _ in range(200):
        if len(matrix.sent) == 300:
            break
        await asyncio.sleep(0.02)
    assert await states(bridge) == {"relayed": 300}
    for bodies in by_room(matrix).values():
        sender = bodies[0].split()[0]
        assert bodies == [f"{sender} #{n}" for n in range(10)]
    assert len(matrix.sent) == 300


async def test_status_changes_never_wait_behind_messages(bridge: Bridge) -> None:
    """Every message slot is taken by a send that hangs: status changes stored after
    the messages are shown all the same, by the relay under way."""
    matrix: Homeserver = bridge.matrix  # type: ignore[assignment]
    matrix.gate.clear()
    await store_in_batches(bridge, OWNER, burst(20, 3))
    bridge.inbound.wake(OWNER)
    for _ in range(100):
        if matrix.in_flight == inbound_module.USER_SENDS:
            break
        await asyncio.sleep(0.02)
    assert matrix.in_flight == inbound_module.USER_SENDS
    await bridge.store.inbound.add_batch(OWNER, 10001, 99, [(99, 20003, "30"), (99, 20050, "10")])
    bridge.inbound.wake(OWNER)
    for _ in range(100):
        if len(matrix.presence) == 2:
            break
        await asyncio.sleep(0.02)
    assert sorted(matrix.presence) == [("@_qq_20003:example.org", "unavailable"), ("@_qq_20050:example.org", "online")]
    assert matrix.in_flight == inbound_module.USER_SENDS and matrix.sent == []
    matrix.gate.set()
    for _ in range(100):
        if await bridge.store.inbound.count_pending(OWNER) == 0:
            break
        await asyncio.sleep(0.02)
    assert await states(bridge) == {"relayed": 62}
    assert len(matrix.sent) == 60


async def test_a_passing_failure_stops_every_lane_before_its_next_row(bridge: Bridge) -> None:
    """The homeserver fails one send: no lane starts another row, the call raises, and
    the next pass relays the rest, each once, each portal in order."""
    matrix: Homeserver = bridge.matrix  # type: ignore[assignment]
    matrix.fail["20005 #1"] = MatrixError(502, "M_UNKNOWN", "bad gateway", "send")
    await store_in_batches(bridge, OWNER, burst(10, 8))
    with pytest.raises(MatrixError):
        await bridge.inbound.relay_pending(OWNER)
    done = len(matrix.sent)
    assert done < 80 and (await states(bridge))["pending"] == 80 - done
    assert "20005 #1" not in {body for _, body, _ in matrix.sent}
    await bridge.inbound.relay_pending(OWNER)
    assert await states(bridge) == {"relayed": 80}
    for bodies in by_room(matrix).values():
        sender = bodies[0].split()[0]
        assert bodies == [f"{sender} #{n}" for n in range(8)]
    assert len(matrix.sent) == 80


async def test_a_poison_row_is_set_aside_and_its_lane_flows_on(bridge: Bridge) -> None:
    matrix: Homeserver = bridge.matrix  # type: ignore[assignment]
    matrix.fail["20003 #2"] = MatrixError(413, "M_TOO_LARGE", "event too large", "send")
    await store_in_batches(bridge, OWNER, burst(5, 6))
    await bridge.inbound.relay_pending(OWNER)
    assert await states(bridge) == {"relayed": 29, "failed": 1}
    rooms = by_room(matrix)
    notices = rooms.pop(CONTROLS[OWNER])
    assert len(notices) == 1 and "set aside" in notices[0] and "20003 #2" in notices[0]
    for bodies in rooms.values():
        sender = bodies[0].split()[0]
        assert bodies == [f"{sender} #{n}" for n in range(6) if f"{sender} #{n}" != "20003 #2"]


async def test_an_accepted_friend_request_shows_the_new_friends_presence_at_once(bridge: Bridge) -> None:
    matrix: Homeserver = bridge.matrix  # type: ignore[assignment]
    asked: list[int] = []

    class QQ:
        async def online_friends(self) -> list[model.OnlineFriend]:
            asked.append(20007)
            return [model.OnlineFriend(uin=20007, status=model.Status.BUSY, nick="Gina", face=0)]

    account = SimpleNamespace(qq=QQ(), friends=set(), uin=10001)
    bridge.accounts.running[OWNER] = account  # type: ignore[assignment]
    try:
        await bridge.store.inbound.add_batch(OWNER, 10001, 1, [(3, 20007, "")])
        await bridge.inbound.relay_pending(OWNER)
    finally:
        del bridge.accounts.running[OWNER]
    assert asked and 20007 in account.friends
    assert ("@_qq_20007:example.org", "unavailable") in matrix.presence
    assert any("accepted your friend request" in body for _, body, _ in matrix.sent)
    assert await states(bridge) == {"relayed": 1}


async def test_a_strangers_portal_becomes_a_friends_when_they_are_one(bridge: Bridge) -> None:
    """The portal's room is read without a write for each message; a stranger's portal
    still learns that its contact became a friend."""
    matrix: Homeserver = bridge.matrix  # type: ignore[assignment]

    class QQ:
        async def profile(self, uin: int, level: int = 3) -> model.Profile:
            raise errors.ServerUnavailable("not now")

    account = SimpleNamespace(qq=QQ(), friends=set(), uin=10001)
    bridge.accounts.running[OWNER] = account  # type: ignore[assignment]
    try:
        await bridge.store.inbound.add_batch(OWNER, 10001, 1, [(9, 20002, "who am I"), (9, 20002, "still me")])
        await bridge.inbound.relay_pending(OWNER)
        assert (await bridge.store.portals.get(OWNER, 20002)).stranger
        account.friends.add(20002)
        await bridge.store.inbound.add_batch(OWNER, 10001, 2, [(9, 20002, "a friend now")])
        await bridge.inbound.relay_pending(OWNER)
    finally:
        del bridge.accounts.running[OWNER]
    portal = await bridge.store.portals.get(OWNER, 20002)
    assert not portal.stranger
    assert by_room(matrix)[portal.room_id][-3:] == ["who am I", "still me", "a friend now"]
    assert matrix.rooms == 1


async def test_a_row_relayed_during_a_read_of_the_store_is_not_relayed_again(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15, item 4, driven step by step: a read of the pending rows begins while
    a row is being relayed, the row is relayed and marked meanwhile, and the read
    returns it as pending (as one on another pooled PostgreSQL connection may). It
    must not be relayed a second time."""
    import collections

    matrix: Homeserver = bridge.matrix  # type: ignore[assignment]
    calls: collections.Counter[str] = collections.Counter()
    real_send = matrix.send

    async def send(room_id: str, content: dict[str, Any], *, txn_id: str, **kwargs: Any) -> str:
        calls[txn_id] += 1
        return await real_send(room_id, content, txn_id=txn_id, **kwargs)

    monkeypatch.setattr(matrix, "send", send)
    store = bridge.store
    real_read, real_mark = store.inbound.pending, store.inbound.mark_relayed
    armed, marked = asyncio.Event(), asyncio.Event()

    async def read(owner: str, **kwargs: Any) -> Any:
        stale = armed.is_set() and not marked.is_set()
        rows = await real_read(owner, **kwargs)
        if stale:
            matrix.gate.set()  # the row in hand goes through now...
            await marked.wait()  # ...and is marked relayed before this read returns
        return rows

    async def mark(inbound_id: int, event_id: str | None) -> None:
        await real_mark(inbound_id, event_id)
        marked.set()

    monkeypatch.setattr(store.inbound, "pending", read)
    monkeypatch.setattr(store.inbound, "mark_relayed", mark)
    matrix.gate.clear()
    await store.inbound.add_batch(OWNER, 10001, 1, [(9, 20002, "first")])
    bridge.inbound.wake(OWNER)
    for _ in range(100):
        if matrix.in_flight:
            break
        await asyncio.sleep(0.01)
    assert matrix.in_flight == 1  # "first" is being sent
    await store.inbound.add_batch(OWNER, 10001, 2, [(9, 20003, "second")])
    armed.set()
    bridge.inbound.wake(OWNER)  # rows stored during the run: it reads the store again
    for _ in range(200):
        if await states(bridge) == {"relayed": 2} and not matrix.in_flight:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # a second relay of "first" would be under way now
    assert await states(bridge) == {"relayed": 2}
    assert sorted(calls.values()) == [1, 1], calls
