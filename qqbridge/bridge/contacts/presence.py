"""Presence that stays true: a puppet's Matrix presence follows its QQ status for as
long as the bridge knows that status.

A homeserver takes a user who neither syncs nor says anything for gone: Synapse drops
an online or unavailable user to offline 30 s after its last presence update (its
`presence.sync_online_timeout`; measured: offline 35 s after a single PUT). A puppet
never syncs, so the bridge says its presence again, every REFRESH_INTERVAL, for every
puppet that is online or busy on QQ:

    Puppets.set_presence (login sync, MT=99, `sync`, a friend request accepted)
        └─▶ PresenceKeeper.say: PUT now; online/unavailable puppets join the schedule,
            an offline one leaves it (offline never lapses: it costs nothing)
    PresenceKeeper.run: a heap of (due, uin); each puppet's turn comes every interval
        at a phase of its own (drawn at random when it joins), so 1,000 online friends
        are 1,000 / 20 s = 50 PUTs a second, spread evenly, never a burst. A puppet no
        running account lists as a friend leaves at its turn: the bridge no longer
        knows its status, and the homeserver lets it lapse to offline.

A status change and a refresh of the same puppet never overlap (one lock per puppet),
so an old status can never land after a new one. A refresh the homeserver refuses or
misses is logged and tried again at the puppet's next turn; a puppet whose refresh is
still under way skips a turn rather than queue a second one.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from qqbridge.bridge.qq_sessions.account_state import AccountState

if TYPE_CHECKING:
    from qqbridge.bridge.qq_sessions.registry import Accounts

log = structlog.get_logger(__name__)

REFRESH_INTERVAL = 20.0  # s: under Synapse's 30 s sync_online_timeout, with room for a slow PUT
IN_FLIGHT = 16  # refreshes under way at once (1,000 online friends need about one)
MIN_SLEEP = 0.05  # s: the loop's finest step; what falls due meanwhile goes together
LAPSING = ("online", "unavailable")  # what a homeserver lets lapse; offline stays

Put = Callable[[int, str], Awaitable[None]]


@dataclass
class _Entry:
    presence: str
    due: float
    said_at: float


class PresenceKeeper:
    def __init__(
        self,
        put: Put,
        *,
        interval: float = REFRESH_INTERVAL,
        watched: Callable[[int], bool] = lambda uin: True,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        in_flight: int = IN_FLIGHT,
    ) -> None:
        """`put(uin, presence)` sets a puppet's presence on the homeserver; `watched(uin)`
        says whether some running account still learns that puppet's QQ status."""
        self._put, self.interval, self.watched = put, interval, watched
        self._clock, self._rng = clock, rng
        self._entries: dict[int, _Entry] = {}
        self._heap: list[tuple[float, int]] = []
        self._locks: dict[int, asyncio.Lock] = {}
        self._flying: dict[int, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(in_flight)
        self._wake = asyncio.Event()
        self.refreshed = 0  # refreshes done (for the benchmark and the tests)
        self.failed = 0

    def __len__(self) -> int:
        """Puppets on the schedule."""
        return len(self._entries)

    def fresh(self, uin: int, presence: str) -> bool:
        """True if `presence` was said for `uin` within the interval: saying it again
        now would change nothing on the homeserver."""
        entry = self._entries.get(uin)
        return entry is not None and entry.presence == presence and self._clock() - entry.said_at < self.interval

    def _lock(self, uin: int) -> asyncio.Lock:
        return self._locks.setdefault(uin, asyncio.Lock())

    async def say(self, uin: int, presence: str) -> None:
        """Set the puppet's presence now, and keep it so (or, for offline, stop)."""
        async with self._lock(uin):
            await self._put(uin, presence)
            now = self._clock()
            entry = self._entries.get(uin)
            if presence not in LAPSING:
                self._entries.pop(uin, None)
            elif entry is not None:  # keeps its phase: its turn is at most an interval away
                entry.presence, entry.said_at = presence, now
            else:
                due = now + self.interval * self._rng()
                self._entries[uin] = _Entry(presence, due, now)
                heapq.heappush(self._heap, (due, uin))
                self._wake.set()

    def tick(self) -> float | None:
        """Start every refresh that is due; the time the next one falls due (None: none)."""
        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            due, uin = heapq.heappop(self._heap)
            entry = self._entries.get(uin)
            if entry is None or entry.due != due:
                continue  # left the schedule, or a stale heap item
            if not self.watched(uin):
                del self._entries[uin]
                continue
            entry.due = due + self.interval
            if entry.due <= now:  # fell a whole interval behind (a stalled loop): a new phase
                entry.due = now + self.interval * self._rng()
            heapq.heappush(self._heap, (entry.due, uin))
            if uin not in self._flying:
                self._flying[uin] = asyncio.create_task(self._refresh(uin), name=f"presence {uin}")
        return self._heap[0][0] if self._heap else None

    async def _refresh(self, uin: int) -> None:
        try:
            async with self._slots, self._lock(uin):
                entry = self._entries.get(uin)
                if entry is None:
                    return
                try:
                    await self._put(uin, entry.presence)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the next turn tries again
                    self.failed += 1
                    log.warning("could not refresh a puppet's presence", uin=uin, error=str(exc))
                    return
                entry.said_at = self._clock()
                self.refreshed += 1
        finally:
            self._flying.pop(uin, None)

    async def settle(self) -> None:
        """Wait for the refreshes under way (tests and the benchmark)."""
        while self._flying:
            await asyncio.gather(*self._flying.values(), return_exceptions=True)

    async def run(self) -> None:
        """The refresh loop: runs until cancelled."""
        try:
            while True:
                self._wake.clear()
                next_due = self.tick()
                timeout = None if next_due is None else max(next_due - self._clock(), MIN_SLEEP)
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
        finally:
            for task in list(self._flying.values()):
                task.cancel()


def friend_of_a_running_account(accounts: Accounts, uin: int) -> bool:
    """Whether some account the bridge runs (and has not given up on) lists `uin` as a
    friend: then QQ tells the bridge its status changes, and its presence is known."""
    return any(
        uin in account.friends and account.state not in (AccountState.STOPPED, AccountState.BAD_PASSWORD)
        for account in accounts.running.values()
    )
