"""Time-scaled behaviour over real HTTP: slow refusals, session expiry, caps, SEQ repeats."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.sim.accounts import ALICE, BOB, CAROL, EVE, PASSWORDS
from tests.sim.conftest import SimFactory
from tests.sim.simclient import QQ, md5

SCALE = 0.02  # 20 s -> 0.4 s, 30 s -> 0.6 s, 5 s -> 0.1 s, 2 s -> 0.04 s


def near(elapsed: float, expected: float) -> bool:
    return expected * 0.95 <= elapsed < expected + 0.3


async def login(qq: QQ, *uins: int) -> None:
    for uin in uins:
        assert (await qq.login(uin, PASSWORDS[uin]))["RES"] == "0"


async def test_sending_too_fast_is_answered_after_the_window(make_sim: SimFactory) -> None:
    sim = await make_sim(time_scale=SCALE)
    qq = QQ(sim.port)
    await login(qq, ALICE)
    replies = [await qq.call("CLTMSG", ALICE, UN=EVE, MG=f"m{i}") for i in range(5)]
    assert [r["RES"] for r in replies] == ["0"] * 5
    assert (await qq.call("CLTMSG", ALICE, UN=EVE, MG="six"))["RES"] == "3"
    assert near(qq.last_elapsed, 20 * SCALE)
    assert (await qq.call("CLTMSG", ALICE, UN=EVE, MG="seven"))["RES"] == "0"  # the window has passed
    assert qq.last_elapsed < 0.2
    await login(qq, EVE)
    assert [m[2] for m in await qq.messages(EVE)] == ["m0", "m1", "m2", "m3", "m4", "seven"]


async def test_a_slow_refusal_does_not_hold_up_other_connections(make_sim: SimFactory) -> None:
    sim = await make_sim(time_scale=SCALE)
    qq = QQ(sim.port)
    await login(qq, ALICE, BOB)
    slow = asyncio.create_task(qq.call("Ack_AddToList", ALICE, UN=BOB, CD=3, RS=""))  # CD >= 3
    await asyncio.sleep(0.02)
    start = time.perf_counter()
    for _ in range(10):
        assert (await QQ(sim.port).call("List", BOB))["RES"] == "0"
    assert time.perf_counter() - start < 20 * SCALE / 2
    assert not slow.done()
    assert (await slow)["RES"] == "3"


async def test_change_stat_penalty(make_sim: SimFactory) -> None:
    sim = await make_sim(time_scale=SCALE)
    qq = QQ(sim.port)
    await login(qq, ALICE)
    assert (await qq.call("Change_Stat", ALICE, ST=30))["RES"] == "0"
    assert (await qq.call("Change_Stat", ALICE, ST=10))["RES"] == "3"
    assert near(qq.last_elapsed, 20 * SCALE)
    assert (await qq.call("Change_Stat", ALICE, ST=10))["RES"] == "0"


async def test_a_repeated_delete_is_answered_after_30_s(make_sim: SimFactory) -> None:
    sim = await make_sim(time_scale=SCALE)
    qq = QQ(sim.port)
    await login(qq, ALICE)
    assert (await qq.call("DelFromList", ALICE, UN=BOB))["RES"] == "0"
    assert (await qq.call("DelFromList", ALICE, UN=BOB))["RES"] == "3"
    assert near(qq.last_elapsed, 30 * SCALE)
    assert (await qq.call("DelFromList", ALICE, UN=BOB))["RES"] == "0"


async def test_verify_twice_quirk(make_sim: SimFactory) -> None:
    sim = await make_sim(time_scale=SCALE, quirks=("verify-twice",))
    qq = QQ(sim.port)
    await login(qq, EVE, ALICE)
    assert (await qq.call("Ack_AddToList", EVE, seq=31, UN=ALICE, CD=2, RS="hi"))["RES"] == "3"
    assert near(qq.last_elapsed, 20 * SCALE)
    assert await qq.messages(ALICE) == []
    assert (await qq.call("Ack_AddToList", EVE, seq=31, UN=ALICE, CD=2, RS="hi"))["RES"] == "0"
    assert await qq.messages(ALICE) == [(2, EVE, "hi")]


async def test_sessions_expire_and_friends_are_told_without_a_request(make_sim: SimFactory) -> None:
    sim = await make_sim(time_scale=0.002)  # LI = 0.6 s
    qq = QQ(sim.port)
    await login(qq, ALICE, BOB)
    assert await qq.messages(BOB) == [(99, ALICE, "10")]
    for _ in range(6):  # Bob keeps his session; Alice says nothing
        await asyncio.sleep(0.15)
        assert (await qq.call("List", BOB))["RES"] == "0"
    assert await qq.messages(BOB) == [(99, ALICE, "20")]
    assert sim.world.status(ALICE) == 20
    assert (await qq.call("List", ALICE))["RES"] == "20"
    assert (await qq.login(ALICE, PASSWORDS[ALICE]))["RES"] == "0"
    assert await qq.messages(BOB) == [(99, ALICE, "10")]


async def test_a_repeated_seq_is_not_delivered_twice(make_sim: SimFactory) -> None:
    sim = await make_sim(time_scale=SCALE)
    qq = QQ(sim.port)
    await login(qq, ALICE, EVE)
    first = await qq.raw(b"VER=1.1&CMD=CLTMSG&SEQ=900&UIN=10001&UN=10005&MG=once")
    again = await qq.raw(b"VER=1.1&CMD=CLTMSG&SEQ=900&UIN=10001&UN=10005&MG=once")
    assert first.body == again.body == b"VER=1.1&CMD=CLTMSG&SEQ=900&UIN=10001&RES=0"
    batch = await qq.raw(b"VER=1.1&CMD=GetMsgEx&SEQ=901&UIN=10005")
    assert (await qq.raw(b"VER=1.1&CMD=GetMsgEx&SEQ=901&UIN=10005")).body == batch.body
    assert batch.body.endswith(b"&MN=1&MT=9,&UN=10001,&MG=once,")
    assert await qq.messages(EVE) == []


async def test_getmsgex_returns_at_most_50_and_the_queue_keeps_1000(make_sim: SimFactory) -> None:
    senders = 210
    fixture = {
        "accounts": [{"uin": 20000, "password": "pw", "nick": "Sink"}]
        + [{"uin": 30000 + i, "password": "pw", "nick": f"S{i}"} for i in range(senders)]
    }
    sim = await make_sim(fixture, time_scale=1.0)
    qq = QQ(sim.port)

    async def send(i: int, round_: int) -> None:
        reply = await qq.call("CLTMSG", 30000 + i, UN=20000, MG=f"{round_}:{i}")
        assert reply["RES"] == "0"

    logins = await asyncio.gather(*(qq.login(30000 + i, "pw") for i in range(senders)))
    assert {r["RES"] for r in logins} == {"0"}
    for round_ in range(5):  # five a sender: within the rate limit; 1,050 in all
        await asyncio.gather(*(send(i, round_) for i in range(senders)))
    assert (await qq.login(20000, "pw"))["RES"] == "0"  # the sink was offline all along
    sizes, texts = [], []
    while True:
        reply = await qq.call("GetMsgEx", 20000)
        sizes.append(int(reply["MN"]))
        texts += reply["MG"]
        if sizes[-1] == 0:
            break
    assert sizes == [50] * 20 + [0]
    rounds = [int(t.split(":")[0]) for t in texts]
    assert rounds == sorted(rounds)  # oldest first
    assert rounds.count(0) == senders - 50  # the 50 oldest were dropped
    assert len(set(texts)) == 1000


@pytest.mark.parametrize("cmd", ["List", "GetMsgEx"])
async def test_requests_keep_a_session_alive(make_sim: SimFactory, cmd: str) -> None:
    sim = await make_sim(time_scale=0.002)  # LI = 0.6 s
    qq = QQ(sim.port)
    await login(qq, CAROL)
    for _ in range(8):
        await asyncio.sleep(0.1)
        assert (await qq.call(cmd, CAROL))["RES"] == "0"


async def test_login_md5_is_compared_case_insensitively(make_sim: SimFactory) -> None:
    sim = await make_sim()
    qq = QQ(sim.port)
    reply = await qq.call("Login", ALICE, PS=md5(PASSWORDS[ALICE]).upper(), M5=1, LC="9326b87B234e7235")
    assert reply["RES"] == "0"
