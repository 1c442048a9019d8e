"""Issue 10, item 1: presence that stays right, read by the owner from the real Synapse.

Synapse drops a user who neither syncs nor updates presence to offline 30 s after the
last update (`presence.sync_online_timeout`; this test's Synapse keeps the default:
measured, a puppet set online once reads offline 35 s later). The bridge says each
online or busy puppet's presence again every 20 s, so the owner keeps reading the
truth for as long as it is true on QQ; `sync` says it again whatever the store thinks,
and a friend request accepted shows the new friend's status at once."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from qqbridge.qq import QQClient, model, password_md5
from tests.e2e.seen import KeptAlive, lapse, presence, puppet, wait_for_presence
from tests.e2e.test_control_room import command

# Seconds: 2 minutes, past four of Synapse's 30 s drops (issue 16 lets the suite watch 2 where
# issue 10 asked 5). QQBRIDGE_PRESENCE_WATCH=300 watches the 5 minutes; so does
# `bench/presence_refresh.py --seconds 300`, with the bridge's own keeper and 1,000 puppets.
WATCH = float(os.environ.get("QQBRIDGE_PRESENCE_WATCH", "120"))
SYNC_ONLINE_TIMEOUT_MS = 30_000  # Synapse's default, which the test homeserver keeps


async def portal_with(owner, room: str, uin: int, stack) -> str:
    """`open <uin>` and join: a room shared with the puppet, so the owner may read its presence."""
    await command(owner, room, f"open {uin}", "Your portal with", stack)
    return await owner.accept_invite(puppet(uin))


@pytest.mark.slow
async def test_presence_is_still_right_minutes_after_the_last_status_change(stack, bridged, qq) -> None:
    bob = await qq(10002)  # online
    carol = QQClient(stack.sim_url, 10003, local_address="127.0.0.2", timeout=10)
    await carol.login(password_md5("carol-pw"))
    alive = KeptAlive(bob, carol)
    try:
        await asyncio.sleep(0.15)  # Change_Stat's 2 s window after login, scaled
        await carol.set_status(model.Status.BUSY)
        last_change = time.monotonic()  # the last QQ status change of either
        owner, room = await bridged("seen1", 10001)
        for uin in (10002, 10003):
            await portal_with(owner, room, uin, stack)
        wanted = {puppet(10002): "online", puppet(10003): "unavailable"}
        for mxid, state in wanted.items():
            await wait_for_presence(stack, owner, mxid, state)

        samples = 0
        while time.monotonic() - last_change < WATCH:
            for mxid, state in wanted.items():
                seen = await presence(stack, owner, mxid)
                at = f"{time.monotonic() - last_change:.0f} s after the last status change"
                assert seen["presence"] == state, f"{mxid} reads {seen} {at}; QQ says {state}"
                if state == "online":  # said within Synapse's timeout: no timer of it can fire
                    assert seen["last_active_ago"] < SYNC_ONLINE_TIMEOUT_MS, f"{mxid}: {seen} {at}"
                samples += 1
            await asyncio.sleep(2)
        assert samples >= 100
    finally:
        await alive.close()
        await carol.logout()
        await carol.aclose()


async def test_sync_says_presence_again_even_when_nothing_changed_on_qq(stack, bridged, qq) -> None:
    bob = await qq(10002)
    alive = KeptAlive(bob)
    try:
        owner, room = await bridged("seen2", 10001)
        await portal_with(owner, room, 10002, stack)
        await wait_for_presence(stack, owner, puppet(10002), "online")
        await lapse(stack, puppet(10002))  # the homeserver lost it; the bridge's store did not
        assert (await presence(stack, owner, puppet(10002)))["presence"] == "offline"
        await command(owner, room, "sync", "Synced", stack)
        # `sync` answers after it has said every friend's presence again: right at once
        assert (await presence(stack, owner, puppet(10002)))["presence"] == "online"
    finally:
        await alive.close()


async def test_a_friend_request_accepted_shows_the_new_friends_presence_at_once(stack, bridged, qq) -> None:
    frank, erin = await qq(10006), await qq(10005)
    alive = KeptAlive(frank, erin)
    try:
        owner, room = await bridged("seen3", 10001)
        for uin in (10006, 10005):
            # Not friends yet (an earlier test may have made them so): QQ tells 10001 nothing of them.
            await command(owner, room, f"remove {uin}", "no longer in your QQ friend list", stack)
            await portal_with(owner, room, uin, stack)  # a shared room: the owner may read their presence

        # By command: Frank is online on QQ, but QQ tells only friends of his changes.
        await lapse(stack, puppet(10006))
        await asyncio.sleep(0.2)  # nothing pending from an earlier test reaches the prompt below
        await frank.request_friendship(10001, "presence test")
        await owner.wait_for_text(room, "“presence test”", sender=stack.bot)
        await command(owner, room, "accept 10006", "Accepted", stack)  # (the prompt's edit may come first)
        await wait_for_presence(stack, owner, puppet(10006), "online", timeout=10)

        # By ✅ on the prompt, with Erin busy.
        await erin.set_status(model.Status.BUSY)
        await lapse(stack, puppet(10005))
        await erin.request_friendship(10001, "me too")
        prompt = await owner.wait_for_text(room, "“me too”", sender=stack.bot)
        prompt_id = next(e.event_id for e in owner.events(room) if getattr(e, "body", None) == prompt)
        await owner.send(room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": prompt_id, "key": "✅"}},
                         "m.reaction")  # fmt: skip
        await wait_for_presence(stack, owner, puppet(10005), "unavailable", timeout=10)
        await erin.set_status(model.Status.ONLINE)
        await wait_for_presence(stack, owner, puppet(10005), "online", timeout=10)
    finally:
        await alive.close()
    for uin in (10006, 10005):  # 10001's friend list as it was at the start of the session
        await command(owner, room, f"remove {uin}", "no longer in your QQ friend list", stack)
