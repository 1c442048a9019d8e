"""Issue 15: every Matrix event handled exactly once, whatever the interleaving of the
inbox's page reads, wakes and finished handlers; and a login's password taken only from
the message after the prompt.

The race, driven here step by step: on PostgreSQL a page read runs on one pooled
connection while a handler marks its event handled on another, so the read may return
an event as pending that its handler has since finished. The store below makes every
read of the inbox behave so: it sees the inbox as it was when the read began, and
returns only after the event in hand has been finished.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import pytest

from qqbridge.bridge.core import Bridge
from qqbridge.config import Config
from qqbridge.store import Store
from tests.bridge.test_core import RecordingMatrix

ROOM = "!control:example.org"
USER = "@bob:example.org"


def message(event_id: str, body: str, sender: str = USER, room: str = ROOM) -> dict[str, Any]:
    return {"event_id": event_id, "type": "m.room.message", "room_id": room, "sender": sender,
            "content": {"msgtype": "m.text", "body": body}}  # fmt: skip


@pytest.fixture
async def bridge(tmp_path: Path):
    config = Config(homeserver={"url": "http://hs", "domain": "example.org"}, permissions={"example.org": "user"})
    store = await Store.open(str(tmp_path / "bridge.db"))
    bridge = Bridge(config, store, RecordingMatrix(), qq_factory=lambda uin: None)
    yield bridge
    await bridge.stop()
    await store.close()


def stale_reads(store: Store, monkeypatch: pytest.MonkeyPatch, *, armed: asyncio.Event, release: asyncio.Event,
                finished: asyncio.Event) -> None:
    """The first read of the inbox (whichever method the core reads it with) that
    begins once `armed` is set takes its rows, then lets the event in hand finish
    (`release`) and returns those rows only after it has (`finished`), as a read on
    another pooled connection may."""
    for name in ("pending", "claim"):
        real = getattr(store.inbox, name, None)
        if real is None:
            continue

        async def read(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            stale = armed.is_set() and not release.is_set()
            rows = await _real(*args, **kwargs)
            if stale:
                release.set()
                await finished.wait()
            return rows

        monkeypatch.setattr(store.inbox, name, read)


async def settled(bridge: Bridge) -> None:
    for _ in range(200):
        if await bridge.store.inbox.count_pending() == 0 and not bridge._tasks - {bridge._inbox_task}:
            await asyncio.sleep(0.05)  # anything started twice would run now
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the inbox did not settle")


async def test_an_event_finished_during_a_page_read_is_not_started_again(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled: collections.Counter[str] = collections.Counter()
    armed, release, finished, in_hand = asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handle(event: Any) -> None:
        handled[event.event_id] += 1
        if event.event_id == "$a" and handled["$a"] == 1:
            in_hand.set()
            await release.wait()  # held until a page read has taken its rows

    real_mark = bridge.store.inbox.mark_handled

    async def mark(event_id: str, error: str | None = None) -> None:
        await real_mark(event_id, error)
        if event_id == "$a":
            finished.set()

    monkeypatch.setattr(bridge, "handle", handle)
    monkeypatch.setattr(bridge.store.inbox, "mark_handled", mark)
    stale_reads(bridge.store, monkeypatch, armed=armed, release=release, finished=finished)
    bridge._inbox_task = asyncio.create_task(bridge._inbox_loop())

    await bridge.store.inbox.record_transaction("t1", [message("$a", "login 10001")])
    bridge.wake()
    await asyncio.wait_for(in_hand.wait(), 5)
    await asyncio.sleep(0.2)  # the loop has read what there was, and waits for a wake
    # A second transaction while $a is in hand: its wake reads the inbox again.
    await bridge.store.inbox.record_transaction("t2", [message("$b", "ping")])
    armed.set()
    bridge.wake()
    await settled(bridge)
    assert handled == {"$a": 1, "$b": 1}


async def test_many_wakes_and_events_in_many_rooms_each_handled_once(bridge: Bridge, monkeypatch: pytest.MonkeyPatch) -> None:
    """A storm: 40 rooms, 10 events each, stored in 100 transactions with a wake after
    each, handlers that yield at random points; every event handled once, each room in order."""
    import random

    rng = random.Random(15)
    seen: dict[str, list[str]] = collections.defaultdict(list)

    async def handle(event: Any) -> None:
        for _ in range(rng.randrange(4)):
            await asyncio.sleep(0)
        seen[event.room_id].append(event.event_id)

    monkeypatch.setattr(bridge, "handle", handle)
    bridge._inbox_task = asyncio.create_task(bridge._inbox_loop())
    events = [message(f"$e{room}-{n}", "x", room=f"!r{room}:example.org") for n in range(10) for room in range(40)]
    for t in range(100):
        await bridge.store.inbox.record_transaction(f"t{t}", events[t * 4 : t * 4 + 4])
        bridge.wake()
        await asyncio.sleep(0)
    await settled(bridge)
    for room in range(40):
        assert seen[f"!r{room}:example.org"] == [f"$e{room}-{n}" for n in range(10)]


class Homeserver(RecordingMatrix):
    """The recording homeserver, with what a login needs: power levels it cannot read
    (so the bot assumes it may redact) and redactions it records."""

    def __init__(self) -> None:
        super().__init__()
        self.redacted: list[str] = []

    async def get_state(self, room_id: str, event_type: str, state_key: str = "") -> dict[str, Any]:
        from qqbridge.matrix.api import MatrixError

        raise MatrixError(404, "M_NOT_FOUND", "no such state", "state")

    async def redact(self, room_id: str, event_id: str, **_: Any) -> None:
        self.redacted.append(event_id)


class RefusingQQ:
    """A QQ server that knows one password (its MD5), and records what it was sent."""

    def __init__(self, uin: int, tried: list[str]) -> None:
        self.uin, self._tried = uin, tried

    async def login(self, md5: str) -> Any:
        from qqbridge.qq import errors

        self._tried.append(md5)
        raise errors.WrongPassword("incorrect password")

    async def aclose(self) -> None: ...


async def test_the_login_command_seen_again_is_never_taken_for_the_password(tmp_path: Path) -> None:
    """The incident of issue 15, at the control room: `login 20012` handed over a second
    time while the login waits must not be taken as the password (nor run, nor
    answered); the message after it is the password, redacted, and QQ's refusal told."""
    from qqbridge.qq import password_md5

    config = Config(homeserver={"url": "http://hs", "domain": "example.org"}, permissions={"example.org": "user"})
    store = await Store.open(str(tmp_path / "bridge.db"))
    tried: list[str] = []
    matrix = Homeserver()
    bridge = Bridge(config, store, matrix, qq_factory=lambda uin: RefusingQQ(uin, tried))
    try:
        await store.users.set_control_room(USER, ROOM)
        await store.inbox.record_transaction("t1", [message("$login", "login 20012"), message("$pw", "pw-20012")])
        login, password = await store.inbox.pending()
        await bridge.handle(login)
        assert "Send your QQ password for 20012" in matrix.sent[-1][1]["body"]
        said = len(matrix.sent)

        await bridge.handle(login)  # again: ignored
        assert len(matrix.sent) == said and matrix.redacted == [] and tried == []
        assert (await store.users.get(USER)).login_state == "awaiting_password"

        await bridge.handle(password)
        assert matrix.redacted == ["$pw"] and tried == [password_md5("pw-20012")]
        answers = [content["body"] for _, content in matrix.sent[said:]]
        assert len(answers) == 1 and "QQ refused the password for 20012" in answers[0]
        assert not any("pw-20012" in body for _, content in matrix.sent for body in [content["body"]])
        assert (await store.users.get(USER)).login_state == "logged_out"
    finally:
        await bridge.stop()
        await store.close()


async def test_an_unknown_command_is_never_repeated_back(bridge: Bridge) -> None:
    """A password typed when no login waits (too late, or twice) runs as a command:
    the answer must not say it."""
    await bridge.store.users.set_control_room(USER, ROOM)
    await bridge.store.inbox.record_transaction("t1", [message("$1", "pw-20012"), message("$2", "lgin 10001")])
    for event in await bridge.store.inbox.pending():
        await bridge.handle(event)
    first, second = (content["body"] for _, content in bridge.matrix.sent)
    assert "not a command" in first and "pw-20012" not in first
    assert "did you mean `login`" in second and "lgin" not in second and "10001" not in second



def start_counting(bridge: Bridge, monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Start the inbox loop with a handler that counts how often each event is handled."""
    handled: collections.Counter[str] = collections.Counter()

    async def handle(event: Any) -> None:
        handled[event.event_id] += 1

    monkeypatch.setattr(bridge, "handle", handle)
    bridge._inbox_task = asyncio.create_task(bridge._inbox_loop())
    return handled

async def test_a_store_that_fails_to_hand_out_events_is_tried_again_and_the_event_handled_once(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inbox loop used to die silently when reading the store raised; it pauses and
    claims again, and the event is handled once."""
    real_claim, failures = bridge.store.inbox.claim, [1]

    async def claim(*args: Any, **kwargs: Any) -> Any:
        if failures:
            failures.pop()
            raise OSError("the database connection was reset")
        return await real_claim(*args, **kwargs)

    monkeypatch.setattr(bridge.store.inbox, "claim", claim)
    handled = start_counting(bridge, monkeypatch)
    await bridge.store.inbox.record_transaction("t1", [message("$a", "ping")])
    bridge.wake()
    await settled(bridge)
    assert not failures and handled == {"$a": 1}
    assert not bridge._inbox_task.done()


async def test_an_event_whose_mark_fails_stays_claimed_and_is_not_handled_again(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording the outcome fails twice: the mark is tried again while the event stays
    claimed, and later wakes never start it a second time."""
    real_mark, failures = bridge.store.inbox.mark_handled, [1, 1]

    async def mark(event_id: str, error: str | None = None) -> None:
        if failures:
            failures.pop()
            bridge.wake()  # a new transaction meanwhile: the inbox is read again
            raise OSError("the database connection was reset")
        await real_mark(event_id, error)

    monkeypatch.setattr(bridge.store.inbox, "mark_handled", mark)
    handled = start_counting(bridge, monkeypatch)
    await bridge.store.inbox.record_transaction("t1", [message("$a", "ping")])
    bridge.wake()
    await settled(bridge)
    assert not failures and handled == {"$a": 1}
    assert await bridge.store.inbox.pending() == []
