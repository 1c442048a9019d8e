"""Delivery you can see: after a QQ server outage the bridge carries on by itself, and a
message QQ refuses is reported in the portal, never dropped silently. The simulator
is restarted here with its `lowercase-h` quirk (the seed's server refused some messages
containing a lower-case h), then restored."""

from __future__ import annotations

from tests.e2e.conftest import received
from tests.e2e.test_control_room import command


async def test_a_refused_message_is_reported_and_the_rest_still_goes(stack, bridged, qq) -> None:
    dan, room = await bridged("dan9", 10001)
    await command(dan, room, "open 10002", "Your portal", stack)
    portal = await dan.accept_invite("@_qq_10002:localhost")
    stack.restart_sim("lowercase-h")  # an outage: the bridge's QQ session is gone
    try:
        bob = await qq(10002)
        refused = await dan.say(portal, "hello there")
        await dan.say(portal, "OK, BYE")
        notice = await dan.wait_for_text(portal, "Not delivered: QQ refused this message", sender=stack.bot)
        assert notice
        replied_to = [e for e in dan.events(portal) if getattr(e, "body", "") == notice][0]
        assert replied_to.source["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == refused
        assert [m.text for m in await received(bob, 1)] == ["OK, BYE"]
        await command(dan, room, "ping", "QQ 10001: online", stack)  # logged in again, quietly
    finally:
        stack.restart_sim()
