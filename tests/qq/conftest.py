from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from qqbridge.qq import QQClient, password_md5
from qqbridge.qqsim import Simulator

FIXTURE = Path(__file__).parent.parent / "fixtures" / "qq_accounts.yaml"
PASSWORDS = {10001: "secret", 10002: "hunter2", 10003: "carol-pw", 10004: "dave-pw", 10005: "erin-pw", 10006: "frank-pw"}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """A fresh simulator per test, fast clock: 20 s windows last 0.2 s."""
    async with Simulator(FIXTURE, port=0, time_scale=0.01) as simulator:
        yield simulator


@pytest.fixture
async def client_for(sim: Simulator) -> AsyncIterator[Callable[..., QQClient]]:
    clients: list[QQClient] = []

    def make(uin: int, **options: object) -> QQClient:
        client = QQClient(sim.url, uin, **options)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def logged_in(client_for: Callable[..., QQClient]) -> Callable[..., object]:
    async def login(uin: int, **options: object) -> QQClient:
        client = client_for(uin, **options)
        await client.login(password_md5(PASSWORDS[uin]))
        return client

    return login
