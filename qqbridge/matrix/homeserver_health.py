"""Is the homeserver answering? One watcher for the whole bridge, so that an outage
costs one cheap probe a second, not a retry per request, and everything that waits
moves on the moment the homeserver answers again.

    a request cannot reach it (refused, reset, timed out, HTTP 502/503/504),
    or has had no answer for `stall_after` s (a hung server)
        ──▶ suspect: probe now (GET /_matrix/client/versions)
              probe answers ──▶ up again, nothing said (a stale connection, a blip)
              probe fails   ──▶ down, since the first failure: qqbridge_homeserver_up 0,
                                qqbridge_homeserver_outages_total +1, /ready names it;
                                a probe a second (never more, whatever waits), and
                                requests wait for the word instead of going out
        down for `outage_after` s ──▶ ONE warning: "homeserver unreachable since …, N … wait"
        a probe (or any request) answers ──▶ up: every waiter wakes at once; ONE
                                warning "homeserver back after X s" if the outage was told

Timing is in real seconds (the homeserver's clock is not QQ's `time_scale`); the
threshold is a constructor argument so tests can use a short one.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)

OUTAGE_AFTER = 60.0  # an outage longer than this is told (log warning), once
PROBE_INTERVAL = 1.0  # while down: one probe a second for the whole bridge
PROBE_TIMEOUT = 5.0  # a probe that takes longer counts as no answer
WAITING_TIMEOUT = 2.0  # counting what waits (for the warning) must not hold the prober


class State(enum.Enum):
    UP = "up"
    SUSPECT = "suspect"  # a request failed; the probe will tell
    DOWN = "down"


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class HomeserverHealth:
    """`probe` raises unless the homeserver answers. The HTTP client reports what its
    requests met (`failed`, `stalled`, `answered`); waiters use `answering` and
    `wait_answering`."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[Any]],
        *,
        outage_after: float = OUTAGE_AFTER,
        probe_interval: float = PROBE_INTERVAL,
        probe_timeout: float = PROBE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._probe = probe
        self.outage_after = outage_after
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self._clock, self._wall = clock, wall
        self.state = State.UP
        self._since = 0.0  # clock time of the first failure of the current trouble
        self._announced = False
        self._up = asyncio.Event()
        self._up.set()
        self._prober: asyncio.Task[None] | None = None
        self._last_probe = float("-inf")  # clock time the latest probe started, across outages
        self.outages = 0  # confirmed outages (went down), for tests and the metrics
        self.probes = 0
        self._metrics: Any = None
        self._waiting: Callable[[], Awaitable[int]] | None = None

    def watch(self, metrics: Any, waiting: Callable[[], Awaitable[int]] | None = None) -> None:
        """Report to `metrics` (qqbridge.metrics.Metrics); `waiting` counts what waits
        for the homeserver, for the outage warning."""
        self._metrics, self._waiting = metrics, waiting
        metrics.homeserver_up.set(0 if self.state is State.DOWN else 1)

    # ---- what waiters ask ----------------------------------------------------------------

    @property
    def answering(self) -> bool:
        return self.state is State.UP

    @property
    def down(self) -> bool:
        return self.state is State.DOWN

    def down_for(self) -> float:
        return self._clock() - self._since if self.state is State.DOWN else 0.0

    def since_text(self) -> str:
        return _utc(self._wall() - (self._clock() - self._since))

    def problem(self) -> str | None:
        """For /ready: why the homeserver counts as a problem, or None."""
        if self.state is not State.DOWN:
            return None
        return f"the homeserver does not answer (since {self.since_text()}, {self.down_for():.0f} s)"

    async def wait_answering(self, timeout: float | None = None) -> bool:
        """True as soon as the homeserver answers (at once if it does); False after `timeout`."""
        if self.state is State.UP:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
        except TimeoutError:
            return False
        return True

    # ---- what requests report --------------------------------------------------------

    def failed(self, since: float | None = None) -> None:
        """A request could not reach the homeserver (it started at clock time `since`)."""
        if self.state is State.UP:
            self.state = State.SUSPECT
            self._since = self._clock() if since is None else since
            self._up.clear()
        self._ensure_prober()

    def stalled(self, since: float | None = None) -> None:
        """A request (started at `since`) has had no answer for long: hung, or just slow."""
        self.failed(since)

    def answered(self) -> None:
        """A request got an answer from the homeserver itself."""
        if self.state is not State.UP:
            self._recover()

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
            self._prober = None

    # ---- the prober --------------------------------------------------------------------

    def _ensure_prober(self) -> None:
        if self._prober is None or self._prober.done():
            self._prober = asyncio.create_task(self._probe_loop(), name="homeserver probe")

    async def _probe_loop(self) -> None:
        """A probe now (or as soon as a second has passed since the last one, even one
        of an earlier outage: a flapping server is not probed faster), then one a
        second until one answers. A probe may take up to
        `probe_timeout` (a hung server), so a few may be out at once, but they start at
        most once per `probe_interval`: a fresh one then gets through as soon as the
        server does, rather than one stuck in a full accept queue."""
        probes: set[asyncio.Task[None]] = set()
        most = math.ceil(self.probe_timeout / self.probe_interval) + 1
        try:
            while self.state is not State.UP:
                now = self._clock()
                if len(probes) < most and now - self._last_probe >= self.probe_interval:
                    self._last_probe = now
                    task = asyncio.create_task(self._probe_once())
                    probes.add(task)
                    task.add_done_callback(probes.discard)
                await self._maybe_announce()
                next_probe = self._last_probe + self.probe_interval - self._clock()
                await self.wait_answering(max(next_probe, 0.01))
        finally:
            for task in probes:
                task.cancel()

    async def _probe_once(self) -> None:
        self.probes += 1
        try:
            async with asyncio.timeout(self.probe_timeout):
                await self._probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"no answer within {self.probe_timeout:g} s" if isinstance(exc, TimeoutError) else str(exc)
            log.debug("homeserver probe failed", error=error or type(exc).__name__)
            self._count_probe("failed")
            if self.state is State.SUSPECT:
                self._go_down()
            return
        self._count_probe("ok")
        self._recover()

    def _count_probe(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.homeserver_probes.labels(result).inc()

    def _go_down(self) -> None:
        self.state = State.DOWN
        self.outages += 1
        if self._metrics is not None:
            self._metrics.homeserver_up.set(0)
            self._metrics.homeserver_outages.inc()
        log.debug("homeserver does not answer; probing it once a second", since=self.since_text())

    async def _maybe_announce(self) -> None:
        if self.state is not State.DOWN or self._announced or self.down_for() < self.outage_after:
            return
        self._announced = True
        waiting = "QQ messages and events wait"
        if self._waiting is not None:
            try:
                async with asyncio.timeout(WAITING_TIMEOUT):
                    waiting = f"{await self._waiting()} QQ messages and events wait"
            except asyncio.CancelledError:
                raise
            except Exception:  # the store is the store's problem; say what is known
                waiting = "QQ messages and events wait (how many is unknown: the store did not say)"
        log.warning(f"homeserver unreachable since {self.since_text()}, {waiting}; they are kept and will be "
                    "relayed when it answers", down_for=round(self.down_for()))  # fmt: skip

    def _recover(self) -> None:
        was_down, announced, lasted = self.state is State.DOWN, self._announced, self._clock() - self._since
        self.state = State.UP
        self._announced = False
        self._up.set()
        if self._metrics is not None:
            self._metrics.homeserver_up.set(1)
        if announced:
            log.warning(f"homeserver back after {lasted:.1f} s", since=self.since_text())
        elif was_down:
            log.debug("homeserver answers again", after=round(lasted, 1))


class AlwaysAnswering:
    """For a Matrix port without a watcher (test doubles): never known to be down."""

    answering = True
    down = False

    def problem(self) -> None:
        return None

    async def wait_answering(self, timeout: float | None = None) -> bool:
        return True
