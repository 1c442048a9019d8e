"""The bridge SIGKILLed in the middle of two-way traffic (issue 9, item 5): every message
arrives exactly once, in order per chat, and the restarted bridge earns no QQ penalty
(its pacing is rebuilt from the stored send times). On both stores: for PostgreSQL the
session's bridge process is swapped for one on a fresh PostgreSQL database (same port,
tokens and registration), and swapped back afterwards."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import yaml

from qqbridge.qq import model
from tests.e2e.conftest import QQ_PASSWORDS
from tests.e2e.harness import postgres_database
from tests.e2e.test_control_room import command, control_room

TO_QQ, FROM_QQ = 12, 20


async def portal_texts(stack, person, room: str, sender: str) -> list[str]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{stack.synapse.base_url}/_matrix/client/v3/rooms/{room}/messages",
                                params={"dir": "f", "limit": 500},
                                headers={"Authorization": f"Bearer {person.client.access_token}"})  # fmt: skip
    return [e["content"].get("body", "") for e in answer.json()["chunk"]
            if e["sender"] == sender and e["type"] == "m.room.message"]  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request, stack) -> AsyncIterator[str]:
    """The store the session's bridge runs on during the test."""
    if request.param == "sqlite":
        yield "sqlite"
        return
    async with postgres_database("qqbridge_kill") as url:
        config = yaml.safe_load(stack.config_path.read_text())
        config["database"]["url"] = url
        pg_config = stack.config_path.with_name("config-postgresql.yaml")
        pg_config.write_text(yaml.safe_dump(config, sort_keys=False))
        original = list(stack.bridge.args)
        stack.bridge.args = ["run", "-c", str(pg_config)]
        stack.restart_bridge()
        try:
            yield "postgresql"
        finally:
            assert stack.bridge.stop() == 0
            forget_what_the_other_bridge_changed(stack)
            stack.bridge.args = original
            stack.bridge.start()
            stack.bridge.wait_for_log("qqbridge ready")


def forget_what_the_other_bridge_changed(stack) -> None:
    """The PostgreSQL bridge set puppets' pictures and presence on the shared Synapse;
    the SQLite bridge's memory of them is stale now (two bridges on one homeserver is
    this test's doing, never a deployment's), so it sets them afresh when next needed."""
    with sqlite3.connect(stack.config_path.parent / "bridge.db") as db:
        db.execute("DELETE FROM bridge_state WHERE key LIKE 'avatar:user:%'")
        db.execute("UPDATE puppet SET presence = NULL")


async def test_sigkill_during_two_way_traffic_loses_and_doubles_nothing(stack, user, qq, backend) -> None:
    person = await user("hostile19" if backend == "sqlite" else "hostile9")
    room = await control_room(person, stack)
    await command(person, room, "login 10001", "next message", stack)
    await person.say(room, QQ_PASSWORDS[10001])
    await person.wait_for_text(room, "Logged into QQ as 10001", sender=stack.bot, timeout=60)
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
    await command(person, room, "logout", "Logged out", stack)
