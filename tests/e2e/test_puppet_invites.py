"""Issue 8, item 7: inviting a made-up puppet ID registers nobody on the homeserver.

Synapse asks the appservice whether a user in its namespace exists before it pushes
an event about an unknown one (here: the invite). The bridge answers yes for any
well-formed puppet, but registers a puppet only when it uses it; so anyone inviting
`@_qq_<n>` by the thousand cannot fill the homeserver with users."""

from __future__ import annotations

import asyncio
import sqlite3
import urllib.parse

import httpx
from nio import RoomCreateResponse

from tests.e2e.conftest import PASSWORD
from tests.e2e.harness import MatrixUser

MADE_UP = [f"@_qq_{uin}:localhost" for uin in (55555, 4294967295)]


def in_inbox(stack, event_id: str) -> bool:
    db = sqlite3.connect(f"file:{stack.config_path.parent / 'bridge.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT 1 FROM matrix_inbox WHERE event_id = ?", (event_id,)).fetchone() is not None
    finally:
        db.close()


async def test_inviting_a_made_up_puppet_registers_nobody(stack, user) -> None:
    mallory = await user("mallory")  # any user: not even allowed to use the bridge
    admin_id = await stack.synapse.register_user("hardening-admin", PASSWORD, admin=True)
    admin = await MatrixUser(stack.synapse.base_url, admin_id, PASSWORD).login()
    try:
        created = await mallory.client.room_create(name="puppet bait")
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        accepted = 0
        for puppet in MADE_UP:
            answer = httpx.post(
                f"{stack.synapse.base_url}/_matrix/client/v3/rooms/{room}/invite", json={"user_id": puppet},
                headers={"Authorization": f"Bearer {mallory.client.access_token}"},
            )  # fmt: skip
            assert answer.status_code in (200, 403, 404), answer.text  # done, or refused cleanly
            accepted += answer.status_code == 200
        # Synapse asks the bridge about each invitee before pushing the invite to it:
        # wait until the bridge has the invites, so the question has surely been asked.
        state = httpx.get(f"{stack.synapse.base_url}/_matrix/client/v3/rooms/{room}/state",
                          headers={"Authorization": f"Bearer {mallory.client.access_token}"}).json()  # fmt: skip
        invites = [e["event_id"] for e in state if e["type"] == "m.room.member" and e["state_key"] in MADE_UP]
        assert len(invites) == accepted
        for event_id in invites:
            for _ in range(200):
                if in_inbox(stack, event_id):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the invite {event_id} never reached the bridge")
        headers = {"Authorization": f"Bearer {admin.client.access_token}"}
        for puppet in MADE_UP:
            quoted = urllib.parse.quote(puppet, safe="")
            account = httpx.get(f"{stack.synapse.base_url}/_synapse/admin/v2/users/{quoted}", headers=headers)
            assert account.status_code == 404, f"{puppet} was registered: {account.text}"
            profile = httpx.get(f"{stack.synapse.base_url}/_matrix/client/v3/profile/{quoted}", headers=headers)
            assert profile.status_code == 404, profile.text
            # The bridge still says the puppet exists (it would register it when needed)...
            query = httpx.get(f"{stack.bridge_url}/_matrix/app/v1/users/{quoted}",
                              headers={"Authorization": f"Bearer {stack.hs_token}"})  # fmt: skip
            assert query.status_code == 200
            # ...and answering registered nobody either.
            again = httpx.get(f"{stack.synapse.base_url}/_synapse/admin/v2/users/{quoted}", headers=headers)
            assert again.status_code == 404
        assert "register @_qq_55555" not in stack.bridge.log()
    finally:
        await admin.close()
