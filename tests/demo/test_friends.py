"""The demo's scripted QQ friends against an in-process simulator serving the demo
fixture: each does its act, and none of them minds a lost session or a server outage.
"You" (10001) is a plain QQClient, as the bridge would be."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from qqbridge.demo.friends import REQUEST_REASON, EchoBot, Friend, Moody, Newcomer
from qqbridge.demo.run import FIXTURE
from qqbridge.qq import QQClient, model, password_md5
from qqbridge.qqsim import Simulator
from qqbridge.qqsim.fixture import load_fixture

SCALE = 0.01
ACCOUNTS = load_fixture(FIXTURE)
YOU = 10001


def password(uin: int) -> str:
    return ACCOUNTS.account(uin).password


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(FIXTURE, time_scale=SCALE) as running:
        yield running


@pytest.fixture
async def you(sim: Simulator) -> AsyncIterator[QQClient]:
    async with QQClient(sim.url, YOU, timeout=5) as client:
        yield client


@pytest.fixture
async def play(sim: Simulator) -> AsyncIterator[Callable[..., Awaitable[Friend]]]:
    """`await play(EchoBot, 10002)`: the friend runs from 127.0.0.2 until the test ends."""
    tasks: list[asyncio.Task[None]] = []

    async def start(cls: type[Friend], uin: int, **options: object) -> Friend:
        friend = cls(uin, password(uin), server_url=sim.url, local_address="127.0.0.2", time_scale=SCALE, **options)
        tasks.append(asyncio.create_task(friend.run()))
        return friend

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(t.cancelled() for t in tasks), "a friend's run() ended other than by cancellation"


async def events(
    client: QQClient, wanted: Callable[[list[model.Event]], bool], timeout: float = 10
) -> list[model.Event]:
    seen: list[model.Event] = []
    async with asyncio.timeout(timeout):
        while not wanted(seen):
            seen += await client.drain_messages()
            await asyncio.sleep(0.05)
    return seen


def messages_from(uin: int, seen: list[model.Event]) -> list[str]:
    return [e.text for e in seen if isinstance(e, model.Message) and e.sender == uin]


async def test_echo_bot_echoes_and_comes_back_after_losing_its_session(sim, you, play, caplog) -> None:
    caplog.set_level(logging.INFO, logger="qqbridge.demo")
    await you.login(password_md5(password(YOU)))
    await play(EchoBot, 10002)
    await you.send_message(10002, "你好, a&b=c")
    seen = await events(you, lambda s: messages_from(10002, s))
    assert messages_from(10002, seen) == ["You said: 你好, a&b=c"]

    # Someone ends its session behind its back: it meets RES=20 and logs in again.
    async with QQClient(sim.url, 10002, local_address="127.0.0.2") as same_seat:
        await same_seat.logout()
    await asyncio.sleep(0.3)
    await you.send_message(10002, "still there?")
    await events(you, lambda s: "You said: still there?" in messages_from(10002, s))
    assert "session expired; logging in again" in caplog.text


async def test_echo_bot_accepts_a_friend_request(sim, you, play) -> None:
    await you.login(password_md5(password(YOU)))
    await you.remove_friend(10002)
    await play(EchoBot, 10002)
    await you.request_friendship(10002, "again?")
    seen = await events(you, lambda s: any(isinstance(e, model.RequestAccepted) for e in s))
    assert [e.sender for e in seen if isinstance(e, model.RequestAccepted)] == [10002]
    assert 10002 in await you.friends()


async def test_moody_goes_busy_and_back(sim, you, play) -> None:
    await you.login(password_md5(password(YOU)))
    await play(Moody, 10003)

    def moods(seen: list[model.Event]) -> list[model.Status]:
        return [e.status for e in seen if isinstance(e, model.StatusChange) and e.uin == 10003]

    seen = await events(you, lambda s: len(moods(s)) >= 4)
    statuses = moods(seen)
    assert statuses[0] is model.Status.ONLINE  # its login
    assert statuses[1:4] == [model.Status.BUSY, model.Status.ONLINE, model.Status.BUSY]


async def test_newcomer_asks_once_you_are_online_and_hears_no(sim, you, play) -> None:
    newcomer = await play(Newcomer, 10004)
    await asyncio.sleep(0.5)
    assert newcomer.state == "waiting"  # you are not online yet
    await you.login(password_md5(password(YOU)))
    seen = await events(you, lambda s: any(isinstance(e, model.FriendRequest) for e in s))
    assert [(e.sender, e.reason) for e in seen if isinstance(e, model.FriendRequest)] == [(10004, REQUEST_REASON)]
    await you.reject_request(10004, "not now")
    async with asyncio.timeout(5):
        while newcomer.state != "answered":
            await asyncio.sleep(0.05)


async def test_newcomer_sees_you_already_online_asks_again_once_and_thanks_you(sim, you, play) -> None:
    await you.login(password_md5(password(YOU)))
    await play(Newcomer, 10004, ask_again_after=50)  # 0.5 s at this scale
    requests = lambda s: [e for e in s if isinstance(e, model.FriendRequest)]  # noqa: E731
    seen = await events(you, lambda s: len(requests(s)) >= 2)
    await asyncio.sleep(1.5)
    assert len(requests(seen + await you.drain_messages())) == 2  # asked again, once
    await you.accept_request(10004)
    seen = await events(you, lambda s: messages_from(10004, s))
    assert "thanks for accepting" in messages_from(10004, seen)[0]


async def test_friends_ride_out_a_server_restart(sim, you, play, caplog) -> None:
    await play(EchoBot, 10002)
    await asyncio.sleep(0.3)
    port = sim.port
    await sim.stop()
    await asyncio.sleep(1)  # the friend meets a closed port and backs off
    async with Simulator(FIXTURE, port=port, time_scale=SCALE) as again:
        async with QQClient(again.url, YOU, timeout=5) as you_again:
            await you_again.login(password_md5(password(YOU)))
            await you_again.send_message(10002, "back?")
            seen = await events(you_again, lambda s: messages_from(10002, s), timeout=15)
            assert messages_from(10002, seen) == ["You said: back?"]
    assert "cannot reach the QQ server" in caplog.text
