"""`qqbridge demo` as a newcomer meets it: started as a process, then used from a Matrix
client (matrix-nio, as Element would) with only what its banner says; stopped with
SIGTERM; started again on the same directory."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from qqbridge.local.child import free_port
from tests.e2e.harness import MatrixUser, Process

BOT = "@qqbridge:localhost"
ECHO_BOT, NEWCOMER = "@_qq_10002:localhost", "@_qq_10004:localhost"
READY = "qqbridge demo is ready"

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="counts child processes in /proc")


def child_pids(pid: int) -> set[int]:
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # the field after the state
            children.add(int(entry.name))
    return children


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def banner_field(banner: str, name: str) -> str:
    match = re.search(rf"^\s+{name}\s+(\S+)", banner, re.MULTILINE)
    assert match, f"no {name} in the banner:\n{banner}"
    return match.group(1)


def stop_cleanly(demo: Process) -> None:
    assert demo.proc is not None
    children = child_pids(demo.proc.pid)
    assert len(children) >= 3, children  # the simulator, Synapse, the bridge
    started = time.monotonic()
    code = demo.stop(signal.SIGTERM)
    assert code == 0, demo.log()[-3000:]
    assert time.monotonic() - started < 20
    assert not [pid for pid in children if alive(pid)], "children outlived the demo"
    assert "Stopped." in demo.log(since_start=True)


async def command(person: MatrixUser, room: str, text: str, answer: str) -> str:
    before = len(person.texts(room, BOT))
    await person.say(room, text)
    return await person.wait_for(
        lambda: next((t for t in person.texts(room, BOT)[before:] if answer in t), None), 30, f"{answer!r}"
    )


async def test_make_demo_from_a_newcomers_seat(tmp_path: Path) -> None:
    ports = [free_port("127.0.0.1") for _ in range(3)]
    args = ["demo", "--workdir", str(tmp_path / "demo-data"), "--hs-port", str(ports[0]),
            "--bridge-port", str(ports[1]), "--qq-port", str(ports[2]), "--time-scale", "0.05"]  # fmt: skip
    demo = Process(args, tmp_path / "demo.out")
    demo.start()
    person: MatrixUser | None = None
    try:
        demo.wait_for_log(READY, timeout=120)
        banner = demo.log()
        homeserver, password = banner_field(banner, "homeserver"), banner_field(banner, "password")
        assert homeserver == f"http://127.0.0.1:{ports[0]}" and f"Start a chat with {BOT}" in banner
        assert "login 10001" in banner

        person = await MatrixUser(homeserver, "@demo:localhost", password).login()
        room = await person.open_control_room(BOT)
        await person.wait_for_text(room, "login", sender=BOT)
        await command(person, room, "login 10001", "next message")
        await person.say(room, "demo")
        await person.wait_for_text(room, "Logged into QQ as 10001", sender=BOT, timeout=60)

        # Newcomer saw us come online and asks; accepting gets a thank-you in a new portal.
        prompt = await person.wait_for_text(room, "Shall we be friends?", sender=BOT)
        assert "10004" in prompt
        await command(person, room, "accept 10004", "10004")
        portal = await person.accept_invite(NEWCOMER)
        await person.wait_for_text(portal, "thanks for accepting", sender=NEWCOMER)

        # Echo Bot answers in its portal, CJK and all.
        await command(person, room, "open 10002", "Your portal with Echo Bot")
        portal = await person.accept_invite(ECHO_BOT)
        await person.say(portal, "hello 你好")
        await person.wait_for_text(portal, "You said: hello 你好", sender=ECHO_BOT)
        await person.close()
        person = None
        stop_cleanly(demo)

        # Again, on the same directory: same user and password, still logged into QQ.
        demo.start()
        demo.wait_for_log(READY, timeout=60)
        again = demo.log(since_start=True)
        assert banner_field(again, "password") == password
        assert "registration" not in again.split(READY)[0]  # the registration was reused
        person = await MatrixUser(homeserver, "@demo:localhost", password).login()
        await command(person, room, "ping", "QQ 10001: online")
        await person.close()
        person = None
        stop_cleanly(demo)
    finally:
        if person is not None:
            await person.close()
        if demo.proc is not None and demo.proc.poll() is None:
            demo.stop(signal.SIGKILL)
