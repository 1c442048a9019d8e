"""The bridge core with a real store (SQLite) and a recording homeserver: a message the
bridge fails on is answered in the room, never dropped silently, and one that hangs is
set aside at the deadline; echoes are ignored; QQ messages stored before a restart are
shown at the start even while QQ is down."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from qqbridge.bridge import core
from qqbridge.bridge.core import Bridge
from qqbridge.config import Config
from qqbridge.qq import QQClient
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
    await bridge.store.inbox.record_transaction("t1", [event])
    [stored] = await bridge.store.inbox.pending()

    async def broken(event: Any) -> None:
        raise RuntimeError("disk on fire")

    bridge.handle = broken  # type: ignore[method-assign]
    await bridge._handle_in_order(stored)
    [(room, notice)] = bridge.matrix.sent
    assert room == "!r:example.org" and "disk on fire" in notice["body"]
    assert notice["m.relates_to"]["m.in_reply_to"]["event_id"] == "$m1"
    assert await bridge.store.inbox.pending() == []  # marked handled (failed), not retried forever


async def test_echoes_of_the_bot_and_puppets_are_ignored(bridge: Bridge) -> None:
    # In bob's control room, anyone else's message would get "Only bob can give commands".
    await bridge.store.users.set_control_room("@bob:example.org", "!r:example.org")
    for sender in ("@qqbridge:example.org", "@_qq_10002:example.org"):
        event = {"event_id": f"$e-{sender}", "type": "m.room.message", "room_id": "!r:example.org",
                 "sender": sender, "content": {"msgtype": "m.text", "body": "help"}}  # fmt: skip
        await bridge.store.inbox.record_transaction(f"t-{sender}", [event])
    for stored in await bridge.store.inbox.pending():
        await bridge._handle_in_order(stored)
    assert bridge.matrix.sent == []


async def test_an_event_that_hangs_is_set_aside_at_the_deadline_and_its_room_goes_on(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 8: one event must never hold its room (or anyone) for ever. A login waits on
    # QQ, so the deadline is long (180 s); here it is 0.3 s.
    monkeypatch.setattr(core, "HANDLING_DEADLINE", 0.3)
    events = [{"event_id": eid, "type": "m.room.message", "room_id": "!r:example.org", "sender": "@bob:example.org",
               "content": {"msgtype": "m.text", "body": body}} for eid, body in (("$hang", "stuck"), ("$next", "help"))]  # fmt: skip
    await bridge.store.inbox.record_transaction("t1", events)
    handled: list[str] = []

    async def hangs_once(event: Any) -> None:
        if event.event_id == "$hang":
            await asyncio.sleep(3600)
        handled.append(event.event_id)

    bridge.handle = hangs_once  # type: ignore[method-assign]
    stored = await bridge.store.inbox.pending()
    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(bridge._handle_in_order(event) for event in stored)), 5)
    assert time.monotonic() - started < 2
    assert handled == ["$next"]  # the room's next event went once the stuck one was set aside
    [(room, notice)] = bridge.matrix.sent
    assert "took more than" in notice["body"] and "not acted on or sent" in notice["body"]
    assert notice["m.relates_to"]["m.in_reply_to"]["event_id"] == "$hang"
    assert await bridge.store.inbox.pending() == []  # set aside, not retried at the next wake


class AnsweringMatrix(RecordingMatrix):
    """Answers every other homeserver call the start makes (presence, pictures, names)."""

    def __getattr__(self, name: str) -> Any:
        async def answer(*args: Any, **kwargs: Any) -> None: ...

        return answer


async def test_qq_messages_stored_before_a_restart_are_shown_at_start_while_qq_is_down(tmp_path: Path) -> None:
    # Issue 9: what the bridge fetched from QQ and stored before a restart is shown in
    # Matrix at the start, whether or not QQ answers then (nothing listens on port 9).
    config = Config(homeserver={"url": "http://hs", "domain": "example.org"}, permissions={"example.org": "user"},
                    qq={"server_url": "http://127.0.0.1:9/", "timeout": 2.0})  # fmt: skip
    store = await Store.open(str(tmp_path / "bridge.db"))
    owner = "@bob:example.org"
    await store.users.upsert(owner)
    await store.users.complete_login(owner, 10001, "0" * 32)
    await store.portals.claim(owner, 10002, stranger=False)
    await store.portals.set_room(owner, 10002, "!portal:example.org")
    await store.inbound.add_batch(owner, 10001, 7, [(9, 10002, "sent before the restart")])
    matrix = AnsweringMatrix()
    bridge = Bridge(config, store, matrix, qq_factory=lambda uin: QQClient(config.qq.server_url, uin, timeout=2.0))
    try:
        await bridge.start()
        for _ in range(100):
            if matrix.sent:
                break
            await asyncio.sleep(0.05)
        assert [(room, content["body"]) for room, content in matrix.sent] == [
            ("!portal:example.org", "sent before the restart")
        ]
        assert await store.inbound.count_pending(owner) == 0
        assert bridge.accounts.get(owner).state.value in ("connecting", "unreachable")  # QQ is down indeed
    finally:
        await bridge.stop()
        await store.close()
