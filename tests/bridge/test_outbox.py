"""The outbox with a real store (SQLite) and a scripted QQ: RES=3 and lost replies are
retried with the same SEQ and keep the order; a refusal is reported, the rest goes."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from qqbridge.bridge.qq_sessions.outages import QQServer
from qqbridge.bridge.relay.outbox import Outbox
from qqbridge.metrics import Metrics
from qqbridge.qq import errors
from qqbridge.store import Store

OWNER = "@dan:example.org"


class ScriptedQQ:
    def __init__(self, failures: dict[str, list[Exception]]) -> None:
        self.failures = failures  # text → exceptions to raise, one per try
        self.tries: list[tuple[str, int]] = []
        self.delivered: list[str] = []

    async def send_message(self, target: int, text: str, *, seq: int | None = None) -> None:
        self.tries.append((text, seq))
        if self.failures.get(text):
            raise self.failures[text].pop(0)
        self.delivered.append(text)


class RecordingMatrix:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.read: list[str] = []

    async def send(self, room_id: str, content: dict[str, Any], *, txn_id: str, **_: Any) -> str:
        self.sent.append(content)
        return "$notice"

    async def mark_read(self, room_id: str, event_id: str, **_: Any) -> None:
        self.read.append(event_id)



def stand_in(qq: Any) -> Any:
    """The parts of a QQAccount the sender uses: its QQ connection and its server's health."""
    return SimpleNamespace(mxid=OWNER, uin=10001, qq=qq, session_lost=None, server=QQServer("unprobed", None),
                           unreachable_since=None)  # fmt: skip

async def test_order_same_seq_on_retry_and_a_reported_refusal(tmp_path) -> None:
    store = await Store.open(str(tmp_path / "bridge.db"))
    await store.users.upsert(OWNER)
    matrix = RecordingMatrix()
    outbox = Outbox(store, matrix, Metrics(), time_scale=0.001)
    qq = ScriptedQQ({
        "two": [errors.RateLimited("CLTMSG"), errors.OutcomeUnknown("CLTMSG", 0, "timeout")],
        "three": [errors.NullReply("CLTMSG")],
    })  # fmt: skip
    account = stand_in(qq)
    for n, text in enumerate(["one", "two", "three", "four"]):
        await outbox.enqueue(OWNER, "!portal:x", f"$e{n}", 10002, text)
    sender = asyncio.create_task(outbox.run(account))
    try:
        for _ in range(500):
            if len(qq.delivered) == 3 and matrix.sent and len(matrix.read) == 3:
                break
            await asyncio.sleep(0.01)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    assert qq.delivered == ["one", "two", "four"]  # in order; the refused one did not hold the rest
    seqs_of_two = {seq for text, seq in qq.tries if text == "two"}
    assert len([t for t, _ in qq.tries if t == "two"]) == 3 and len(seqs_of_two) == 1  # one SEQ, three tries
    assert matrix.sent[0]["m.relates_to"]["m.in_reply_to"]["event_id"] == "$e2"
    assert "Not delivered" in matrix.sent[0]["body"]
    assert matrix.read == ["$e0", "$e1", "$e3"]
    assert await store.outbox.count_pending(OWNER) == 0
    await store.close()


async def test_pacing_survives_a_restart(tmp_path) -> None:
    """Five pieces sent just before a restart still count: the new sender waits out
    QQ's 5-in-5-s window (here scaled to 1 s) before a sixth, instead of earning RES=3."""
    store = await Store.open(str(tmp_path / "bridge.db"))
    await store.users.upsert(OWNER)
    for n in range(5):  # what the process before the restart sent
        [row] = await store.outbox.enqueue(OWNER, "!portal:x", f"$before{n}", 10002, [f"before {n}"])
        await store.outbox.mark_sent(row.outbox_id)
    last_sent = time.monotonic()
    qq = ScriptedQQ({})
    arrived: list[float] = []
    original = qq.send_message

    async def timed(target: int, text: str, *, seq: int | None = None) -> None:
        arrived.append(time.monotonic())
        await original(target, text, seq=seq)

    qq.send_message = timed  # type: ignore[method-assign]
    outbox = Outbox(store, RecordingMatrix(), Metrics(), time_scale=0.2)  # a new process: nothing in memory
    await outbox.enqueue(OWNER, "!portal:x", "$after", 10002, "after the restart")
    sender = asyncio.create_task(outbox.run(stand_in(qq)))
    try:
        for _ in range(300):
            if qq.delivered:
                break
            await asyncio.sleep(0.01)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    assert qq.delivered == ["after the restart"]
    assert arrived[0] - last_sent >= 0.9  # the 1 s window of the five before, give or take the setup
    await store.close()
