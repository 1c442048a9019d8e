"""Who polls QQ when: one budget of GetMsgEx rounds a second for all accounts.

Each account still runs its own poller task (its login, recovery and outage handling
are its own), but the poller no longer picks its own pace: after every poll it asks
the `PollScheduler` how long to wait, and before every poll it takes a turn from the
budget, `qq.max_requests_per_second` (200 by default).

    active chat (a message either way within ACTIVE_WINDOW, 60 protocol seconds)
        ──▶ polled every ACTIVE_INTERVAL (0.1 s); more active accounts than
            ACTIVE_SHARE of the budget allows slow down together
    just sent a message (`poke`), or just logged in ──▶ polled at once, without
            waiting for a turn (logins have their own pace, `qq.logins_per_second`,
            so a restart with 1,000 accounts polls them all within 1,000 / that)
    idle ──▶ share what the active ones leave (at least IDLE_SHARE of the budget,
             at most IDLE_MAX_SHARE): every  idle accounts / idle budget  seconds,
             never faster than
             `qq.poll_fast`, never slower than the account's poll_idle (the
             server's HI caps it), so no session expires

Waiting costs: a poll is about 0.9 ms of CPU (half of it the kernel's TCP connect and
send, as the protocol has one request per connection), so idle polling is capped at
half the budget, 100 a second by default, about 9 % of a core; the other half buys
latency where people are chatting. The curve at the default budget, no chat active:
100 idle accounts are polled every 1 s, 500 every 5 s, 1,000 every 10 s, 3,000 and
more every 30 s (poll_idle), where the budget no longer binds (the protocol's
keep-alive wins). A poll round that drains full replies counts as one turn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from qqbridge.bridge.qq_sessions.pacing import Pace

DEFAULT_REQUESTS_PER_SECOND = 200.0
ACTIVE_INTERVAL = 0.1  # real seconds: the latency an active chat gets
ACTIVE_WINDOW = 60.0  # protocol seconds (times qq.time_scale): a chat this quiet is idle again
ACTIVE_SHARE = 0.8  # at most this part of the budget goes to active chats
IDLE_SHARE = 0.2  # at least this part is left to the idle accounts
IDLE_MAX_SHARE = 0.5  # and at most this part: waiting costs CPU for everyone, at no one's request
MAX_TURN_WAIT = 5.0  # real seconds: a turn is never waited for longer (keep-alive wins)


class Polled(Protocol):
    """What the scheduler needs of an account: its slowest allowed interval."""

    @property
    def poll_idle(self) -> float: ...


class PollScheduler:
    def __init__(
        self,
        requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND,
        *,
        poll_fast: float = 1.0,
        time_scale: float = 1.0,
        active_interval: float = ACTIVE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if requests_per_second <= 0:
            raise ValueError(f"requests_per_second must be above 0, not {requests_per_second}")
        self.budget = requests_per_second
        self.poll_fast = poll_fast
        self.active_interval = active_interval
        self.active_window = ACTIVE_WINDOW * time_scale
        self._clock = clock
        self._pace = Pace(requests_per_second, clock=clock)
        self._accounts: set[object] = set()
        self._active: dict[object, float] = {}  # account -> monotonic time of its last message either way

    # ---- who is there, who is active ---------------------------------------------------

    def add(self, account: object) -> None:
        self._accounts.add(account)

    def remove(self, account: object) -> None:
        self._accounts.discard(account)
        self._active.pop(account, None)

    def chatted(self, account: object) -> None:
        """A message went either way: the account's chat is active for ACTIVE_WINDOW."""
        self._active[account] = self._clock()

    def is_active(self, account: object) -> bool:
        since = self._active.get(account)
        if since is None:
            return False
        if self._clock() - since > self.active_window:
            del self._active[account]
            return False
        return True

    def active_count(self) -> int:
        now = self._clock()
        for account, since in list(self._active.items()):
            if now - since > self.active_window:
                del self._active[account]
        return len(self._active)

    # ---- the pace ----------------------------------------------------------------------

    def active_every(self, active: int | None = None) -> float:
        """Seconds between polls of an active account: ACTIVE_INTERVAL, slower when
        more are active than ACTIVE_SHARE of the budget pays for."""
        active = self.active_count() if active is None else active
        return max(self.active_interval, active / (self.budget * ACTIVE_SHARE))

    def idle_every(self, account: Polled) -> float:
        """Seconds between polls of an idle account: the idle ones share what the
        active ones leave (at most IDLE_MAX_SHARE of the budget), within [poll_fast,
        the account's poll_idle]."""
        active = self.active_count()
        spent = active / self.active_every(active)
        left = min(max(self.budget - spent, self.budget * IDLE_SHARE), self.budget * IDLE_MAX_SHARE)
        idle = max(1, len(self._accounts) - active)
        return min(max(idle / left, self.poll_fast), account.poll_idle)

    def interval(self, account: Polled) -> float:
        """How long `account` waits after a poll before the next one."""
        return self.active_every() if self.is_active(account) else self.idle_every(account)

    async def turn(self, account: object, *, urgent: bool = False) -> None:
        """Wait for a turn of the budget. An active or urgent account goes at once (its
        turn still counts, so the idle ones wait the longer); no one waits longer than
        MAX_TURN_WAIT."""
        wait = self._pace.delay()
        if urgent or self.is_active(account) or wait <= 0:
            return
        await asyncio.sleep(min(wait, MAX_TURN_WAIT))
