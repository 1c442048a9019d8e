"""Issue 15: dozens of people using the bridge at the same moment, each in their own
control room, on a real Synapse and the simulator, on SQLite and on PostgreSQL.

Found on PostgreSQL with twelve users logging in at once: the bridge handled one
`login` twice, took the command for the password, and ran (and repeated back) the real
password as a command. Here 24 users log in at once, in three rounds (the second with
a wrong password for half of them), and what each person's room shows afterwards is
read back from Synapse: one prompt per `login`, one answer per password, every
password message redacted and no command redacted, no password in any bot message,
every refusal told. Then one user fires 30 commands at once: 30 answers, no more.

The module has a Synapse of its own with two bridges registered side by side, one on
SQLite and one on PostgreSQL (each with its own bot, puppets and QQ accounts), so that
nothing is swapped under the session's stack and no delivery waits on a restart.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from qqbridge.local import LocalSynapse
from qqbridge.local.child import free_port
from qqbridge.qq import password_md5
from tests.e2e.conftest import PASSWORD, TIME_SCALE
from tests.e2e.harness import MatrixUser, Process, create_postgres_database, drop_postgres_database, write_config
from tests.e2e.test_control_room import HELP_LINE

USERS = 24
FIRST_UIN = {"sqlite": 20001, "postgresql": 20101}  # each bridge logs into accounts of its own
COMMANDS_AT_ONCE = 30


def qq_password(uin: int) -> str:
    return f"pw-{uin}"


@dataclass
class Bridge:
    """One of the module's two bridges, as the people see it."""

    backend: str
    bot: str
    first_uin: int
    process: Process


@dataclass
class Crowd:
    synapse: LocalSynapse
    bridges: dict[str, Bridge]


@pytest.fixture(scope="module")
def crowd_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crowd]:
    work = tmp_path_factory.mktemp("crowd")
    accounts = [{"uin": first + n, "password": qq_password(first + n), "nick": f"Crowd {n}"}
                for first in FIRST_UIN.values() for n in range(USERS)]  # fmt: skip
    (work / "sim.yaml").write_text(yaml.safe_dump({"accounts": accounts}))
    sim_port, hs_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    sim = Process(["qq-sim", "--fixture", str(work / "sim.yaml"), "--port", str(sim_port),
                   "--time-scale", str(TIME_SCALE)], work / "sim.log")  # fmt: skip
    sim.start()
    sim.wait_for_log("listening on")
    pg_url = asyncio.run(create_postgres_database("qqbridge_crowd"))
    configs, registrations = {}, []
    for backend, short in (("sqlite", "s"), ("postgresql", "p")):
        port = free_port("127.0.0.1")
        configs[backend] = work / f"config-{backend}.yaml"
        write_config(
            configs[backend],
            homeserver={"url": f"http://127.0.0.1:{hs_port}", "domain": "localhost"},
            appservice={"id": f"qq-{backend}", "port": port, "url": f"http://127.0.0.1:{port}", "as_token": "",
                        "hs_token": "", "bot_localpart": f"qqbot{short}", "puppet_localpart": f"_qq{short}_{{uin}}"},
            qq={"server_url": f"http://127.0.0.1:{sim_port}/", "poll_fast": 0.2, "poll_idle": 1.0, "timeout": 5,
                "time_scale": TIME_SCALE},
            database={"url": f"sqlite:///{work / 'bridge.db'}" if backend == "sqlite" else pg_url},
            logging={"level": "DEBUG"},
            permissions={"localhost": "user"},
        )  # fmt: skip
        registrations.append(work / f"registration-{backend}.yaml")
        subprocess.run([sys.executable, "-m", "qqbridge", "generate-registration", "-c", str(configs[backend]),
                        "-o", str(registrations[-1])], check=True)  # fmt: skip
    synapse = LocalSynapse(work / "synapse", port=hs_port, appservice_registrations=registrations)
    synapse.start_blocking()
    bridges = {}
    try:
        for backend, short in (("sqlite", "s"), ("postgresql", "p")):
            process = Process(["run", "-c", str(configs[backend])], work / f"bridge-{backend}.log")
            bridges[backend] = Bridge(backend, f"@qqbot{short}:localhost", FIRST_UIN[backend], process)
            process.start()
        for bridge in bridges.values():
            bridge.process.wait_for_log("qqbridge ready")
        yield Crowd(synapse, bridges)
    finally:
        for bridge in bridges.values():
            bridge.process.stop()
        synapse.stop_blocking()
        sim.stop()
        asyncio.run(drop_postgres_database(pg_url))


@pytest.fixture(params=["sqlite", "postgresql"])
def bridge(request: pytest.FixtureRequest, crowd_stack: Crowd) -> Bridge:
    return crowd_stack.bridges[request.param]


async def history(synapse: LocalSynapse, person: MatrixUser, room: str) -> list[dict[str, Any]]:
    """The room's whole timeline as Synapse keeps it, oldest first (redacted events too)."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"dir": "f", "limit": 500}
    async with httpx.AsyncClient(timeout=30) as http:
        while True:
            answer = await http.get(f"{synapse.base_url}/_matrix/client/v3/rooms/{room}/messages",
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

    def __init__(self, bot: str, matrix: MatrixUser, uin: int) -> None:
        self.bot, self.matrix, self.uin = bot, matrix, uin
        self.room = ""
        self.commands: list[str] = []  # event ids of the commands typed
        self.passwords: list[tuple[str, str]] = []  # (event id, password) typed after a prompt

    async def open(self) -> None:
        self.room = await self.matrix.open_control_room(self.bot)
        await self.matrix.wait_for_text(self.room, HELP_LINE, sender=self.bot, timeout=60)

    async def says(self, text: str, answer: str) -> str:
        """Type `text`; wait for a new bot message containing `answer`."""
        before = len(self.matrix.texts(self.room, self.bot))
        event_id = await self.matrix.say(self.room, text)

        def new_answer() -> str | None:
            return next((t for t in self.matrix.texts(self.room, self.bot)[before:] if answer in t), None)

        await self.matrix.wait_for(new_answer, 90, f"{answer!r} after {text!r}")
        return event_id

    async def log_in(self, password: str, expect: str) -> None:
        self.commands.append(await self.says(f"login {self.uin}", "as your next message"))
        self.passwords.append((await self.says(password, expect), password))

    async def log_out(self) -> None:
        self.commands.append(await self.says("logout", "Logged out"))


@pytest.fixture
async def crowd(crowd_stack: Crowd, bridge: Bridge) -> AsyncIterator[Callable[..., Awaitable[list[Person]]]]:
    """`await crowd(prefix, size)`: people registered, logged in and each in a control
    room; all closed at the end, whatever failed."""
    people: list[Person] = []

    async def make(prefix: str, size: int = USERS) -> list[Person]:
        made = []
        for n in range(size):
            synapse = crowd_stack.synapse
            mxid = await synapse.register_user(f"{prefix}{n}", PASSWORD)
            person = Person(bridge.bot, MatrixUser(synapse.base_url, mxid, PASSWORD), bridge.first_uin + n)
            people.append(person)
            made.append(person)
            await person.matrix.login()
        await asyncio.gather(*(person.open() for person in made))
        return made

    yield make
    for person in people:
        await person.matrix.close()


async def test_dozens_log_in_at_once_and_each_is_prompted_and_answered_once(
    crowd_stack: Crowd, bridge: Bridge, crowd
) -> None:
    people = await crowd(f"crowd{bridge.backend[0]}{uuid.uuid4().hex[:4]}")
    for round_ in range(3):
        plan = {}  # uin → (the password typed, the answer it gets)
        for person in people:
            wrong = round_ == 1 and person.uin % 2 == 0
            plan[person.uin] = ((f"wrong-{person.uin}", "QQ refused the password") if wrong
                                else (qq_password(person.uin), f"Logged into QQ as {person.uin}"))  # fmt: skip
        await asyncio.gather(*(person.log_in(*plan[person.uin]) for person in people))
        await asyncio.gather(*(person.log_out() for person in people if "Logged" in plan[person.uin][1]))

    for person in people:
        events = await history(crowd_stack.synapse, person.matrix, person.room)
        said = bot_texts(events, bridge.bot)
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
    bridge_log = bridge.process.log()
    for person in people:
        assert qq_password(person.uin) not in bridge_log and password_md5(qq_password(person.uin)) not in bridge_log
    assert "not taken as the password" not in bridge_log  # the guard was never needed


async def test_many_commands_at_once_from_one_user_are_each_answered_once(
    crowd_stack: Crowd, bridge: Bridge, crowd
) -> None:
    [person] = await crowd(f"burst{bridge.backend[0]}{uuid.uuid4().hex[:4]}", size=1)
    sent = await asyncio.gather(*(person.matrix.say(person.room, "ping") for _ in range(COMMANDS_AT_ONCE)))
    assert len(set(sent)) == COMMANDS_AT_ONCE

    def answered() -> bool:
        return sum("QQ: not logged in" in t for t in person.matrix.texts(person.room, bridge.bot)) >= COMMANDS_AT_ONCE

    await person.matrix.wait_for(answered, 60, f"{COMMANDS_AT_ONCE} answers")
    await asyncio.sleep(1.0)  # anything answered twice would be here now
    said = bot_texts(await history(crowd_stack.synapse, person.matrix, person.room), bridge.bot)
    assert sum("QQ: not logged in" in t for t in said) == COMMANDS_AT_ONCE
    assert len(said) == 1 + COMMANDS_AT_ONCE
