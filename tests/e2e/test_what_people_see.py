"""What a person sees in their client (issue 10, items 3, 4 and 6), read the way a client
reads it from the real Synapse: every control-room message gets an answer (a second
direct chat with the bot, an encrypted room), the bot's messages carry HTML, `help`
reads as words, a friend request raises the notification count and its answered
prompt shows the outcome once, and a reaction in a portal is told it cannot cross."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.test_control_room import command, control_room

ACCEPT = "✅"


async def client_get(stack, person, path: str, **params: Any) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{stack.synapse.base_url}/_matrix/client/v3{path}", params=params,
                                headers={"Authorization": f"Bearer {person.client.access_token}"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    return answer.json()


async def bot_events(stack, person, room: str) -> list[dict[str, Any]]:
    """The bot's events in the room, oldest first, as /messages gives them."""
    chunk = (await client_get(stack, person, f"/rooms/{room}/messages", dir="b", limit=200))["chunk"]
    return [e for e in reversed(chunk) if e["sender"] == stack.bot]


async def test_a_second_direct_chat_takes_over_and_the_first_says_so(stack, user) -> None:
    person = await user("view1")
    first = await control_room(person, stack)
    second = await control_room(person, stack)
    await person.wait_for_text(first, "This is no longer your control room", sender=stack.bot)
    await command(person, second, "ping", "QQ: not logged in", stack)
    await command(person, first, "ping", "This is not your control room", stack)  # answered, not dropped


async def test_an_encrypted_room_is_told_the_bridge_cannot_read_it(stack, user) -> None:
    person = await user("view2")
    answer = await person.client.room_create(
        is_direct=True, invite=[stack.bot],
        initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
    )  # fmt: skip
    room = answer.room_id
    await person.wait_for_text(room, "control room", sender=stack.bot)
    # What Element sends in an encrypted room: only ciphertext the bot cannot read.
    await person.send(room, {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEnAc", "sender_key": "k",
                             "device_id": "D", "session_id": "s"}, "m.room.encrypted")  # fmt: skip
    told = await person.wait_for_text(room, "I cannot read encrypted messages", sender=stack.bot)
    assert "encryption turned off" in told


async def test_help_reads_as_words_and_every_bot_message_has_html(stack, user) -> None:
    person = await user("view3")
    room = await control_room(person, stack)
    await command(person, room, "help", "status [online|busy|invisible|offline]", stack)
    events = await bot_events(stack, person, room)
    messages = [e for e in events if e["type"] == "m.room.message"]
    assert messages and all(e["content"].get("format") == "org.matrix.custom.html" for e in messages)
    help_html = events[-1]["content"]["formatted_body"]
    assert "<ul>" in help_html and "<code>reject &lt;QQ number&gt; [reason]</code>" in help_html
    assert "uin" not in events[-1]["content"]["body"] and "{" not in events[-1]["content"]["body"]


async def test_a_friend_request_notifies_and_its_answer_shows_once(stack, bridged, qq) -> None:
    person, room = await bridged("view4", 10004)
    await person.sync()
    since = person.client.next_batch  # the client's place before the request comes
    frank = await qq(10006)
    await frank.request_friendship(10004, "from the bridge tests")
    prompt = await person.wait_for_text(room, "Friend request from Frank (10006)", sender=stack.bot)
    assert await _notifications(stack, person, room, since) >= 1  # it rings, unlike an m.notice
    prompt_id = next(e.event_id for e in person.events(room) if getattr(e, "body", None) == prompt)
    before_answer = len(await bot_events(stack, person, room))
    await person.send(room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": prompt_id, "key": ACCEPT}},
                      "m.reaction")  # fmt: skip

    async def answered() -> list[dict[str, Any]]:
        return [e for e in await bot_events(stack, person, room)
                if e["content"].get("m.relates_to", {}).get("rel_type") == "m.replace"]  # fmt: skip

    await person.wait_for(lambda: any("Accepted" in t for t in person.texts(room, stack.bot)), 30, "the outcome")
    edits = await answered()
    assert len(edits) == 1 and "Accepted" in edits[0]["content"]["m.new_content"]["body"]
    later = (await bot_events(stack, person, room))[before_answer:]
    # The outcome is the edit only: no second message saying it again; the offers are withdrawn.
    assert [e["type"] for e in later if e["type"] == "m.room.message" and "Accepted" in e["content"]["body"]
            and "m.new_content" not in e["content"]] == []  # fmt: skip
    offers = [e for e in await bot_events(stack, person, room) if e["type"] == "m.reaction"]
    assert len(offers) == 2 and all(e["content"] == {} for e in offers)  # both redacted: nothing left to click
    await frank.drain_messages()
    await command(person, room, "remove 10006", "no longer in your QQ friend list", stack)


async def test_a_reaction_in_a_portal_is_told_it_cannot_cross(stack, bridged) -> None:
    person, room = await bridged("view5", 10004)
    await command(person, room, "open 10002", "Your portal", stack)
    portal = await person.accept_invite("@_qq_10002:localhost")
    said = await person.say(portal, "hello")
    await person.send(portal, {"m.relates_to": {"rel_type": "m.annotation", "event_id": said, "key": "👍"}}, "m.reaction")
    await person.wait_for_text(portal, "QQ has no reactions", sender=stack.bot)


async def _notifications(stack, person, room: str, since: str) -> int:
    """The room's notification count as a client's /sync reports it, since `since`
    (the room has new events since then, so it is in the answer)."""
    sync = await client_get(stack, person, "/sync", timeout=0, since=since)
    joined = sync.get("rooms", {}).get("join", {})
    return joined.get(room, {}).get("unread_notifications", {}).get("notification_count", 0)


async def test_login_where_the_bot_cannot_delete_the_password_says_so_before_it_is_typed(stack, user) -> None:
    # Element's "start a direct chat" gives the bot the creator's power (trusted private
    # chat: in room version 12 the bot is one of the room's creators), so the bot can
    # redact the password. A room made another way (here: a
    # private chat, the bot at power level 0) cannot have it redacted: the person is
    # told before typing it, while there is time to give the bot the power or cancel.
    person = await user("view6")
    answer = await person.client.room_create(is_direct=True, invite=[stack.bot])
    room = answer.room_id
    await person.wait_for_text(room, "control room", sender=stack.bot)
    warned = await command(person, room, "login 10001", "Send your QQ password for 10001", stack)
    assert "I cannot delete messages in this room (that takes power level 50; I have 0)" in warned
    await command(person, room, "cancel", "Login cancelled", stack)

    trusted = await control_room(person, stack)  # what Element makes: no warning there
    asked = await command(person, trusted, "login 10001", "Send your QQ password for 10001", stack)
    assert "cannot delete" not in asked and "I will redact it at once" in asked
    await command(person, trusted, "cancel", "Login cancelled", stack)
