"""The bridge core with a real store (SQLite) and a recording homeserver: a message the
bridge fails on is answered in the room, never dropped silently; echoes are ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qqbridge.bridge.core import Bridge
from qqbridge.config import Config
from qqbridge.store import Store


class RecordingMatrix:
    bot_mxid = "@qqbridge:example.org"

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self, room_id: str, content: dict[str, Any], *, txn_id: str, **_: Any) -> str:
        self.sent.append((room_id, content))
        return f"$sent{len(self.sent)}"

    async def ensure_registered(self, mxid: str) -> None: ...


@pytest.fixture
async def bridge(tmp_path: Path):
    config = Config(homeserver={"url": "http://hs", "domain": "example.org"}, permissions={"example.org": "user"})
    store = await Store.open(str(tmp_path / "bridge.db"))
    yield Bridge(config, store, RecordingMatrix(), qq_factory=lambda uin: None)
    await store.close()


async def test_a_message_the_bridge_fails_on_is_answered(bridge: Bridge) -> None:
    event = {"event_id": "$m1", "type": "m.room.message", "room_id": "!r:example.org",
             "sender": "@bob:example.org", "content": {"msgtype": "m.text", "body": "help"}}  # fmt: skip
    await bridge.store.record_transaction("t1", [event])
    [stored] = await bridge.store.pending_events()

    async def broken(event: Any) -> None:
        raise RuntimeError("disk on fire")

    bridge.handle = broken  # type: ignore[method-assign]
    await bridge._handle_in_order(stored)
    [(room, notice)] = bridge.matrix.sent
    assert room == "!r:example.org" and "disk on fire" in notice["body"]
    assert notice["m.relates_to"]["m.in_reply_to"]["event_id"] == "$m1"
    assert await bridge.store.pending_events() == []  # marked handled (failed), not retried forever


async def test_echoes_of_the_bot_and_puppets_are_ignored(bridge: Bridge) -> None:
    # In bob's control room, anyone else's message would get "Only bob can give commands".
    await bridge.store.set_control_room("@bob:example.org", "!r:example.org")
    for sender in ("@qqbridge:example.org", "@_qq_10002:example.org"):
        event = {"event_id": f"$e-{sender}", "type": "m.room.message", "room_id": "!r:example.org",
                 "sender": sender, "content": {"msgtype": "m.text", "body": "help"}}  # fmt: skip
        await bridge.store.record_transaction(f"t-{sender}", [event])
    for stored in await bridge.store.pending_events():
        await bridge._handle_in_order(stored)
    assert bridge.matrix.sent == []
