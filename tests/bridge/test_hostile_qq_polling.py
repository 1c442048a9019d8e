"""A lying QQ server over real HTTP (tests/hostile_qq.py) against the poller and the real
client (issue 8, item 6): a server that ends every session at once gets a few logins
with pauses, not a login/GetMsgEx loop; one that lies in List still gets polled, and
the person hears of it once; replies that are always full are fetched in bounded
rounds, with pauses."""

from __future__ import annotations

import asyncio
from typing import Any

from qqbridge.bridge.qq_sessions.accounts import DRAIN_ROUNDS
from qqbridge.bridge.qq_sessions.registry import Accounts
from qqbridge.qq import QQClient
from tests.bridge.test_accounts import MemoryStore
from tests.hostile_qq import HostileQQ, enc_list


def accounts_for(server: HostileQQ, told: list[str], delivered: list[Any], **options: Any) -> Accounts:
    async def deliver(mxid: str, seq: int, events: list[Any]) -> None:
        delivered.extend(events)

    async def notify(mxid: str, text: str) -> None:
        told.append(text)

    return Accounts(lambda uin: QQClient(server.url, uin, timeout=2), MemoryStore(), deliver, notify,
                    **{"poll_fast": 0.1, "poll_idle": 0.5, "backoff_cap": 1.0, **options})  # fmt: skip


async def test_res_20_to_every_getmsgex_gets_logins_with_pauses_not_a_loop() -> None:
    async with HostileQQ() as server:
        server.on("GetMsgEx", lambda f: {"RES": "20"})
        accounts = accounts_for(server, [], [])
        await accounts.resume("@a:x", 10001, "0" * 32)
        await asyncio.sleep(3)
        account = accounts.get("@a:x")
        assert "RES=20" in (account.last_error or "") and account.state.value == "unreachable"
        await accounts.close()
    assert 3 <= server.counts["LOGIN"] <= 12, server.counts  # without pauses: hundreds a second
    assert server.counts["GETMSGEX"] <= server.counts["LOGIN"] + 1


async def test_a_server_that_lies_in_list_is_still_polled_and_the_person_told_once() -> None:
    async with HostileQQ() as server:
        server.on("List", lambda f: {"FN": "1", "SN": "200", "UN": enc_list(range(30000, 30200))})  # asked for 160
        batches = [[(9, 10002, "polled despite the lie")]]
        server.on("GetMsgEx", lambda f: (lambda b: {"MN": str(len(b)), "MT": enc_list([k for k, _, _ in b]),
                                                    "UN": enc_list([u for _, u, _ in b]),
                                                    "MG": enc_list([m for _, _, m in b])})(
            batches.pop(0) if batches else []))  # fmt: skip
        told: list[str] = []
        delivered: list[Any] = []

        async def sync(account: Any) -> None:
            await account.qq.friends()

        accounts = accounts_for(server, told, delivered, on_login=sync)
        await accounts.resume("@a:x", 10001, "0" * 32)
        await asyncio.sleep(3)
        account = accounts.get("@a:x")
        await accounts.close()
    assert [e.text for e in delivered] == ["polled despite the lie"]
    assert "a page of 200 friends, asked for 160" in account.last_error
    assert len([t for t in told if "friend list could not be refreshed" in t]) == 1, told
    assert 2 <= server.counts["LIST"] <= 6, server.counts  # tried again, with backoff
    assert server.counts["GETMSGEX"] >= 5


async def test_replies_that_are_always_full_are_fetched_in_bounded_rounds() -> None:
    full = {"MN": "50", "MT": enc_list([9] * 50), "UN": enc_list([10002] * 50), "MG": enc_list(["spam"] * 50)}
    async with HostileQQ() as server:
        server.on("GetMsgEx", lambda f: full)
        accounts = accounts_for(server, [], [], poll_fast=0.5)
        account = accounts.new("@a:x", 10001, "0" * 32)
        await account.login()
        assert await asyncio.wait_for(account.poll_once(), 10) is True
        await account.qq.aclose()
    assert server.counts["GETMSGEX"] == DRAIN_ROUNDS
