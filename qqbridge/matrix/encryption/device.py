"""One Matrix identity of the bridge (the bot, a puppet) as an encrypting device.

    Device.open ──▶ PUT /devices/{id}?user_id= (the device exists) · keys from the store
               ──▶ POST /keys/upload?user_id=&device_id= (identity and one-time keys)
    to-device event ──receive_to_device──▶ nio's Olm (a room key, a key request, ...)
    encrypt(room, members, event) ──▶ /keys/query · /keys/claim · the room key shared
                                      by /sendToDevice · the event's ciphertext
    decrypt(room, event) ──▶ the plaintext event, or KeyMissing

nio's `Olm` does the cryptography and no I/O; this class moves its requests and
answers, and saves its keys (`KeyStore.flush`) before anything they produced leaves
the bridge. One lock per device: Olm is not meant to be used by two tasks at once.
Requests go as the identity's own device (`?user_id=&device_id=`): a puppet's messages
are encrypted by the puppet's device, never by the bot's.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import quote

import structlog
from nio.crypto import Olm
from nio.events import (
    ForwardedRoomKeyEvent,
    MegolmEvent,
    RoomKeyEvent,
    ToDeviceEvent,
    UnknownBadEvent,
)
from nio.exceptions import EncryptionError
from nio.responses import KeysClaimResponse, KeysQueryResponse, KeysUploadResponse, ToDeviceResponse

import qqbridge.matrix.encryption.cross_signing as cross_signing
from qqbridge.matrix.api import HomeserverAPI, MatrixError
from qqbridge.matrix.encryption.keystore import KeyStore
from qqbridge.store.crypto import CryptoStore

log = structlog.get_logger(__name__)

DEVICE_ID = "QQBRIDGE"  # every identity's one device
DEVICE_NAME = "QQ bridge"
CLIENT = "/_matrix/client/v3"


class KeyMissing(Exception):
    """An encrypted event whose room key this device does not have (yet); `withheld`:
    why the sender's client said it will not send it (m.room_key.withheld), if it did."""

    def __init__(self, session_id: str, withheld: str | None = None) -> None:
        super().__init__(f"no room key for session {session_id}")
        self.session_id = session_id
        self.withheld = withheld


class Undecryptable(Exception):
    """An encrypted event that will never decrypt here (bad ciphertext, a replay, ...)."""


class Device:
    def __init__(self, matrix: HomeserverAPI, keys: KeyStore, olm: Olm) -> None:
        self._matrix, self._keys, self.olm = matrix, keys, olm
        self.user_id, self.device_id = keys.user_id, keys.device_id
        self.lock = asyncio.Lock()

    @classmethod
    async def open(cls, matrix: HomeserverAPI, crypto: CryptoStore, user_id: str) -> Device:
        """The identity's device, created on the homeserver and its keys uploaded if need be."""
        keys = await KeyStore.open(crypto, user_id, DEVICE_ID)
        await matrix.request(
            "PUT", f"{CLIENT}/devices/{quote(keys.device_id, safe='')}", {"display_name": DEVICE_NAME},
            user_id=user_id, what=f"device of {user_id}",
        )  # fmt: skip
        olm = Olm(user_id, keys.device_id, keys)  # a new account is saved by nio (and flushed below)
        await keys.flush()
        device = cls(matrix, keys, olm)
        async with device.lock:
            await device._upload_keys()
        await device._cross_sign(crypto)
        return device

    async def _cross_sign(self, crypto: CryptoStore) -> None:
        """The identity's cross-signing keys uploaded (made and kept first, the first
        time), and this device signed by its self-signing key, unless it is already."""
        seeds = await crypto.cross_signing(self.user_id)
        if seeds is None:
            seeds = await crypto.keep_cross_signing(self.user_id, cross_signing.generate())
        await self._request("POST", f"{CLIENT}/keys/device_signing/upload",
                            cross_signing.upload_body(self.user_id, seeds), "cross-signing keys")  # fmt: skip
        answer = await self._request("POST", f"{CLIENT}/keys/query",
                                     {"device_keys": {self.user_id: [self.device_id]}}, "own device keys")  # fmt: skip
        mine = answer.get("device_keys", {}).get(self.user_id, {}).get(self.device_id)
        if not isinstance(mine, dict):
            raise MatrixError(200, "M_NOT_FOUND", "the homeserver does not list this device's keys", "cross-signing")
        if cross_signing.key_id(seeds.self_signing) in mine.get("signatures", {}).get(self.user_id, {}):
            return
        signed = cross_signing.sign_device(self.user_id, seeds, {k: v for k, v in mine.items() if k != "unsigned"})
        await self._request("POST", f"{CLIENT}/keys/signatures/upload", {self.user_id: {self.device_id: signed}},
                            "device signature")  # fmt: skip

    async def _request(self, method: str, path: str, body: Any = None, what: str = "") -> dict[str, Any]:
        return await self._matrix.request(method, path, body, user_id=self.user_id, device_id=self.device_id,
                                          what=what or path)  # fmt: skip

    async def _upload_keys(self) -> None:
        """Identity keys once, one-time keys whenever nio finds too few on the server."""
        if not self.olm.should_upload_keys:
            return
        body = self.olm.share_keys()
        await self._keys.flush()
        answer = await self._request("POST", f"{CLIENT}/keys/upload", body, "key upload")
        self.olm.handle_response(KeysUploadResponse.from_dict(answer))
        await self._keys.flush()

    async def one_time_keys_left(self, count: int) -> None:
        """The homeserver's count of this device's unclaimed one-time keys (MSC3202)."""
        async with self.lock:
            self.olm.uploaded_key_count = count
            await self._upload_keys()

    async def receive_to_device(self, raw: dict[str, Any]) -> str | None:
        """A to-device event for this device; the session id of a room key it brought."""
        event = ToDeviceEvent.parse_event(raw)
        if event is None or isinstance(event, UnknownBadEvent):
            return None
        async with self.lock:
            result = self.olm.handle_to_device_event(event)
            await self._keys.flush()
            await self._send_outgoing()
        if isinstance(result, (RoomKeyEvent, ForwardedRoomKeyEvent)):
            return str(result.session_id)
        return None

    async def _send_outgoing(self) -> None:
        """What nio queued to send: key requests, answers to them, dummies that unwedge."""
        for message in list(self.olm.outgoing_to_device_messages):
            await self._request("PUT", f"{CLIENT}/sendToDevice/{quote(message.type, safe='')}/{uuid.uuid4().hex}",
                                message.as_dict(), "to-device")  # fmt: skip
            self.olm.handle_response(ToDeviceResponse(message))
        await self._keys.flush()

    def decrypt(self, room_id: str, raw: dict[str, Any]) -> dict[str, Any]:
        """The plaintext event (`type`, `content`, ...) of an encrypted room event."""
        event = MegolmEvent.from_dict(raw)
        if not isinstance(event, MegolmEvent):
            raise Undecryptable("not a Megolm event")
        if self.olm.inbound_group_store.get(room_id, event.sender_key, event.session_id) is None:
            raise KeyMissing(str(event.session_id))
        try:
            plain = self.olm.decrypt_megolm_event(event, room_id)
        except EncryptionError as exc:
            raise Undecryptable(str(exc)) from None
        source = getattr(plain, "source", None)
        if not isinstance(source, dict) or not isinstance(source.get("content"), dict):
            raise Undecryptable("the plaintext is not an event")
        return dict(source)

    async def encrypt(self, room_id: str, members: Callable[[], Awaitable[Iterable[str]]], event_type: str,
                      content: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        """The `m.room.encrypted` content of an event; when the room has no room key
        shared yet (or it expired), one is shared first with every device of the room's
        `members()` (asked only then; Element's default: unverified devices included)."""
        async with self.lock:
            if self.olm.should_share_group_session(room_id):
                await self._share_room_key(room_id, sorted(set(await members())))
            encrypted = self.olm.group_encrypt(room_id, {"type": event_type, "content": content})
            await self._keys.flush()
        relates = content.get("m.relates_to")
        if isinstance(relates, dict):  # left in the clear, as the spec says, so servers can aggregate
            encrypted["m.relates_to"] = relates
        return dict(encrypted)

    def forget_room_key(self, room_id: str) -> None:
        """Someone joined or left, or changed devices: the next message gets a new room key."""
        self.olm.outbound_group_sessions.pop(room_id, None)

    def devices_changed(self, users: Iterable[str]) -> None:
        self.olm.add_changed_users(set(users))

    async def _share_room_key(self, room_id: str, members: list[str]) -> None:
        current = self.olm.outbound_group_sessions.get(room_id)
        if current is not None and current.shared:  # expired (100 messages, a week): a new one
            self.forget_room_key(room_id)
        unknown = [user for user in members if user not in self.olm.device_store.users]
        self.olm.users_for_key_query.update(unknown)
        if self.olm.should_query_keys:
            users = sorted(self.olm.users_for_key_query)
            answer = await self._request("POST", f"{CLIENT}/keys/query",
                                         {"device_keys": {user: [] for user in users}, "timeout": 10000},
                                         "key query")  # fmt: skip
            self.olm.handle_response(KeysQueryResponse.from_dict(answer))
            self.olm.users_for_key_query.difference_update(users)
            await self._keys.flush()
        missing = self.olm.get_missing_sessions(members)
        if missing:
            answer = await self._request("POST", f"{CLIENT}/keys/claim",
                                         {"one_time_keys": {user: {device: "signed_curve25519" for device in devices}
                                                            for user, devices in missing.items()},
                                          "timeout": 10000}, "key claim")  # fmt: skip
            self.olm.handle_response(KeysClaimResponse.from_dict(answer))
            await self._keys.flush()
        while True:
            try:
                sharing_with, to_device = self.olm.share_group_session(
                    room_id, members, ignore_missing_sessions=True, ignore_unverified_devices=True
                )
            except EncryptionError as exc:
                raise MatrixError(0, "M_UNKNOWN", str(exc), f"room key for {room_id}") from None
            session = self.olm.outbound_group_sessions[room_id]
            await self._keys.flush()
            if not sharing_with:
                session.shared = True
                return
            await self._request("PUT", f"{CLIENT}/sendToDevice/m.room.encrypted/{uuid.uuid4().hex}", to_device,
                                f"room key for {room_id}")  # fmt: skip
            session.users_shared_with.update(sharing_with)
