"""The client against the running simulator over real HTTP on loopback: every command
of docs/protocol.md §5 and its replies, sessions, SEQ idempotency and time-scaled windows."""

from __future__ import annotations

import time

import pytest

from qqbridge.qq import errors, model, password_md5
from qqbridge.qq.client import QQClient


async def test_login_ok_wrong_password_and_illegal_accounts(client_for, sim) -> None:
    alice = client_for(10001)
    assert await alice.login(password_md5("secret")) == model.LoginOk(heartbeat=60, idle_timeout=300)
    with pytest.raises(errors.WrongPassword) as wrong:
        await client_for(10002).login(password_md5("not it"))
    assert wrong.value.reason
    with pytest.raises(errors.IllegalAccount):
        await client_for(100).login(password_md5("x"))  # below 10000
    with pytest.raises(errors.IllegalAccount):
        await client_for(55555).login(password_md5("x"))  # legal but unknown


async def test_commands_need_a_session(client_for) -> None:
    with pytest.raises(errors.NotLoggedIn):
        await client_for(10001).fetch_messages()
    await client_for(10001).logout()  # Logout always answers RES=0


async def test_friends_are_listed_page_by_page(logged_in) -> None:
    dave = await logged_in(10004)
    assert await dave.count_friends() == 5
    assert await dave.friends(page_size=2) == [10001, 10002, 10003, 10005, 10006]
    assert await dave.friends() == [10001, 10002, 10003, 10005, 10006]


async def test_online_friends_with_nick_status_and_face(logged_in) -> None:
    alice = await logged_in(10001)
    bob = await logged_in(10002)
    assert await alice.online_friends() == [model.OnlineFriend(10002, "Bob & 小明", model.Status.ONLINE, 3)]
    await bob.set_status(model.Status.INVISIBLE)
    assert await alice.online_friends() == []


async def test_online_friends_paged(logged_in) -> None:
    dave = await logged_in(10004)
    for uin in (10001, 10002, 10005, 10006):
        await logged_in(uin)
    friends = await dave.online_friends(page_size=3)
    assert [f.uin for f in friends] == [10001, 10002, 10005, 10006]


async def test_profile_levels(logged_in) -> None:
    bob = await logged_in(10002)
    simple = await bob.profile(10001, level=0)
    assert (simple.uin, simple.nick, simple.age) == (10001, "Alice", None)
    detailed = await bob.profile(10001, level=3)
    assert detailed.age == 19 and detailed.gender is model.Gender.FEMALE and detailed.city == "Suzhou"
    assert detailed.blood_type is model.BloodType.A and detailed.constellation is model.Constellation.CANCER
    assert detailed.zodiac is model.Zodiac.TIGER and detailed.real_name == "艾丽丝" and detailed.face == 270
    with pytest.raises(errors.IllegalAccount):
        await bob.profile(55555)


async def test_add_friend_by_each_policy(logged_in) -> None:
    erin = await logged_in(10005)
    assert await erin.add_friend(10002) == model.AddResult(10002, model.AddPolicy.ADDED)
    assert await erin.add_friend(10001) == model.AddResult(10001, model.AddPolicy.NEEDS_VERIFICATION)
    assert await erin.add_friend(10003) == model.AddResult(10003, model.AddPolicy.REFUSES_ALL)
    assert await erin.friends() == [10002]
    with pytest.raises(errors.IllegalAccount):
        await erin.add_friend(10005)  # oneself


async def test_friend_request_accepted_and_rejected(logged_in) -> None:
    alice = await logged_in(10001)
    erin = await logged_in(10005)
    frank = await logged_in(10006)
    await erin.request_friendship(10001, "we met at the café")
    await frank.request_friendship(10001, "hi")
    events = await alice.drain_messages()
    assert model.FriendRequest(10005, "we met at the café") in events and model.FriendRequest(10006, "hi") in events
    await alice.accept_request(10005)
    await alice.reject_request(10006, "who are you?")
    assert model.RequestAccepted(10001) in await erin.drain_messages()
    assert model.RequestRejected(10001, "who are you?") in await frank.drain_messages()
    assert 10005 in await alice.friends() and 10001 in await erin.friends()
    assert 10006 not in await alice.friends()


async def test_messages_both_ways_in_order(logged_in) -> None:
    alice = await logged_in(10001)
    bob = await logged_in(10002)
    await alice.drain_messages()
    await bob.drain_messages()  # the login notices
    for text in ("one", "two", "three"):
        await alice.send_message(10002, text)
    await bob.send_message(10001, "back")
    assert await bob.drain_messages() == [model.Message(10001, t) for t in ("one", "two", "three")]
    assert await alice.drain_messages() == [model.Message(10002, "back")]


async def test_status_changes_reach_friends(logged_in) -> None:
    alice = await logged_in(10001)
    bob = await logged_in(10002)
    await alice.drain_messages()
    await bob.set_status(model.Status.BUSY)
    assert await alice.drain_messages() == [model.StatusChange(10002, model.Status.BUSY)]
    time.sleep(0.03)  # past the 2 s (scaled) Change_Stat window
    await bob.set_status(model.Status.INVISIBLE)
    await bob.logout()
    events = await alice.drain_messages()
    assert events[0] == model.StatusChange(10002, model.Status.OFFLINE)  # invisible is sent as offline


async def test_changing_status_too_fast_is_refused_slowly(logged_in, sim) -> None:
    bob = await logged_in(10002)
    await bob.set_status(model.Status.BUSY)
    started = time.monotonic()
    with pytest.raises(errors.RateLimited):
        await bob.set_status(model.Status.ONLINE)
    assert time.monotonic() - started >= 20 * sim.time_scale * 0.9


async def test_sixth_message_in_five_seconds_starts_a_penalty(logged_in, sim) -> None:
    alice = await logged_in(10001)
    bob = await logged_in(10002)
    await bob.drain_messages()
    for n in range(5):
        await alice.send_message(10002, f"m{n}")
    with pytest.raises(errors.RateLimited):
        await alice.send_message(10002, "m5")
    assert [e.text for e in await bob.drain_messages() if isinstance(e, model.Message)] == [f"m{n}" for n in range(5)]


async def test_remove_friend_and_the_repeated_delete(logged_in, sim) -> None:
    dave = await logged_in(10004)
    await dave.remove_friend(10005)
    assert 10005 not in await dave.friends()
    started = time.monotonic()
    with pytest.raises(errors.RateLimited):
        await dave.remove_friend(10005)
    assert time.monotonic() - started >= 30 * sim.time_scale * 0.9


async def test_a_timeout_is_an_unknown_outcome_carrying_the_seq(logged_in, sim) -> None:
    dave = await logged_in(10004, timeout=0.05)  # shorter than the 0.3 s slow refusal
    await dave.remove_friend(10005)
    with pytest.raises(errors.OutcomeUnknown) as unknown:
        await dave.remove_friend(10005, seq=4242)
    assert unknown.value.seq == 4242


async def test_unreachable_server_is_reported_as_such() -> None:
    async with QQClient("http://127.0.0.1:9/", 10001, timeout=2) as client:
        with pytest.raises(errors.ServerUnavailable):
            await client.login(password_md5("secret"))


async def test_same_seq_delivers_once_and_refetches_a_lost_batch(logged_in) -> None:
    alice = await logged_in(10001)
    bob = await logged_in(10002)
    await bob.drain_messages()
    await alice.send_message(10002, "only once", seq=777)
    await alice.send_message(10002, "only once", seq=777)  # a retry after a lost reply
    first = await bob.fetch_messages(seq=900)
    again = await bob.fetch_messages(seq=900)  # the reply was "lost": fetch the same batch
    assert first == again == model.MessageBatch((model.Message(10001, "only once"),), full=False)
    assert await bob.fetch_messages() == model.MessageBatch((), full=False)


async def test_getmsgex_drains_past_the_cap_of_fifty(logged_in, sim) -> None:
    alice = await logged_in(10001)
    for uin in (10004, 10005, 10006, 10002, 10003):  # five senders, 24 each, under the rate limit
        sender = await logged_in(uin)
        for n in range(24):
            await sender.send_message(10001, f"{uin}-{n}")
            if n % 5 == 4:
                time.sleep(5 * sim.time_scale)
    first = await alice.fetch_messages()
    assert first.full and len(first.events) == 50
    rest = await alice.drain_messages()
    messages = [e for e in first.events + tuple(rest) if isinstance(e, model.Message)]
    assert len(messages) == 120
    assert [m.text for m in messages if m.sender == 10004] == [f"10004-{n}" for n in range(24)]


async def test_two_addresses_hold_separate_sessions(logged_in, client_for) -> None:
    await logged_in(10001)  # from 127.0.0.1
    other_computer = client_for(10001, local_address="127.0.0.2")
    with pytest.raises(errors.NotLoggedIn):
        await other_computer.fetch_messages()
    await other_computer.login(password_md5("secret"))
    await other_computer.fetch_messages()


async def test_idle_session_expires_and_friends_see_it_go(logged_in, sim) -> None:
    alice = await logged_in(10001)
    bob = await logged_in(10002)
    await alice.drain_messages()
    seen: list[model.Event] = []
    deadline = time.monotonic() + 300 * sim.time_scale * 2
    while time.monotonic() < deadline:  # alice keeps her session alive; bob says nothing
        seen.extend((await alice.fetch_messages()).events)
        time.sleep(0.2)
    assert model.StatusChange(10002, model.Status.OFFLINE) in seen  # told without anyone asking
    with pytest.raises(errors.NotLoggedIn):
        await bob.fetch_messages()


async def test_query_stat_quirk_is_a_protocol_error_not_a_crash(logged_in) -> None:
    from qqbridge.qq import codec

    alice = await logged_in(10001)
    with pytest.raises(errors.RemoteProtocolError, match="no RES"):
        await alice.request(codec.QueryStat(10001, 31337, page_size=0))
