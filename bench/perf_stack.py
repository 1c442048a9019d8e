"""The parts of the performance run (`run_all.py`): the QQ simulator at time scale 1, a
real Synapse and the bridge with its default config, the QQ accounts on both sides,
and what the run reads back (the bridge's database, its /metrics, Synapse's events).

Accounts (all in one simulator fixture):

    chat owners   10001 ...        each bridged for a Matrix user bench<i>, with one friend
    chat friends  20001 ...        who writes to their owner (played from 127.0.0.2)
    burst owner   30001            bridged for Matrix user burst, with 60 friends
    burst friends 30002 ... 30061
    idle          100000 ...       logged in by the bridge only, no friends, never written to
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import yaml  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.relay_parts import cpu_seconds, scrape, status_kib, value, wait_for_log  # noqa: E402
from qqbridge.local import LocalSynapse  # noqa: E402
from qqbridge.local.child import free_port  # noqa: E402
from qqbridge.qq import QQClient, errors, model, password_md5  # noqa: E402
from qqbridge.store import Store  # noqa: E402
from tests.e2e.harness import MatrixUser, Process, write_config  # noqa: E402

DOMAIN = "localhost"
BOT = f"@qqbridge:{DOMAIN}"
CHAT_OWNER, CHAT_FRIEND = 10001, 20001
BURST_OWNER, BURST_FRIENDS = 30001, 60
IDLE_FIRST = 100_000
MATRIX_PASSWORD = "bench-pw"
SEND_BURST, SEND_WINDOW = 5, 5.0  # PROTOCOL: 5 CLTMSG in 5 s per account, at time scale 1


def qq_password(uin: int) -> str:
    return f"pw{uin}"


def burst_friends() -> list[int]:
    return [BURST_OWNER + 1 + i for i in range(BURST_FRIENDS)]


def idle_uins(count: int) -> list[int]:
    return [IDLE_FIRST + i for i in range(count)]


def idle_mxid(uin: int) -> str:
    return f"@idle{uin}:{DOMAIN}"


def write_fixture(path: Path, chats: int, idle: int) -> None:
    account = lambda uin, friends: {  # noqa: E731
        "uin": uin, "password": qq_password(uin), "nick": f"QQ {uin}", "auth": 0, "friends": friends,
    }  # fmt: skip
    accounts = []
    for i in range(chats):
        accounts += [account(CHAT_OWNER + i, [CHAT_FRIEND + i]), account(CHAT_FRIEND + i, [CHAT_OWNER + i])]
    accounts.append(account(BURST_OWNER, burst_friends()))
    accounts += [account(uin, [BURST_OWNER]) for uin in burst_friends()]
    accounts += [account(uin, []) for uin in idle_uins(idle)]
    path.write_text(yaml.safe_dump({"accounts": accounts}, sort_keys=False), encoding="utf-8")


# ---- QQ friends -------------------------------------------------------------------------


class Friend:
    """A QQ user on another computer (127.0.0.2): logged in, kept alive by a GetMsgEx
    pump that also notes what arrives and when; sends paced to the protocol's 5 in 5 s."""

    def __init__(self, sim_url: str, uin: int) -> None:
        self.uin = uin
        self.client = QQClient(sim_url, uin, local_address="127.0.0.2", timeout=60)
        self.received: list[tuple[float, int, str]] = []  # (arrival wall time, sender, text)
        self.pump_interval = 20.0  # HI=60: one request a minute keeps the session
        self.sent_at: deque[float] = deque(maxlen=SEND_BURST)
        self.rate_limited = 0
        self._pumped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def login(self) -> None:
        await self.client.login(password_md5(qq_password(self.uin)))

    def start(self) -> None:
        self._task = asyncio.create_task(self._pump(), name=f"pump {self.uin}")

    def pump_faster(self, interval: float) -> None:
        self.pump_interval = interval
        self._pumped.set()  # cut the current wait short

    async def _pump(self) -> None:
        while True:
            try:
                events = await self.client.drain_messages()
            except errors.NotLoggedIn:
                await self.login()
                continue
            except errors.QQError:
                await asyncio.sleep(0.5)
                continue
            now = time.time()
            self.received += [(now, e.sender, e.text) for e in events if isinstance(e, model.Message)]
            self._pumped.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pumped.wait(), self.pump_interval)

    async def send(self, target: int, make_text: Callable[[], str]) -> None:
        """One message, paced to 5 in 5 s (with a margin); `make_text` is called right
        before the request, so a timestamp in it is the send time."""
        while True:
            if len(self.sent_at) == SEND_BURST:
                wait = self.sent_at[0] + SEND_WINDOW * 1.05 - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                await self.client.send_message(target, make_text())
            except errors.RateLimited:
                self.rate_limited += 1
                continue  # the slow RES=3 reply has waited out the penalty
            except errors.NotLoggedIn:
                await self.login()
                continue
            self.sent_at.append(time.monotonic())
            return

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(errors.QQError):
            await self.client.logout()
        await self.client.aclose()


# ---- what the QQ server sees ------------------------------------------------------------


class QQTap:
    """A pass-through in front of the simulator that notes every request the bridge
    makes (when, UIN, CMD): which account polled first when, how many logins a second
    the server took, and the requests a second by command. Used for the idle phases
    only (it costs the bench a little CPU per request, and every request a hop)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen: list[tuple[float, int, str]] = []  # (monotonic time, UIN, CMD)
        self.first_poll: dict[int, float] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def reset(self) -> None:
        self.seen.clear()
        self.first_poll.clear()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._pass)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port("127.0.0.1")
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0), timeout=aiohttp.ClientTimeout(total=120)
        )
        self.url = f"http://127.0.0.1:{port}/"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _pass(self, request: web.Request) -> web.Response:
        body = await request.read()
        fields = dict(part.split("=", 1) for part in body.decode("utf-8", "replace").split("&") if "=" in part)
        now, cmd = time.monotonic(), fields.get("CMD", "?")
        uin = int(fields["UIN"]) if fields.get("UIN", "").isdigit() else 0
        self.seen.append((now, uin, cmd))
        if cmd == "GetMsgEx":
            self.first_poll.setdefault(uin, now)
        assert self._session is not None
        try:
            async with self._session.post(
                self.upstream, data=body, headers={"Content-Type": request.headers.get("Content-Type", "text/plain")}
            ) as answer:
                reply = await answer.read()
                return web.Response(body=reply, status=answer.status,
                                    headers={"Content-Type": answer.headers.get("Content-Type", "text/plain")})  # fmt: skip
        except aiohttp.ClientError as exc:  # the simulator is gone (the end of the run): as if unreachable
            return web.Response(status=502, text=str(exc))

    def between(self, start: float, end: float) -> dict[str, int]:
        """Requests by command within [start, end)."""
        counts: dict[str, int] = {}
        for when, _, cmd in self.seen:
            if start <= when < end:
                counts[cmd] = counts.get(cmd, 0) + 1
        return counts

    def busiest_second(self, cmd: str) -> int:
        """The most `cmd` requests within any one second."""
        times = [when for when, _, c in self.seen if c == cmd]
        most, lo = 0, 0
        for hi, when in enumerate(times):
            while when - times[lo] >= 1.0:
                lo += 1
            most = max(most, hi - lo + 1)
        return most


# ---- the stack --------------------------------------------------------------------------


@dataclass
class Stack:
    work: Path
    sim: Process
    sim_url: str
    synapse: LocalSynapse
    bridge: Process
    bridge_url: str
    config_path: Path
    as_token: str
    started_at: float = 0.0  # monotonic time the bridge process was last started
    tap: QQTap | None = None
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=30))

    @property
    def db_path(self) -> Path:
        return self.work / "bridge.db"

    def pids(self) -> dict[str, int | None]:
        return {
            "bridge": self.bridge.proc.pid if self.bridge.proc else None,
            "synapse": self.synapse.pid,
            "qq-sim": self.sim.proc.pid if self.sim.proc else None,
        }

    def cpu(self) -> dict[str, float]:
        own = os.times()
        return {**{name: cpu_seconds(pid) for name, pid in self.pids().items()}, "bench": own.user + own.system}

    def bridge_rss_kib(self) -> tuple[int | None, int | None]:
        pid = self.pids()["bridge"]
        return status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")

    async def metrics(self) -> dict[Any, float]:
        return await scrape(self.http, self.bridge_url)

    async def metric(self, name: str, **labels: str) -> float:
        return value(await self.metrics(), name, **labels)

    # -- the bridge process -----------------------------------------------------------

    async def tap_qq(self) -> QQTap:
        """From the next start on, the bridge talks to QQ through a `QQTap`."""
        if self.tap is None:
            self.tap = QQTap(self.sim_url)
            await self.tap.start()
            config = yaml.safe_load(self.config_path.read_text())
            config["qq"]["server_url"] = self.tap.url
            self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.tap

    async def start_bridge(self) -> None:
        self.started_at = time.monotonic()
        self.bridge.start()
        await wait_for_log(self.bridge, "qqbridge ready", timeout=300)

    async def stop_bridge(self) -> None:
        await asyncio.to_thread(self.bridge.stop)

    # -- what the bridge stored ------------------------------------------------------

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            db.row_factory = sqlite3.Row
            return list(db.execute(sql, args))
        finally:
            db.close()

    def inbound(self, prefix: str) -> list[sqlite3.Row]:
        """QQ -> Matrix rows whose text starts with `prefix`, with their portal's room."""
        return self.query(
            "SELECT i.owner_mxid, i.sender_uin, i.content, i.state, i.matrix_event_id, i.fetched_at,"
            " i.relayed_at, p.room_id FROM qq_inbound i LEFT JOIN portal p"
            " ON p.owner_mxid = i.owner_mxid AND p.uin = i.sender_uin"
            " WHERE i.kind = 9 AND substr(i.content, 1, ?) = ? ORDER BY i.inbound_id",
            len(prefix),
            prefix,
        )

    async def wait_relayed(self, prefix: str, count: int, timeout: float) -> list[sqlite3.Row]:
        """Until `count` rows starting with `prefix` are relayed (or the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = await asyncio.to_thread(self.inbound, prefix)
            done = [row for row in rows if row["state"] == "relayed"]
            if len(done) >= count or time.monotonic() > deadline:
                return done
            await asyncio.sleep(0.2)

    async def add_idle_accounts(self, uins: list[int]) -> None:
        """Logged-in accounts in the bridge's database (the bridge must be stopped):
        the next start resumes them, as after a restart."""
        store = await Store.open(f"sqlite:///{self.db_path}")
        try:
            for uin in uins:
                mxid = idle_mxid(uin)
                user = await store.users.get(mxid)
                if user is not None and user.login_state == "logged_in":
                    continue
                await store.users.upsert(mxid)
                await store.users.begin_login(mxid, uin)
                await store.users.complete_login(mxid, uin, password_md5(qq_password(uin)))
        finally:
            await store.close()

    # -- what Synapse holds ----------------------------------------------------------

    async def timeline(self, room_id: str, wanted: set[str]) -> list[tuple[str, float]]:
        """The events `wanted` of the room in timeline order, each with its
        origin_server_ts in seconds, read as the bot (in every portal)."""
        newest_first: list[tuple[str, float]] = []
        token: str | None = None
        path = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/messages"
        for _ in range(50):
            params: dict[str, Any] = {"dir": "b", "limit": 500, "user_id": BOT}
            if token:
                params["from"] = token
            answer = await self.http.get(
                self.synapse.base_url + path, params=params, headers={"Authorization": f"Bearer {self.as_token}"}
            )
            answer.raise_for_status()
            body = answer.json()
            newest_first += [
                (event["event_id"], event["origin_server_ts"] / 1000)
                for event in body.get("chunk", [])
                if event.get("event_id") in wanted
            ]
            token = body.get("end")
            if not body.get("chunk") or not token or len(newest_first) >= len(wanted):
                break
        return newest_first[::-1]

    async def timelines(self, rows: list[sqlite3.Row]) -> dict[str, list[tuple[str, float]]]:
        """`timeline` of every room the rows were relayed to."""
        by_room: dict[str, set[str]] = {}
        for row in rows:
            if row["room_id"] and row["matrix_event_id"]:
                by_room.setdefault(row["room_id"], set()).add(row["matrix_event_id"])
        return {room_id: await self.timeline(room_id, wanted) for room_id, wanted in by_room.items()}

    async def event_times(self, rows: list[sqlite3.Row]) -> dict[str, float]:
        """origin_server_ts (s) of the events the rows were relayed as."""
        return {event: ts for events in (await self.timelines(rows)).values() for event, ts in events}


async def start_stack(work: Path, chats: int, idle: int, parts: dict[str, Any]) -> Stack:
    """Simulator (time scale 1), Synapse and the bridge with its defaults; `parts` holds
    what runs so far, for the caller to stop on any failure."""
    fixture = work / "qq_accounts.yaml"
    write_fixture(fixture, chats, idle)
    sim_port, bridge_port, hs_port = free_port("127.0.0.1"), free_port("127.0.0.1"), free_port("127.0.0.1")
    sim = Process(["qq-sim", "--fixture", str(fixture), "--port", str(sim_port), "--time-scale", "1"], work / "sim.log")
    parts["sim"] = sim
    sim.start()
    await wait_for_log(sim, "listening on", timeout=60)
    sim_url = f"http://127.0.0.1:{sim_port}/"
    config_path, registration_path = work / "config.yaml", work / "registration.yaml"
    write_config(  # the defaults, but for where things are
        config_path,
        homeserver={"url": f"http://127.0.0.1:{hs_port}", "domain": DOMAIN},
        appservice={"port": bridge_port, "url": f"http://127.0.0.1:{bridge_port}", "as_token": "", "hs_token": ""},
        qq={"server_url": sim_url},
        database={"url": f"sqlite:///{work / 'bridge.db'}"},
        permissions={DOMAIN: "admin"},
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "qqbridge",
            "generate-registration",
            "-c",
            str(config_path),
            "-o",
            str(registration_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    if done.returncode:
        raise RuntimeError(f"generate-registration failed with status {done.returncode}")
    as_token = yaml.safe_load(config_path.read_text())["appservice"]["as_token"]
    synapse = LocalSynapse(work / "synapse", port=hs_port, appservice_registrations=[registration_path])
    parts["synapse"] = synapse
    await synapse.start()
    bridge = Process(["run", "-c", str(config_path)], work / "bridge.log")
    parts["bridge"] = bridge
    stack = Stack(work, sim, sim_url, synapse, bridge, f"http://127.0.0.1:{bridge_port}", config_path, as_token)
    parts["stack"] = stack
    await stack.start_bridge()
    return stack


def stop_stack(parts: dict[str, Any]) -> None:
    """Stop what was started, bridge first, each on its own."""
    bridge, synapse, sim = parts.get("bridge"), parts.get("synapse"), parts.get("sim")
    for name, stop in (
        ("bridge", (lambda: bridge.stop()) if bridge is not None and bridge.proc is not None else None),
        ("synapse", (lambda: synapse.stop_blocking()) if synapse is not None else None),
        ("qq-sim", (lambda: sim.stop()) if sim is not None and sim.proc is not None else None),
    ):
        if stop is None:
            continue
        try:
            stop()
        except BaseException as exc:  # keep stopping the others, even on a second Ctrl-C
            print(f"bench: stopping {name} failed: {exc!r}", file=sys.stderr)


# ---- Matrix users -----------------------------------------------------------------------


async def bridged_person(stack: Stack, localpart: str, uin: int, timeout: float = 120) -> tuple[MatrixUser, str]:
    """A Matrix user who logged QQ account `uin` in through the control room."""
    mxid = await stack.synapse.register_user(localpart, MATRIX_PASSWORD)
    person = MatrixUser(stack.synapse.base_url, mxid, MATRIX_PASSWORD)
    await person.login()
    room = await person.open_control_room(BOT)
    await person.wait_for_text(room, "control room", sender=BOT, timeout=timeout)
    await qq_login(person, room, uin, timeout)
    return person, room


async def qq_login(person: MatrixUser, room: str, uin: int, timeout: float = 120) -> None:
    before = len(person.texts(room, BOT))
    await person.say(room, f"login {uin}")
    await person.wait_for(lambda: any("next message" in t for t in person.texts(room, BOT)[before:]), timeout,
                          "the password prompt")  # fmt: skip
    await person.say(room, qq_password(uin))
    await person.wait_for(lambda: any(f"Logged into QQ as {uin}" in t for t in person.texts(room, BOT)[before:]),
                          timeout, "the login")  # fmt: skip


def jitter(low: float, high: float) -> float:
    return random.uniform(low, high)
