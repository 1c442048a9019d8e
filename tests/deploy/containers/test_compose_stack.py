"""deploy/docker/compose.yaml for real (issue 12, item 2): brought up with podman-compose,
following deploy/docker/README.md's own commands, with the demo profile's QQ simulator
and stand-ins for the Synapse and PostgreSQL images. The stack comes up healthy, a Matrix
user logs in to QQ through the control room, a message crosses each way, and after
`down` and `up` again the login and the portal are still there.

Host networking (compose.host.yaml on top, as the README explains for machines without
container networks) keeps everything on 127.0.0.1, each service on a port of its own.
"""

from __future__ import annotations

import asyncio
import importlib.util
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml

from qqbridge.local.child import free_port
from qqbridge.qq import QQClient, model, password_md5
from tests.deploy import podman as pm
from tests.deploy.containers.helpers import BuiltImage, inspect, logs, unavailable, wait_healthy
from tests.deploy.helpers import CONFIG_EXAMPLE, DOCKER, ENV_EXAMPLE, fenced_shell_lines
from tests.e2e.harness import MatrixUser
from tests.e2e.test_control_room import command, control_room

pytestmark = pytest.mark.container

README = DOCKER / "README.md"
HOST_OVERRIDE = DOCKER / "compose.host.yaml"
SERVICES = ("postgres", "synapse", "qq-sim", "qqbridge")
BOT = SimpleNamespace(bot="@qqbridge:localhost")
BOB = "@_qq_10002:localhost"
MATRIX_PASSWORD = "matrix-pw-" + secrets.token_hex(4)


def podman_compose() -> list[str]:
    if importlib.util.find_spec("podman_compose"):
        return [sys.executable, "-m", "podman_compose"]
    found = shutil.which("podman-compose") or shutil.which("podman-compose", path=str(Path(sys.executable).parent))
    if not found:
        unavailable("podman-compose is not installed (`pip install podman-compose`; .ci/run does)")
    return [str(found)]


def readme_setup_commands() -> list[list[str]]:
    """The README's `docker compose ...` steps up to the first `up`, in order, as argument
    lists after `docker compose` (a trailing `< file` kept as its last two items)."""
    steps = []
    for line in fenced_shell_lines(README):
        words = shlex.split(line, comments=True)
        if words[:2] != ["docker", "compose"] or words[2:3] == ["build"]:
            continue
        words = words[2:]
        if ">" in words:  # output goes nowhere that matters here
            del words[words.index(">") :]
        steps.append(words)
        if words[0] == "up":
            return steps
    raise AssertionError(f"{README} never says `docker compose up`")


@dataclass
class Stack:
    project: str
    work: Path
    ports: dict[str, int]
    compose_files: list[Path]
    volumes: set[str] = field(default_factory=set)

    def compose(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 300) -> str:
        argv = [*podman_compose(), *(a for f in self.compose_files for a in ("-f", str(f))),
                "-p", self.project, "--env-file", str(self.work / ".env"), "--profile", "demo", *args]  # fmt: skip
        done = subprocess.run(argv, cwd=DOCKER, env=pm.env(), input=stdin, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        output = done.stdout + done.stderr
        if check and done.returncode != 0:
            raise AssertionError(f"podman-compose {shlex.join(args)}: exit {done.returncode}\n{output[-4000:]}")
        return output

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def readme_steps(self) -> None:
        for step in readme_setup_commands():
            stdin = None
            if "<" in step:
                at = step.index("<")
                stdin = (self.work / step[at + 1]).read_text()
                step = step[:at]
            self.compose(*step, stdin=stdin)

    def wait_healthy(self) -> None:
        for service in SERVICES:
            wait_healthy(self.container(service), timeout=180)
        # healthy means the bridge answers; ready, that it has started (Synapse answered too)
        deadline = time.monotonic() + 120
        while (answer := httpx.get(self.url("qqbridge") + "/ready", timeout=10)).status_code != 200:
            assert time.monotonic() < deadline, f"/ready: {answer.status_code} {answer.text}"
            time.sleep(0.5)

    def down(self, *flags: str, check: bool = True) -> None:
        """`down`, remembering the volumes of the containers it removes: anonymous ones
        (the simulator's /data) outlive even `down -v`, and are removed at the end."""
        for service in SERVICES:
            done = pm.podman("inspect", "--format", "{{range .Mounts}}{{.Name}} {{end}}", self.container(service),
                             check=False)  # fmt: skip
            self.volumes.update(done.stdout.split())
        self.compose("down", *flags, check=check)


def write_settings(work: Path, ports: dict[str, int], image: str) -> None:
    """README steps 1 and 3 by hand: .env from .env.example, config.yaml from the example
    with `permissions` edited; and this test's own override, the image built for it."""
    env = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    env.update(POSTGRES_PASSWORD=secrets.token_hex(12), MATRIX_SERVER_NAME="localhost",
               QQ_SERVER_URL=f"http://qq-sim:{ports['qq-sim']}/")  # fmt: skip
    # compose.host.yaml's ports; Synapse's is in a listeners file of its own
    listeners = yaml.safe_load((DOCKER / "synapse-host" / "listeners.yaml").read_text(encoding="utf-8"))
    listeners["listeners"][0]["port"] = ports["synapse"]
    (work / "synapse-host").mkdir()
    (work / "synapse-host" / "listeners.yaml").write_text(yaml.safe_dump(listeners))
    env.update(POSTGRES_PORT=str(ports["postgres"]), SYNAPSE_PORT=str(ports["synapse"]),
               SYNAPSE_HOST_CONF=str(work / "synapse-host"), QQBRIDGE_PORT=str(ports["qqbridge"]),
               QQ_SIM_PORT=str(ports["qq-sim"]))  # fmt: skip
    (work / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))

    config = yaml.safe_load(CONFIG_EXAMPLE.read_text(encoding="utf-8"))
    config["permissions"] = {"localhost": "user", "@alice:localhost": "admin"}
    config.setdefault("qq", {}).update(poll_fast=0.2, poll_idle=1.0)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    override = {"services": {"qqbridge": {"image": image}, "qq-sim": {"image": image}}}
    (work / "override.yaml").write_text(yaml.safe_dump(override))


@pytest.fixture(scope="module")
def stack(bridge_image: BuiltImage, standins: dict[str, str], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:  # fmt: skip
    work = tmp_path_factory.mktemp("compose")
    ports = {service: free_port("127.0.0.1") for service in SERVICES}
    write_settings(work, ports, bridge_image.tag)
    stack = Stack(f"qqbt{secrets.token_hex(3)}", work, ports, [DOCKER / "compose.yaml", HOST_OVERRIDE,
                                                                work / "override.yaml"])  # fmt: skip
    started = time.monotonic()
    try:
        stack.readme_steps()
        stack.wait_healthy()
        pm.say(f"compose stack {stack.project}: set up and healthy in {time.monotonic() - started:.1f} s")
        yield stack
    finally:
        for service in SERVICES:
            print(f"---- {service}\n{logs(stack.container(service))[-3000:]}")
        stack.down("-v", check=False)
        for volume in stack.volumes:
            pm.podman("volume", "rm", "-f", volume, check=False)


@pytest.fixture(scope="module")
def alice_mxid(stack: Stack) -> str:
    """README step 5: a Matrix account made with register_new_matrix_user in the Synapse container."""
    stack.compose("exec", "-T", "synapse", "register_new_matrix_user", "-c", "/data/homeserver.yaml",
                  "-u", "alice", "-p", MATRIX_PASSWORD, "--no-admin", stack.url("synapse"))  # fmt: skip
    return "@alice:localhost"


@pytest.fixture
async def alice(stack: Stack, alice_mxid: str) -> AsyncIterator[MatrixUser]:
    person = await MatrixUser(stack.url("synapse"), alice_mxid, MATRIX_PASSWORD).login()
    yield person
    await person.close()


async def received(client: QQClient, timeout: float = 30) -> list[model.Message]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = [e for e in await client.drain_messages() if isinstance(e, model.Message)]
        if messages:
            return messages
        await asyncio.sleep(0.2)
    raise AssertionError(f"QQ {client.uin} received nothing in {timeout} s")


async def ping_until_online(person: MatrixUser, room: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        answer = await command(person, room, "ping", "QQ", BOT)
        if "QQ 10001: online" in answer or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(1)


def invited_by(person: MatrixUser, inviter: str) -> set[str]:
    return {room for room, info in person.invites.items()
            if any(getattr(e, "sender", None) == inviter for e in info.invite_state)}  # fmt: skip


def test_the_readme_order_leaves_the_registration_volume_to_the_bridge(stack: Stack) -> None:
    """The registration volume must belong to the bridge, which writes it: under podman the
    first container to mount a fresh volume decides its owner, so the README creates it
    with the bridge's steps before Synapse's."""
    steps = readme_setup_commands()
    first_synapse = next(i for i, s in enumerate(steps) if "synapse" in s)
    registration = next(i for i, s in enumerate(steps) if "generate-registration" in s)
    assert registration < first_synapse
    owner = pm.podman("exec", stack.container("qqbridge"), "stat", "-c", "%u %a", "/registration/qqbridge.yaml")
    assert owner.stdout.split() == ["10001", "644"], "Synapse (uid 991) must be able to read the registration"


async def test_login_and_one_message_each_way_then_down_and_up_keeps_them(stack: Stack, alice: MatrixUser) -> None:
    room = await control_room(alice, BOT)
    await command(alice, room, "login 10001", "next message", BOT)
    await alice.say(room, "secret")
    await alice.wait_for_text(room, "Logged into QQ as 10001", sender=BOT.bot, timeout=60)

    sim = stack.url("qq-sim") + "/"
    async with QQClient(sim, 10002, local_address="127.0.0.2", timeout=10) as bob:
        await bob.login(password_md5("hunter2"))
        await bob.send_message(10001, "hello from QQ & 你好")
        portal = await alice.accept_invite(BOB, timeout=60)
        await alice.wait_for_text(portal, "hello from QQ & 你好", sender=BOB)
        await alice.say(portal, "hi Bob, from Matrix 😀")
        got = await received(bob)
        assert [(m.sender, m.text) for m in got] == [(10001, "hi Bob, from Matrix 😀")]
        await bob.logout()

    # `down` removes the containers (not the volumes); `up` makes new ones
    started = time.monotonic()
    stack.down()
    assert not pm.podman("ps", "-a", "-q", "--filter", f"name={stack.project}_").stdout.strip()
    stack.compose("up", "-d")
    stack.wait_healthy()
    pm.say(f"compose stack {stack.project}: down, up and healthy again in {time.monotonic() - started:.1f} s")

    # the login: the bridge logged in again by itself (the simulator forgot every session)
    assert "QQ 10001: online" in await ping_until_online(alice, room)
    # the portal: Bob's next message lands in the same room, and Alice's goes back to him
    async with QQClient(sim, 10002, local_address="127.0.0.2", timeout=10) as bob:
        await bob.login(password_md5("hunter2"))
        await bob.send_message(10001, "still there?")
        await alice.wait_for_text(portal, "still there?", sender=BOB, timeout=60)
        assert invited_by(alice, BOB) == {portal}, "a new portal was opened"
        await alice.say(portal, "still here")
        got = await received(bob)
        assert [(m.sender, m.text) for m in got] == [(10001, "still here")]
        await bob.logout()
    assert sum("next message" in t for t in alice.texts(room, BOT.bot)) == 1, "the password was asked again"
    assert inspect(stack.container("qqbridge"), "{{.State.Running}}") == "true"
