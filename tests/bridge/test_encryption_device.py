"""One encrypting device of the bridge (`matrix/encryption/device.py`) against a
homeserver double that answers the key endpoints and hands the to-device messages to a
person's Olm machine: what the device encrypts, the person decrypts, past the room
key's rotation (nio starts a new one every 100 messages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nio.crypto import Olm
from nio.events import MegolmEvent, ToDeviceEvent
from nio.responses import KeysUploadResponse

from qqbridge.matrix.encryption.device import Device
from qqbridge.matrix.encryption.keystore import KeyStore
from qqbridge.store import Store

PUPPET, PERSON, ROOM = "@_qq_10002:example.org", "@alice:example.org", "!portal:example.org"


class Homeserver:
    """The key endpoints, for one person's device."""

    def __init__(self, person: Olm, person_keys: dict[str, Any]) -> None:
        self.person, self.person_keys = person, person_keys
        self.one_time_keys = dict(person_keys["one_time_keys"])
        self.room_keys_sent = 0
        self.own_keys: dict[str, Any] = {}

    async def request(self, method: str, path: str, body: Any = None, *, user_id: str | None = None,
                      device_id: str | None = None, what: str = "") -> dict[str, Any]:  # fmt: skip
        assert user_id == PUPPET and (device_id == "QQBRIDGE" or path.startswith("/_matrix/client/v3/devices/"))
        if "/keys/upload" in path:
            self.own_keys = body.get("device_keys") or self.own_keys
            return {"one_time_key_counts": {"signed_curve25519": len(body.get("one_time_keys", {}))}}
        if "/keys/query" in path and PUPPET in body["device_keys"]:  # its own device, to cross-sign it
            return {"device_keys": {PUPPET: {"QQBRIDGE": self.own_keys}}, "failures": {}}
        if "/keys/query" in path:
            return {"device_keys": {PERSON: {"PHONE": self.person_keys["device_keys"]}}, "failures": {}}
        if "/keys/claim" in path:
            key_id = next(iter(self.one_time_keys))
            return {"one_time_keys": {PERSON: {"PHONE": {key_id: self.one_time_keys.pop(key_id)}}}, "failures": {}}
        if "/sendToDevice/m.room.encrypted/" in path:
            self.room_keys_sent += 1
            content = body["messages"][PERSON]["PHONE"]
            self.person.handle_to_device_event(
                ToDeviceEvent.parse_event({"sender": PUPPET, "type": "m.room.encrypted", "content": content})
            )
            return {}
        return {}


async def test_a_puppet_device_encrypts_past_the_room_keys_rotation(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite:///{tmp_path / 'bridge.db'}")
    try:
        person = Olm(PERSON, "PHONE", await KeyStore.open(store.crypto, PERSON, "PHONE"))
        person_keys = person.share_keys()
        person.handle_response(KeysUploadResponse.from_dict({"one_time_key_counts": {"signed_curve25519": 50}}))
        homeserver = Homeserver(person, person_keys)
        device = await Device.open(homeserver, store.crypto, PUPPET)  # type: ignore[arg-type]

        async def members() -> list[str]:
            return [PERSON]

        for n in range(150):
            content = await device.encrypt(ROOM, members, "m.room.message", {"msgtype": "m.text", "body": f"n{n}"})
            event = MegolmEvent.from_dict({"event_id": f"${n}", "sender": PUPPET, "origin_server_ts": n,
                                           "room_id": ROOM, "type": "m.room.encrypted", "content": content})  # fmt: skip
            assert person.decrypt_megolm_event(event, ROOM).body == f"n{n}"
        assert homeserver.room_keys_sent == 2  # the first room key, and the one after 100 messages
    finally:
        await store.close()
