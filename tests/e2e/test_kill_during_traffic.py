"""The bridge SIGKILLed in the middle of two-way traffic (issue 9, item 5): every message
arrives exactly once, in order per chat, and the restarted bridge earns no QQ penalty
(its pacing is rebuilt from the stored send times)."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from qqbridge.qq import model
from tests.e2e.test_control_room import command

TO_QQ, FROM_QQ = 12, 20


async def portal_texts(stack, person, room: str, sender: str) -> list[str]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{stack.synapse.base_url}/_matrix/client/v3/rooms/{room}/messages",
                                params={"dir": "f", "limit": 500},
                                headers={"Authorization": f"Bearer {person.client.access_token}"})  # fmt: skip
    return [e["content"].get("body", "") for e in answer.json()["chunk"]
            if e["sender"] == sender and e["type"] == "m.room.message"]  # fmt: skip


async def test_sigkill_during_two_way_traffic_loses_and_doubles_nothing(stack, bridged, qq) -> None:
    person, room = await bridged("hostile19", 10001)
    bob = await qq(10002)
    puppet = "@_qq_10002:localhost"
    await command(person, room, "open 10002", "Your portal", stack)
    portal = await person.accept_invite(puppet)
    log_start = len(stack.bridge.log())

    async def from_qq() -> None:
        for n in range(FROM_QQ):
            await bob.send_message(10001, f"q{n}")
            await asyncio.sleep(0.1)

    async def to_qq() -> None:
        for n in range(TO_QQ):
            await person.say(portal, f"m{n}")
            await asyncio.sleep(0.1)

    traffic = asyncio.gather(from_qq(), to_qq())
    await asyncio.sleep(0.6)  # some of each way is in flight
    assert stack.bridge.stop(signal.SIGKILL) == -signal.SIGKILL
    stack.bridge.start()
    await traffic  # Synapse and QQ keep taking what the people send meanwhile
    stack.bridge.wait_for_log("qqbridge ready")

    received: list[str] = []
    deadline = time.monotonic() + 30
    while len(received) < TO_QQ:
        assert time.monotonic() < deadline, received
        received += [e.text for e in await bob.drain_messages() if isinstance(e, model.Message)]
        await asyncio.sleep(0.2)
    shown: list[str] = []
    while len(shown) < FROM_QQ:
        assert time.monotonic() < deadline, shown
        shown = await portal_texts(stack, person, portal, puppet)
        await asyncio.sleep(0.3)
    await asyncio.sleep(1.5)  # anything doubled would come now
    received += [e.text for e in await bob.drain_messages() if isinstance(e, model.Message)]
    assert received == [f"m{n}" for n in range(TO_QQ)]
    assert await portal_texts(stack, person, portal, puppet) == [f"q{n}" for n in range(FROM_QQ)]
    assert "QQ said too fast" not in stack.bridge.log()[log_start:]  # no penalty earned across the kill
