"""The homeserver side of issue 9: an outage costs one probe a second for the whole
bridge, everything that waits goes within a probe of the homeserver's return, and an
outage longer than the threshold is told once in the log (and its end once), in the
metrics and on /ready.

HomeserverAPI against a port where nothing listens (refused) and against a stand-in
that hangs (accepts, never answers); the relay task with a real store and a homeserver
double that is down on cue."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from qqbridge import health as health_routes
from qqbridge.bridge.core import Bridge
from qqbridge.config import Config
from qqbridge.local.child import free_port
from qqbridge.matrix.api import HomeserverAPI, MatrixError
from qqbridge.matrix.homeserver_health import HomeserverHealth, State
from qqbridge.metrics import Metrics
from qqbridge.store import Store

VERSIONS = "/_matrix/client/versions"


def told(logs: list[dict[str, Any]], needle: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if needle in entry["event"]]


class StandIn:
    """A homeserver on a fixed port: started and stopped at will; `hang()` makes every
    request (the probe too) wait until `answer()`; it counts what reaches it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.sends: list[float] = []
        self.probes: list[float] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        (self.probes if request.path == VERSIONS else self.sends).append(time.monotonic())
        await self.gate.wait()
        if request.path == VERSIONS:
            return web.json_response({"versions": ["v1.11"]})
        return web.json_response({"event_id": f"$e{len(self.sends)}"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def hang(self) -> None:
        self.gate.clear()

    def answer(self) -> None:
        self.gate.set()


@pytest.fixture
async def standin():
    server = StandIn(free_port("127.0.0.1"))
    yield server
    await server.stop()


async def send(api: HomeserverAPI, n: int) -> tuple[str, float]:
    event_id = await api.send("!r:x", {"body": f"m{n}"}, txn_id=f"t{n}", user_id="@_qq_10002:x")
    return event_id, time.monotonic()


async def test_refused_connection_one_probe_a_second_then_everyone_goes_at_once(standin: StandIn) -> None:
    """Nothing listens: 20 sends wait on one watcher probing once a second; the outage
    (longer than the 1.5 s threshold here) is told once; when the homeserver listens
    again every send goes within a probe, and the end is told once."""
    metrics = Metrics()
    api = HomeserverAPI(standin.url, "t", "@bot:x", outage_after=1.5)
    api.health.watch(metrics, waiting=_constant(20))
    try:
        with structlog.testing.capture_logs() as logs:
            sends = [asyncio.create_task(send(api, n)) for n in range(20)]
            await asyncio.sleep(3.5)
            assert api.health.state is State.DOWN and not any(task.done() for task in sends)
            assert 3 <= api.health.probes <= 5, api.health.probes  # 3.5 s: at most one a second (+ the first)
            assert metrics.homeserver_up._value.get() == 0 and metrics.homeserver_outages._value.get() == 1
            assert api.health.problem() and "does not answer" in api.health.problem()
            await standin.start()
            back = time.monotonic()
            results = await asyncio.wait_for(asyncio.gather(*sends), 5)
        first = min(at for _, at in results) - back
        last = max(at for _, at in results) - back
        assert last < 1.5, f"first {first:.2f} s, last {last:.2f} s after the homeserver came back"
        assert len(standin.sends) == 20  # each went once, after the return; only probes before
        warned = [entry for entry in logs if entry["log_level"] == "warning"]
        assert len(warned) == 2, warned
        assert (
            "homeserver unreachable since" in warned[0]["event"]
            and "20 QQ messages and events wait" in warned[0]["event"]
        )
        assert "homeserver back after" in warned[1]["event"]
        assert metrics.homeserver_up._value.get() == 1 and metrics.homeserver_outages._value.get() == 1
        assert api.health.problem() is None
    finally:
        await api.close()


async def test_a_hung_homeserver_is_noticed_probed_once_a_second_and_left_alone(standin: StandIn) -> None:
    """It accepts and never answers: a request without an answer for `stall_after` makes
    the watcher probe; down, new requests do not go to it (only a probe a second);
    when it answers, those in flight and those waiting all go."""
    await standin.start()
    api = HomeserverAPI(standin.url, "t", "@bot:x", outage_after=2.0, stall_after=0.5, probe_timeout=0.5)
    try:
        with structlog.testing.capture_logs() as logs:
            standin.hang()
            in_flight = [asyncio.create_task(send(api, n)) for n in range(5)]
            await asyncio.sleep(1.5)  # stalled at 0.5 s, the probe failed at 1.0 s
            assert api.health.state is State.DOWN
            reached = len(standin.sends)
            waiting = [asyncio.create_task(send(api, n)) for n in range(5, 25)]
            await asyncio.sleep(3.0)
            assert len(standin.sends) == reached == 5  # nothing more while it hangs
            assert len(standin.probes) <= 5, standin.probes  # 4.5 s hung: one a second at most
            gaps = [b - a for a, b in zip(standin.probes, standin.probes[1:], strict=False)]
            assert all(gap >= 0.95 for gap in gaps), gaps
            standin.answer()
            back = time.monotonic()
            results = await asyncio.wait_for(asyncio.gather(*in_flight, *waiting), 5)
        assert max(at for _, at in results) - back < 1.5
        assert len(standin.sends) == 25
        assert len(told(logs, "homeserver unreachable since")) == 1 and len(told(logs, "homeserver back after")) == 1
    finally:
        await api.close()


async def test_a_short_blip_and_a_stale_connection_say_nothing(standin: StandIn) -> None:
    """Down for less than the threshold: no warning, the counter says it; a refused
    request on a homeserver that answers the probe goes again at once."""
    metrics = Metrics()
    api = HomeserverAPI(standin.url, "t", "@bot:x", outage_after=60)
    api.health.watch(metrics)
    try:
        with structlog.testing.capture_logs() as logs:
            sending = asyncio.create_task(send(api, 1))
            await asyncio.sleep(1.2)
            await standin.start()
            await asyncio.wait_for(sending, 2)
            assert await send(api, 2)
        assert not [entry for entry in logs if entry["log_level"] in ("warning", "error")]
        assert metrics.homeserver_outages._value.get() == 1 and metrics.homeserver_up._value.get() == 1
    finally:
        await api.close()


async def test_a_homeserver_error_is_retried_with_backoff_and_is_no_outage() -> None:
    """A 500 comes from a homeserver that answers: backoff as before, no probe, no outage."""
    answers = [(500, {"errcode": "M_UNKNOWN"}), (500, {}), (200, {"event_id": "$1"})]
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        status, body = answers.pop(0)
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app)
    await server.start_server()
    api = HomeserverAPI(str(server.make_url("")), "t", "@bot:x")
    try:
        assert await api.send("!r:x", {"body": "hi"}, txn_id="t1") == "$1"
    finally:
        await api.close()
        await server.close()
    assert VERSIONS not in seen and len(seen) == 3 and api.health.outages == 0


async def test_a_refusal_is_not_retried_while_the_homeserver_is_fine() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"errcode": "M_FORBIDDEN", "error": "no"}, status=403)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app)
    await server.start_server()
    api = HomeserverAPI(str(server.make_url("")), "t", "@bot:x")
    try:
        with pytest.raises(MatrixError) as refused:
            await api.send("!r:x", {"body": "hi"}, txn_id="t1")
    finally:
        await api.close()
        await server.close()
    assert refused.value.status == 403 and len(seen) == 1 and api.health.answering


# ---- the relay task, /ready ------------------------------------------------------------

OWNER, CONTROL = "@bob:example.org", "!control:example.org"


class DownOnCue:
    """A homeserver double with the real watcher: while `down`, every call fails as
    HomeserverAPI's would after its attempts, and the probe fails."""

    bot_mxid = "@qqbridge:example.org"

    def __init__(self) -> None:
        self.down = False
        self.attempts = 0
        self.sent: list[tuple[str, str, float]] = []
        self.health = HomeserverHealth(self._probe, outage_after=60)

    async def _probe(self) -> None:
        if self.down:
            raise ConnectionRefusedError("refused")

    def _reach(self) -> None:
        self.attempts += 1
        if self.down:
            self.health.failed()
            raise MatrixError(0, "M_UNREACHABLE", "refused", "send")

    async def send(self, room_id: str, content: dict[str, Any], *, txn_id: str, **_: Any) -> str:
        self._reach()
        self.sent.append((room_id, content["body"], time.monotonic()))
        return f"$sent{len(self.sent)}"

    async def create_room(self, **_: Any) -> str:
        self._reach()
        return "!portal:example.org"

    async def ensure_registered(self, mxid: str) -> None:
        self._reach()

    async def join(self, room_id: str, **_: Any) -> None: ...
    async def invite(self, *_: Any, **__: Any) -> None: ...
    async def put_state(self, *_: Any, **__: Any) -> None: ...
    async def set_displayname(self, user_id: str, name: str) -> None: ...
    async def set_presence(self, *_: Any, **__: Any) -> None: ...


@pytest.fixture
async def bridge(tmp_path: Path):
    config = Config(homeserver={"url": "http://hs", "domain": "example.org"}, permissions={"example.org": "user"})
    store = await Store.open(str(tmp_path / "bridge.db"))
    await store.users.upsert(OWNER)
    await store.users.set_control_room(OWNER, CONTROL)
    matrix = DownOnCue()
    bridge = Bridge(config, store, matrix, qq_factory=lambda uin: None, homeserver=matrix.health)
    yield bridge
    await bridge.inbound.close()
    await bridge.matrix.health.close()
    await store.close()


async def test_the_relay_waits_for_the_watcher_and_goes_within_a_probe(bridge: Bridge) -> None:
    """QQ messages stored during an outage: the relay tries once, then waits on the
    watcher (no backoff of its own, no retries); it goes within a probe of the return,
    in order, each once."""
    matrix: DownOnCue = bridge.matrix  # type: ignore[assignment]
    matrix.down = True
    await bridge.store.inbound.add_batch(OWNER, 10001, 1, [(9, 20002, f"m{n}") for n in range(5)])
    bridge.inbound.wake(OWNER)
    await asyncio.sleep(4)
    assert matrix.sent == [] and matrix.attempts <= 2, matrix.attempts
    assert bridge.metrics.homeserver_up._value.get() == 0
    matrix.down = False
    back = time.monotonic()
    for _ in range(40):
        if len(matrix.sent) == 5:
            break
        await asyncio.sleep(0.05)
    assert [body for _, body, _ in matrix.sent] == [f"m{n}" for n in range(5)]
    assert matrix.sent[0][2] - back < 1.1
    assert await bridge.store.inbound.count_pending(OWNER) == 0
    assert bridge.metrics.homeserver_up._value.get() == 1


async def test_ready_names_the_homeserver_while_it_is_down(bridge: Bridge) -> None:
    bridge.started = True
    app = web.Application()
    health_routes.add_routes(app, bridge, bridge.store, bridge.metrics, homeserver=bridge.matrix.health)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/ready")).status == 200
        matrix: DownOnCue = bridge.matrix  # type: ignore[assignment]
        matrix.down = True
        bridge.matrix.health.failed()
        await asyncio.sleep(0.1)  # the first probe fails: down
        answer = await client.get("/ready")
        body = await answer.json()
        assert answer.status == 503 and any("the homeserver does not answer (since" in p for p in body["problems"])
        metrics = await (await client.get("/metrics")).text()
        assert "qqbridge_homeserver_up 0.0" in metrics and "qqbridge_homeserver_outages_total 1.0" in metrics
        matrix.down = False
        await bridge.matrix.health.wait_answering(2)
        assert (await client.get("/ready")).status == 200


def _constant(n: int):
    async def count() -> int:
        return n

    return count


async def test_a_flapping_homeserver_is_probed_at_most_once_a_second() -> None:
    """Fails, answers, fails again, many times a second: still one probe a second."""
    starts: list[float] = []

    async def probe() -> None:
        starts.append(time.monotonic())

    watcher = HomeserverHealth(probe)
    try:
        until = time.monotonic() + 3.2
        while time.monotonic() < until:
            watcher.failed()
            await asyncio.sleep(0.05)
            watcher.answered()
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert len(starts) <= 4 and all(gap >= 0.95 for gap in gaps), gaps
    finally:
        await watcher.close()


async def test_a_single_attempt_client_sends_every_call_and_leaves_the_watcher_out() -> None:
    """`max_attempts=1` (the start-up check keeps its own loop): each call goes out."""
    api = HomeserverAPI(f"http://127.0.0.1:{free_port('127.0.0.1')}", "t", "@bot:x", max_attempts=1)
    try:
        for _ in range(3):
            with pytest.raises(MatrixError) as refused:
                await api.whoami()
            assert refused.value.status == 0 and "Cannot connect" in str(refused.value)
        assert api.health.answering and api.health.probes == 0
    finally:
        await api.close()
