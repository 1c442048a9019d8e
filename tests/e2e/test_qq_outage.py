"""The QQ server goes out under the whole stack (issue 9, the QQ side): what the person
sees in Element, and how soon the bridge is back.

At the stack's time_scale 0.05, "a minute" is 3 s and "10 minutes" 30 s; a message
waits "30 s" (1.5 s) before it is told "waiting for QQ…". The QQ server is the
simulator process: stopped and started again (every session and queue gone), or
hung with SIGSTOP (requests accepted, never answered) and woken with SIGCONT.
"""

from __future__ import annotations

import asyncio
import signal
import time

from qqbridge.qq import model, password_md5
from tests.e2e.conftest import QQ_PASSWORDS, received
from tests.e2e.test_control_room import command

OUT = "QQ is out of reach for 10001 since"
BACK = "QQ is back for 10001"
BOB = "@_qq_10002:localhost"


async def open_portal(person, bob) -> str:
    await bob.send_message(10001, "before the outage")
    portal = await person.accept_invite(BOB)
    await person.wait_for_text(portal, "before the outage", sender=BOB)
    return portal


async def count(person, room: str, needle: str) -> int:
    await person.sync()
    return sum(needle in text for text in person.texts(room))


async def test_a_qq_server_stopped_for_a_minute_is_told_once_each_way_and_polling_resumes_at_once(
    stack, bridged, qq
) -> None:
    person, control = await bridged("fault1", 10001)
    bob = await qq(10002)
    portal = await open_portal(person, bob)

    stopping = time.monotonic()
    assert stack.sim.stop() == 0
    typed = await person.say(portal, "typed while QQ was out")
    waiting = await person.wait_for_text(portal, "Waiting for QQ", sender=stack.bot, timeout=10)
    notice = next(e for e in person.events(portal) if getattr(e, "body", None) == waiting)
    assert notice.source["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == typed
    said = await person.wait_for_text(control, OUT, sender=stack.bot, timeout=10)
    # After "a minute", counted from the first request that failed (begun as the server stopped).
    assert time.monotonic() - stopping >= 2.5 and "the QQ server cannot be reached" in said, said
    assert "will be sent" in said
    ping = await command(person, control, "ping", "QQ 10001: unreachable since", stack)
    assert "last good poll:" in ping
    await asyncio.sleep(1.5)  # still out: nothing more is said

    stack.sim.start()
    stack.sim.wait_for_log("listening on")
    back = time.monotonic()
    await bob.login(password_md5(QQ_PASSWORDS[10002]))  # every session went with the old process
    await bob.send_message(10001, "first after the return")
    await person.wait_for_text(portal, "first after the return", sender=BOB, timeout=10)
    resumed = time.monotonic() - back
    print(f"\nQQ → Matrix {resumed:.2f} s after the QQ server's return")
    assert resumed <= 2.0, resumed

    [got] = await received(bob, 1)  # the message typed during the outage, exactly once
    assert got == model.Message(10001, "typed while QQ was out")
    print(f"Matrix → QQ {time.monotonic() - back:.2f} s after the QQ server's return")
    await person.wait_for(lambda: (typed, stack.bot) in person.receipts, 10, "the read receipt once sent")
    told_back = await person.wait_for_text(control, BACK, sender=stack.bot, timeout=10)
    assert "Nothing was lost" in told_back and "ended your session" in told_back
    await command(person, control, "ping", "QQ 10001: online", stack)

    await asyncio.sleep(1)
    assert await count(person, control, OUT) == 1 and await count(person, control, BACK) == 1
    assert await count(person, portal, "Waiting for QQ") == 1
    assert [m for m in await bob.drain_messages() if isinstance(m, model.Message)] == []  # not twice


async def test_a_hung_qq_server_is_told_and_a_second_outage_soon_after_is_not(stack, bridged, qq) -> None:
    person, control = await bridged("fault2", 10001)
    bob = await qq(10002)
    portal = await open_portal(person, bob)

    stack.sim.proc.send_signal(signal.SIGSTOP)  # connections are accepted and never answered
    try:
        typed = await person.say(portal, "typed while QQ hung")
        said = await person.wait_for_text(control, OUT, sender=stack.bot, timeout=15)
        assert "does not answer" in said
        await person.wait_for_text(portal, "Waiting for QQ", sender=stack.bot, timeout=10)
        await command(person, control, "ping", "QQ 10001: unreachable since", stack)
    finally:
        stack.sim.proc.send_signal(signal.SIGCONT)
    back = time.monotonic()
    await bob.send_message(10001, "awake again")
    await person.wait_for_text(portal, "awake again", sender=BOB, timeout=10)
    resumed = time.monotonic() - back
    print(f"\nQQ → Matrix {resumed:.2f} s after SIGCONT")
    assert resumed <= 2.0, resumed
    [got] = await received(bob, 1)
    assert got.text == "typed while QQ hung"
    await person.wait_for(lambda: (typed, stack.bot) in person.receipts, 10, "the read receipt once sent")
    await person.wait_for_text(control, BACK, sender=stack.bot, timeout=10)

    # Out again for longer than "a minute", within "10 minutes" of the first notice: a
    # flapping server is not told again; the bridge still recovers as fast.
    stack.sim.proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(7)
    finally:
        stack.sim.proc.send_signal(signal.SIGCONT)
    back = time.monotonic()
    await bob.send_message(10001, "awake once more")
    await person.wait_for_text(portal, "awake once more", sender=BOB, timeout=10)
    assert time.monotonic() - back <= 2.0
    await asyncio.sleep(1)
    assert await count(person, control, OUT) == 1 and await count(person, control, BACK) == 1
