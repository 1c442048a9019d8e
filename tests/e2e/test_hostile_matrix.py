"""Hostile and careless input from the Matrix side (issue 8, items 1, 2, 4 and 5), on the
real Synapse and the bridge process: an event nobody can use never silences the
bridge, a password never reaches a QQ contact, a burst is answered whole, and a
cancelled login never drops the account that was running."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
import urllib.parse

import httpx

from qqbridge.qq import model
from tests.e2e.test_control_room import command, control_room
from tests.e2e.test_observability import scrape, value
from tests.e2e.test_transactions import ping_event, put_txn


def client_put(stack, person, path: str, content: dict) -> httpx.Response:
    return httpx.put(f"{stack.synapse.base_url}/_matrix/client/v3{path}", json=content,
                     headers={"Authorization": f"Bearer {person.client.access_token}"})  # fmt: skip


def quoted(text: str) -> str:
    return urllib.parse.quote(text, safe="")


async def answered_within(person, room: str, stack, seconds: float = 5.0) -> None:
    """The honest user's `ping` gets its answer within `seconds`."""
    started = time.monotonic()
    await command(person, room, "ping", "QQ", stack, timeout=seconds)
    assert time.monotonic() - started <= seconds


async def test_an_event_nobody_can_use_never_silences_the_bridge(stack, user) -> None:
    alice = await user("alice")
    honest = await control_room(alice, stack)
    # Mallory may not use the bridge; she invites the bot and sends what Synapse accepts
    # but no bridge can store: a NUL in the event type and in a state key.
    mallory = await user("mallory")
    trap = await mallory.open_control_room(stack.bot)
    await mallory.wait_for_text(trap, "not allowed", sender=stack.bot)
    nul_type = client_put(stack, mallory, f"/rooms/{trap}/send/{quoted('m.room.message' + chr(0))}/t1", {"body": "x"})
    assert nul_type.status_code == 200, nul_type.text  # Synapse takes it: the bridge must cope
    nul_key = client_put(stack, mallory, f"/rooms/{trap}/state/m.x/{quoted('a' + chr(0))}", {"k": 1})
    assert nul_key.status_code == 200, nul_key.text
    await answered_within(alice, honest, stack)

    # The same kinds of event put straight to the appservice port: each is set aside,
    # the transaction is answered 200 (a 5xx would be retried for ever), and a good
    # event beside them is handled.
    base = {"event_id": "$bad", "type": "m.room.message", "room_id": honest, "sender": "@mallory:localhost"}
    bad_events = [
        {**base, "event_id": "$list", "content": [1, 2]},
        {**base, "event_id": "$statekey", "state_key": 5},
        {**base, "event_id": "$ts", "origin_server_ts": 2**70},
        {**base, "event_id": "$type", "type": "m.room.message\x00"},
        {**base, "event_id": "$noroom", "room_id": None},
        "not an event",
    ]
    for n, bad in enumerate(bad_events):
        answer = put_txn(stack, f"bad-{n}", [bad, ping_event(honest, alice.mxid, f"$good-{n}")])
        assert answer.status_code == 200, (bad, answer.text)
    nan = httpx.put(f"{stack.bridge_url}/_matrix/app/v1/transactions/bad-nan",
                    content=b'{"events": [{"event_id": "$nan", "type": "m.t", "room_id": "!r", "sender": "@m:x",'
                            b' "content": {"n": NaN}}]}',
                    headers={"Authorization": f"Bearer {stack.hs_token}"})  # fmt: skip
    assert nan.status_code == 200
    latin = httpx.put(f"{stack.bridge_url}/_matrix/app/v1/transactions/bad-token", json={"events": []},
                      headers={"Authorization": "Bearer \u00ff\u00fe".encode("latin-1")})  # fmt: skip
    assert latin.status_code == 403
    raw = httpx.put(f"{stack.bridge_url}/_matrix/app/v1/transactions/bad-token2", json={"events": []},
                    headers=[(b"Authorization", b"Bearer \xc3\x28\xff")])  # fmt: skip
    assert raw.status_code == 403
    # Every good ping beside a bad event was answered, and nothing waits in the inbox.
    await alice.wait_for(lambda: len([t for t in alice.texts(honest, stack.bot) if t.startswith("QQ")]) >= 7,
                         10, "seven answers to ping")  # fmt: skip
    assert value(scrape(stack), "qqbridge_queue_size", queue="matrix_inbox") == 0
    assert value(scrape(stack), "qqbridge_failures_total", kind="matrix_bad_event") >= len(bad_events) + 1
    assert "set aside an event the bridge cannot use" in stack.bridge.log()
    await answered_within(alice, honest, stack)


async def test_a_burst_of_a_thousand_events_from_fifty_rooms_is_all_handled(stack, user) -> None:
    people = [await user(f"hostile{n}") for n in range(11, 16)]
    rooms = [await control_room(person, stack) for person in people]
    events = []
    for i in range(20):
        for person, room in zip(people, rooms, strict=True):
            events.append(ping_event(room, person.mxid, f"$burst-{person.mxid}-{i}"))
        for fake in range(45):  # 45 more rooms the bridge has no business in
            events.append(ping_event(f"!fake{fake}:localhost", "@nobody:localhost", f"$burst-fake{fake}-{i}"))
    assert len(events) == 1000
    assert put_txn(stack, "burst-1000", events).status_code == 200
    # and three back-to-back transactions of 100, which once left 193 behind
    for n in range(3):
        more = [ping_event(f"!more{i % 7}:localhost", "@nobody:localhost", f"$more-{n}-{i}") for i in range(100)]
        assert put_txn(stack, f"burst-100-{n}", more).status_code == 200
    deadline = time.monotonic() + 60
    while value(scrape(stack), "qqbridge_queue_size", queue="matrix_inbox") != 0:
        assert time.monotonic() < deadline, "events still pending in the inbox"
        await asyncio.sleep(0.5)
    for person, room in zip(people, rooms, strict=True):
        assert [b for b in await bot_lines(stack, person, room) if b.startswith("QQ")] == ["QQ: not logged in."] * 20


async def bot_lines(stack, person, room: str) -> list[str]:
    """Every message of the bot in the room, read back through /messages (a /sync
    after a burst shows only the last few)."""
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{stack.synapse.base_url}/_matrix/client/v3/rooms/{room}/messages",
                                params={"dir": "b", "limit": 500},
                                headers={"Authorization": f"Bearer {person.client.access_token}"})  # fmt: skip
    return [e["content"].get("body", "") for e in answer.json()["chunk"]
            if e["sender"] == stack.bot and e["type"] == "m.room.message"]  # fmt: skip


def stored_texts(stack) -> str:
    """Everything the bridge's SQLite database holds, as one text to search."""
    with sqlite3.connect(stack.config_path.parent / "bridge.db") as db:
        rows = []
        for table in ("matrix_inbox", "outbox", "qq_inbound", "bridge_user", "bridge_state"):
            rows += [repr(row) for row in db.execute(f"SELECT * FROM {table}")]  # noqa: S608 (fixed names)
        return "\n".join(rows)


async def test_login_in_a_portal_is_refused_and_a_password_never_reaches_a_contact(stack, bridged, qq) -> None:
    dan, room = await bridged("hostile16", 10001)
    bob = await qq(10002)
    await command(dan, room, "open 10002", "Your portal", stack)
    portal = await dan.accept_invite("@_qq_10002:localhost")
    await command(dan, portal, "!qq login 10001", "works only in your control room", stack)
    # A careless user starts the login in the control room, then types the password in
    # the portal: it is not sent, not kept, and removed from the portal.
    await command(dan, room, "login 10001", "next message", stack)
    password = "pw-typed-in-the-wrong-room-7731"
    typed = await dan.say(portal, password)
    await dan.wait_for_text(portal, "Not sent: your login is waiting for your QQ password", sender=stack.bot)
    await dan.say(room, "cancel")
    await dan.wait_for_text(room, "Your QQ session goes on as before", sender=stack.bot)
    await dan.say(portal, "an ordinary message")
    arrived = []
    deadline = time.monotonic() + 15
    while "an ordinary message" not in [m.text for m in arrived]:
        assert time.monotonic() < deadline, arrived
        arrived += [e for e in await bob.drain_messages() if isinstance(e, model.Message)]
        await asyncio.sleep(0.2)
    assert password not in [m.text for m in arrived]
    assert password not in stored_texts(stack) and password not in stack.bridge.log()
    redacted = await _event(stack, dan, portal, typed)
    assert redacted.get("content") == {}


async def test_a_cancelled_or_failed_login_keeps_the_running_account_across_a_restart(stack, bridged) -> None:
    erin, room = await bridged("hostile17", 10004)
    await command(erin, room, "login 10004", "next message", stack)
    await command(erin, room, "cancel", "Login cancelled", stack)
    await command(erin, room, "login 10004", "next message", stack)
    await command(erin, room, "wrong-password", "QQ refused the password", stack)
    stack.restart_bridge()
    await command(erin, room, "ping", "QQ 10004: online", stack)


async def test_a_restart_during_a_hung_login_never_takes_the_next_message_for_a_password(stack, user) -> None:
    frank = await user("hostile18")
    room = await control_room(frank, stack)
    await command(frank, room, "login 10006", "next message", stack)
    stack.sim.proc.send_signal(signal.SIGSTOP)  # the QQ server hangs mid-login
    try:
        await frank.say(room, "frank-pw")
        await asyncio.sleep(1.0)
        stack.restart_bridge()
    finally:
        stack.sim.proc.send_signal(signal.SIGCONT)
    await frank.wait_for_text(room, "was interrupted by a bridge restart", sender=stack.bot)
    await command(frank, room, "ping", "QQ: not logged in", stack)  # a command, not a password
    assert "frank-pw" not in stored_texts(stack)


async def _event(stack, person, room: str, event_id: str) -> dict:
    from tests.e2e.harness import room_event

    return await room_event(stack.synapse.base_url, person.client.access_token, room, event_id)
