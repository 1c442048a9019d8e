"""Living with a QQ server that is out: one cheap probe a second per server, and each
person told once, the truth.

    an account's request fails as an outage would (cannot connect, no whole reply
    within the deadline, a reply that makes no sense)
        ──▶ QQServer.suspect: probe now (Logout of UIN 1, which no one can be logged in as)
              probe answered ──▶ up: the trouble is the account's own, it backs off alone
              probe fails    ──▶ down, since the failed request began; a probe a second
                                 (never more, however many accounts wait), and the
                                 pollers and senders of every account on that server
                                 wait for the word instead of sending requests
        a probe answers ──▶ up: `recoveries` + 1, and every waiter moves on at once

    OutageNotice, one per account:
        unreachable for `after` ──▶ ONE notice: since when, why, that its messages wait
        reachable again, after that notice ──▶ ONE notice: how long, what was lost (nothing)
        a new outage within `quiet` of the last notice is not told (a flapping server)

Durations are the caller's: the bridge scales "a minute" and "10 minutes" by
`qq.time_scale`, while the probe interval is real seconds (it protects a real server).
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import math
import time
from collections.abc import Awaitable, Callable

import structlog

from qqbridge.qq import errors

log = structlog.get_logger(__name__)

PROBE_INTERVAL = 1.0  # at most one probe a second per QQ server
PROBE_TIMEOUT = 10.0  # a probe that takes longer counts as no answer
PROBE_STALL = 2.0  # an honest server answers a Logout at once: no answer by then, it hangs
PROBE_UIN = 1  # an illegal QQ number: Logout for it answers RES=0 and ends no one's session

Probe = Callable[[], Awaitable[object]]


def outage_reason(exc: BaseException) -> str | None:
    """What an outage looks like to a person, or None when `exc` is no sign of one (the
    server answered: a refusal, RES=20, a wrong password)."""
    if isinstance(exc, errors.ServerUnavailable):
        return "the QQ server cannot be reached"
    if isinstance(exc, (errors.OutcomeUnknown, TimeoutError)):
        return "the QQ server does not answer"
    if isinstance(exc, (errors.RemoteProtocolError, errors.NullReply)):
        return "the QQ server's replies make no sense"
    if isinstance(exc, OSError):
        return "the QQ server cannot be reached"
    return None


def clock_time(when: float, now: float | None = None) -> str:
    """A wall-clock time for a notice, in UTC; with the date when it is not today's."""
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    today = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.UTC).date()
    return moment.strftime("%H:%M:%S UTC" if moment.date() == today else "%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    """`45 s`, `3 min 5 s`, `2 h 7 min`: what a person reads at a glance."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


class State(enum.Enum):
    UP = "up"
    SUSPECT = "suspect"  # a request failed; the probe will tell
    DOWN = "down"


class QQServer:
    """The health of one QQ server, shared by every account on it. `probe` raises
    unless the server answers; without one (a test's fake QQ) the server is never known
    to be down and `wait` is a plain backoff."""

    def __init__(
        self,
        name: str,
        probe: Probe | None,
        *,
        interval: float = PROBE_INTERVAL,
        timeout: float = PROBE_TIMEOUT,
        stall: float = PROBE_STALL,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._probe = probe
        self.interval, self.timeout, self.stall = interval, timeout, stall
        self._clock, self._wall = clock, wall
        self.state = State.UP
        self.down_since: float | None = None  # wall time the failed request began
        self.why = ""
        self.recoveries = 0  # outages ended: a waiter moves on when this passes its mark
        self.answers = 0  # probes answered
        self.probes = 0
        self._changed = asyncio.Event()
        self._prober: asyncio.Task[None] | None = None
        self._last_probe = -math.inf  # clock time the latest probe began, whichever prober

    @property
    def down(self) -> bool:
        return self.state is State.DOWN

    def suspect(self, why: str, since: float | None = None) -> None:
        """A request (begun at wall time `since`) failed as an outage would: probe."""
        if self._probe is None:
            return
        if self.state is State.UP:
            self.state = State.SUSPECT
            self.down_since, self.why = self._wall() if since is None else since, why
        if self._prober is None or self._prober.done():
            self._prober = asyncio.create_task(self._probing(), name=f"probe {self.name}")

    async def failed(self, exc: BaseException, since: float, mark: int, longest: float) -> None:
        """What a poller or sender does after a request (begun at wall time `since`,
        when `recoveries` was `mark`) failed as an outage would: suspect the server,
        then wait until it answers again. A request that could not connect or got no
        answer is tried again as soon as the probe gets one; a garbled reply, which the
        server may give this account only, after the caller's backoff (`longest`)."""
        answers = self.answers
        why = outage_reason(exc) or str(exc)
        self.suspect(why, since)
        quick = isinstance(exc, (errors.ServerUnavailable, errors.OutcomeUnknown, TimeoutError, OSError))
        await self.wait(mark, longest, answers if quick else None)

    async def wait(self, mark: int, longest: float, answers: int | None = None) -> None:
        """After a failed request (`mark`: `recoveries` when it began): return as soon
        as the server has come back since (or, given `answers`, as soon as a probe has
        been answered since it was that), or, while it is up, after `longest` seconds
        (the caller's own backoff, for trouble that is not the server's)."""
        deadline = self._clock() + longest
        while self.recoveries == mark and (answers is None or self.answers == answers):
            changed = self._changed
            if self.state is State.UP:
                left = deadline - self._clock()
                if left <= 0:
                    return
                try:
                    await asyncio.wait_for(changed.wait(), left)
                except TimeoutError:
                    return
            else:
                await changed.wait()

    async def until_up(self) -> None:
        """While the server is known to be down, only its probe talks to it."""
        while self.state is State.DOWN:
            await self._changed.wait()

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
            self._prober = None

    # ---- the prober --------------------------------------------------------------------

    def _announce(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _probing(self) -> None:
        """A probe now, then one per `interval` until one is answered. A probe of a hung
        server may take up to `timeout`, so a few may be out at once; a fresh one then
        gets through as soon as the server does. A probe still unanswered after `stall`
        means the server hangs: it is down from then on, not only once the probe gives up."""
        probes: dict[asyncio.Task[str | None], float] = {}  # → when it began
        most = max(1, math.ceil(self.timeout / self.interval))
        try:
            while self.state is not State.UP:
                now = self._clock()
                next_at = self._last_probe + self.interval
                if now >= next_at and len(probes) < most:
                    self._last_probe, next_at = now, now + self.interval
                    probes[asyncio.create_task(self._probe_once())] = now
                if probes and now - min(probes.values()) >= self.stall:
                    self._down("the QQ server does not answer")
                wakes = [next_at] if len(probes) < most else []
                if self.state is not State.DOWN and probes:
                    wakes.append(min(probes.values()) + self.stall)
                wait = max(0.0, min(wakes) - now) if wakes else None
                if not probes:
                    await asyncio.sleep(wait or 0)
                    continue
                done, _ = await asyncio.wait(probes, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    del probes[task]
                    why = task.result()
                    if why is None:
                        self._up()
                        return
                    self._down(why)
        finally:
            for task in probes:
                task.cancel()

    async def _probe_once(self) -> str | None:
        """None when the server answered (whatever it said), else why not."""
        assert self._probe is not None
        self.probes += 1
        try:
            async with asyncio.timeout(self.timeout):
                await self._probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, (errors.QQError, OSError, TimeoutError)):
                # A broken probe tells nothing: the accounts go on with their own backoff.
                log.error("QQ server probe failed unexpectedly", server=self.name, exc_info=exc)
            return outage_reason(exc)  # None for an answer of any kind, a refusal too
        return None

    def _down(self, why: str) -> None:
        if self.state is State.DOWN:
            return
        self.state, self.why = State.DOWN, why
        log.warning("QQ server out; probing it once a second", server=self.name, why=why,
                    since=clock_time(self.down_since or self._wall()))  # fmt: skip
        self._announce()

    def _up(self) -> None:
        was_down = self.state is State.DOWN
        self.state = State.UP
        self.answers += 1
        log.debug("QQ server probe answered", server=self.name, was_down=was_down)
        if was_down:
            self.recoveries += 1
            lasted = self._wall() - (self.down_since or self._wall())
            log.warning("QQ server answers again", server=self.name, after=duration(lasted))
        self.down_since = None
        self._announce()


class OutageNotice:
    """One account's outage, told once each way. `tell` sends a notice to its person;
    `down_text(since, why)` and `back_text(since, lasted)` word them."""

    def __init__(
        self,
        tell: Callable[[str], Awaitable[None]],
        down_text: Callable[[float, str], str],
        back_text: Callable[[float, float], Awaitable[str]],
        *,
        after: float,
        quiet: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._tell, self._down_text, self._back_text = tell, down_text, back_text
        self.after, self.quiet = after, quiet
        self._clock, self._wall = clock, wall
        self.since: float | None = None  # wall time the outage began; None while reachable
        self.why = ""
        self.told = False  # the current outage's notice went out
        self._last_told = -math.inf  # clock time of the last "unreachable" notice
        self._timer: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._last: asyncio.Task[None] | None = None

    def failed(self, why: str, since: float) -> None:
        """The account cannot reach QQ (since wall time `since`, if this begins an outage)."""
        self.why = why
        if self.since is None:
            self.since, self.told = since, False
            self._timer = asyncio.create_task(self._tell_when_due(), name="outage notice")

    def recovered(self) -> None:
        """The account reached QQ: the outage, if any, is over."""
        if self.since is None:
            return
        since, told = self.since, self.told
        self.since, self.told = None, False
        self._cancel_timer()
        if told:
            lasted = self._wall() - since
            self._send(lambda: self._back(since, lasted))

    async def close(self) -> None:
        self._cancel_timer()
        for task in self._sending:
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        self._timer = None

    async def _tell_when_due(self) -> None:
        assert self.since is not None
        begun = self._clock() - max(0.0, self._wall() - self.since)
        due = max(begun + self.after, self._last_told + self.quiet)
        await asyncio.sleep(max(0.0, due - self._clock()))
        if self.since is None:
            return
        self.told, self._last_told = True, self._clock()
        since, why = self.since, self.why
        self._send(lambda: self._down(since, why))

    async def _down(self, since: float, why: str) -> None:
        await self._say(lambda: self._down_text(since, why))

    async def _back(self, since: float, lasted: float) -> None:
        await self._say(lambda: self._back_text(since, lasted))

    def _send(self, saying: Callable[[], Awaitable[None]]) -> None:
        """Notices go out in their own tasks (a slow homeserver holds up no poller), one
        after the other: "back" never overtakes "unreachable"."""
        before = self._last

        async def in_turn() -> None:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            await saying()

        task = self._last = asyncio.create_task(in_turn(), name="outage notice")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _say(self, text: Callable[[], str | Awaitable[str]]) -> None:
        try:
            said = text()
            await self._tell(said if isinstance(said, str) else await said)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the homeserver may be down too: the log keeps it
            log.warning("could not tell a person about a QQ outage", error=str(exc), text=text)
