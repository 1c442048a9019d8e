"""What the performance run (`run_all.py`) measures, one phase each, on a running stack
(`perf_stack.py`). Each phase returns plain numbers; `perf_report.py` makes the table."""

from __future__ import annotations

import asyncio
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.perf_stack import (  # noqa: E402
    BOT,
    BURST_OWNER,
    CHAT_FRIEND,
    CHAT_OWNER,
    Friend,
    Stack,
    bridged_person,
    burst_friends,
    idle_uins,
    qq_login,
)
from bench.relay_parts import percentile, value  # noqa: E402
from qqbridge.matrix.api import HomeserverAPI  # noqa: E402
from tests.e2e.harness import MatrixUser  # noqa: E402


class BenchFailure(Exception):
    pass


def cpu_between(samples: list[tuple[float, dict[str, float]]], name: str, start: float, end: float) -> float:
    """CPU seconds of process `name` from wall time `start` to `end`, interpolated
    between the samples (taken every 0.2 s)."""

    def at(when: float) -> float:
        for (t0, c0), (t1, c1) in zip(samples, samples[1:], strict=False):
            if t0 <= when <= t1:
                return c0[name] + (c1[name] - c0[name]) * ((when - t0) / (t1 - t0) if t1 > t0 else 0)
        return samples[0][1][name] if when < samples[0][0] else samples[-1][1][name]

    return at(end) - at(start) if len(samples) > 1 else math.nan


def quantiles(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 0.5),
        "p90": percentile(values, 0.9),
        "p99": percentile(values, 0.99),
        "max": max(values, default=math.nan),
    }


@dataclass
class Results:
    """Everything measured, for the report (all times in seconds)."""

    chat: dict[str, Any] = field(default_factory=dict)
    m2q: dict[str, Any] = field(default_factory=dict)
    burst: dict[str, Any] = field(default_factory=dict)
    idle: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Run:
    def __init__(self, stack: Stack, chats: int, quick: bool, say: Any) -> None:
        self.stack, self.chats, self.quick, self.say = stack, chats, quick, say
        self.persons: dict[str, tuple[MatrixUser, str]] = {}  # localpart -> (person, control room)
        self.friends: dict[int, Friend] = {}
        self.results = Results()
        self.accounts = chats + 1  # logged in by now: the chat owners and the burst owner
        self.raw_cpu: list[float] = []  # Synapse CPU seconds per event it took straight from the bench

    async def close(self) -> None:
        await asyncio.gather(*(f.close() for f in self.friends.values()), return_exceptions=True)
        await asyncio.gather(*(p.close() for p, _ in self.persons.values()), return_exceptions=True)

    # -- setup ----------------------------------------------------------------------

    async def setup(self) -> None:
        stack = self.stack
        uins = [CHAT_FRIEND + i for i in range(self.chats)] + burst_friends()
        for uin in uins:  # the friends first, so their owners find them online
            self.friends[uin] = Friend(stack.sim_url, uin)
        await asyncio.gather(*(f.login() for f in self.friends.values()))
        for friend in self.friends.values():
            friend.start()
        logins = asyncio.Semaphore(6)

        async def bridged(localpart: str, uin: int) -> None:
            async with logins:
                self.persons[localpart] = await bridged_person(stack, localpart, uin)

        await asyncio.gather(
            *(bridged(f"bench{i}", CHAT_OWNER + i) for i in range(self.chats)), bridged("burst", BURST_OWNER)
        )

    # -- QQ -> Matrix in an active chat ------------------------------------------------

    async def active_chat(self, seconds: float) -> None:
        """Each chat friend writes to their owner every 2-5 s (the first message of
        each chat, which opens its portal, is not counted)."""
        stack, chats = self.stack, self.chats
        for i in range(chats):
            await self.friends[CHAT_FRIEND + i].send(CHAT_OWNER + i, lambda i=i: f"warm {i}")
        if len(await stack.wait_relayed("warm ", chats, 120)) < chats:
            raise BenchFailure("the chats' first messages did not all reach Matrix in 120 s")
        sent: dict[str, float] = {}
        stop_at = time.monotonic() + seconds
        cpu0, m0 = stack.cpu(), await stack.metrics()

        async def chat(i: int) -> None:
            friend, n = self.friends[CHAT_FRIEND + i], 0
            await asyncio.sleep(random.uniform(0, 3))
            while time.monotonic() < stop_at:
                n += 1

                def text(n: int = n) -> str:
                    body = f"chat {i}.{n}"
                    sent[body] = time.time()
                    return body

                await friend.send(CHAT_OWNER + i, text)
                await asyncio.sleep(random.uniform(2, 5))

        started = time.monotonic()
        await asyncio.gather(*(chat(i) for i in range(chats)))
        wall = time.monotonic() - started
        rows = await stack.wait_relayed("chat ", len(sent), 120)
        cpu1, m1 = stack.cpu(), await stack.metrics()
        ts = await stack.event_times(rows)
        e2e, own, own_relayed = [], [], []
        for row in rows:
            origin = ts.get(row["matrix_event_id"])
            if origin is None or row["content"] not in sent:
                continue
            e2e.append(origin - sent[row["content"]])
            own.append(origin - row["fetched_at"] / 1000)
            own_relayed.append((row["relayed_at"] - row["fetched_at"]) / 1000)
        polls = sum(value(m1, "qqbridge_polls_total", result=r) - value(m0, "qqbridge_polls_total", result=r)
                    for r in ("ok", "error"))  # fmt: skip
        self.results.chat = {
            "chats": chats, "messages": len(sent), "relayed": len(rows), "wall": wall,
            "e2e": quantiles(e2e), "own": quantiles(own), "own_relayed": quantiles(own_relayed),
            "rate": len(sent) / wall, "bridge_cpu": (cpu1["bridge"] - cpu0["bridge"]) / wall,
            "synapse_cpu": (cpu1["synapse"] - cpu0["synapse"]) / wall, "polls_per_s": polls / wall,
        }  # fmt: skip
        if len(rows) < len(sent):
            self.results.notes.append(f"active chat: only {len(rows)} of {len(sent)} messages reached Matrix")

    # -- Matrix -> QQ, one message at a time --------------------------------------------

    async def matrix_to_qq(self, count: int) -> None:
        person, _ = self.persons["bench0"]
        friend = self.friends[CHAT_FRIEND]
        portal = await person.accept_invite(f"@_qq_{CHAT_FRIEND}:localhost", timeout=60)
        friend.pump_faster(0.005)
        await asyncio.sleep(1)
        latencies: list[float] = []
        try:
            for k in range(count):
                body = f"m2q {k}"
                started = time.time()
                await person.say(portal, body)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    got = next((when for when, _, text in friend.received if text == body), None)
                    if got is not None:
                        latencies.append(got - started)
                        break
                    await asyncio.sleep(0.002)
                await asyncio.sleep(1.1)  # under the outbox's 5 in 5 s: each one waits for nothing
        finally:
            friend.pump_faster(20.0)
        self.results.m2q = {"sent": count, "arrived": len(latencies), "latency": quantiles(latencies)}
        if len(latencies) < count:
            self.results.notes.append(f"Matrix -> QQ: only {len(latencies)} of {count} arrived within 30 s each")

    # -- a burst, and Synapse's own pace ----------------------------------------------

    async def raw_synapse(self, rooms: dict[int, str], total: int, in_flight: int) -> float:
        """Events per second Synapse takes from the appservice: `total` messages sent as
        the puppets into their portals, `in_flight` at once, one connection pool as the
        bridge has."""
        api = HomeserverAPI(self.stack.synapse.base_url, self.stack.as_token, BOT)
        order = sorted(rooms)
        window = asyncio.Semaphore(in_flight)
        tag = f"raw{in_flight}-{time.monotonic_ns()}"

        async def one(k: int) -> None:
            uin = order[k % len(order)]
            content = {"msgtype": "m.text", "body": f"{tag} {k}", "m.mentions": {}}  # as the bridge sends them
            async with window:
                await api.send(rooms[uin], content, txn_id=f"{tag}-{k}", user_id=f"@_qq_{uin}:localhost")

        try:
            await one(0)  # the pool's first connection
            started, cpu0 = time.monotonic(), self.stack.cpu()["synapse"]
            await asyncio.gather(*(one(k) for k in range(1, total)))
            rate = (total - 1) / (time.monotonic() - started)
            self.raw_cpu.append((self.stack.cpu()["synapse"] - cpu0) / (total - 1))
            return rate
        finally:
            await api.close()

    async def burst(self, each: int, raw_total: int, raw_single: int) -> None:
        """60 friends write `each` messages each to the burst owner while its account is
        logged out (the simulator keeps them); the owner logs in again and the bridge
        fetches and relays them all. Synapse's own pace is measured just before and
        just after, into the same rooms."""
        stack, friends = self.stack, burst_friends()
        person, control = self.persons["burst"]
        for uin in friends:  # the portals first: a burst into open chats
            await self.friends[uin].send(BURST_OWNER, lambda uin=uin: f"bwarm {uin}")
        rows = await stack.wait_relayed("bwarm ", len(friends), 180)
        rooms = {row["sender_uin"]: row["room_id"] for row in rows if row["owner_mxid"] == person.mxid}
        if len(rooms) < len(friends):
            raise BenchFailure(f"only {len(rooms)} of {len(friends)} burst portals opened in 180 s")
        self.say("  Synapse alone, 16 in flight ...")
        raw_before = await self.raw_synapse(rooms, raw_total, 16)
        raw_one = await self.raw_synapse(rooms, raw_single, 1)
        before = len(person.texts(control, BOT))
        await person.say(control, "logout")
        await person.wait_for(lambda: any("Logged out" in t for t in person.texts(control, BOT)[before:]), 60,
                              "the logout")  # fmt: skip
        self.say(f"  {len(friends)} friends write {each} messages each to a logged-out account ...")

        async def write(uin: int) -> None:
            for n in range(each):
                await self.friends[uin].send(BURST_OWNER, lambda n=n: f"burst {uin}.{n:03d}")

        await asyncio.gather(*(write(uin) for uin in friends))
        total = each * len(friends)
        cpu0 = stack.cpu()
        started = time.time()
        samples: list[tuple[float, dict[str, float]]] = []  # (wall time, CPU seconds by process)
        sampler = asyncio.create_task(self._sample_cpu(samples))
        try:
            await qq_login(person, control, BURST_OWNER)
            rows = await stack.wait_relayed("burst ", total, 300)
        finally:
            sampler.cancel()
        cpu1 = stack.cpu()
        timelines = await stack.timelines(rows)
        times = sorted(ts for events in timelines.values() for _, ts in events)
        fetched = sorted(row["fetched_at"] / 1000 for row in rows)
        busy = times[-1] - times[0] if len(times) > 1 else math.nan
        text_of = {row["matrix_event_id"]: row["content"] for row in rows}
        shown = {room: [text_of[event] for event, _ in events] for room, events in timelines.items()}
        order_ok = len(shown) == len(friends) and all(texts == sorted(texts) for texts in shown.values())
        doubled = sum(len(texts) - len(set(texts)) for texts in shown.values())
        self.say("  Synapse alone again ...")
        raw_after = await self.raw_synapse(rooms, raw_total, 16)
        raw = (raw_before + raw_after) / 2
        rate = (len(times) - 1) / busy if busy else math.nan
        self.results.burst = {
            "messages": total, "relayed": len(rows), "rate": rate, "busy": busy,
            "login_to_last": times[-1] - started if times else math.nan,
            "fetch_span": fetched[-1] - fetched[0] if fetched else math.nan,
            "raw16": raw, "raw16_before": raw_before, "raw16_after": raw_after, "raw1": raw_one,
            "ratio": rate / raw if raw else math.nan, "order_ok": order_ok, "doubled": doubled,
            "bridge_cpu_s": cpu1["bridge"] - cpu0["bridge"], "synapse_cpu_s": cpu1["synapse"] - cpu0["synapse"],
            "raw16_synapse_cpu": (self.raw_cpu[0] + self.raw_cpu[2]) / 2 if len(self.raw_cpu) >= 3 else math.nan,
        }  # fmt: skip
        if len(times) > 1:  # while busy: from the first event on Synapse to the last
            used = {name: cpu_between(samples, name, times[0], times[-1]) for name in ("bridge", "synapse")}
            self.results.burst |= {
                "busy_synapse_load": used["synapse"] / busy, "busy_bridge_load": used["bridge"] / busy,
                "busy_synapse_cpu": used["synapse"] / (len(times) - 1),
            }  # fmt: skip
        if len(rows) < total:
            self.results.notes.append(f"burst: only {len(rows)} of {total} messages reached Matrix")
        if not order_ok:
            self.results.notes.append("burst: OUT OF ORDER within a portal")
        if doubled:
            self.results.notes.append(f"burst: {doubled} messages DOUBLED in Matrix")

    async def _sample_cpu(self, samples: list[tuple[float, dict[str, float]]]) -> None:
        while True:
            samples.append((time.time(), self.stack.cpu()))
            await asyncio.sleep(0.2)

    # -- idle accounts, start-up, the first message after quiet ----------------------

    async def idle(self, accounts: int, settle: float, window: float) -> None:
        """The bridge restarted with `accounts` logged-in accounts (the chat and burst
        owners among them, the rest idle), talking to QQ through a tap: start-up until
        every account has polled, and the logins a second the server took; then, once
        settled, memory, CPU and requests over `window` s with nothing written; then each
        chat friend writes one message to their owner, who has been quiet since the
        restart, at a random moment of another `window` s."""
        stack = self.stack
        await stack.stop_bridge()
        tap = await stack.tap_qq()
        extra = idle_uins(max(0, accounts - (self.chats + 1)))
        await stack.add_idle_accounts(extra)
        uins = {CHAT_OWNER + i for i in range(self.chats)} | {BURST_OWNER} | set(extra)
        self.accounts = len(uins)
        tap.reset()
        spawned = time.monotonic()
        await stack.start_bridge()
        ready = time.monotonic() - spawned
        while len(uins & tap.first_poll.keys()) < len(uins):
            if time.monotonic() - spawned > 300:
                raise BenchFailure(f"only {len(uins & tap.first_poll.keys())} of {len(uins)} accounts polled "
                                   "within 300 s of the start")  # fmt: skip
            await asyncio.sleep(0.1)
        all_poll = max(tap.first_poll[uin] for uin in uins) - spawned
        logins = [when for when, uin, cmd in tap.seen if cmd == "Login" and uin in uins]
        self.say(f"  {self.accounts} accounts: ready after {ready:.1f} s, all polled after {all_poll:.1f} s")
        await asyncio.sleep(max(0.0, settle - (time.monotonic() - spawned - all_poll)))
        # Idle first, with nothing written: a message makes its chat active, and an active
        # chat is polled every 0.1 s for a minute, which is not what idling costs.
        cpu0, m0, t0 = stack.cpu(), await stack.metrics(), time.monotonic()
        await asyncio.sleep(window)
        cpu1, m1, t1 = stack.cpu(), await stack.metrics(), time.monotonic()
        rss, hwm = stack.bridge_rss_kib()
        sent: dict[str, float] = {}
        quiet_for = time.monotonic() - spawned

        async def write(i: int) -> None:
            await asyncio.sleep(random.uniform(0, window))

            def text() -> str:
                body = f"quiet {accounts}.{i}"
                sent[body] = time.time()
                return body

            await self.friends[CHAT_FRIEND + i].send(CHAT_OWNER + i, text)

        await asyncio.gather(*(write(i) for i in range(self.chats)))
        rows = await stack.wait_relayed(f"quiet {accounts}.", self.chats, 90)
        ts = await stack.event_times(rows)
        quiet = [ts[r["matrix_event_id"]] - sent[r["content"]] for r in rows if r["matrix_event_id"] in ts]
        requests = tap.between(t0, t1)
        self.results.idle.append({
            "accounts": self.accounts, "ready": ready, "all_poll": all_poll,
            "logins": len(logins), "login_span": (max(logins) - min(logins)) if logins else math.nan,
            "logins_busiest_second": tap.busiest_second("Login"),
            "rss_mib": (rss or 0) / 1024, "hwm_mib": (hwm or 0) / 1024,
            "cpu": (cpu1["bridge"] - cpu0["bridge"]) / (t1 - t0), "sim_cpu": (cpu1["qq-sim"] - cpu0["qq-sim"]) / (t1 - t0),
            "requests_per_s": sum(requests.values()) / (t1 - t0),
            "requests": {cmd: n / (t1 - t0) for cmd, n in sorted(requests.items())},
            "polls_per_s": sum(value(m1, "qqbridge_polls_total", result=r) - value(m0, "qqbridge_polls_total", result=r)
                               for r in ("ok", "error")) / (t1 - t0),
            "quiet": quantiles(quiet), "quiet_for": quiet_for, "window": t1 - t0,
        })  # fmt: skip
        if len(quiet) < self.chats:
            self.results.notes.append(f"{accounts} accounts: only {len(quiet)} of {self.chats} quiet messages arrived")
