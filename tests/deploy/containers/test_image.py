"""The bridge's image for real (issue 12, item 1): built with podman from a clean checkout,
run with host networking against a Synapse and the QQ simulator on loopback, as an
operator runs it (`run -v qqbridge-data:/data qqbridge`): non-root, ready, healthy by
its own HEALTHCHECK, stopped by SIGTERM within 10 s with exit 0, and its config and
SQLite on the /data volume outliving the container."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import httpx
import pytest
import yaml

from qqbridge.local import LocalSynapse
from qqbridge.local.child import free_port
from tests.deploy import podman as pm
from tests.deploy.containers.helpers import (
    BuiltImage,
    healthcheck,
    inspect,
    logs,
    volume_path,
    wait_for_log,
)
from tests.e2e.harness import FIXTURES, MatrixUser, Process
from tests.e2e.test_control_room import command, control_room

pytestmark = pytest.mark.container

BOT = "@qqbridge:localhost"
UID = 10001
PASSWORD = "matrix-pw"


@dataclass
class Deployment:
    """One /data volume and what the bridge on it talks to; containers come and go."""

    image: BuiltImage
    volume: str
    port: int
    synapse: LocalSynapse
    sim: Process
    containers: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, *args: str, stdin: str | None = None) -> str:
        """A one-off container on the volume (as the README's steps run them)."""
        done = pm.podman(
            "run", "--rm", "-i", "--network", "host", "-v", f"{self.volume}:/data", *self.env(), *args,
            input=stdin, timeout=120,
        )  # fmt: skip
        return done.stdout + done.stderr

    def env(self) -> list[str]:
        # the image listens on 0.0.0.0:29340; with host networking keep it on loopback, on a free port
        return ["-e", "QQBRIDGE_APPSERVICE__HOST=127.0.0.1", "-e", f"QQBRIDGE_APPSERVICE__PORT={self.port}"]

    def start(self) -> str:
        """`podman run -d` with the image's own command (run -c /data/config.yaml)."""
        name = f"qqbridge-test-{secrets.token_hex(4)}"
        self.containers.append(name)
        pm.podman("run", "-d", "--name", name, "--network", "host", "-v", f"{self.volume}:/data", *self.env(),
                  self.image.id)  # fmt: skip
        wait_for_log(name, "qqbridge ready")
        return name

    def stop(self, name: str) -> float:
        """SIGTERM, SIGKILL after 10 s (`podman stop -t 10`); the seconds it took."""
        started = time.monotonic()
        pm.podman("stop", "-t", "10", name, timeout=60)
        return time.monotonic() - started

    def remove(self, name: str) -> None:
        pm.podman("rm", "-f", "-t", "0", name, check=False)
        self.containers.remove(name)


@pytest.fixture(scope="module")
def deployment(bridge_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("image")
    sim_port, hs_port, bridge_port = (free_port("127.0.0.1") for _ in range(3))
    sim = Process(["qq-sim", "--fixture", str(FIXTURES / "qq_accounts.yaml"), "--port", str(sim_port)],
                  work / "sim.log")  # fmt: skip
    volume = f"qqbridge-test-data-{secrets.token_hex(4)}"
    pm.podman("volume", "create", volume)
    synapse = LocalSynapse(work / "synapse", port=hs_port, appservice_registrations=[work / "registration.yaml"])
    deployment = Deployment(bridge_image, volume, bridge_port, synapse, sim)
    try:
        sim.start()
        sim.wait_for_log("listening on")
        # README: the config goes onto the volume through the image, as its own user ...
        config = {
            "homeserver": {"url": f"http://127.0.0.1:{hs_port}", "domain": "localhost"},
            "appservice": {"port": bridge_port, "url": deployment.url},
            "qq": {"server_url": f"http://127.0.0.1:{sim_port}/", "poll_fast": 0.2, "poll_idle": 1.0, "timeout": 5},
            "permissions": {"@alice:localhost": "admin", "@bob:localhost": "user"},
        }
        deployment.run("--entrypoint", "tee", bridge_image.id, "/data/config.yaml", stdin=yaml.safe_dump(config))
        # ... generate-registration writes the tokens into it, and the registration
        print(deployment.run(bridge_image.id, "generate-registration", "-c", "/data/config.yaml",
                             "-o", "/data/registration.yaml"))  # fmt: skip
        registration = volume_path(volume) / "registration.yaml"
        (work / "registration.yaml").write_bytes(registration.read_bytes())
        synapse.start_blocking()
        yield deployment
    finally:
        for name in list(deployment.containers):
            print(f"---- {name}\n{logs(name)[-3000:]}")
            deployment.remove(name)
        synapse.stop_blocking()
        sim.stop()
        pm.podman("volume", "rm", "-f", volume, check=False)


@pytest.fixture
async def alice(deployment: Deployment) -> AsyncIterator[MatrixUser]:
    mxid = await deployment.synapse.register_user("alice", PASSWORD)
    person = await MatrixUser(deployment.synapse.base_url, mxid, PASSWORD).login()
    yield person
    await person.close()


def test_the_image_runs_as_uid_10001_with_a_healthcheck(bridge_image: BuiltImage) -> None:
    assert inspect(bridge_image.id, "{{.Config.User}}") == f"{UID}:{UID}"
    check = inspect(bridge_image.id, "{{.HealthCheck}}")
    assert "/health" in check, f"the image lost its HEALTHCHECK (built as OCI?): {check!r}"
    assert "/data" in inspect(bridge_image.id, "{{.Config.Volumes}}")
    done = pm.podman("run", "--rm", "--network", "none", "--entrypoint", "id", bridge_image.id)
    assert done.stdout.split()[:2] == [f"uid={UID}(qqbridge)", f"gid={UID}(qqbridge)"]
    # the clean checkout reached the image: the package, nothing of the repository besides
    done = pm.podman(
        "run", "--rm", "--network", "none", "--entrypoint", "python", bridge_image.id, "-c",
        "import os, qqbridge; print(qqbridge.__file__); print(sorted(os.listdir('/')))",
    )  # fmt: skip
    module, listing = done.stdout.splitlines()
    assert module.startswith("/opt/qqbridge/venv/")
    assert "src" not in listing and "tests" not in listing


def test_the_bridge_in_a_container_is_ready_healthy_and_stops_on_sigterm(deployment: Deployment) -> None:
    name = deployment.start()
    answer = httpx.get(f"{deployment.url}/ready", timeout=10)
    assert answer.status_code == 200, answer.text
    status = pm.podman("exec", name, "cat", "/proc/1/status").stdout
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == [str(UID)] * 4, f"PID 1 (qqbridge) runs as {uids}"
    for stored in ("config.yaml", "qqbridge.db"):
        path = volume_path(deployment.volume) / stored
        assert path.stat().st_uid == UID, f"{stored} on /data belongs to uid {path.stat().st_uid}"
    done = healthcheck(name)
    assert done.returncode == 0, f"HEALTHCHECK failed: {done.stdout} {done.stderr}"
    assert inspect(name, "{{.State.Health.Status}}") == "healthy"

    seconds = deployment.stop(name)
    assert seconds < 10, f"SIGTERM took {seconds:.1f} s (then SIGKILL)"
    assert inspect(name, "{{.State.ExitCode}}") == "0", logs(name)[-3000:]
    deployment.remove(name)


async def ping_until(person: MatrixUser, room: str, expected: str, timeout: float = 45) -> str:
    """`ping` again until its answer says `expected` (a restarted bridge logs in anew)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await command(person, room, "ping", "QQ", SimpleNamespace(bot=BOT))
        if expected in answer or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(1)


async def test_login_and_database_survive_a_new_container_on_the_same_volume(
    deployment: Deployment, alice: MatrixUser
) -> None:
    bot = SimpleNamespace(bot=BOT)
    first = deployment.start()
    room = await control_room(alice, bot)
    await command(alice, room, "login 10001", "next message", bot)
    await alice.say(room, "secret")
    await alice.wait_for_text(room, "Logged into QQ as 10001", sender=BOT, timeout=60)
    assert "QQ 10001: online" in await ping_until(alice, room, "QQ 10001: online")

    # stopped with a QQ account polling: still within 10 s, exit 0
    seconds = deployment.stop(first)
    assert seconds < 10, f"SIGTERM took {seconds:.1f} s (then SIGKILL)"
    assert inspect(first, "{{.State.ExitCode}}") == "0", logs(first)[-3000:]
    deployment.remove(first)

    second = deployment.start()
    assert "QQ 10001: online" in await ping_until(alice, room, "QQ 10001: online")
    # nothing was asked of alice again: one password prompt, one login, in the same room
    assert sum("next message" in t for t in alice.texts(room, BOT)) == 1
    assert sum("Logged into QQ as 10001" in t for t in alice.texts(room, BOT)) == 1
    seconds = deployment.stop(second)
    assert seconds < 10 and inspect(second, "{{.State.ExitCode}}") == "0", logs(second)[-3000:]
    deployment.remove(second)
