"""`python -m qqbridge qq-sim` as a real process: start line, a scripted chat, clean stop."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.sim.simclient import QQ

ROOT = Path(__file__).resolve().parents[2]
TWO_ACCOUNTS = """\
accounts:
  - uin: 10001
    password: "alice-pw"
    nick: "Alice"
    friends: [10002]
  - uin: 10002
    password: "bob-pw"
    nick: "Bob"
    friends: [10001]
"""
BANNER = re.compile(r"qq-sim listening on http://127\.0\.0\.1:(\d+) \(time scale 0\.01\)\n")


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qqbridge", "qq-sim", *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    fixture = tmp_path / "sim_two.yaml"
    fixture.write_text(TWO_ACCOUNTS, encoding="utf-8")
    process = await start("--fixture", str(fixture), "--host", "127.0.0.1", "--port", "0", "--time-scale", "0.01")
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 20)  # type: ignore[union-attr]
        match = BANNER.fullmatch(line.decode())
        assert match, line
        yield process, int(match.group(1))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_scripted_two_account_chat_then_sigterm(server: tuple[asyncio.subprocess.Process, int]) -> None:
    process, port = server
    alice, bob = QQ(port, "127.0.0.1"), QQ(port, "127.0.0.2")
    assert (await alice.login(10001, "alice-pw"))["RES"] == "0"
    assert (await bob.login(10002, "bob-pw"))["RES"] == "0"
    for text in ["Hi Bob!", "Are you there?", "你好, 100%"]:
        assert (await alice.call("CLTMSG", 10001, UN=10002, MG=text))["RES"] == "0"
    assert await bob.messages(10002) == [
        (99, 10001, "10"),  # queued while Bob was offline
        (9, 10001, "Hi Bob!"),
        (9, 10001, "Are you there?"),
        (9, 10001, "你好, 100%"),
    ]
    assert (await bob.call("CLTMSG", 10002, UN=10001, MG="Yes, here."))["RES"] == "0"
    assert await alice.messages(10001) == [(99, 10002, "10"), (9, 10002, "Yes, here.")]
    assert (await alice.call("Logout", 10001))["RES"] == "0"
    assert await bob.messages(10002) == [(99, 10001, "20")]

    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 10) == 0
    stderr = await process.stderr.read()  # type: ignore[union-attr]
    assert b"Traceback" not in stderr, stderr


async def test_sigint_stops_it_cleanly_too(server: tuple[asyncio.subprocess.Process, int]) -> None:
    process, port = server
    assert (await QQ(port).call("Logout", 10001))["RES"] == "0"
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), 10) == 0
    assert b"Traceback" not in await process.stderr.read()  # type: ignore[union-attr]


async def test_a_bad_fixture_is_one_clear_error(tmp_path: Path) -> None:
    fixture = tmp_path / "sim_bad.yaml"
    fixture.write_text(TWO_ACCOUNTS.replace('nick: "Bob"', "nick: Bob\n    auth: 7"), encoding="utf-8")
    process = await start("--fixture", str(fixture), "--port", "0")
    stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert stdout == b""
    assert stderr.decode().strip().splitlines() == [
        f"qq-sim: fixture {fixture}: account 10002: field 'auth': must be 0, 1 or 2, got 7"
    ]


async def test_an_unknown_quirk_is_refused(tmp_path: Path) -> None:
    fixture = tmp_path / "sim_two.yaml"
    fixture.write_text(TWO_ACCOUNTS, encoding="utf-8")
    process = await start("--fixture", str(fixture), "--port", "0", "--quirk", "no-such-quirk")
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert b"no-such-quirk" in stderr and b"Traceback" not in stderr


async def test_quirks_can_be_switched_on(tmp_path: Path) -> None:
    fixture = tmp_path / "sim_two.yaml"
    fixture.write_text(TWO_ACCOUNTS, encoding="utf-8")
    process = await start(
        "--fixture", str(fixture), "--port", "0", "--time-scale", "0.01", "--quirk", "lowercase-h", "verify-twice"
    )  # fmt: skip
    try:
        port = int(BANNER.fullmatch((await asyncio.wait_for(process.stdout.readline(), 20)).decode()).group(1))  # type: ignore[union-attr]
        qq = QQ(port)
        assert (await qq.login(10001, "alice-pw"))["RES"] == "0"
        assert await qq.call("CLTMSG", 10001, UN=10002, MG="hello") is None
        assert (await qq.call("Ack_AddToList", 10001, UN=10002, CD=2, RS="x"))["RES"] == "3"
    finally:
        process.terminate()
        assert await process.wait() == 0
