"""What the homeserver pushes for encryption (`Encryption.receive`): a transaction's
to-device events, hostile ones among them. Junk, forged ciphertext, events for devices
the bridge does not have and a flood past the bound are set aside without an error;
the one real room key among them is kept, and the message it opens decrypts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from nio.crypto import Olm
from nio.responses import KeysClaimResponse, KeysQueryResponse, KeysUploadResponse

from qqbridge.matrix.encryption import TO_DEVICE_PER_TRANSACTION, Encryption, KeyMissing
from qqbridge.matrix.encryption.keystore import KeyStore
from qqbridge.store import Store

BOT, PERSON, ROOM = "@qqbridge:example.org", "@alice:example.org", "!control:example.org"


class Homeserver:
    """Enough of HomeserverAPI for the bot's device: it uploads its keys."""

    bot_mxid = BOT

    def __init__(self) -> None:
        self.uploaded: dict[str, Any] = {}

    async def ensure_registered(self, mxid: str) -> None: ...

    async def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> dict[str, Any]:
        if "/keys/upload" in path:
            self.uploaded.update(body)
            return {"one_time_key_counts": {"signed_curve25519": len(body.get("one_time_keys", {}))}}
        if "/keys/query" in path:  # its own device, to cross-sign it
            return {"device_keys": {BOT: {"QQBRIDGE": self.uploaded["device_keys"]}}}
        return {}


async def test_a_hostile_transaction_is_set_aside_and_the_real_room_key_kept(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite:///{tmp_path / 'bridge.db'}")
    try:
        homeserver = Homeserver()
        encryption = Encryption(homeserver, store.crypto, ours=lambda mxid: mxid == BOT, key_wait=0.1)  # type: ignore[arg-type]
        await encryption.start()

        # A person's client shares a room key with the bot's device, and writes.
        person = Olm(PERSON, "PHONE", await KeyStore.open(store.crypto, PERSON, "PHONE"))
        person.share_keys()
        person.handle_response(KeysUploadResponse.from_dict({"one_time_key_counts": {"signed_curve25519": 50}}))
        person.handle_response(KeysQueryResponse.from_dict(
            {"device_keys": {BOT: {"QQBRIDGE": homeserver.uploaded["device_keys"]}}, "failures": {}}))  # fmt: skip
        key_id, key = next(iter(homeserver.uploaded["one_time_keys"].items()))
        person.handle_response(KeysClaimResponse.from_dict(
            {"one_time_keys": {BOT: {"QQBRIDGE": {key_id: key}}}, "failures": {}}))  # fmt: skip
        _, to_device = person.share_group_session(ROOM, [BOT], ignore_unverified_devices=True)
        person.outbound_group_sessions[ROOM].shared = True
        content = person.group_encrypt(ROOM, {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "hi"}})
        real = {"sender": PERSON, "type": "m.room.encrypted", "to_user_id": BOT, "to_device_id": "QQBRIDGE",
                "content": to_device["messages"][BOT]["QQBRIDGE"]}  # fmt: skip

        forged = {"sender": PERSON, "type": "m.room.encrypted", "to_user_id": BOT, "to_device_id": "QQBRIDGE",
                  "content": {"algorithm": "m.olm.v1.curve25519-aes-sha2", "sender_key": "A" * 43,
                              "ciphertext": {homeserver.uploaded["device_keys"]["keys"]["curve25519:QQBRIDGE"]:
                                             {"type": 0, "body": "not olm at all"}}}}  # fmt: skip
        junk: list[Any] = [
            "a string", 42, None, [], {"type": "m.room.encrypted"},
            {"sender": PERSON, "type": "m.room_key", "to_user_id": "@someone:else", "to_device_id": "X", "content": {}},
            {"sender": PERSON, "type": "m.dummy", "to_user_id": BOT, "to_device_id": "QQBRIDGE",
             "content": {"padding": "x" * 100_000}},
            forged,
        ]
        await encryption.receive({"de.sorunome.msc2409.to_device": [*junk, real]})
        plain = await encryption.decrypt(ROOM, {"event_id": "$1", "sender": PERSON, "origin_server_ts": 1,
                                                 "room_id": ROOM, "type": "m.room.encrypted", "content": content})  # fmt: skip
        assert plain["content"]["body"] == "hi"

        # A flood: only the first TO_DEVICE_PER_TRANSACTION are read, in bounded time.
        await encryption.receive({"de.sorunome.msc2409.to_device": [forged] * (TO_DEVICE_PER_TRANSACTION + 500)})
        assert (await store.crypto.load(BOT)).room_keys  # kept, in the database
    finally:
        await store.close()


async def test_a_withheld_room_key_is_answered_at_once_with_its_reason(tmp_path: Path) -> None:
    """The person's client says it will not share a room key with the bridge (say, it
    shares only with verified devices): the event waiting for it is answered at once,
    with the client's reason, instead of after encryption.key_wait."""
    store = await Store.open(f"sqlite:///{tmp_path / 'bridge.db'}")
    try:
        homeserver = Homeserver()
        encryption = Encryption(homeserver, store.crypto, ours=lambda mxid: mxid == BOT, key_wait=30)  # type: ignore[arg-type]
        await encryption.start()
        event = {"event_id": "$1", "sender": PERSON, "origin_server_ts": 1, "room_id": ROOM, "type": "m.room.encrypted",
                 "content": {"algorithm": "m.megolm.v1.aes-sha2", "sender_key": "K" * 43, "session_id": "held",
                             "ciphertext": "AwgA", "device_id": "PHONE"}}  # fmt: skip
        waiting = asyncio.create_task(encryption.decrypt(ROOM, event))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # a key may still come
        started = time.monotonic()
        await encryption.receive({"de.sorunome.msc2409.to_device": [{
            "sender": PERSON, "type": "m.room_key.withheld", "to_user_id": BOT, "to_device_id": "QQBRIDGE",
            "content": {"algorithm": "m.megolm.v1.aes-sha2", "room_id": ROOM, "session_id": "held",
                        "sender_key": "K" * 43, "code": "m.unverified", "reason": "Device not verified"}}]})  # fmt: skip
        with pytest.raises(KeyMissing) as missing:
            await waiting
        assert time.monotonic() - started < 2 and missing.value.withheld == "Device not verified"
    finally:
        await store.close()
