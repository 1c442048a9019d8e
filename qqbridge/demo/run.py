"""`qqbridge demo`: the whole bridge on loopback, to try from Element, in one command.

It owns the demo's arguments and life cycle:

    ports free? ─▶ QQ simulator (child, demo fixture) ─▶ config.yaml + registration.yaml
      ─▶ Synapse (LocalSynapse, with the registration) ─▶ the demo Matrix user
      ─▶ the bridge (child, until it logs "qqbridge ready") ─▶ the scripted QQ friends
         (tasks in this loop, `friends`) ─▶ the banner ─▶ wait for Ctrl-C / SIGTERM,
         or for a part to die (then its log's tail, and exit status 1)
    stopping: the friends, then the bridge, then Synapse and the simulator; each one
    bounded, SIGKILL last.

Children run in sessions of their own, so a Ctrl-C reaches only the demo, which stops
them in that order; on Linux a parent-death signal stops them should the demo be killed.
What stays in the working directory between runs is described in `workdir`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from qqbridge.demo import friends as demo_friends
from qqbridge.demo.workdir import (
    SERVER_NAME,
    DemoError,
    ensure_registration,
    matrix_credentials,
    write_config,
)
from qqbridge.local import LocalSynapse, SynapseError
from qqbridge.local.child import die_with_parent_hook, port_is_free, wait_exit
from qqbridge.local.synapse_config import base_url
from qqbridge.qqsim.cli import time_scale
from qqbridge.qqsim.fixture import Fixture, FixtureError, load_fixture

FIXTURE = Path(__file__).with_name("fixture.yaml")
BOT = f"@qqbridge:{SERVER_NAME}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo-data"),
        help="where config, databases and logs live; reused by the next run (default ./demo-data)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="loopback address for all three servers (default 127.0.0.1)"
    )
    parser.add_argument("--hs-port", type=int, default=8008, help="Synapse's port (default 8008)")
    parser.add_argument("--bridge-port", type=int, default=29340, help="the bridge's appservice port (default 29340)")
    parser.add_argument("--qq-port", type=int, default=8000, help="the QQ simulator's port (default 8000)")
    parser.add_argument("--time-scale", type=time_scale, default=1.0, metavar="S",
                        help="speed up the QQ world: every protocol timer and the friends' pace times S (default 1.0)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))


class Child:
    """A `python -m qqbridge ...` child whose output is appended to a log file."""

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name, self.args, self.log_path = name, args, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0  # where this run's output starts in the log

    def start(self) -> None:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "qqbridge", *self.args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True, preexec_fn=die_with_parent_hook(),
            )  # fmt: skip

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def tail(self, lines: int = 20) -> str:
        return "\n".join("  " + line for line in self.output().rstrip().splitlines()[-lines:])

    def died(self) -> str:
        code = self.proc.returncode if self.proc is not None else None
        return f"the {self.name} exited (status {code}); the end of {self.log_path}:\n{self.tail()}"

    async def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if not self.running:
                raise DemoError(self.died())
            if time.monotonic() > deadline:
                raise DemoError(f"the {self.name} did not say {text!r} within {timeout:g} s; "
                                f"the end of {self.log_path}:\n{self.tail()}")  # fmt: skip
            await asyncio.sleep(0.1)

    async def stop(self, timeout: float) -> None:
        """SIGTERM, up to `timeout` seconds, then SIGKILL."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        if not await wait_exit(proc, timeout):
            print(f"The {self.name} did not stop within {timeout:g} s; killing it.", flush=True)
            proc.kill()
            await wait_exit(proc, 5)


def other_computer(host: str) -> str | None:
    """127.0.0.2 for the scripted friends, so that QQ sees them on another computer;
    None (the default source address) where that address cannot be bound."""
    if not host.startswith("127."):
        return None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.2", 0))
    except OSError:
        return None
    return "127.0.0.2"


async def check_matrix_login(homeserver: str, user: str, password: str) -> None:
    """Log in as Element will, then log that session out again."""
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(f"{homeserver}/_matrix/client/v3/login", json=body)
        if answer.status_code != 200:
            raise DemoError(
                f"the Matrix user {user!r} exists, but not with the password in matrix-user.yaml "
                f"(HTTP {answer.status_code}); remove the working directory to start afresh"
            )
        token = answer.json()["access_token"]
        await http.post(f"{homeserver}/_matrix/client/v3/logout", headers={"Authorization": f"Bearer {token}"})


class Demo:
    """The demo's parts: `start` them in order, `watch` them, `stop` them in reverse."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir: Path = args.workdir.resolve()
        self.host: str = args.host
        self.homeserver = base_url(self.host, args.hs_port)
        self.sim: Child | None = None
        self.bridge: Child | None = None
        self.synapse: LocalSynapse | None = None
        self.friends: list[demo_friends.Friend] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.user = self.password = self.qq_password = ""

    async def start(self) -> None:
        args = self.args
        ports = {"--hs-port": args.hs_port, "--bridge-port": args.bridge_port, "--qq-port": args.qq_port}
        for flag, port in ports.items():
            if not port_is_free(self.host, port):
                raise DemoError(f"port {port} on {self.host} is in use (another demo still running?); "
                                f"choose another with {flag}")  # fmt: skip
        try:
            fixture = load_fixture(FIXTURE)
        except FixtureError as exc:
            raise DemoError(str(exc)) from None
        self.qq_password = fixture.account(demo_friends.YOU).password
        self.workdir.mkdir(parents=True, exist_ok=True)

        _progress(f"Starting the QQ simulator on port {args.qq_port}…")
        self.sim = Child("QQ simulator", ["qq-sim", "--fixture", str(FIXTURE), "--host", self.host,
                                          "--port", str(args.qq_port), "--time-scale", str(args.time_scale)],
                         self.workdir / "qq-sim.log")  # fmt: skip
        self.sim.start()
        await self.sim.wait_for("listening on", 30)

        config = write_config(self.workdir, host=self.host, hs_port=args.hs_port, bridge_port=args.bridge_port,
                              qq_port=args.qq_port, time_scale=args.time_scale)  # fmt: skip
        registration = self.workdir / "registration.yaml"
        if await ensure_registration(config, registration):
            _progress(f"Wrote the bridge's registration to {registration}.")

        _progress(f"Starting Synapse on port {args.hs_port} (the first start takes longest)…")
        self.synapse = LocalSynapse(self.workdir / "synapse", server_name=SERVER_NAME, host=self.host,
                                    port=args.hs_port, appservice_registrations=[registration])  # fmt: skip
        await self.synapse.start(timeout=120)
        self.user, self.password = matrix_credentials(self.workdir)
        await self.synapse.register_user(self.user, self.password, displayname="Demo user")
        await check_matrix_login(self.homeserver, self.user, self.password)

        _progress(f"Starting the bridge on port {args.bridge_port}…")
        self.bridge = Child("bridge", ["run", "-c", str(config)], self.workdir / "bridge.log")
        self.bridge.start()
        await self.bridge.wait_for("qqbridge ready", 60)

        self._start_friends(fixture)

    def _start_friends(self, fixture: Fixture) -> None:
        common = {
            "server_url": base_url(self.host, self.args.qq_port) + "/",
            "local_address": other_computer(self.host),
            "time_scale": self.args.time_scale,
        }
        for cls, uin in ((demo_friends.EchoBot, 10002), (demo_friends.Moody, 10003), (demo_friends.Newcomer, 10004)):
            friend = cls(uin, fixture.account(uin).password, **common)
            self.friends.append(friend)
            self.tasks.append(asyncio.create_task(friend.run(), name=f"demo friend {uin}"))

    def banner(self) -> str:
        scale = self.args.time_scale
        moody = 30 * scale
        logs = self.workdir
        rule = "─" * 72
        return f"""
{rule}
 qqbridge demo is ready.

 1. Open Element (Element Desktop, or https://app.element.io in a browser
    on this computer), choose "Sign in", edit the homeserver, and use
      homeserver  {self.homeserver}
      user        {self.user}   (that is @{self.user}:{SERVER_NAME})
      password    {self.password}
 2. Start a chat with {BOT} and type
      login {demo_friends.YOU}
    then, as the next message, the QQ password (the bot redacts it)
      {self.qq_password}
 3. Your QQ friends, played by scripts on "another computer":
      Echo Bot (10002)   answers everything you say: `open 10002`, then chat
      Moody (10003)      goes busy and back online every {moody:g} s
      Newcomer (10004)   will ask to be your friend: `accept 10004`
    `help` lists every command.

 Logs: {logs}/bridge.log, qq-sim.log, synapse/homeserver.log
 Ctrl-C stops everything; running `make demo` again picks up where you left off.
{rule}"""

    async def watch(self, stop: asyncio.Event) -> str | None:
        """Until `stop` is set: None. If a part dies first: what happened."""
        while not stop.is_set():
            for child in (self.sim, self.bridge):
                if child is not None and not child.running:
                    return child.died()
            if self.synapse is not None and not self.synapse.running:
                return f"Synapse exited on its own; see {self.synapse.log_path}"
            for task in list(self.tasks):
                if task.done():  # a friend never ends by itself: that is a bug, not the demo's end
                    self.tasks.remove(task)
                    log = logging.getLogger("qqbridge.demo")
                    log.error(
                        "a scripted friend stopped: %r", task.exception() if not task.cancelled() else "cancelled"
                    )
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
        return None

    @property
    def started_anything(self) -> bool:
        return self.sim is not None

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=3)
        if self.bridge is not None:
            await self.bridge.stop(12)
        parts = []
        if self.synapse is not None:
            parts.append(self.synapse.stop(8))
        if self.sim is not None:
            parts.append(self.sim.stop(5))
        await asyncio.gather(*parts, return_exceptions=True)


def _progress(text: str) -> None:
    print(text, flush=True)


def _log_friends_to_stdout() -> None:
    log = logging.getLogger("qqbridge.demo")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s  QQ  %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


async def _main(args: argparse.Namespace) -> int:
    _log_friends_to_stdout()
    demo = Demo(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    stopping = asyncio.create_task(stop.wait())
    starting = asyncio.create_task(demo.start())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return 0
        starting.result()  # a failed start raises here
        print(demo.banner(), flush=True)
        trouble = await demo.watch(stop)
        if trouble is not None:
            print(f"qqbridge demo: {trouble}", file=sys.stderr, flush=True)
            return 1
        return 0
    except (DemoError, SynapseError, httpx.HTTPError) as exc:
        print(f"qqbridge demo: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stopping.cancel()
        if demo.started_anything:
            _progress("Stopping the demo…")
            await demo.stop()
            _progress("Stopped.")
