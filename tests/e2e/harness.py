"""The parts of an end-to-end test, each really started: the QQ simulator and the
bridge as their own processes, Synapse via `qqbridge.local`, and Matrix users driven by
matrix-nio as a person drives Element."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from nio import (
    AsyncClient,
    LoginResponse,
    RoomCreateResponse,
    RoomMessageEmote,
    RoomMessageNotice,
    RoomMessageText,
    RoomPreset,
)

TEXTUAL = (RoomMessageText, RoomMessageNotice, RoomMessageEmote)

FIXTURES = Path(__file__).parent.parent / "fixtures"

POSTGRES_URL = os.environ.get("QQBRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_POSTGRES = os.environ.get("QQBRIDGE_TEST_REQUIRE_POSTGRES", "") not in ("", "0")


async def _admin() -> asyncpg.Connection:
    """A connection to the PostgreSQL server; none: the test is skipped, saying so, or
    fails where CI requires PostgreSQL."""
    try:
        return await asyncpg.connect(POSTGRES_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if REQUIRE_POSTGRES:
            raise
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {exc}")


async def create_postgres_database(prefix: str) -> str:
    """A fresh PostgreSQL database for a bridge under test; its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"


async def drop_postgres_database(url: str) -> None:
    admin = await _admin()
    try:
        await admin.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def postgres_database(prefix: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL database (its URL), dropped afterwards."""
    url = await create_postgres_database(prefix)
    try:
        yield url
    finally:
        await drop_postgres_database(url)


class Process:
    """A child `python -m qqbridge ...` whose output goes to a log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.log_path, self.env = args, log_path, env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where this run's output begins in the log file

    def start(self) -> None:
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:  # the child has its own copy of the file
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "qqbridge", *self.args], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
            )  # fmt: skip

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log(since_start=True):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[0]} exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.args[0]} did not log {text!r}:\n{self.log()[-3000:]}")

    def log(self, *, since_start: bool = False) -> str:
        if not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()
        return data[self._log_start if since_start else 0 :].decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def write_config(path: Path, **sections: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(sections, sort_keys=False))


class MatrixUser:
    """One person in Element: logs in, opens DMs, types, and watches rooms."""

    def __init__(self, homeserver: str, mxid: str, password: str) -> None:
        self.mxid, self.password = mxid, password
        self.client = AsyncClient(homeserver, mxid)
        self.timeline: dict[str, list[Any]] = {}
        self.invites: dict[str, Any] = {}  # room id → the invite's stripped state
        self.receipts: set[tuple[str, str]] = set()  # (event id, reader)
        self.joined: set[str] = set()

    async def login(self) -> MatrixUser:
        answer = await self.client.login(self.password)
        assert isinstance(answer, LoginResponse), answer
        await self.sync()
        return self

    async def close(self) -> None:
        await self.client.close()

    async def sync(self, timeout_ms: int = 0) -> None:
        answer = await self.client.sync(timeout=timeout_ms, full_state=False)
        rooms = getattr(answer, "rooms", None)
        if rooms is None:
            return
        for room_id, room in rooms.join.items():
            self.timeline.setdefault(room_id, []).extend(room.timeline.events)
            for event in room.ephemeral:
                for receipt in getattr(event, "receipts", []):
                    self.receipts.add((receipt.event_id, receipt.user_id))
        self.invites.update(rooms.invite)

    async def open_control_room(self, bot: str) -> str:
        """What Element does for "start a direct chat with the bot"."""
        answer = await self.client.room_create(
            is_direct=True, preset=RoomPreset.trusted_private_chat, invite=[bot]
        )
        assert isinstance(answer, RoomCreateResponse), answer
        return answer.room_id

    async def accept_invite(self, inviter: str, timeout: float = 30) -> str:
        """Wait for an invite from `inviter` to a room not joined yet, and join it."""
        def invited() -> str | None:
            for room_id, info in self.invites.items():
                if room_id in self.joined:
                    continue
                if any(getattr(e, "sender", None) == inviter for e in info.invite_state):
                    return room_id
            return None

        room_id = await self.wait_for(invited, timeout, f"an invite from {inviter}")
        await self.client.join(room_id)
        self.joined.add(room_id)
        return room_id

    async def send(self, room_id: str, content: dict[str, Any], event_type: str = "m.room.message") -> str:
        answer = await self.client.room_send(room_id, event_type, content)
        return answer.event_id  # type: ignore[union-attr]

    async def say(self, room_id: str, text: str) -> str:
        answer = await self.client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": text})
        return answer.event_id  # type: ignore[union-attr]

    def events(self, room_id: str) -> list[Any]:
        return self.timeline.get(room_id, [])

    def texts(self, room_id: str, sender: str | None = None) -> list[str]:
        return [
            e.body for e in self.timeline.get(room_id, [])
            if isinstance(e, TEXTUAL) and (sender is None or e.sender == sender)
        ]  # fmt: skip

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            await self.sync(timeout_ms=500)
        raise AssertionError(f"{self.mxid} waited {timeout} s in vain for {what or predicate}")

    async def wait_for_text(self, room_id: str, needle: str, *, sender: str | None = None, timeout: float = 30) -> str:
        """The first message in the room (from `sender`) that contains `needle`."""
        def found() -> str | None:
            return next((t for t in self.texts(room_id, sender) if needle in t), None)

        return await self.wait_for(found, timeout, f"{needle!r} in {room_id}")

    async def count_of(self, room_id: str, needle: str) -> int:
        await self.sync()
        return sum(needle in t for t in self.texts(room_id))


async def room_event(homeserver: str, token: str, room_id: str, event_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(
            f"{homeserver}/_matrix/client/v3/rooms/{room_id}/event/{event_id}",
            headers={"Authorization": f"Bearer {token}"},
        )
        return answer.json()


async def settle(seconds: float) -> None:
    await asyncio.sleep(seconds)
