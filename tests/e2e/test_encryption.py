"""End-to-bridge encryption, seen as a person with an encrypting client sees it
(issue 17): a homeserver that encrypts every new room, a control room opened, a QQ
login, and a chat with a QQ contact both ways, every event of it encrypted.

The person is matrix-nio with its own device and key store, as Element is: it uploads
its keys, shares its room keys with the devices in the room and decrypts what comes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nio import AsyncClient, AsyncClientConfig, MegolmEvent, RoomPreset
from signedjson.key import decode_verify_key_base64
from signedjson.sign import verify_signed_json

from qqbridge.qq import QQClient, password_md5
from tests.e2e.conftest import PASSWORD, QQ_PASSWORDS, Stack, received, running_stack
from tests.e2e.harness import MatrixUser, room_event

BOT = "@qqbridge:localhost"
PUPPET = "@_qq_10002:localhost"


class EncryptingUser(MatrixUser):
    """A person whose client encrypts, as Element does."""

    def __init__(self, homeserver: str, mxid: str, password: str, store: Path) -> None:
        super().__init__(homeserver, mxid, password)
        store.mkdir(parents=True, exist_ok=True)
        self.client = AsyncClient(homeserver, mxid, store_path=str(store),
                                  config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True))  # fmt: skip

    async def sync(self, timeout_ms: int = 0) -> None:
        await super().sync(timeout_ms)
        await self._key_chores()

    async def _key_chores(self) -> None:
        client = self.client
        if client.should_upload_keys:
            await client.keys_upload()
        if client.should_query_keys:
            await client.keys_query()
        if client.should_claim_keys:
            await client.keys_claim(client.get_users_for_key_claiming())
        await client.send_to_device_messages()

    async def say(self, room_id: str, text: str) -> str:
        return await self.send(room_id, {"msgtype": "m.text", "body": text})

    async def open_encrypted_control_room(self, bot: str) -> str:
        """A direct chat with the bot, encrypted as Element creates it where the
        homeserver does not encrypt by itself."""
        answer = await self.client.room_create(
            is_direct=True, preset=RoomPreset.trusted_private_chat, invite=[bot],
            initial_state=[{"type": "m.room.encryption", "state_key": "",
                            "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
        )  # fmt: skip
        return str(answer.room_id)

    async def log_into_qq(self, room: str, uin: int) -> None:
        await self.wait_for_text(room, "control room", sender=BOT, timeout=60)
        await self.say(room, f"login {uin}")
        await self.wait_for_text(room, "next message", sender=BOT, timeout=60)
        await self.say(room, QQ_PASSWORDS[uin])
        await self.wait_for_text(room, f"Logged into QQ as {uin}", sender=BOT, timeout=60)

    async def send(self, room_id: str, content: dict[str, Any], event_type: str = "m.room.message") -> str:
        await self.sync()
        answer = await self.client.room_send(room_id, event_type, content, ignore_unverified_devices=True)
        return answer.event_id  # type: ignore[union-attr]

    def undecrypted(self, room_id: str) -> list[MegolmEvent]:
        return [e for e in self.events(room_id) if isinstance(e, MegolmEvent)]


@pytest.fixture(scope="module")
def secret_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A homeserver that encrypts every new room, and a bridge that allows encryption."""
    with running_stack(tmp_path_factory.mktemp("encrypted"), encryption={"allow": True, "default": True, "key_wait": 3},
                       synapse_config={"encryption_enabled_by_default_for_room_type": "all"}) as stack:  # fmt: skip
        yield stack


@pytest.fixture
async def person(secret_stack: Stack, tmp_path: Path) -> AsyncIterator[EncryptingUser]:
    mxid = await secret_stack.synapse.register_user("cipher1", PASSWORD)
    user = EncryptingUser(secret_stack.synapse.base_url, mxid, PASSWORD, tmp_path / "keys")
    await user.login()
    yield user
    await user.close()


async def raw(stack: Stack, user: MatrixUser, room_id: str, event_id: str) -> dict[str, Any]:
    """The event as the homeserver keeps it (and anyone without the keys sees it)."""
    return await room_event(stack.synapse.base_url, user.client.access_token, room_id, event_id)


async def cross_signed(stack: Stack, person: MatrixUser, user_id: str) -> None:
    """What a person's client checks: the identity's master key signs its self-signing
    key, which signs the device the messages come from."""
    async with httpx.AsyncClient() as http:
        answer = (await http.post(f"{stack.synapse.base_url}/_matrix/client/v3/keys/query",
                                  json={"device_keys": {user_id: []}},
                                  headers={"Authorization": f"Bearer {person.client.access_token}"})).json()  # fmt: skip
    master, self_signing = answer["master_keys"][user_id], answer["self_signing_keys"][user_id]
    [(master_id, master_key)] = master["keys"].items()
    [(ssk_id, ssk_key)] = self_signing["keys"].items()
    verify_signed_json(self_signing, user_id, decode_verify_key_base64("ed25519", master_key.split(":")[-1], master_key))
    device = answer["device_keys"][user_id]["QQBRIDGE"]
    assert ssk_id in device["signatures"][user_id]
    verify_signed_json(device, user_id, decode_verify_key_base64("ed25519", ssk_key, ssk_key))


def encrypted_ids(user: EncryptingUser, room_id: str, sender: str) -> list[str]:
    """The ids of the events from `sender` that the client decrypted."""
    return [e.event_id for e in user.events(room_id) if getattr(e, "decrypted", False) and e.sender == sender]


async def test_an_encrypted_control_room_a_login_and_a_chat_both_ways(secret_stack: Stack, person: EncryptingUser,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    stack = secret_stack
    room = await person.open_control_room(BOT)
    welcome = await person.wait_for_text(room, "control room", sender=BOT, timeout=60)
    assert "encrypted" not in welcome.lower()  # no "I cannot read encrypted messages"
    bot_events = encrypted_ids(person, room, BOT)
    assert bot_events, "the bot's welcome was not encrypted"
    assert (await raw(stack, person, room, bot_events[0]))["type"] == "m.room.encrypted"

    # A command and the login, typed in the encrypted room.
    await person.say(room, "login 10001")
    await person.wait_for_text(room, "next message", sender=BOT, timeout=60)
    password_event = await person.say(room, QQ_PASSWORDS[10001])
    await person.wait_for_text(room, "Logged into QQ as 10001", sender=BOT, timeout=60)
    assert (await raw(stack, person, room, password_event)).get("content") == {}  # redacted
    log = stack.bridge.log()
    assert QQ_PASSWORDS[10001] not in log and "login 10001" not in log  # nothing decrypted is logged

    # QQ → Matrix: the contact's message opens an encrypted portal, from the puppet's own device.
    bob = QQClient(stack.sim_url, 10002, local_address="127.0.0.2", timeout=10)
    await bob.login(password_md5(QQ_PASSWORDS[10002]))
    try:
        await bob.send_message(10001, "hello from QQ")
        portal = await person.accept_invite(PUPPET, timeout=60)
        await person.wait_for_text(portal, "hello from QQ", sender=PUPPET, timeout=60)
        [event_id] = encrypted_ids(person, portal, PUPPET)[:1]
        event = await raw(stack, person, portal, event_id)
        assert event["type"] == "m.room.encrypted"
        assert event["content"]["device_id"] == "QQBRIDGE"
        puppet_keys = person.client.device_store[PUPPET]["QQBRIDGE"]
        assert event["content"]["sender_key"] == puppet_keys.curve25519  # the puppet's device, not the bot's
        assert not person.undecrypted(portal)
        await cross_signed(stack, person, PUPPET)  # the device is its owner's, as clients check
        await cross_signed(stack, person, BOT)

        # Matrix → QQ: the person's encrypted reply reaches the contact.
        await person.say(portal, "hello from Matrix")
        [message] = await received(bob, 1, timeout=60)
        assert message.text == "hello from Matrix"
    finally:
        await bob.logout()
        await bob.aclose()


async def test_keys_survive_a_restart_and_a_kill(secret_stack: Stack, tmp_path: Path) -> None:
    """After SIGTERM and after SIGKILL, the bridge's devices are the same and still hold
    their room keys: what the person sends decrypts, and what the contact sends does."""
    stack = secret_stack
    mxid = await stack.synapse.register_user("cipher2", PASSWORD)
    person = await EncryptingUser(stack.synapse.base_url, mxid, PASSWORD, tmp_path / "keys").login()
    bob = QQClient(stack.sim_url, 10005, local_address="127.0.0.2", timeout=10)
    await bob.login(password_md5(QQ_PASSWORDS[10005]))
    try:
        room = await person.open_control_room(BOT)
        await person.log_into_qq(room, 10004)
        await bob.send_message(10004, "before the restart")
        portal = await person.accept_invite("@_qq_10005:localhost", timeout=60)
        await person.wait_for_text(portal, "before the restart", timeout=60)
        devices = {user: {d.id for d in person.client.device_store.active_user_devices(user)}
                   for user in (BOT, "@_qq_10005:localhost")}  # fmt: skip

        for how in ("restart", "kill"):
            if how == "restart":
                stack.restart_bridge()
            else:
                stack.bridge.stop(signal.SIGKILL)
                stack.bridge.start()
                stack.bridge.wait_for_log("qqbridge ready")
            await person.say(portal, f"after the {how}")  # the person's room key from before: kept
            texts = [m.text for m in await received(bob, 1, timeout=60)]
            assert texts == [f"after the {how}"]
            await person.say(room, "ping")  # the control room too
            await person.wait_for_text(room, "QQ 10004", sender=BOT, timeout=60)
            await bob.send_message(10004, f"back after the {how}")
            await person.wait_for_text(portal, f"back after the {how}", timeout=60)
            await person.sync()
            assert not person.undecrypted(portal) and not person.undecrypted(room)
        # The same devices all along: no new device (a person would see one appear).
        person.client.olm.users_for_key_query.update(devices)  # asked afresh
        await person.sync()
        for user, before in devices.items():
            assert {d.id for d in person.client.device_store.active_user_devices(user)} == before
    finally:
        await bob.logout()
        await bob.aclose()
        await person.close()


async def test_an_event_whose_key_never_comes_is_answered(secret_stack: Stack, person: EncryptingUser) -> None:
    """An encrypted message the bridge has no key for waits encryption.key_wait, then the
    person is asked to send it again, in the same encrypted room; nothing is acted on."""
    room = await person.open_control_room(BOT)
    await person.wait_for_text(room, "control room", sender=BOT, timeout=60)
    forged = {"algorithm": "m.megolm.v1.aes-sha2", "sender_key": "x" * 43, "session_id": "nosuchsession",
              "ciphertext": "AwgAEhA", "device_id": "NODEVICE"}  # fmt: skip
    async with httpx.AsyncClient() as http:  # as it is: the client must not encrypt it again
        sent = await http.put(f"{secret_stack.synapse.base_url}/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/"
                              "forged1", json=forged, headers={"Authorization": f"Bearer {person.client.access_token}"})
    assert sent.status_code == 200, sent.text
    reply = await person.wait_for_text(room, "could not read your encrypted message", sender=BOT, timeout=60)
    assert "send it again" in reply


async def test_a_friend_request_prompt_and_its_reaction_in_an_encrypted_control_room(
    secret_stack: Stack, tmp_path: Path
) -> None:
    """The prompt, the bot's ✅/❌ offers, the person's ✅ and the edited outcome: all
    encrypted, all understood."""
    stack = secret_stack
    mxid = await stack.synapse.register_user("cipher3", PASSWORD)
    person = await EncryptingUser(stack.synapse.base_url, mxid, PASSWORD, tmp_path / "keys").login()
    erin = QQClient(stack.sim_url, 10005, local_address="127.0.0.2", timeout=10)
    await erin.login(password_md5(QQ_PASSWORDS[10005]))
    try:
        room = await person.open_control_room(BOT)
        await person.log_into_qq(room, 10006)
        await erin.request_friendship(10006, "from an encrypted chat")
        prompt = await person.wait_for_text(room, "Friend request from", sender=BOT, timeout=60)
        assert "from an encrypted chat" in prompt
        prompt_id = next(e.event_id for e in person.events(room) if getattr(e, "body", None) == prompt)
        assert (await raw(stack, person, room, prompt_id))["type"] == "m.room.encrypted"
        await person.send(room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": prompt_id, "key": "✅"}},
                          "m.reaction")  # fmt: skip
        await person.wait_for_text(room, "Accepted", sender=BOT, timeout=60)
        accepted = [e for e in await received_events(erin) if getattr(e, "sender", None) == 10006]
        assert accepted, "QQ was not told of the acceptance"
        assert not person.undecrypted(room)
    finally:
        await erin.logout()
        await erin.aclose()
        await person.close()


async def received_events(client: QQClient) -> list[object]:
    events: list[object] = []
    for _ in range(50):
        events += await client.drain_messages()
        if events:
            return events
        await asyncio.sleep(0.2)
    return events
