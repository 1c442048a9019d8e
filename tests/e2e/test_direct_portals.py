"""Issue 10, item 2: direct chats stay direct. However a portal was opened — a QQ
message first, `open`, `open` again while the owner is invited or in, a stranger's
message — the owner was invited exactly once, and that invite says `is_direct: true`
(a second invite would replace the first; one without `is_direct` makes nheko list
the portal outside its direct chats)."""

from __future__ import annotations

from tests.e2e.seen import KeptAlive, member_events, puppet
from tests.e2e.test_control_room import command


async def test_every_portal_invites_its_owner_once_as_a_direct_chat(stack, bridged, qq) -> None:
    owner, room = await bridged("seen4", 10001)
    bob, dave = await qq(10002), await qq(10004)
    alive = KeptAlive(bob, dave)
    try:
        await bob.send_message(10001, "the QQ message came first")  # a friend writes first
        portals = {10002: await owner.accept_invite(puppet(10002))}
        await command(owner, room, "open 10002", "Your portal with", stack)  # open: the owner is in already

        await command(owner, room, "open 10003", "Your portal with", stack)  # open: a new portal
        await command(owner, room, "open 10003", "Your portal with", stack)  # again, still only invited
        portals[10003] = await owner.accept_invite(puppet(10003))

        await dave.send_message(10001, "a stranger writes")  # not in 10001's friend list
        portals[10004] = await owner.accept_invite(puppet(10004))
        await command(owner, room, "open 10004", "Your portal with", stack)
    finally:
        await alive.close()

    for uin, portal in portals.items():
        events = await member_events(stack, owner, portal, owner.mxid)
        invites = [e for e in events if e["content"].get("membership") == "invite"]
        assert len(invites) == 1, f"portal with {uin}: {len(invites)} invites of the owner: {invites}"
        assert invites[0]["content"].get("is_direct") is True, invites[0]
        assert invites[0]["sender"] == puppet(uin)  # the contact invites, as in a direct chat
        assert [e["content"]["membership"] for e in events] == ["invite", "join"]
        # and the invite as the owner's client got it, before joining
        stripped = [e for e in owner.invites[portal].invite_state
                    if getattr(e, "state_key", None) == owner.mxid]  # fmt: skip
        assert stripped and stripped[-1].content.get("is_direct") is True
