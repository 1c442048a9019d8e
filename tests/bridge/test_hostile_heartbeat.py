"""A QQ server whose Login says HI=0 cannot make the poller flood it: the poll interval
has a floor (poll_fast, and at least 0.5 s). The real client over HTTP, a lying
in-process server (tests/hostile_qq.py) and the poller's in-memory store."""

from __future__ import annotations

import asyncio

import pytest

from qqbridge.bridge.qq_sessions.registry import Accounts
from qqbridge.qq import QQClient
from tests.bridge.test_accounts import MemoryStore
from tests.hostile_qq import HostileQQ


@pytest.mark.parametrize("heartbeat", ["0", "1"])
async def test_hi_0_in_the_login_reply_does_not_make_the_poller_flood(heartbeat: str) -> None:
    async with HostileQQ() as server:
        server.on("Login", lambda f: {"RS": "0", "HI": heartbeat, "LI": "300"})

        async def deliver(*_: object) -> None: ...
        async def notify(*_: object) -> None: ...

        accounts = Accounts(lambda uin: QQClient(server.url, uin, timeout=2), MemoryStore(), deliver, notify,
                            poll_fast=0.1, poll_idle=30.0)  # fmt: skip
        await accounts.resume("@a:x", 10001, "0" * 32)
        await asyncio.sleep(0.5)  # logged in, the idle backoff climbing to its ceiling
        before = server.counts["GETMSGEX"]
        await asyncio.sleep(3)
        rate = (server.counts["GETMSGEX"] - before) / 3
        await accounts.close()
    assert server.counts["LOGIN"] == 1
    floor = max(float(heartbeat), 0.5)
    assert 0 < rate <= 1 / floor + 0.5, f"{rate:.1f} GetMsgEx a second"
