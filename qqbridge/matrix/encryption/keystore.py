"""nio's key store for one device, kept in the bridge's own database.

nio's Olm machine calls its store synchronously (`save_session`, `load_account`, ...)
and reads everything at start. The bridge's database is asynchronous, so:

    KeyStore.open(crypto_store, user_id) ── reads the device's rows (await) ──▶ memory
    Olm(...) ──save_*()──▶ memory + the change noted
    await keystore.flush() ──▶ CryptoStore.save: the changes in one transaction

`flush` runs after every Olm operation and before anything it produced (a key upload,
a room key shared, an encrypted event) leaves the bridge, so a crash never leaves a
ratchet the homeserver has seen and the database has not.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nio.crypto import DeviceStore, GroupSessionStore, OlmDevice, SessionStore, TrustState
from nio.crypto.sessions import InboundGroupSession, OlmAccount, Session

from qqbridge.store.crypto import AccountRow, CryptoStore, DeviceRow, KeyChanges, OlmSessionRow, RoomKeyRow

# Pickles are protected by the database's own access rights (0600 for SQLite), as the
# tokens in the config are; this key only makes them vodozemac's pickles.
PICKLE_KEY = "qqbridge"


class KeyStore:
    def __init__(self, crypto: CryptoStore, user_id: str, device_id: str) -> None:
        self._crypto, self.user_id, self.device_id = crypto, user_id, device_id
        self._account: AccountRow | None = None
        self._sessions: list[OlmSessionRow] = []
        self._room_keys: list[RoomKeyRow] = []
        self._devices: dict[tuple[str, str], DeviceRow] = {}
        self._changes = KeyChanges()

    @classmethod
    async def open(cls, crypto: CryptoStore, user_id: str, device_id: str) -> KeyStore:
        """The device's keys as stored; a device id stored before wins over `device_id`."""
        state = await crypto.load(user_id)
        store = cls(crypto, user_id, state.account.device_id if state.account else device_id)
        store._account = state.account
        store._sessions = state.sessions
        store._room_keys = state.room_keys
        store._devices = {(row.owner, row.device_id): row for row in state.devices}
        return store

    async def flush(self) -> None:
        changes, self._changes = self._changes, KeyChanges()
        try:
            await self._crypto.save(self.user_id, changes)
        except BaseException:
            self._merge_back(changes)
            raise

    def _merge_back(self, changes: KeyChanges) -> None:
        """A failed save: its changes are kept, to go with the next one."""
        pending = self._changes
        self._changes = KeyChanges(
            account=pending.account or changes.account,
            sessions=changes.sessions + pending.sessions,
            room_keys=changes.room_keys + pending.room_keys,
            devices=changes.devices + pending.devices,
        )

    @property
    def dirty(self) -> bool:
        return bool(self._changes)

    # ---- what nio's Olm calls ----------------------------------------------------------

    def load_account(self) -> OlmAccount | None:
        if self._account is None:
            return None
        return OlmAccount.from_pickle(self._account.pickle.encode(), PICKLE_KEY, self._account.shared)

    def save_account(self, account: OlmAccount) -> None:
        self._account = AccountRow(self.device_id, account.pickle(PICKLE_KEY).decode(), bool(account.shared))
        self._changes.account = self._account

    def load_sessions(self) -> SessionStore:
        sessions = SessionStore()
        for row in self._sessions:
            created = datetime.fromtimestamp(row.created_at)
            sessions.add(row.sender_key, Session.from_pickle(row.pickle.encode(), created, PICKLE_KEY))
        return sessions

    def save_session(self, sender_key: str, session: Session) -> None:
        row = OlmSessionRow(sender_key, session.id, session.pickle(PICKLE_KEY).decode(),
                            session.creation_time.timestamp())  # fmt: skip
        self._changes.sessions.append(row)

    def load_inbound_group_sessions(self) -> GroupSessionStore:
        keys = GroupSessionStore()
        for row in self._room_keys:
            keys.add(InboundGroupSession.from_pickle(
                row.pickle.encode(), row.signing_key, row.sender_key, row.room_id, PICKLE_KEY,
                list(row.forwarding_chain),
            ))  # fmt: skip
        return keys

    def save_inbound_group_session(self, session: InboundGroupSession) -> None:
        row = RoomKeyRow(session.room_id, session.sender_key, session.id, session.ed25519,
                         tuple(session.forwarding_chain), session.pickle(PICKLE_KEY).decode())  # fmt: skip
        self._changes.room_keys.append(row)

    def load_device_keys(self) -> DeviceStore:
        devices = DeviceStore()
        for row in self._devices.values():
            devices.add(OlmDevice(row.owner, row.device_id, dict(row.keys), row.display_name or "", row.deleted,
                                  TrustState[row.trust]))  # fmt: skip
        return devices

    def save_device_keys(self, changed: dict[str, dict[str, OlmDevice]]) -> None:
        for devices in changed.values():
            for device in devices.values():
                self._note_device(device, self._trust(device))

    def _note_device(self, device: OlmDevice, trust: TrustState) -> None:
        row = DeviceRow(device.user_id, device.device_id, dict(device.keys), device.display_name or None,
                        bool(device.deleted), trust.name)  # fmt: skip
        self._devices[(row.owner, row.device_id)] = row
        self._changes.devices.append(row)

    # Outgoing key requests are kept in memory: after a restart a missing key is asked for again.
    def load_outgoing_key_requests(self) -> dict[str, Any]:
        return {}

    def add_outgoing_key_request(self, request: Any) -> None:
        pass

    def remove_outgoing_key_request(self, request: Any) -> None:
        pass

    # ---- trust: the bridge shares keys with every device of the people in its rooms,
    # as Element does by default; these keep what nio asks to set --------------------------

    def _trust(self, device: OlmDevice) -> TrustState:
        row = self._devices.get((device.user_id, device.device_id))
        return TrustState[row.trust] if row is not None else TrustState.unset

    def _set_trust(self, device: OlmDevice, trust: TrustState) -> bool:
        changed: bool = self._trust(device) is not trust
        device.trust_state = trust
        self._note_device(device, trust)
        return changed

    def verify_device(self, device: OlmDevice) -> bool:
        return self._set_trust(device, TrustState.verified)

    def unverify_device(self, device: OlmDevice) -> bool:
        return self._set_trust(device, TrustState.unset)

    def blacklist_device(self, device: OlmDevice) -> bool:
        return self._set_trust(device, TrustState.blacklisted)

    def unblacklist_device(self, device: OlmDevice) -> bool:
        return self._set_trust(device, TrustState.unset)

    def ignore_device(self, device: OlmDevice) -> bool:
        return self._set_trust(device, TrustState.ignored)

    def unignore_device(self, device: OlmDevice) -> bool:
        return self._set_trust(device, TrustState.unset)

    def ignore_devices(self, devices: list[OlmDevice]) -> None:
        for device in devices:
            self.ignore_device(device)

    def is_device_verified(self, device: OlmDevice) -> bool:
        return self._trust(device) is TrustState.verified

    def is_device_blacklisted(self, device: OlmDevice) -> bool:
        return self._trust(device) is TrustState.blacklisted

    def is_device_ignored(self, device: OlmDevice) -> bool:
        return self._trust(device) is TrustState.ignored
