"""Issue 15: dozens of people using the bridge at the same moment, each in their own
control room, on a real Synapse and the simulator, on SQLite and on PostgreSQL.

Found on PostgreSQL with twelve users logging in at once: the bridge handled one
`login` twice, took the command for the password, and ran (and repeated back) the real
password as a command. Here 24 users log in at once, in three rounds (the second with
a wrong password for half of them), and what each person's room shows afterwards is
read back from Synapse: one prompt per `login`, one answer per password, every
password message redacted and no command redacted, no password in any bot message,
every refusal told. Then one user fires 30 commands at once: 30 answers, no more.

The session's bridge process is swapped for one with its own store (a fresh SQLite
file, or a fresh PostgreSQL database), its own simulator (with the 24 QQ accounts) and
`localhost` allowed, and swapped back afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from qqbridge.local.child import free_port
from qqbridge.qq import password_md5
from tests.e2e.conftest import PASSWORD, TIME_SCALE
from tests.e2e.harness import MatrixUser, Process, postgres_database
from tests.e2e.test_control_room import HELP_LINE

USERS = 24
FIRST_UIN = 20001
COMMANDS_AT_ONCE = 30


def qq_password(uin: int) -> str:
    return f"pw-{uin}"


@pytest.fixture(scope="module")
def crowd_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A simulator of its own, with the 24 QQ accounts the crowd logs into."""
    work = tmp_path_factory.mktemp("crowd")
    fixture = work / "crowd.yaml"
    accounts = [{"uin": FIRST_UIN + n, "password": qq_password(FIRST_UIN + n), "nick": f"Crowd {n}"} for n in range(USERS)]
    fixture.write_text(yaml.safe_dump({"accounts": accounts}))
    port = free_port("127.0.0.1")
    sim = Process(["qq-sim", "--fixture", str(fixture), "--port", str(port), "--time-scale", str(TIME_SCALE)],
                  work / "sim.log")  # fmt: skip
    sim.start()
    sim.wait_for_log("listening on")
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        sim.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def crowd_bridge(request: pytest.FixtureRequest, stack, crowd_sim: str, tmp_path: Path) -> AsyncIterator[str]:
    """The session's bridge process, run for the test on a fresh store of the backend
    under test, talking to the crowd's simulator, open to every localhost user."""
    config = yaml.safe_load(stack.config_path.read_text())
    config["qq"]["server_url"] = crowd_sim
    config["permissions"] = {**config["permissions"], "localhost": "user"}
    config["logging"] = {"level": "INFO"}
    async with contextlib.AsyncExitStack() as cleanup:
        if request.param == "sqlite":
            config["database"]["url"] = f"sqlite:///{tmp_path / 'crowd.db'}"
        else:
            config["database"]["url"] = await cleanup.enter_async_context(postgres_database("qqbridge_crowd"))
        crowd_config = tmp_path / f"config-crowd-{request.param}.yaml"
        crowd_config.write_text(yaml.safe_dump(config, sort_keys=False))
        original = list(stack.bridge.args)
        stack.bridge.args = ["run", "-c", str(crowd_config)]
        stack.restart_bridge()
        try:
            yield request.param
        finally:
            assert stack.bridge.stop() == 0
            stack.bridge.args = original
            stack.bridge.start()
            stack.bridge.wait_for_log("qqbridge ready")


async def history(stack, person: MatrixUser, room: str) -> list[dict[str, Any]]:
    """The room's whole timeline as Synapse keeps it, oldest first (redacted events too)."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"dir": "f", "limit": 500}
    async with httpx.AsyncClient(timeout=30) as http:
        while True:
            answer = await http.get(f"{stack.synapse.base_url}/_matrix/client/v3/rooms/{room}/messages",
                                    params=params, headers={"Authorization": f"Bearer {person.client.access_token}"})  # fmt: skip
            page = answer.json()
            events += page.get("chunk", [])
            if not page.get("chunk") or "end" not in page:
                return events
            params["from"] = page["end"]


def bot_texts(events: list[dict[str, Any]], bot: str) -> list[str]:
    return [e["content"]["body"] for e in events
            if e["sender"] == bot and e["type"] == "m.room.message" and "body" in e.get("content", {})]  # fmt: skip


class Person:
    """One of the crowd: a Matrix user with a control room and a QQ account."""

    def __init__(self, stack, matrix: MatrixUser, uin: int) -> None:
        self.stack, self.matrix, self.uin = stack, matrix, uin
        self.room = ""
        self.commands: list[str] = []  # event ids of the commands typed
        self.passwords: list[tuple[str, str]] = []  # (event id, password) typed after a prompt

    async def open(self) -> None:
        self.room = await self.matrix.open_control_room(self.stack.bot)
        await self.matrix.wait_for_text(self.room, HELP_LINE, sender=self.stack.bot, timeout=60)

    async def says(self, text: str, answer: str) -> str:
        """Type `text`; wait for a new bot message containing `answer`."""
        before = len(self.matrix.texts(self.room, self.stack.bot))
        event_id = await self.matrix.say(self.room, text)

        def new_answer() -> str | None:
            return next((t for t in self.matrix.texts(self.room, self.stack.bot)[before:] if answer in t), None)

        await self.matrix.wait_for(new_answer, 90, f"{answer!r} after {text!r}")
        return event_id

    async def log_in(self, password: str, expect: str) -> None:
        self.commands.append(await self.says(f"login {self.uin}", "as your next message"))
        self.passwords.append((await self.says(password, expect), password))

    async def log_out(self) -> None:
        self.commands.append(await self.says("logout", "Logged out"))


async def crowd(stack, prefix: str, size: int = USERS) -> list[Person]:
    people = []
    for n in range(size):
        mxid = await stack.synapse.register_user(f"{prefix}{n}", PASSWORD)
        people.append(Person(stack, await MatrixUser(stack.synapse.base_url, mxid, PASSWORD).login(), FIRST_UIN + n))
    await asyncio.gather(*(person.open() for person in people))
    return people


async def test_dozens_log_in_at_once_and_each_is_prompted_and_answered_once(stack, crowd_bridge: str) -> None:
    people = await crowd(stack, f"crowd{crowd_bridge[0]}{uuid.uuid4().hex[:4]}")
    try:
        for round_ in range(3):
            plan = {}  # uin → (the password typed, the answer it gets)
            for person in people:
                wrong = round_ == 1 and person.uin % 2 == 0
                plan[person.uin] = ((f"wrong-{person.uin}", "QQ refused the password") if wrong
                                    else (qq_password(person.uin), f"Logged into QQ as {person.uin}"))  # fmt: skip
            await asyncio.gather(*(person.log_in(*plan[person.uin]) for person in people))
            await asyncio.gather(*(person.log_out() for person in people if "Logged" in plan[person.uin][1]))

        for person in people:
            events = await history(stack, person.matrix, person.room)
            said = bot_texts(events, stack.bot)
            prompts = [t for t in said if "as your next message" in t]
            assert len(prompts) == 3, (person.uin, said)
            logged_in = sum(f"Logged into QQ as {person.uin}" in t for t in said)
            refused = sum("QQ refused the password" in t for t in said)
            assert (logged_in, refused) == (3 - (person.uin % 2 == 0), int(person.uin % 2 == 0)), (person.uin, said)
            assert sum("Logged out" in t for t in said) == logged_in
            assert not [t for t in said if "not a command" in t], (person.uin, said)
            for _, password in person.passwords:
                assert not [t for t in said if password in t or password_md5(password) in t]
            by_id = {e["event_id"]: e for e in events}
            for event_id, _ in person.passwords:  # every password redacted...
                assert by_id[event_id]["content"] == {} and "redacted_because" in by_id[event_id]["unsigned"]
            for event_id in person.commands:  # ...and no command
                assert by_id[event_id]["content"].get("body"), (person.uin, by_id[event_id])
            # 3 prompts, the answers, the log-outs and the welcome: nothing else, nothing twice
            assert len(said) == 1 + 3 + 3 + logged_in, (person.uin, said)
        bridge_log = stack.bridge.log(since_start=True)
        for person in people:
            assert qq_password(person.uin) not in bridge_log and password_md5(qq_password(person.uin)) not in bridge_log
        assert "not taken as the password" not in bridge_log  # the guard was never needed
    finally:
        for person in people:
            await person.matrix.close()


async def test_many_commands_at_once_from_one_user_are_each_answered_once(stack, crowd_bridge: str) -> None:
    [person] = await crowd(stack, f"burst{crowd_bridge[0]}{uuid.uuid4().hex[:4]}", size=1)
    try:
        sent = await asyncio.gather(*(person.matrix.say(person.room, "ping") for _ in range(COMMANDS_AT_ONCE)))
        assert len(set(sent)) == COMMANDS_AT_ONCE

        def answered() -> bool:
            return sum("QQ: not logged in" in t for t in person.matrix.texts(person.room, stack.bot)) >= COMMANDS_AT_ONCE

        await person.matrix.wait_for(answered, 60, f"{COMMANDS_AT_ONCE} answers")
        await asyncio.sleep(1.0)  # anything answered twice would be here now
        said = bot_texts(await history(stack, person.matrix, person.room), stack.bot)
        assert sum("QQ: not logged in" in t for t in said) == COMMANDS_AT_ONCE
        assert len(said) == 1 + COMMANDS_AT_ONCE
    finally:
        await person.matrix.close()
