"""A person in Element (matrix-nio) and the bridge, on a real Synapse and the simulator:
the control room, logging into QQ with a right and a wrong password, logging out, and
being refused without permission."""

from __future__ import annotations

import asyncio

from qqbridge.qq import QQClient, model, password_md5
from tests.e2e.harness import room_event

HELP_LINE = "login <QQ number>"


async def control_room(person, stack) -> str:
    room = await person.open_control_room(stack.bot)
    await person.wait_for_text(room, HELP_LINE, sender=stack.bot)
    return room


async def command(person, room: str, text: str, answer: str, stack, timeout: float = 30) -> str:
    before = len(person.texts(room, stack.bot))
    await person.say(room, text)

    def new_answer() -> str | None:
        return next((t for t in person.texts(room, stack.bot)[before:] if answer in t), None)

    return await person.wait_for(new_answer, timeout, f"{answer!r} after {text!r}")


async def test_inviting_the_bot_opens_a_control_room_with_help(stack, user) -> None:
    alice = await user("alice")
    room = await alice.open_control_room(stack.bot)
    welcome = await alice.wait_for_text(room, "control room", sender=stack.bot)
    assert "login <QQ number>" in welcome and "logout" in welcome and "accounts" in welcome  # alice is admin
    await command(alice, room, "help", "ping", stack)


async def test_login_wrong_then_right_password_then_chat_then_logout(stack, user) -> None:
    carol = await user("carol")
    room = await control_room(carol, stack)
    await command(carol, room, "login 10001", "next message", stack)
    wrong = await carol.say(room, "not-the-password")
    await carol.wait_for_text(room, "QQ refused the password for 10001", sender=stack.bot)
    redacted = await room_event(stack.synapse.base_url, carol.client.access_token, room, wrong)
    assert redacted.get("content") == {} and "redacted_because" in redacted.get("unsigned", {})

    await command(carol, room, "login 10001", "next message", stack)
    right = await carol.say(room, "secret")
    await carol.wait_for_text(room, "Logged into QQ as 10001", sender=stack.bot)
    redacted = await room_event(stack.synapse.base_url, carol.client.access_token, room, right)
    assert redacted.get("content") == {}
    assert "secret" not in stack.bridge.log() and password_md5("secret") not in stack.bridge.log()
    await command(carol, room, "ping", "QQ 10001: online", stack)

    # Bob, a QQ friend, writes through the protocol like any QQ client.
    async with QQClient(stack.sim_url, 10002) as bob:
        await bob.login(password_md5("hunter2"))
        await bob.send_message(10001, "hello from QQ & 你好")
        portal = await carol.accept_invite("@_qq_10002:localhost")
        await carol.wait_for_text(portal, "hello from QQ & 你好", sender="@_qq_10002:localhost")
        await bob.drain_messages()

        await command(carol, room, "logout", "Logged out of QQ 10001", stack)
        events = await bob.drain_messages()
        assert model.StatusChange(10001, model.Status.OFFLINE) in events
    await command(carol, room, "ping", "QQ: not logged in", stack)


async def test_a_user_without_permission_is_refused_and_nothing_is_stored(stack, user) -> None:
    mallory = await user("mallory")
    room = await mallory.open_control_room(stack.bot)
    await mallory.wait_for_text(room, "not allowed to use this bridge", sender=stack.bot)
    alice = await user("alice")
    admin_room = await control_room(alice, stack)
    listing = await command(alice, admin_room, "accounts", "@", stack)
    assert "mallory" not in listing


async def test_malformed_commands_answer_with_usage_and_change_nothing(stack, user) -> None:
    bob = await user("bob")
    room = await control_room(bob, stack)
    assert "usage: `login <QQ number>`" in await command(bob, room, "login abc", "not a QQ number", stack)
    await command(bob, room, "login 99", "not a QQ number", stack)
    # What was typed is never repeated (it may be a password sent too late); a close command is named.
    assert "frobnicate" not in await command(bob, room, "frobnicate", "not a command", stack)
    assert "did you mean `login`" in await command(bob, room, "logn", "not a command", stack)
    await command(bob, room, "accounts", "admins only", stack)
    await command(bob, room, "status", "needs a QQ login", stack)
    assert "usage: `status [online|busy|invisible|offline]`" in await command(bob, room, "status sleepy", "invalid choice", stack)
    await command(bob, room, "ping", "not logged in", stack)  # nothing above started a login


async def test_admin_lists_accounts_and_forces_a_user_out(stack, user) -> None:
    bob, alice = await user("bob"), await user("alice")
    bob_room = await control_room(bob, stack)
    await command(bob, bob_room, "login 10002", "next message", stack)
    await bob.say(bob_room, "hunter2")
    await bob.wait_for_text(bob_room, "Logged into QQ as 10002", sender=stack.bot)
    await command(bob, bob_room, "status busy", "now busy", stack)
    await command(bob, bob_room, "status", "is busy", stack)

    admin_room = await control_room(alice, stack)
    await command(alice, admin_room, "accounts", "@bob:localhost: QQ 10002, online", stack)
    await command(alice, admin_room, "logout-user @bob:localhost", "Logged @bob:localhost out of QQ 10002", stack)
    await bob.wait_for_text(bob_room, "An administrator (@alice:localhost) logged your QQ account out", sender=stack.bot)
    await command(alice, admin_room, "logout-user @nobody:localhost", "does not use this bridge", stack)


async def test_a_logged_in_account_is_polled_again_after_a_restart(stack, bridged) -> None:
    person, room = await bridged("carol2", 10001)
    stack.restart_bridge()
    async with QQClient(stack.sim_url, 10002) as bob:
        await bob.login(password_md5("hunter2"))
        await bob.send_message(10001, "are you still there?")
    portal = await person.accept_invite("@_qq_10002:localhost")
    await person.wait_for_text(portal, "are you still there?", sender="@_qq_10002:localhost")


async def test_a_lost_qq_session_is_reopened_quietly_keeping_the_chosen_status(stack, bridged, qq) -> None:
    person, room = await bridged("carol3", 10001)
    bob = await qq(10002)  # has 10001 in his list: sees its status changes
    await command(person, room, "status busy", "now busy", stack)
    before = len(person.texts(room, stack.bot))
    # The bridge's session is keyed by (127.0.0.1, 10001): a Logout from here ends it.
    async with QQClient(stack.sim_url, 10001) as same_address:
        await same_address.logout()
    await bob.send_message(10001, "did you notice anything?")
    portal = await person.accept_invite("@_qq_10002:localhost")
    await person.wait_for_text(portal, "did you notice anything?", sender="@_qq_10002:localhost")
    said = person.texts(room, stack.bot)[before:]
    assert not any("refused" in t or "problem" in t for t in said), said
    assert "QQ session lost; logging in again" in stack.bridge.log()
    changes: list[model.Status] = []
    for _ in range(100):  # the restore waits out QQ's penalty when it comes too soon after `status busy`
        changes += [e.status for e in await bob.drain_messages() if isinstance(e, model.StatusChange) and e.uin == 10001]
        if changes and changes[-1] is model.Status.BUSY:
            break
        await asyncio.sleep(0.1)
    # busy; offline (the lost session); online (the new login); busy again (restored)
    assert changes[-1] is model.Status.BUSY and model.Status.ONLINE in changes, changes
    await command(person, room, "status", "is busy", stack)
