"""The keys of the bridge's encrypting devices (tables `crypto_*`, migration v4).

    CryptoStore.load(user_id) ──▶ KeyState (account, Olm sessions, room keys, devices)
    CryptoStore.save(user_id, KeyChanges) ── one transaction, before anything the keys
                                             produced leaves the bridge

One identity (the bot, a puppet) has one device and one row in `crypto_account`. The
pickles are vodozemac's, made and read by `qqbridge.matrix.encryption.keystore`; this
module only keeps them, and never logs them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from qqbridge.store.checks import text
from qqbridge.store.repository import Repository


@dataclass(frozen=True)
class AccountRow:
    device_id: str
    pickle: str
    shared: bool


@dataclass(frozen=True)
class OlmSessionRow:
    sender_key: str
    session_id: str
    pickle: str
    created_at: float


@dataclass(frozen=True)
class RoomKeyRow:
    room_id: str
    sender_key: str
    session_id: str
    signing_key: str
    forwarding_chain: tuple[str, ...]
    pickle: str


@dataclass(frozen=True)
class DeviceRow:
    owner: str
    device_id: str
    keys: dict[str, str]
    display_name: str | None
    deleted: bool
    trust: str


@dataclass(frozen=True)
class CrossSigningSeeds:
    """The private halves of an identity's cross-signing keys (Ed25519 seeds, base64)."""

    master: str
    self_signing: str
    user_signing: str

    def __repr__(self) -> str:  # never in a log line or a traceback
        return "CrossSigningSeeds(…)"


@dataclass(frozen=True)
class KeyState:
    """Everything one identity's device has: read whole at start (Olm keeps it in memory)."""

    account: AccountRow | None
    sessions: list[OlmSessionRow]
    room_keys: list[RoomKeyRow]
    devices: list[DeviceRow]


@dataclass
class KeyChanges:
    """What changed since the last save: written together, or not at all."""

    account: AccountRow | None = None
    sessions: list[OlmSessionRow] = field(default_factory=list)
    room_keys: list[RoomKeyRow] = field(default_factory=list)
    devices: list[DeviceRow] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.account or self.sessions or self.room_keys or self.devices)


class CryptoStore(Repository):
    """The devices' keys, by identity (`store.crypto`)."""

    async def load(self, user_id: str) -> KeyState:
        text("user_id", user_id)
        account = await self._db.fetchrow(
            "SELECT device_id, pickle, shared FROM crypto_account WHERE user_id = $1", user_id
        )
        sessions = await self._db.fetch(
            "SELECT sender_key, session_id, pickle, created_at FROM crypto_olm_session WHERE user_id = $1", user_id
        )
        room_keys = await self._db.fetch(
            "SELECT room_id, sender_key, session_id, signing_key, forwarding_chain, pickle"
            " FROM crypto_megolm_inbound WHERE user_id = $1",
            user_id,
        )
        devices = await self._db.fetch(
            "SELECT owner, device_id, keys, display_name, deleted, trust FROM crypto_device WHERE user_id = $1",
            user_id,
        )
        return KeyState(
            account=None if account is None else AccountRow(
                str(account["device_id"]), str(account["pickle"]), bool(account["shared"])
            ),
            sessions=[
                OlmSessionRow(str(r["sender_key"]), str(r["session_id"]), str(r["pickle"]), float(r["created_at"]))
                for r in sessions
            ],
            room_keys=[
                RoomKeyRow(str(r["room_id"]), str(r["sender_key"]), str(r["session_id"]), str(r["signing_key"]),
                           tuple(json.loads(r["forwarding_chain"])), str(r["pickle"]))
                for r in room_keys
            ],
            devices=[
                DeviceRow(str(r["owner"]), str(r["device_id"]), dict(json.loads(r["keys"])),
                          None if r["display_name"] is None else str(r["display_name"]), bool(r["deleted"]),
                          str(r["trust"]))
                for r in devices
            ],
        )  # fmt: skip

    async def save(self, user_id: str, changes: KeyChanges) -> None:
        text("user_id", user_id)
        if not changes:
            return
        async with self._db.transaction():
            if changes.account is not None:
                await self._db.execute(
                    "INSERT INTO crypto_account (user_id, device_id, pickle, shared, updated_at)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id) DO UPDATE SET device_id = excluded.device_id,"
                    " pickle = excluded.pickle, shared = excluded.shared, updated_at = excluded.updated_at",
                    user_id, changes.account.device_id, changes.account.pickle, changes.account.shared,
                    self._now_ms(),
                )  # fmt: skip
            for session in changes.sessions:
                await self._db.execute(
                    "INSERT INTO crypto_olm_session (user_id, sender_key, session_id, pickle, created_at)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, sender_key, session_id)"
                    " DO UPDATE SET pickle = excluded.pickle",
                    user_id, session.sender_key, session.session_id, session.pickle, session.created_at,
                )  # fmt: skip
            for key in changes.room_keys:
                await self._db.execute(
                    "INSERT INTO crypto_megolm_inbound (user_id, room_id, sender_key, session_id, signing_key,"
                    " forwarding_chain, pickle) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                    " ON CONFLICT (user_id, room_id, sender_key, session_id) DO UPDATE SET pickle = excluded.pickle,"
                    " forwarding_chain = excluded.forwarding_chain",
                    user_id, key.room_id, key.sender_key, key.session_id, key.signing_key,
                    json.dumps(list(key.forwarding_chain)), key.pickle,
                )  # fmt: skip
            for device in changes.devices:
                await self._db.execute(
                    "INSERT INTO crypto_device (user_id, owner, device_id, keys, display_name, deleted, trust)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id, owner, device_id) DO UPDATE SET"
                    " keys = excluded.keys, display_name = excluded.display_name, deleted = excluded.deleted,"
                    " trust = excluded.trust",
                    user_id, device.owner, device.device_id, json.dumps(device.keys), device.display_name,
                    device.deleted, device.trust,
                )  # fmt: skip

    async def cross_signing(self, user_id: str) -> CrossSigningSeeds | None:
        row = await self._db.fetchrow(
            "SELECT master, self_signing, user_signing FROM crypto_cross_signing WHERE user_id = $1",
            text("user_id", user_id),
        )
        return None if row is None else CrossSigningSeeds(str(row["master"]), str(row["self_signing"]),
                                                           str(row["user_signing"]))  # fmt: skip

    async def keep_cross_signing(self, user_id: str, seeds: CrossSigningSeeds) -> CrossSigningSeeds:
        """Keep the identity's keys, unless it has some already: the stored ones are
        returned (two bridges starting at once agree on one set)."""
        await self._db.execute(
            "INSERT INTO crypto_cross_signing (user_id, master, self_signing, user_signing, created_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id) DO NOTHING",
            text("user_id", user_id), seeds.master, seeds.self_signing, seeds.user_signing, self._now_ms(),
        )  # fmt: skip
        stored = await self.cross_signing(user_id)
        assert stored is not None  # just written, or there before
        return stored
