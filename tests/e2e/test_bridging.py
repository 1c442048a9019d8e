"""Chatting with QQ contacts from Matrix, end to end: a Matrix user (matrix-nio) and QQ
friends played through the protocol from another computer (127.0.0.2), with a real
Synapse, the simulator and the bridge process."""

from __future__ import annotations

import asyncio

from nio import RoomMessageNotice

from qqbridge.qq import model
from tests.e2e.conftest import received
from tests.e2e.test_control_room import command

TRICKY = ["你好，世界 😀👍🏽", "a&b=c,d%e+f", "two\nlines\n\nand a gap", "<b>not bold</b> &amp; literal"]


async def test_chat_both_ways(stack, bridged, qq) -> None:
    dan, _ = await bridged("dan1", 10001)
    bob = await qq(10002)
    for text in TRICKY:
        await bob.send_message(10001, text)
    puppet = "@_qq_10002:localhost"
    portal = await dan.accept_invite(puppet)
    await dan.wait_for(lambda: len(dan.texts(portal, puppet)) >= len(TRICKY), what="the QQ messages")
    assert dan.texts(portal, puppet) == TRICKY  # exactly, in order, plain text
    state = await dan.client.room_get_state_event(portal, "m.room.name")
    assert state.content["name"] == "Bob & 小明 (QQ)"  # type: ignore[union-attr]

    long = "长" * 300 + "x" * 100  # 1,000 bytes: two pieces on QQ
    last = None
    for text in [*TRICKY, long]:
        last = await dan.say(portal, text)
    got = await received(bob, len(TRICKY) + 2)
    assert [m.text for m in got[: len(TRICKY)]] == TRICKY and all(m.sender == 10001 for m in got)
    first, second = got[len(TRICKY)].text, got[len(TRICKY) + 1].text
    assert first + second == long and len(first.encode()) <= 700
    await dan.wait_for(lambda: (last, stack.bot) in dan.receipts, what="the bot's read receipt")


async def test_presence_follows_qq_status(stack, bridged, qq) -> None:
    dan, _ = await bridged("dan2", 10001)
    bob = await qq(10002)
    await bob.send_message(10001, "status test")  # a shared room lets dan see bob's presence
    portal = await dan.accept_invite("@_qq_10002:localhost")
    await dan.wait_for_text(portal, "status test")
    for status, presence in [(model.Status.BUSY, "unavailable"), (model.Status.ONLINE, "online")]:
        await asyncio.sleep(0.15)  # past Change_Stat's 2 s window, scaled
        await bob.set_status(status)

        async def now() -> str:
            answer = await dan.client.get_presence("@_qq_10002:localhost")
            return answer.presence  # type: ignore[union-attr]

        deadline = asyncio.get_running_loop().time() + 20
        while await now() != presence:
            assert asyncio.get_running_loop().time() < deadline, f"presence stayed {await now()}, not {presence}"
            await asyncio.sleep(0.2)


async def test_friend_requests_accepted_by_reaction_and_rejected_by_command(stack, bridged, qq) -> None:
    dan, room = await bridged("dan3", 10001)
    erin, frank = await qq(10005), await qq(10006)
    await erin.request_friendship(10001, "we met at the café")
    prompt = await dan.wait_for_text(room, "Friend request from Erin (10005)", sender=stack.bot)
    assert "we met at the café" in prompt and "accept 10005" in prompt and "✅" in prompt
    prompt_id = next(e.event_id for e in dan.events(room) if getattr(e, "body", None) == prompt)
    await dan.send(room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": prompt_id, "key": "✅"}}, "m.reaction")
    await dan.wait_for_text(room, "Accepted: Erin (10005) is now your friend", sender=stack.bot)
    assert model.RequestAccepted(10001) in await erin.drain_messages()

    def edited() -> bool:  # the prompt itself now shows the outcome
        return any(isinstance(e, RoomMessageNotice) and "Accepted" in e.body
                   and e.source["content"].get("m.relates_to", {}).get("event_id") == prompt_id
                   for e in dan.events(room))  # fmt: skip

    await dan.wait_for(edited, what="the prompt edited with the outcome")

    await frank.request_friendship(10001, "hi!")
    await dan.wait_for_text(room, "Friend request from Frank (10006)", sender=stack.bot)
    await command(dan, room, "reject 10006 no thanks", "Rejected: no thanks", stack)
    assert model.RequestRejected(10001, "no thanks") in await frank.drain_messages()
    await command(dan, room, "requests", "No pending friend requests", stack)
    await command(dan, room, "accept 10006", "no pending friend request from 10006", stack)


async def test_pending_friend_requests_survive_a_restart(stack, bridged, qq) -> None:
    dan, room = await bridged("dan4", 10001)
    frank = await qq(10006)
    await frank.request_friendship(10001, "second try")
    await dan.wait_for_text(room, "“second try”", sender=stack.bot)
    stack.restart_bridge()
    await command(dan, room, "requests", "Frank (10006): “second try”", stack)
    await command(dan, room, "accept 10006", "Accepted", stack)
    assert model.RequestAccepted(10001) in await frank.drain_messages()
    await command(dan, room, "remove 10006", "no longer in your QQ friend list", stack)


async def test_a_strangers_message_opens_a_marked_portal(stack, bridged, qq) -> None:
    dan, _ = await bridged("dan5", 10001)
    dave = await qq(10004)  # 10001 is in dave's list, dave is not in 10001's
    await dave.send_message(10001, "remember me?")
    portal = await dan.accept_invite("@_qq_10004:localhost")
    await dan.wait_for_text(portal, "remember me?", sender="@_qq_10004:localhost")
    await dan.wait_for_text(portal, "is not in your QQ friend list", sender=stack.bot)
    topic = await dan.client.room_get_state_event(portal, "m.room.topic")
    assert "not in your QQ friend list" in topic.content["topic"]  # type: ignore[union-attr]


async def test_a_burst_of_20_arrives_complete_and_in_order(stack, bridged, qq) -> None:
    dan, room = await bridged("dan6", 10001)
    bob = await qq(10002)
    await command(dan, room, "open 10002", "Your portal with Bob & 小明 (10002)", stack)
    portal = await dan.accept_invite("@_qq_10002:localhost")
    for n in range(20):
        await dan.say(portal, f"burst {n:02d}")
    got = await received(bob, 20, timeout=60)
    assert [m.text for m in got] == [f"burst {n:02d}" for n in range(20)]


async def test_replies_edits_media_emotes_redactions_and_other_people(stack, bridged, qq, user) -> None:
    dan, room = await bridged("dan7", 10001)
    bob = await qq(10002)
    await command(dan, room, "open 10002", "Your portal", stack)
    portal = await dan.accept_invite("@_qq_10002:localhost")
    original = await dan.say(portal, "first version")
    await dan.send(portal, {
        "msgtype": "m.text", "body": "> <@_qq_10002:localhost> status test\n\nquoting you",
        "m.relates_to": {"m.in_reply_to": {"event_id": original}},
    })  # fmt: skip
    await dan.send(portal, {
        "msgtype": "m.text", "body": "* second version", "m.new_content": {"msgtype": "m.text", "body": "second version"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": original},
    })  # fmt: skip
    await dan.send(portal, {"msgtype": "m.image", "body": "cat.png", "url": "mxc://localhost/abcdef"})
    await dan.send(portal, {"msgtype": "m.emote", "body": "waves"})
    eve = await user("eve")
    await dan.client.room_invite(portal, eve.mxid)
    await eve.client.join(portal)
    await eve.say(portal, "I am not the owner")
    await dan.say(portal, "!qq ping")  # a command in a portal: answered there, not relayed
    await dan.wait_for_text(portal, "QQ 10001: online", sender=stack.bot)
    await dan.say(portal, "last one")
    got = [m.text for m in await received(bob, 6)]
    assert got[0] == "first version" and got[1] == "quoting you" and got[2] == "(edited) second version"
    assert got[3].startswith("[image: cat.png] http") and got[3].endswith("/_matrix/media/v3/download/localhost/abcdef")
    assert got[4] == "* waves" and got[5] == "last one"
    await dan.client.room_redact(portal, original)
    await dan.wait_for_text(portal, "QQ cannot unsend messages", sender=stack.bot)
    await asyncio.sleep(1)
    assert [e for e in await bob.drain_messages() if isinstance(e, model.Message)] == []  # eve was not relayed


async def test_contact_commands(stack, bridged, qq) -> None:
    dan, room = await bridged("dan8", 10001)
    listing = await command(dan, room, "friends", "Bob & 小明 (10002)", stack)
    assert "Carol" in listing or "10003" in listing
    await qq(10002)
    await command(dan, room, "friends online", "Bob & 小明 (10002) — online", stack)
    profile = await command(dan, room, "whois 10001", "Constellation: Cancer", stack)
    assert "Blood type: A" in profile and "Chinese zodiac: Tiger" in profile and "Avatar: 91.bmp" in profile
    await command(dan, room, "whois 55555", "not an account it knows", stack)
    await command(dan, room, "add 10007", "Grace (10007) accepts no friend requests", stack)
    dave = await qq(10004)
    await command(dan, room, "add 10004 it's me, Dan", "must agree first", stack)
    assert model.FriendRequest(10001, "it's me, Dan") in await dave.drain_messages()
    await command(dan, room, "add 10002", "is now in your QQ friend list", stack)  # already a friend: CD=0
    await command(dan, room, "sync", "Synced:", stack)
    await command(dan, room, "open 10003", "Your portal with", stack)
    await command(dan, room, "add 55555", "not an account", stack)
    await command(dan, room, "whois", "usage: `whois <QQ number>`", stack)


async def test_leaving_a_portal_closes_it_and_the_next_message_opens_a_new_one(stack, bridged, qq) -> None:
    dan, _ = await bridged("carol5", 10001)
    bob = await qq(10002)
    await bob.send_message(10001, "first portal")
    first = await dan.accept_invite("@_qq_10002:localhost")
    await dan.wait_for_text(first, "first portal")
    await dan.client.room_leave(first)
    await asyncio.sleep(2)  # the bridge handles the leave (in well under a second here)
    await bob.send_message(10001, "second portal")
    second = await dan.accept_invite("@_qq_10002:localhost")
    assert second != first
    await dan.wait_for_text(second, "second portal")
