"""The homeserver goes away while a QQ friend writes (issue 9): Synapse stopped for
longer than the bridge's outage threshold (60 s) and started again, and Synapse hung
(SIGSTOP) for a short while. Every message arrives in the portal exactly once and in
order, the first within 2 s of Synapse answering again; a long outage is told once in
the bridge's log when it passes a minute and once when it ends, and /ready and
/metrics show it meanwhile; a short one says nothing at warning level.

Synapse is the session's own: stopped and started on the same port and database (the
users, rooms and tokens survive), or stopped and continued; the later tests use it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import time
from typing import Any

import httpx
from nio import RoomMessageText

from qqbridge.matrix.homeserver_health import OUTAGE_AFTER
from qqbridge.qq import password_md5
from tests.e2e.conftest import QQ_PASSWORDS, received
from tests.e2e.harness import MatrixUser
from tests.e2e.test_observability import scrape, value

PUPPET = "@_qq_10002:localhost"
UNREACHABLE = "homeserver unreachable since"
BACK = "homeserver back after"


async def reconnected(person: MatrixUser, timeout: float = 15) -> None:
    """Sync until it works: the client's pooled connection may be the old Synapse's."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await person.sync()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def arrivals(person: MatrixUser, room: str, prefix: str) -> list[Any]:
    return [e for e in person.events(room) if isinstance(e, RoomMessageText) and e.sender == PUPPET
            and e.body.startswith(prefix)]  # fmt: skip


async def wait_for_log(stack, needle: str, since: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while needle not in stack.bridge.log()[since:]:
        assert time.monotonic() < deadline, f"the bridge did not log {needle!r} within {timeout} s"
        await asyncio.sleep(0.25)
    return time.monotonic()


def log_lines(stack, since: int, needle: str) -> list[str]:
    return [line for line in stack.bridge.log()[since:].splitlines() if needle in line]


async def test_synapse_stopped_for_over_a_minute(stack, bridged, qq) -> None:
    dan, _ = await bridged("hsfault1", 10001)
    bob = await qq(10002)
    await bob.send_message(10001, "before the outage")
    portal = await dan.accept_invite(PUPPET)
    await dan.wait_for_text(portal, "before the outage", sender=PUPPET)
    log_from = len(stack.bridge.log())
    outages_before = value(scrape(stack), "qqbridge_homeserver_outages_total")

    await stack.synapse.stop()
    stopped, stopped_at = time.monotonic(), time.time()
    sent = [f"outage 1 #{n}" for n in range(1, 6)]
    try:
        for text in sent:
            await bob.send_message(10001, text)
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)  # fetched, stored; the relay met the closed port, the probe too
        ready = httpx.get(f"{stack.bridge_url}/ready")
        assert ready.status_code == 503 and any("homeserver does not answer" in p for p in ready.json()["problems"])
        assert value(scrape(stack), "qqbridge_homeserver_up") == 0
        # Down until the bridge has told the outage (a minute after its first failed request).
        await wait_for_log(stack, UNREACHABLE, log_from, OUTAGE_AFTER + 10)
        down_for = time.monotonic() - stopped
    finally:
        await stack.synapse.start()
    back = time.time()

    await reconnected(dan)
    await dan.wait_for(lambda: len(arrivals(dan, portal, "outage 1 #")) >= len(sent), 20, "the outage's messages")
    await asyncio.sleep(1)
    await dan.sync()
    got = arrivals(dan, portal, "outage 1 #")
    assert [e.body for e in got] == sent  # every one, once, in order
    first = got[0].server_timestamp / 1000 - back
    print(
        f"\nSynapse down {down_for:.1f} s; first message {first:.2f} s after it answered again, "
        f"last {got[-1].server_timestamp / 1000 - back:.2f} s"
    )
    assert first <= 2.0, f"the first message came {first:.2f} s after Synapse answered again"

    await wait_for_log(stack, BACK, log_from, 10)
    assert len(log_lines(stack, log_from, UNREACHABLE)) == 1, log_lines(stack, log_from, UNREACHABLE)
    assert len(log_lines(stack, log_from, BACK)) == 1
    told = log_lines(stack, log_from, UNREACHABLE)[0]
    waiting = re.search(r"\b(\d+) QQ messages and events wait\b", told)
    assert waiting and int(waiting[1]) >= len(sent), told  # the messages, and a status change or two
    probes = len(log_lines(stack, log_from, "homeserver probe failed"))
    down = back - stopped_at
    print(f"probes while down: {probes} in {down:.1f} s ({probes / down:.2f}/s)")
    assert probes <= down + 1  # once a second, for the whole bridge
    after = scrape(stack)
    assert value(after, "qqbridge_homeserver_up") == 1
    assert value(after, "qqbridge_homeserver_outages_total") == outages_before + 1
    assert httpx.get(f"{stack.bridge_url}/ready").status_code == 200

    # Both ways again, at once (Bob's own QQ session expired meanwhile: 15 s at this time scale).
    await bob.login(password_md5(QQ_PASSWORDS[10002]))
    await dan.say(portal, "after the outage")
    assert [m.text for m in await received(bob, 1)] == ["after the outage"]


async def test_synapse_hung_briefly(stack, bridged, qq) -> None:
    """SIGSTOP for 15 s (under the threshold): the relay's request hangs, the watcher
    notices and probes; at SIGCONT everything goes at once, and nothing is said at
    warning level about a hang that short."""
    dan, _ = await bridged("hsfault2", 10001)
    bob = await qq(10002)
    await bob.send_message(10001, "before the hang")
    portal = await dan.accept_invite(PUPPET)
    await dan.wait_for_text(portal, "before the hang", sender=PUPPET)
    log_from = len(stack.bridge.log())
    pid = stack.synapse.pid
    assert pid is not None

    os.kill(pid, signal.SIGSTOP)
    try:
        sent = [f"hang 1 #{n}" for n in range(1, 6)]
        for text in sent:
            await bob.send_message(10001, text)
            await asyncio.sleep(0.2)
        await asyncio.sleep(14)
    finally:
        os.kill(pid, signal.SIGCONT)
    back = time.time()

    await dan.wait_for(lambda: len(arrivals(dan, portal, "hang 1 #")) >= len(sent), 20, "the hang's messages")
    await asyncio.sleep(1)
    await dan.sync()
    got = arrivals(dan, portal, "hang 1 #")
    assert [e.body for e in got] == sent
    first = got[0].server_timestamp / 1000 - back
    print(
        f"\nSynapse hung 15 s; first message {first:.2f} s after SIGCONT, "
        f"last {got[-1].server_timestamp / 1000 - back:.2f} s"
    )
    assert first <= 2.0
    log = stack.bridge.log()[log_from:]
    assert UNREACHABLE not in log and BACK not in log


def stored(stack, prefix: str) -> int:
    """QQ messages the bridge has stored (pending or not) whose text starts with `prefix`."""
    db = sqlite3.connect(f"file:{stack.config_path.parent / 'bridge.db'}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM qq_inbound WHERE content LIKE ?", (prefix + "%",)).fetchone()[0]
    finally:
        db.close()


async def test_bridge_killed_while_synapse_is_down(stack, bridged, qq) -> None:
    """Issue 9, item 2: QQ messages stored before a crash are shown as soon as the
    homeserver answers. Synapse stopped, a QQ friend writes, the bridge stores it and
    is SIGKILLed; the new bridge waits for Synapse; Synapse comes back: each message
    arrives once, in order, within seconds of Synapse answering."""
    dan, _ = await bridged("hsfault3", 10001)
    bob = await qq(10002)
    await bob.send_message(10001, "before the crash")
    portal = await dan.accept_invite(PUPPET)
    await dan.wait_for_text(portal, "before the crash", sender=PUPPET)

    await stack.synapse.stop()
    try:
        sent = [f"crash 1 #{n}" for n in range(1, 6)]
        for text in sent:
            await bob.send_message(10001, text)
        deadline = time.monotonic() + 15
        while stored(stack, "crash 1 #") < len(sent):
            assert time.monotonic() < deadline, "the bridge did not store the messages"
            await asyncio.sleep(0.1)
        assert stack.bridge.stop(signal.SIGKILL) == -signal.SIGKILL
        stack.bridge.start()
        await asyncio.to_thread(stack.bridge.wait_for_log, "the homeserver does not answer yet")
    finally:
        await stack.synapse.start()
    back = time.time()
    await asyncio.to_thread(stack.bridge.wait_for_log, "qqbridge ready")

    await reconnected(dan)
    await dan.wait_for(lambda: len(arrivals(dan, portal, "crash 1 #")) >= len(sent), 20, "the stored messages")
    await asyncio.sleep(1)
    await dan.sync()
    got = arrivals(dan, portal, "crash 1 #")
    assert [e.body for e in got] == sent
    first = got[0].server_timestamp / 1000 - back
    print(f"\nbridge SIGKILLed, restarted while Synapse was down: first stored message {first:.2f} s after Synapse "
          f"answered again, last {got[-1].server_timestamp / 1000 - back:.2f} s")
    assert first <= 2.0
