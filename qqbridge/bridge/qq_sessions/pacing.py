"""A token bucket shared by many tasks: `Pace`.

At start-up every account that was logged in logs in again. 1,000 logins at the same
instant are a storm for a QQ server; the accounts share one `Pace` of
`qq.logins_per_second` (200 by default: 1,000 accounts in 5 s), so the logins come
evenly, each account polling as soon as its own login is through. A short burst
(`burst`, a tenth of a second's worth) goes without waiting, so a single login, or a
test's few, never waits at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Pace:
    def __init__(self, rate: float, burst: int | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be above 0, not {rate}")
        self.rate = rate
        self.burst = max(1, int(rate / 10) if burst is None else burst)
        self._clock = clock
        self._next = float("-inf")  # the time the next token is due (GCRA's theoretical arrival time)

    def delay(self) -> float:
        """Take a token; the seconds the taker must wait before acting on it."""
        now = self._clock()
        due = max(self._next, now - (self.burst - 1) / self.rate)
        self._next = due + 1 / self.rate
        return max(0.0, due - now)

    async def take(self) -> None:
        """Wait for a token (tokens are handed out in the order they are asked for)."""
        wait = self.delay()
        if wait > 0:
            await asyncio.sleep(wait)
