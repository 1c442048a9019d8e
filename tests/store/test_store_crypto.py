"""The encrypting devices' keys (`store.crypto`, `matrix.encryption.keystore`), on both
backends: what one Olm machine saved is what the next one, after a restart, reads;
nothing of it is written before `flush`, and a failed flush loses nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from nio.crypto import Olm
from nio.events import MegolmEvent, ToDeviceEvent
from nio.responses import KeysClaimResponse, KeysQueryResponse, KeysUploadResponse

from qqbridge.matrix.encryption.keystore import KeyStore
from qqbridge.store import Store

OpenStore = Callable[[], Awaitable[Store]]

PUPPET, PERSON, ROOM = "@_qq_10002:example.org", "@alice:example.org", "!portal:example.org"


def published(olm: Olm) -> dict:
    """Upload the machine's keys (as the homeserver answers); the upload body."""
    body = olm.share_keys()
    olm.handle_response(KeysUploadResponse.from_dict({"one_time_key_counts": {"signed_curve25519": 50}}))
    return body


async def test_a_room_key_received_before_a_restart_still_decrypts_after_it(open_store: OpenStore) -> None:
    store = await open_store()
    keys = await KeyStore.open(store.crypto, PUPPET, "QQBRIDGE")
    puppet = Olm(PUPPET, keys.device_id, keys)
    puppet_keys = published(puppet)
    await keys.flush()
    assert not keys.dirty

    # The person's client shares a room key with the puppet's device, then writes.
    person = Olm(PERSON, "PHONE", await KeyStore.open(store.crypto, PERSON, "PHONE"))
    published(person)
    person.handle_response(KeysQueryResponse.from_dict(
        {"device_keys": {PUPPET: {"QQBRIDGE": puppet_keys["device_keys"]}}, "failures": {}}))  # fmt: skip
    key_id, one_time_key = next(iter(puppet_keys["one_time_keys"].items()))
    person.handle_response(KeysClaimResponse.from_dict(
        {"one_time_keys": {PUPPET: {"QQBRIDGE": {key_id: one_time_key}}}, "failures": {}}))  # fmt: skip
    _, to_device = person.share_group_session(ROOM, [PUPPET], ignore_unverified_devices=True)
    person.outbound_group_sessions[ROOM].shared = True
    encrypted = person.group_encrypt(ROOM, {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "hi"}})

    ciphertext = to_device["messages"][PUPPET]["QQBRIDGE"]
    puppet.handle_to_device_event(ToDeviceEvent.parse_event(
        {"sender": PERSON, "type": "m.room.encrypted", "content": ciphertext}))  # fmt: skip
    assert keys.dirty
    await keys.flush()
    await store.close()

    # A restart: a new machine from the stored keys only.
    store = await open_store()
    again = await KeyStore.open(store.crypto, PUPPET, "IGNORED")
    assert again.device_id == "QQBRIDGE"  # the stored device, not a new one
    restarted = Olm(PUPPET, again.device_id, again)
    assert restarted.account.identity_keys == puppet.account.identity_keys
    event = MegolmEvent.from_dict({"event_id": "$1", "sender": PERSON, "origin_server_ts": 1, "room_id": ROOM,
                                   "type": "m.room.encrypted", "content": encrypted})  # fmt: skip
    plain = restarted.decrypt_megolm_event(event, ROOM)
    assert plain.body == "hi" and plain.sender == PERSON
    await store.close()


async def test_a_failed_flush_keeps_the_changes_for_the_next(open_store: OpenStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await open_store()
    keys = await KeyStore.open(store.crypto, PUPPET, "QQBRIDGE")
    Olm(PUPPET, keys.device_id, keys)  # a new account, saved in memory

    async def broken(*args: object) -> None:
        raise OSError("the database connection was reset")

    real = store.crypto.save
    monkeypatch.setattr(store.crypto, "save", broken)
    with pytest.raises(OSError):
        await keys.flush()
    assert keys.dirty
    monkeypatch.setattr(store.crypto, "save", real)
    await keys.flush()
    assert (await store.crypto.load(PUPPET)).account is not None
    await store.close()
