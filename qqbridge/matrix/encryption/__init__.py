"""End-to-bridge encryption: the bridge reads and writes encrypted rooms (docs/encryption.md).

    homeserver transaction ──to-device, one-time key counts, device lists (MSC2409,
        MSC3202)──▶ Encryption.receive ──▶ the device it is for (room keys kept)
    inbox ──m.room.encrypted──▶ Encryption.decrypt (the bot's device; waits a bounded
        time for a room key still on its way) ──▶ the plaintext event, routed as usual
    a part sends ──▶ HomeserverAPI.send ──seal──▶ in an encrypted room: the sender's own
        device encrypts (the bot's, or the puppet's) ──▶ m.room.encrypted

Each identity that speaks in an encrypted room has one device (`device.Device`), opened
on first use; its keys live in the bridge's database (`store.crypto`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import structlog

from qqbridge.matrix.api import HomeserverAPI, MatrixError
from qqbridge.matrix.content import json_object
from qqbridge.matrix.encryption.device import CLIENT, DEVICE_ID, Device, KeyMissing, Undecryptable
from qqbridge.store.crypto import CryptoStore

log = structlog.get_logger(__name__)

KEY_WAIT = 30.0  # seconds an event waits for its room key before the person is asked to resend
TO_DEVICE_PER_TRANSACTION = 1000  # more in one transaction is a flood: the rest is set aside
TO_DEVICE_BYTES = 64 * 1024  # a to-device event larger than this is set aside unread
WITHHELD = ("m.room_key.withheld", "org.matrix.room_key.withheld")  # the stable and the older name
WITHHELD_KEPT = 10_000  # withheld sessions remembered, the oldest forgotten first

__all__ = ["KEY_WAIT", "Encryption", "KeyMissing", "Undecryptable"]


class Encryption:
    """`ours(mxid)`: whether a Matrix user is the bot or a puppet (only they have devices here)."""

    def __init__(self, matrix: HomeserverAPI, crypto: CryptoStore, *, ours: Callable[[str], bool],
                 key_wait: float = KEY_WAIT) -> None:  # fmt: skip
        self._matrix, self._crypto, self._ours, self.key_wait = matrix, crypto, ours, key_wait
        self.bot = matrix.bot_mxid
        self._devices: dict[str, Device] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._encrypted: dict[str, bool] = {}  # room → encrypted, as far as the bridge has seen
        self._withheld: dict[str, str] = {}  # session id → why its sender will not share it (bounded)
        self._keys_arrived = asyncio.Condition()

    async def start(self) -> None:
        await self.device(self.bot)

    async def device(self, user_id: str) -> Device:
        """The identity's device, opened (created, keys uploaded) the first time."""
        device = self._devices.get(user_id)
        if device is not None:
            return device
        async with self._opening.setdefault(user_id, asyncio.Lock()):
            if user_id not in self._devices:
                await self._matrix.ensure_registered(user_id)
                self._devices[user_id] = await Device.open(self._matrix, self._crypto, user_id)
                log.info("encrypting device ready", user_id=user_id, device_id=self._devices[user_id].device_id)
            return self._devices[user_id]

    # ---- what the homeserver pushes ------------------------------------------------------

    async def receive(self, body: dict[str, Any]) -> None:
        """A transaction's to-device events and key counts, before it is answered: the room
        keys in it are kept before the homeserver forgets them. A bad event is logged and
        set aside; a store that fails raises (the transaction is answered 5xx and retried)."""
        to_device = body.get("de.sorunome.msc2409.to_device") or body.get("to_device") or []
        if not isinstance(to_device, list):
            to_device = []
        if len(to_device) > TO_DEVICE_PER_TRANSACTION:
            log.warning("a flood of to-device events; the rest set aside", count=len(to_device),
                        kept=TO_DEVICE_PER_TRANSACTION)  # fmt: skip
        arrived = False
        for raw in to_device[:TO_DEVICE_PER_TRANSACTION]:
            arrived |= await self._to_device(raw)
        counts = json_object(body.get("org.matrix.msc3202.device_one_time_keys_count")
                             or body.get("org.matrix.msc3202.device_one_time_key_counts"))  # fmt: skip
        for user_id, per_device in counts.items():
            device = self._devices.get(user_id)
            count = json_object(json_object(per_device).get(DEVICE_ID)).get("signed_curve25519")
            if device is not None and isinstance(count, int):
                await device.one_time_keys_left(count)
        changed = json_object(body.get("org.matrix.msc3202.device_lists")).get("changed")
        if isinstance(changed, list):
            users = [user for user in changed if isinstance(user, str)]
            for device in self._devices.values():
                device.devices_changed(users)
        if arrived:
            async with self._keys_arrived:
                self._keys_arrived.notify_all()

    async def _to_device(self, raw: object) -> bool:
        """One to-device event; True if it brought a room key."""
        if not isinstance(raw, dict) or len(repr(raw)) > TO_DEVICE_BYTES:
            log.warning("set aside a to-device event the bridge cannot use")
            return False
        user_id, device_id = raw.get("to_user_id"), raw.get("to_device_id")
        if raw.get("type") in WITHHELD and self._ours(str(user_id)):
            return self._note_withheld(json_object(raw.get("content")))
        device = self._devices.get(user_id) if isinstance(user_id, str) else None
        if device is None and isinstance(user_id, str) and self._ours(user_id) and device_id == DEVICE_ID:
            device = await self.device(user_id)  # a device from before a restart, not used since
        if device is None or device_id not in (device.device_id, "*"):
            return False
        try:
            return await device.receive_to_device(raw) is not None
        except MatrixError as exc:
            log.warning("could not answer a to-device event", user_id=user_id, error=str(exc))
            return False
        except (ValueError, KeyError, TypeError) as exc:  # what nio makes of bad ciphertext
            log.warning("set aside a to-device event that does not decrypt", user_id=user_id,
                        type=raw.get("type"), error=type(exc).__name__)  # fmt: skip
            return False

    def _note_withheld(self, content: dict[str, Any]) -> bool:
        """m.room_key.withheld: the sender's client will not share a room key with us
        (the spec's codes: m.unverified, m.blacklisted, m.unauthorised, m.unavailable,
        m.no_olm). An event waiting for that key is answered at once, saying why."""
        session, code = content.get("session_id"), content.get("code")
        if not isinstance(session, str) or not isinstance(code, str):
            return False
        reason = content.get("reason")
        self._withheld[session[:200]] = (reason if isinstance(reason, str) and reason else code)[:200]
        while len(self._withheld) > WITHHELD_KEPT:
            self._withheld.pop(next(iter(self._withheld)))
        return True  # wakes the events waiting for a key: this one waits no more

    # ---- rooms ---------------------------------------------------------------------------

    def room_encrypted(self, room_id: str) -> None:
        """An `m.room.encryption` event: the room is encrypted from now on, for good."""
        self._encrypted[room_id] = True

    def members_changed(self, room_id: str) -> None:
        """Someone joined, left or was invited: the next message goes under a new room key."""
        for device in self._devices.values():
            device.forget_room_key(room_id)

    async def is_encrypted(self, room_id: str) -> bool:
        known = self._encrypted.get(room_id)
        if known is not None:
            return known
        try:
            state = await self._matrix.get_state(room_id, "m.room.encryption")
            encrypted = bool(state.get("algorithm"))
        except MatrixError as exc:
            if exc.status not in (403, 404):
                raise
            encrypted = False
        self._encrypted.setdefault(room_id, encrypted)
        return self._encrypted[room_id]

    async def _members(self, room_id: str, as_user: str) -> list[str]:
        """Who gets the room key: everyone joined or invited."""
        path = f"{CLIENT}/rooms/{quote(room_id, safe='')}/members?not_membership=leave"
        answer = await self._matrix.request("GET", path, user_id=as_user, what=f"members of {room_id}")
        members = []
        for event in answer.get("chunk") or []:
            content = json_object(json_object(event).get("content"))
            if content.get("membership") in ("join", "invite") and isinstance(event.get("state_key"), str):
                members.append(event["state_key"])
        return members

    async def seal(
        self, room_id: str, sender: str, event_type: str, content: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """What `sender` sends into `room_id`: as it is in a plain room; in an encrypted
        one, `m.room.encrypted` by the sender's own device (HomeserverAPI.send asks)."""
        if not await self.is_encrypted(room_id):
            return event_type, content
        device = await self.device(sender)

        async def members() -> list[str]:  # a request only when a room key is to be shared
            return await self._members(room_id, sender)

        return "m.room.encrypted", await device.encrypt(room_id, members, event_type, content)

    async def decrypt(self, room_id: str, event: dict[str, Any]) -> dict[str, Any]:
        """The plaintext of an encrypted room event, by the bot's device. A room key still
        on its way is waited for, up to `key_wait` s; then KeyMissing. Undecryptable for
        an event that never will."""
        device = await self.device(self.bot)
        deadline = time.monotonic() + self.key_wait
        while True:
            try:
                return device.decrypt(room_id, event)
            except KeyMissing as missing:
                withheld = self._withheld.get(missing.session_id)
                if withheld is not None:
                    raise KeyMissing(missing.session_id, withheld) from None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                async with self._keys_arrived:
                    try:
                        await asyncio.wait_for(self._keys_arrived.wait(), left)
                    except TimeoutError:
                        pass
