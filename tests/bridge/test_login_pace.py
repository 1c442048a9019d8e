"""Start-up without a login storm: the accounts share one `Pace` of logins a second
(qq.logins_per_second), and each polls as soon as its own login is through."""

from __future__ import annotations

import time

import pytest

from qqbridge.bridge.qq_sessions.pacing import Pace
from qqbridge.bridge.qq_sessions.registry import Accounts
from qqbridge.qq import model
from tests.bridge.test_accounts import MemoryStore, ScriptedQQ, until


def test_a_burst_goes_at_once_then_tokens_come_at_the_rate() -> None:
    now = [100.0]
    pace = Pace(100.0, burst=5, clock=lambda: now[0])
    assert [round(pace.delay(), 6) for _ in range(5)] == [0.0] * 5
    assert [round(pace.delay(), 3) for _ in range(3)] == [0.01, 0.02, 0.03]
    now[0] += 10  # a quiet while refills the burst
    assert [round(pace.delay(), 6) for _ in range(5)] == [0.0] * 5


def test_the_default_burst_is_a_tenth_of_a_second() -> None:
    assert Pace(200.0).burst == 20
    assert Pace(3.0).burst == 1
    with pytest.raises(ValueError):
        Pace(0)


async def test_logins_at_start_up_are_paced_and_each_account_polls_when_in() -> None:
    login_times: list[float] = []
    first_polls: dict[int, float] = {}

    class TimedQQ(ScriptedQQ):
        async def login(self, password_md5: str, *, seq: int | None = None) -> model.LoginOk:
            login_times.append(time.monotonic())
            return await super().login(password_md5, seq=seq)

        async def fetch_messages(self, *, seq: int | None = None) -> model.MessageBatch:
            first_polls.setdefault(self.uin, time.monotonic())
            return await super().fetch_messages(seq=seq)

    async def deliver(mxid: str, seq: int, events: list[model.Event]) -> None: ...
    async def notify(mxid: str, text: str) -> None: ...

    accounts = Accounts(lambda uin: TimedQQ(uin, []), MemoryStore(), deliver, notify, poll_fast=5, poll_idle=5,
                        logins_per_second=100.0)  # fmt: skip
    count = 60
    for uin in range(10001, 10001 + count):
        await accounts.resume(f"@u{uin}:x", uin, "0" * 32)
    try:
        await until(lambda: len(first_polls) == count)
    finally:
        await accounts.close()
    login_times.sort()
    spread = login_times[-1] - login_times[0]
    assert spread >= (count - 10) / 100.0 * 0.9  # a burst of 10, then 100 a second
    busiest = max(sum(1 for t in login_times if start <= t < start + 0.1) for start in login_times)
    assert busiest <= 10 + 11  # never much more than a tenth of a second's worth at once
    assert min(first_polls.values()) < login_times[-1]  # the first ones poll before the last ones log in
