"""What end-to-bridge encryption costs the bridge per message, without the network.

Two nio Olm machines in this process, with the bridge's own key store
(`matrix/encryption/keystore.py`) on a SQLite file as `qqbridge run` has it:

- QQ → Matrix: a puppet's device encrypts --messages texts into a room (Megolm
  `group_encrypt`, then `KeyStore.flush`, one transaction, as `Device.encrypt` does for
  each message);
- Matrix → QQ: the bot's device decrypts as many (`Device.decrypt`).

The first room key is shared before the timing; nio rotates it every 100 messages, and
those shares (a to-device message each, received by the bot) are in the encrypt time. Prints CPU microseconds per message for each way and the wall time of the
flushes; compare with the relay's cost per message in docs/performance.md.

    .venv/bin/python bench/encryption_cost.py [--messages 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nio.crypto import Olm  # noqa: E402
from nio.events import MegolmEvent, ToDeviceEvent  # noqa: E402
from nio.responses import KeysClaimResponse, KeysQueryResponse, KeysUploadResponse  # noqa: E402

from qqbridge.matrix.encryption.keystore import KeyStore  # noqa: E402
from qqbridge.store import Store  # noqa: E402

# nio never shares a room key with a device of the sender's own id, whoever owns it: the
# bot's device gets another id here, as a person's device has.
PUPPET, BOT, ROOM = "@_qq_10002:bench", "@qqbridge:bench", "!portal:bench"


def published(olm: Olm) -> dict:
    body = olm.share_keys()
    olm.handle_response(KeysUploadResponse.from_dict({"one_time_key_counts": {"signed_curve25519": 50}}))
    return body


async def main(messages: int) -> None:
    with tempfile.TemporaryDirectory() as work:
        store = await Store.open(f"sqlite:///{work}/bench.db")
        puppet_keys = await KeyStore.open(store.crypto, PUPPET, "QQBRIDGE")
        bot_keys = await KeyStore.open(store.crypto, BOT, "BOTDEVICE")
        puppet, bot = Olm(PUPPET, "QQBRIDGE", puppet_keys), Olm(BOT, "BOTDEVICE", bot_keys)
        bot_upload = published(bot)
        published(puppet)
        puppet.handle_response(KeysQueryResponse.from_dict(
            {"device_keys": {BOT: {"BOTDEVICE": bot_upload["device_keys"]}}, "failures": {}}))  # fmt: skip
        key_id, one_time_key = next(iter(bot_upload["one_time_keys"].items()))
        puppet.handle_response(KeysClaimResponse.from_dict(
            {"one_time_keys": {BOT: {"BOTDEVICE": {key_id: one_time_key}}}, "failures": {}}))  # fmt: skip

        async def share() -> None:
            """A room key to the bot's device (nio rotates it every 100 messages)."""
            current = puppet.outbound_group_sessions.get(ROOM)
            if current is not None and current.shared:  # expired: as Device._share_room_key does
                puppet.outbound_group_sessions.pop(ROOM)
            _, to_device = puppet.share_group_session(ROOM, [BOT], ignore_unverified_devices=True)
            puppet.outbound_group_sessions[ROOM].shared = True
            bot.handle_to_device_event(ToDeviceEvent.parse_event(
                {"sender": PUPPET, "type": "m.room.encrypted", "content": to_device["messages"][BOT]["BOTDEVICE"]}))  # fmt: skip
            await puppet_keys.flush()
            await bot_keys.flush()

        await share()
        shares = 0

        encrypted = []
        cpu, wall = time.process_time(), time.perf_counter()
        for n in range(messages):
            content = {"msgtype": "m.text", "body": f"message {n} from QQ, about as long as a chat line is"}
            if puppet.should_share_group_session(ROOM):
                await share()
                shares += 1
            encrypted.append(puppet.group_encrypt(ROOM, {"type": "m.room.message", "content": content}))
            await puppet_keys.flush()
        encrypt_cpu, encrypt_wall = time.process_time() - cpu, time.perf_counter() - wall

        cpu, wall = time.process_time(), time.perf_counter()
        for n, content in enumerate(encrypted):
            event = MegolmEvent.from_dict({"event_id": f"${n}", "sender": PUPPET, "origin_server_ts": n,
                                           "room_id": ROOM, "type": "m.room.encrypted", "content": content})  # fmt: skip
            plain = bot.decrypt_megolm_event(event, ROOM)
            assert plain.body.startswith(f"message {n} ")
        decrypt_cpu, decrypt_wall = time.process_time() - cpu, time.perf_counter() - wall
        await store.close()

    print(f"{messages} messages, SQLite key store, {shares} room keys shared again on the way (each 100 messages)")
    print(f"{'encrypt + flush (QQ -> Matrix)':34} {encrypt_cpu / messages * 1e6:8.0f} us CPU  "
          f"{encrypt_wall / messages * 1e6:8.0f} us wall per message")
    print(f"{'decrypt (Matrix -> QQ)':34} {decrypt_cpu / messages * 1e6:8.0f} us CPU  "
          f"{decrypt_wall / messages * 1e6:8.0f} us wall per message")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    asyncio.run(main(parser.parse_args().messages))
