"""`LocalSynapse` against a real Synapse: users, rooms, restarts, errors, appservices.

Nothing is mocked: each test talks HTTP to a Synapse child process on loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web
from nio import (
    AsyncClient,
    LoginResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)

from qqbridge.local import LocalSynapse, SynapseStartError


async def _login(hs: LocalSynapse, localpart: str, password: str) -> AsyncClient:
    client = AsyncClient(hs.base_url, hs.mxid(localpart))
    reply = await client.login(password)
    if not isinstance(reply, LoginResponse):
        await client.close()
        pytest.fail(f"login of {localpart} failed: {reply}")
    return client


# -- on the shared Synapse ------------------------------------------------------------


async def test_registered_user_logs_in_and_reads_back_a_message(synapse: LocalSynapse) -> None:
    mxid = await synapse.register_user("alice", "alice-password")
    assert mxid == "@alice:localhost"

    client = await _login(synapse, "alice", "alice-password")
    try:
        room = await client.room_create(name="first room")
        assert isinstance(room, RoomCreateResponse), room
        sent = await client.room_send(
            room.room_id, "m.room.message", {"msgtype": "m.text", "body": "hello, homeserver"}
        )
        assert isinstance(sent, RoomSendResponse), sent

        sync = await client.sync(timeout=0, full_state=True)
        assert isinstance(sync, SyncResponse), sync
        timeline = sync.rooms.join[room.room_id].timeline.events
        assert [e.body for e in timeline if isinstance(e, RoomMessageText)] == ["hello, homeserver"]
        assert timeline[-1].event_id == sent.event_id
    finally:
        await client.close()


async def test_registering_an_existing_user_returns_it_unchanged(synapse: LocalSynapse) -> None:
    first = await synapse.register_user("bob", "bob-password", admin=True)
    again = await synapse.register_user("bob", "another-password")
    assert first == again == "@bob:localhost"

    client = await _login(synapse, "bob", "bob-password")  # the first password still holds
    try:
        async with httpx.AsyncClient(base_url=synapse.base_url) as http:
            reply = await http.get(
                f"/_synapse/admin/v2/users/{first}",
                headers={"Authorization": f"Bearer {client.access_token}"},
            )
        assert reply.status_code == 200, reply.text
        assert reply.json()["admin"] is True
    finally:
        await client.close()


# -- on a Synapse of its own ----------------------------------------------------------


async def test_restart_on_the_same_workdir_keeps_users_tokens_and_port(tmp_path: Path) -> None:
    async with LocalSynapse(tmp_path) as hs:
        await hs.register_user("carol", "carol-password")
        client = await _login(hs, "carol", "carol-password")
        await client.close()
        url, token = hs.base_url, client.access_token
    assert not hs.running

    async with LocalSynapse(tmp_path) as again:  # a new object reads the old config back
        assert again.base_url == url
        assert await again.register_user("carol", "carol-password") == "@carol:localhost"
        async with httpx.AsyncClient(base_url=again.base_url) as http:
            reply = await http.get(
                "/_matrix/client/v3/account/whoami", headers={"Authorization": f"Bearer {token}"}
            )
        assert reply.status_code == 200, reply.text
        assert reply.json()["user_id"] == "@carol:localhost"


async def test_invalid_appservice_registration_fails_start_with_synapses_error(
    tmp_path: Path,
) -> None:
    registration = tmp_path / "registration.yaml"
    registration.write_text("id: qq\nurl: [not closed\n")
    hs = LocalSynapse(tmp_path / "hs", appservice_registrations=[registration])

    with pytest.raises(SynapseStartError) as caught:
        await hs.start(timeout=30)

    message = str(caught.value)
    assert "Synapse exited with status 1" in message
    assert f"Failed to load appservice from '{registration}'" in message
    assert "while parsing a flow sequence" in message  # the YAML error, as Synapse reported it
    assert not hs.running


# -- an appservice registered with Synapse --------------------------------------------

AS_TOKEN = "as-token-for-tests"
HS_TOKEN = "hs-token-for-tests"
BOT = "@qqbridge:localhost"


@dataclass
class FakeAppservice:
    """The homeserver-facing half of an appservice: records what Synapse pushes."""

    url: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def transaction(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {HS_TOKEN}":
            self.refused += 1
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        self.events.extend((await request.json()).get("events", []))
        self.arrived.set()
        return web.json_response({})

    async def unknown(self, request: web.Request) -> web.Response:
        return web.json_response({"errcode": "M_NOT_FOUND"}, status=404)

    async def wait_for(self, wanted: Any, timeout: float = 10) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if wanted(event):
                        return event
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def appservice() -> AsyncIterator[FakeAppservice]:
    fake = FakeAppservice()
    app = web.Application()
    app.router.add_put("/_matrix/app/v1/transactions/{txn_id}", fake.transaction)
    app.router.add_route("*", "/{tail:.*}", fake.unknown)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield fake
    finally:
        await runner.cleanup()


async def test_appservice_registration_is_wired_end_to_end(
    tmp_path: Path, appservice: FakeAppservice
) -> None:
    registration = tmp_path / "registration.yaml"
    registration.write_text(
        yaml.safe_dump(
            {
                "id": "qqbridge",
                "url": appservice.url,
                "as_token": AS_TOKEN,
                "hs_token": HS_TOKEN,
                "sender_localpart": "qqbridge",
                "namespaces": {
                    "users": [{"exclusive": True, "regex": "@_qq_.*"}],
                    "aliases": [],
                    "rooms": [],
                },
                "rate_limited": False,
            }
        )
    )
    async with LocalSynapse(tmp_path / "hs", appservice_registrations=[registration]) as hs:
        bridge_auth = {"Authorization": f"Bearer {AS_TOKEN}"}
        async with httpx.AsyncClient(base_url=hs.base_url, headers=bridge_auth) as bridge:
            reply = await bridge.get("/_matrix/client/v3/account/whoami")
            assert reply.status_code == 200, reply.text
            assert reply.json()["user_id"] == BOT

            # A puppet in the exclusive namespace: registered, then impersonated.
            reply = await bridge.post(
                "/_matrix/client/v3/register",
                json={"type": "m.login.application_service", "username": "_qq_10001"},
            )
            assert reply.status_code == 200, reply.text
            reply = await bridge.get(
                "/_matrix/client/v3/account/whoami", params={"user_id": "@_qq_10001:localhost"}
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["user_id"] == "@_qq_10001:localhost"

        await hs.register_user("dave", "dave-password")
        dave = await _login(hs, "dave", "dave-password")
        try:
            room = await dave.room_create(invite=[BOT])
            assert isinstance(room, RoomCreateResponse), room
        finally:
            await dave.close()

        invite = await appservice.wait_for(
            lambda e: e.get("type") == "m.room.member"
            and e.get("state_key") == BOT
            and e.get("content", {}).get("membership") == "invite"
        )
        assert invite["room_id"] == room.room_id
        assert invite["sender"] == "@dave:localhost"
        assert appservice.refused == 0
