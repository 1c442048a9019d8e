"""Cross-signing for each of the bridge's identities (the bot, a puppet): a master key,
a self-signing key that signs the identity's one device, and a user-signing key.

    Device.open ──▶ the keys from the store (made and stored first, the first time)
        ──▶ POST /keys/device_signing/upload?user_id=   (no interactive auth for an
            appservice; the same keys again are a no-op)
        ──▶ the device's keys signed by the self-signing key
            ──▶ POST /keys/signatures/upload?user_id=

A person's client then sees the device as its owner's ("unverified identity" until the
person verifies the contact), not as "a device not verified by its owner". The private
halves (Ed25519 seeds, signedjson) live in `crypto_cross_signing` and nowhere else.
"""

from __future__ import annotations

import copy
from typing import Any

from signedjson.key import (
    decode_signing_key_base64,
    encode_signing_key_base64,
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
)
from signedjson.sign import sign_json
from signedjson.types import SigningKey

from qqbridge.store.crypto import CrossSigningSeeds

USAGES = {"master": "master_key", "self_signing": "self_signing_key", "user_signing": "user_signing_key"}


def generate() -> CrossSigningSeeds:
    return CrossSigningSeeds(*(encode_signing_key_base64(generate_signing_key("new")) for _ in USAGES))


def _key(seed: str) -> SigningKey:
    """A signing key whose key id is its public key, as cross-signing keys are named."""
    key = decode_signing_key_base64("ed25519", "new", seed)
    key.version = encode_verify_key_base64(get_verify_key(key))
    return key


def key_id(seed: str) -> str:
    return f"ed25519:{_key(seed).version}"


def upload_body(user_id: str, seeds: CrossSigningSeeds) -> dict[str, Any]:
    """The body of /keys/device_signing/upload: the three public keys, the self- and
    user-signing keys signed by the master key."""
    master = _key(seeds.master)
    body: dict[str, Any] = {}
    for usage, field in USAGES.items():
        key = _key(getattr(seeds, usage))
        public = {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{key.version}": key.version}}
        body[field] = public if usage == "master" else sign_json(public, user_id, master)
    return body


def sign_device(user_id: str, seeds: CrossSigningSeeds, device_keys: dict[str, Any]) -> dict[str, Any]:
    """The device's keys (as the homeserver has them) with the self-signing key's signature."""
    return dict(sign_json(copy.deepcopy(device_keys), user_id, _key(seeds.self_signing)))
