"""Presence that stays true (issue 10, item 1), without a homeserver: the keeper's
schedule on a stepped clock, and Puppets.set_presence with a real store and a
recording homeserver.

The keeper says each online or busy puppet's presence again every interval, at a
phase of its own, so a thousand are spread evenly; offline puppets and puppets no
running account watches cost nothing; a status change never loses to a refresh."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest

from qqbridge.bridge.contacts.presence import PresenceKeeper, friend_of_a_running_account
from qqbridge.bridge.contacts.puppets import Puppets
from qqbridge.bridge.qq_sessions.account_state import AccountState
from qqbridge.config import Config
from qqbridge.qq import model
from qqbridge.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.puts: list[tuple[float, int, str]] = []

    async def __call__(self, uin: int, presence: str) -> None:
        self.puts.append((self.clock.now, uin, presence))


async def step(keeper: PresenceKeeper, clock: Clock, until: float, by: float = 0.1) -> None:
    while clock.now < until:
        clock.now = round(clock.now + by, 6)
        keeper.tick()
        await keeper.settle()


async def test_a_thousand_online_friends_are_refreshed_every_interval_evenly_spread() -> None:
    clock = Clock()
    put = Recorder(clock)
    keeper = PresenceKeeper(put, interval=20.0, clock=clock, rng=random.Random(7).random)
    for uin in range(10_000, 11_000):
        await keeper.say(uin, "online" if uin % 3 else "unavailable")
    start = clock.now
    put.puts.clear()
    await step(keeper, clock, start + 100)

    per_puppet: dict[int, list[float]] = {}
    for at, uin, presence in put.puts:
        per_puppet.setdefault(uin, []).append(at)
        assert presence == ("online" if uin % 3 else "unavailable")
    assert len(per_puppet) == 1000
    for times in per_puppet.values():  # never older than the interval (+ one clock step)
        gaps = [b - a for a, b in zip([start, *times], times, strict=False)]
        assert max(gaps) <= 20.0 + 0.11 and 100 - times[-1] + start <= 20.0 + 0.11
    per_second = Counter(int(at - start) for at, _, _ in put.puts)
    assert sum(per_second.values()) / 100 == pytest.approx(50, rel=0.05)  # 1,000 / 20 s
    assert max(per_second.values()) <= 80  # spread, not a burst of 1,000 every 20 s
    assert keeper.refreshed == len(put.puts)


async def test_offline_and_unwatched_puppets_cost_nothing() -> None:
    clock = Clock()
    put = Recorder(clock)
    watched = {1, 2}
    keeper = PresenceKeeper(put, interval=20.0, clock=clock, watched=lambda uin: uin in watched)
    for uin in (1, 2, 3):
        await keeper.say(uin, "online")
    await keeper.say(2, "offline")  # offline never lapses: off the schedule
    put.puts.clear()
    await step(keeper, clock, clock.now + 45)
    assert {uin for _, uin, _ in put.puts} == {1}  # 3 is watched by no running account
    assert len(keeper) == 1
    assert not keeper.fresh(2, "online") and not keeper.fresh(3, "online") and keeper.fresh(1, "online")


async def test_a_status_change_never_loses_to_a_refresh_under_way() -> None:
    clock = Clock()
    gate = asyncio.Event()
    said: list[str] = []

    async def slow_put(uin: int, presence: str) -> None:
        if presence == "online" and said:  # the refresh hangs until released
            await gate.wait()
        said.append(presence)

    keeper = PresenceKeeper(slow_put, interval=20.0, clock=clock, rng=lambda: 0.5)
    await keeper.say(5, "online")
    clock.now += 10.0
    keeper.tick()  # the refresh starts and hangs
    await asyncio.sleep(0)
    change = asyncio.create_task(keeper.say(5, "unavailable"))  # QQ: busy now
    await asyncio.sleep(0.01)
    assert not change.done()  # waits for the refresh: one at a time per puppet
    gate.set()
    await change
    await keeper.settle()
    assert said == ["online", "online", "unavailable"]  # the change lands last


async def test_a_failed_refresh_is_tried_at_the_next_turn() -> None:
    clock = Clock()
    calls: list[float] = []

    async def flaky(uin: int, presence: str) -> None:
        calls.append(clock.now)
        if len(calls) == 2:
            raise OSError("homeserver down")

    keeper = PresenceKeeper(flaky, interval=20.0, clock=clock, rng=lambda: 1.0)
    await keeper.say(7, "online")
    await step(keeper, clock, clock.now + 41)
    assert len(calls) == 3 and keeper.failed == 1 and keeper.refreshed == 1


async def test_the_loop_runs_on_its_own() -> None:
    calls: list[str] = []

    async def put(uin: int, presence: str) -> None:
        calls.append(presence)

    keeper = PresenceKeeper(put, interval=0.2)
    task = asyncio.create_task(keeper.run())
    await keeper.say(9, "online")
    await asyncio.sleep(0.75)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert 3 <= len(calls) <= 6


def test_watched_means_a_friend_of_an_account_that_still_runs() -> None:
    class Account:
        def __init__(self, state: str, friends: set[int]) -> None:
            self.state = AccountState(state)
            self.friends = friends

    class Accounts:
        running = {"@a:x": Account("online", {1}), "@b:x": Account("bad_password", {2}),
                   "@c:x": Account("unreachable", {3})}  # fmt: skip

    assert [friend_of_a_running_account(Accounts, uin) for uin in (1, 2, 3, 4)] == [True, False, True, False]


# ---- Puppets.set_presence with a real store -------------------------------------------------


class RecordingMatrix:
    bot_mxid = "@qqbridge:example.org"

    def __init__(self) -> None:
        self.presence: list[tuple[str, str]] = []

    async def ensure_registered(self, mxid: str) -> None: ...

    async def set_displayname(self, mxid: str, name: str) -> None: ...

    async def set_presence(self, mxid: str, presence: str, status_msg: str | None = None) -> None:
        self.presence.append((mxid, presence))


@pytest.fixture
async def puppets(tmp_path: Path):
    config = Config(homeserver={"url": "http://hs", "domain": "example.org"}, permissions={"example.org": "user"})
    store = await Store.open(str(tmp_path / "bridge.db"))
    yield Puppets(config, store, RecordingMatrix())
    await store.close()


async def test_set_presence_says_what_may_have_lapsed_and_sync_forces_it(puppets: Puppets) -> None:
    said = puppets.matrix.presence  # type: ignore[attr-defined]
    bob = "@_qq_10002:example.org"
    await puppets.set_presence(10002, model.Status.ONLINE)
    await puppets.set_presence(10002, model.Status.ONLINE)  # said a moment ago: nothing to do
    assert said == [(bob, "online")]
    await puppets.set_presence(10002, model.Status.ONLINE, force=True)  # `sync`, the login sync
    assert said == [(bob, "online")] * 2

    puppets.presence._entries[10002].said_at -= 60  # the keeper stopped (the owner logged out)
    await puppets.set_presence(10002, model.Status.ONLINE)  # the store saw no change; it lapsed anyway
    assert said == [(bob, "online")] * 3

    await puppets.set_presence(10002, model.Status.INVISIBLE)
    await puppets.set_presence(10002, model.Status.OFFLINE)  # offline stays offline: once is enough
    assert said[3:] == [(bob, "offline")] and len(puppets.presence) == 0
    assert (await puppets.store.puppets.get(10002)).presence == int(model.Status.OFFLINE)


async def test_a_new_friend_shows_their_status_at_once(puppets: Puppets) -> None:
    class QQ:
        async def online_friends(self) -> list[model.OnlineFriend]:
            return [model.OnlineFriend(10005, "Erin", model.Status.BUSY, 9)]

    await puppets.befriended(QQ(), 10005)
    await puppets.befriended(QQ(), 10006)
    said = puppets.matrix.presence  # type: ignore[attr-defined]
    assert said == [("@_qq_10005:example.org", "unavailable"), ("@_qq_10006:example.org", "offline")]
    assert await puppets.nick(10005) == "Erin"


async def test_set_presence_ignores_a_missing_media_repository(puppets: Puppets) -> None:
    """A homeserver stand-in without `request` has no media: faces are passed over."""
    assert puppets.avatars.media is None
    await puppets.ensure(10002, "Bob", face=3)
    assert (await puppets.store.puppets.get(10002)).nick == "Bob"
