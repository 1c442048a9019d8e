"""The poll budget (qqbridge/bridge/qq_sessions/poll_scheduler.py): active chats every 0.1 s, an
account that just sent polled at once, idle accounts sharing the rest of
qq.max_requests_per_second (at most half), none slower than poll_idle (the server's HI)."""

from __future__ import annotations

import time

import pytest

from qqbridge.bridge.qq_sessions.poll_scheduler import DEFAULT_REQUESTS_PER_SECOND, PollScheduler
from qqbridge.bridge.qq_sessions.registry import Accounts
from qqbridge.qq import model
from tests.bridge.test_accounts import MemoryStore, ScriptedQQ, until


class Account:
    def __init__(self, poll_idle: float = 30.0) -> None:
        self.poll_idle = poll_idle


def scheduler_with(accounts: int, budget: float = DEFAULT_REQUESTS_PER_SECOND) -> tuple[PollScheduler, list[Account], list[float]]:
    now = [1000.0]
    scheduler = PollScheduler(budget, poll_fast=1.0, clock=lambda: now[0])
    added = [Account() for _ in range(accounts)]
    for account in added:
        scheduler.add(account)
    return scheduler, added, now


@pytest.mark.parametrize(("accounts", "every"), [(1, 1.0), (100, 1.0), (500, 5.0), (1000, 10.0), (5000, 30.0)])
def test_idle_accounts_share_the_budget_within_poll_fast_and_poll_idle(accounts: int, every: float) -> None:
    scheduler, added, _ = scheduler_with(accounts)
    assert scheduler.interval(added[0]) == pytest.approx(every)


def test_the_servers_heartbeat_caps_the_idle_interval() -> None:
    scheduler, _, _ = scheduler_with(5000)
    assert scheduler.interval(Account(poll_idle=12.0)) == 12.0


def test_an_active_chat_is_polled_every_100_ms_for_a_minute_then_idle_again() -> None:
    scheduler, added, now = scheduler_with(1000)
    scheduler.chatted(added[0])
    assert scheduler.interval(added[0]) == pytest.approx(0.1)
    assert scheduler.interval(added[1]) == pytest.approx(999 / 100)  # the idle ones' half of the budget is left
    now[0] += 59
    assert scheduler.interval(added[0]) == pytest.approx(0.1)
    now[0] += 2
    assert scheduler.interval(added[0]) == pytest.approx(10.0)


def test_idle_accounts_get_at_most_half_the_budget_and_pay_for_chats_beyond_the_other_half() -> None:
    scheduler, added, _ = scheduler_with(1000, budget=1000.0)
    assert scheduler.interval(added[0]) == pytest.approx(1000 / 500)  # not 1,000 polls a second for waiting
    for account in added[:60]:  # 60 chats at 0.1 s: 600 a second, more than the other half
        scheduler.chatted(account)
    assert scheduler.interval(added[0]) == pytest.approx(0.1)
    assert scheduler.interval(added[500]) == pytest.approx(940 / 400)


def test_many_active_chats_slow_down_together_and_leave_the_idle_ones_a_share() -> None:
    scheduler, added, _ = scheduler_with(1000)
    for account in added[:200]:
        scheduler.chatted(account)
    assert scheduler.interval(added[0]) == pytest.approx(200 / 160)
    assert scheduler.interval(Account(poll_idle=60.0)) == pytest.approx(800 / 40)  # 20 % of the budget is theirs
    assert scheduler.interval(Account(poll_idle=12.0)) == 12.0  # and none slower than poll_idle


async def test_a_turn_waits_for_the_budget_unless_urgent_or_active() -> None:
    scheduler = PollScheduler(10.0)  # burst of 1: the second turn within 0.1 s waits
    idle, active = Account(), Account()
    scheduler.chatted(active)
    await scheduler.turn(idle)
    started = time.monotonic()
    await scheduler.turn(active)
    await scheduler.turn(idle, urgent=True)
    assert time.monotonic() - started < 0.05
    await scheduler.turn(idle)  # 3 turns spent: waits about 0.3 s
    assert time.monotonic() - started >= 0.2


async def test_the_bridge_polls_an_active_chat_fast_and_a_poked_account_at_once() -> None:
    polls: dict[int, list[float]] = {10001: [], 10002: []}

    class Chatty(ScriptedQQ):
        async def fetch_messages(self, *, seq: int | None = None) -> model.MessageBatch:
            polls[self.uin].append(time.monotonic())
            return await super().fetch_messages(seq=seq)

    async def deliver(mxid: str, seq: int, events: list[model.Event]) -> None: ...
    async def notify(mxid: str, text: str) -> None: ...

    message = model.MessageBatch((model.Message(10009, "hi"),), False)
    scripts = {10001: [message], 10002: []}
    accounts = Accounts(lambda uin: Chatty(uin, scripts[uin]), MemoryStore(), deliver, notify,
                        poll_fast=5.0, poll_idle=30.0, max_requests_per_second=100.0)  # fmt: skip
    await accounts.resume("@a:x", 10001, "0" * 32)
    await accounts.resume("@b:x", 10002, "0" * 32)
    try:
        await until(lambda: len(polls[10001]) >= 6 and len(polls[10002]) >= 1)
        gaps = [b - a for a, b in zip(polls[10001][1:], polls[10001][2:], strict=False)]
        assert max(gaps) < 0.5  # a message came: polled every ~0.15 s, not every 5 s
        assert len(polls[10002]) == 1  # idle: next poll only after poll_fast (5 s)
        poked = time.monotonic()
        accounts.get("@b:x").poke()  # its person just sent a message: look for the answer now
        await until(lambda: len(polls[10002]) >= 2)
        assert polls[10002][1] - poked < 0.1
    finally:
        await accounts.close()


async def test_each_account_polls_as_soon_as_its_login_is_through_whatever_the_budget() -> None:
    # A restart with 40 accounts and a budget of 2 polls a second: the logins are paced
    # (their own budget), but the first poll after each does not wait for a turn, or the
    # last account would poll only after 20 s.
    first_poll: dict[int, float] = {}

    class Counted(ScriptedQQ):
        async def fetch_messages(self, *, seq: int | None = None) -> model.MessageBatch:
            first_poll.setdefault(self.uin, time.monotonic())
            return await super().fetch_messages(seq=seq)

    async def deliver(mxid: str, seq: int, events: list[model.Event]) -> None: ...
    async def notify(mxid: str, text: str) -> None: ...

    accounts = Accounts(lambda uin: Counted(uin, []), MemoryStore(), deliver, notify,
                        poll_fast=1.0, poll_idle=30.0, max_requests_per_second=2.0)  # fmt: skip
    started = time.monotonic()
    try:
        for i in range(40):
            await accounts.resume(f"@u{i}:x", 10001 + i, "0" * 32)
        await until(lambda: len(first_poll) == 40)
        assert max(first_poll.values()) - started < 2.0
    finally:
        await accounts.close()
