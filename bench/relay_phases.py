"""The two measured phases of the relay benchmark (`bridge_relay.py`): QQ -> Matrix and
Matrix -> QQ, on a running stack."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from nio import InviteMemberEvent, RoomMessagesResponse, RoomMessageText, SyncResponse  # noqa: E402

from bench.relay_parts import (  # noqa: E402
    BOT,
    MATRIX_PASSWORD,
    MATRIX_USER,
    OWNER_PASSWORD,
    OWNER_UIN,
    SYNC_FILTER,
    BenchFailure,
    BenchTimeout,
    Friend,
    HistogramDelta,
    Samples,
    Stack,
    cpu_seconds,
    percentile,
    puppet_uin,
    scrape,
    value,
)
from bench.relay_report import PhaseResult, compact, failures_delta, ms  # noqa: E402
from tests.e2e.harness import MatrixUser  # noqa: E402


class Bench:
    def __init__(self, stack: Stack, args: argparse.Namespace, deadline: float) -> None:
        self.stack, self.args, self.deadline = stack, args, deadline
        self.http = httpx.AsyncClient(timeout=10)
        self.person: MatrixUser | None = None
        self.friends: dict[int, Friend] = {}
        self.portals: dict[int, str] = {}  # friend UIN -> portal room id
        self.joining: dict[str, asyncio.Task[Any]] = {}

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check_time(self, what: str) -> None:
        if self.remaining() <= 0:
            raise BenchTimeout(f"overall timeout ({self.args.timeout:g} s) reached while {what}")

    async def close(self) -> None:
        for task in self.joining.values():
            task.cancel()
        await asyncio.gather(*(f.close() for f in self.friends.values()), return_exceptions=True)
        if self.person is not None:
            await self.person.close()
        await self.http.aclose()

    # -- setup --------------------------------------------------------------------------

    async def setup(self) -> None:
        stack = self.stack
        # The friends first, so that 10001 finds them online at its login.
        for i in range(self.args.friends):
            friend = Friend(stack.sim_url, OWNER_UIN + 1 + i)
            await friend.login()
            friend.start()
            self.friends[friend.uin] = friend
        mxid = await stack.synapse.register_user(MATRIX_USER, MATRIX_PASSWORD)
        person = self.person = MatrixUser(stack.synapse.base_url, mxid, MATRIX_PASSWORD)
        await person.login()
        room = await person.open_control_room(BOT)
        await person.wait_for_text(room, "control room", sender=BOT, timeout=min(60, self.remaining()))
        await person.say(room, f"login {OWNER_UIN}")
        await person.wait_for_text(room, "next message", sender=BOT, timeout=min(60, self.remaining()))
        await person.say(room, OWNER_PASSWORD)
        await person.wait_for_text(
            room, f"Logged into QQ as {OWNER_UIN}", sender=BOT, timeout=min(60, self.remaining())
        )
        await self.settle()

    async def settle(self, quiet: float = 0.5) -> None:
        """Wait until the bridge has nothing queued either way and has polled since."""
        while True:
            self.check_time("waiting for the bridge to settle")
            before = await scrape(self.http, self.stack.bridge_url)
            await asyncio.sleep(quiet)
            after = await scrape(self.http, self.stack.bridge_url)
            queued = sum(
                value(after, "qqbridge_queue_size", queue=q) for q in ("qq_to_matrix", "matrix_to_qq", "matrix_inbox")
            )
            polled = value(after, "qqbridge_polls_total", result="ok") > value(
                before, "qqbridge_polls_total", result="ok"
            )
            if not queued and polled:
                return

    def cpu(self) -> dict[str, float]:
        own = os.times()
        return {**{name: cpu_seconds(pid) for name, pid in self.stack.pids().items()}, "bench": own.user + own.system}

    # -- QQ -> Matrix -------------------------------------------------------------------

    async def qq_to_matrix(self) -> PhaseResult:
        assert self.person is not None
        client = self.person.client
        total = self.args.messages
        uins = sorted(self.friends)
        plan = {uin: [k for k in range(total) if k % len(uins) == i] for i, uin in enumerate(uins)}
        seen: dict[int, tuple[float, float]] = {}  # message number -> (send ts, origin_server_ts)
        observed: dict[int, float] = {}  # message number -> when the sync brought it
        send_ts: dict[int, float] = {}
        stray: list[str] = []
        order: dict[str, list[int]] = {}  # room -> message numbers in timeline order
        events_of: dict[int, set[str]] = {}  # message number -> Matrix event ids (more than one: doubled)
        backfilled = False

        metrics_before = await scrape(self.http, self.stack.bridge_url)
        cpu_before = self.cpu()
        await client.sync(timeout=0, sync_filter=SYNC_FILTER)  # the starting point

        def text_for(k: int) -> Any:
            def make() -> str:
                send_ts[k] = time.time()
                return f"q2m {k} {send_ts[k]:.6f}"

            return make

        async def send_all(friend: Friend) -> None:
            for k in plan[friend.uin]:
                await friend.send(OWNER_UIN, text_for(k))

        def take(room_id: str, events: list[Any], now: float) -> None:
            for event in events:
                if not isinstance(event, RoomMessageText) or not event.body.startswith("q2m "):
                    continue
                uin = puppet_uin(event.sender)
                if uin is None:
                    stray.append(f"{event.sender}: {event.body!r}")
                    continue
                self.portals.setdefault(uin, room_id)
                _, k, sent = event.body.split(" ")
                number = int(k)
                events_of.setdefault(number, set()).add(event.event_id)
                if number not in seen:
                    seen[number] = (float(sent), event.server_timestamp / 1000)
                    observed[number] = now
                    order.setdefault(room_id, []).append(number)

        async def backfill(room_id: str, token: str | None) -> None:
            nonlocal backfilled
            backfilled = True
            while token:
                answer = await client.room_messages(room_id, start=token, limit=1000)
                if not isinstance(answer, RoomMessagesResponse) or not answer.chunk:
                    return
                take(room_id, answer.chunk, time.time())
                token = answer.end

        start_wall = time.time()
        senders = [asyncio.create_task(send_all(self.friends[uin])) for uin in uins]
        sends_done: float | None = None
        timed_out = False
        try:
            while len(seen) < total:
                if self.remaining() <= 0:
                    timed_out = True
                    break
                if self.args.sync_every:
                    await asyncio.sleep(self.args.sync_every)
                answer = await client.sync(timeout=1000, sync_filter=SYNC_FILTER)
                now = time.time()
                if sends_done is None and all(task.done() for task in senders):
                    for task in senders:
                        task.result()  # a sender that failed raises here
                    sends_done = max(send_ts.values(), default=start_wall)
                if not isinstance(answer, SyncResponse):
                    continue
                for room_id, info in answer.rooms.invite.items():
                    inviter = next(
                        (
                            e.sender
                            for e in info.invite_state
                            if isinstance(e, InviteMemberEvent) and e.state_key == client.user_id
                        ),
                        None,
                    )
                    if inviter and puppet_uin(inviter) is not None and room_id not in self.joining:
                        self.joining[room_id] = asyncio.create_task(client.join(room_id))
                for room_id, room in answer.rooms.join.items():
                    take(room_id, room.timeline.events, now)
                    if room.timeline.limited:
                        await backfill(room_id, room.timeline.prev_batch)
            end = max((server for _, server in seen.values()), default=math.nan)  # the last one stored on Synapse
        finally:
            for task in senders:
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
        metrics_after = await self.settled_scrape()
        cpu_after = self.cpu()
        if sends_done is None:
            sends_done = max(send_ts.values(), default=start_wall)
        e2e = [server - sent for sent, server in seen.values()]
        result = PhaseResult(
            "QQ -> Matrix",
            total,
            len(seen),
            end - start_wall,
            sends_done - start_wall,
            e2e,
            HistogramDelta.between(
                metrics_before, metrics_after, "qqbridge_relay_latency_seconds", direction="qq_to_matrix"
            ),
            {name: cpu_after[name] - cpu_before[name] for name in cpu_after},
            failures_delta(metrics_before, metrics_after),
        )
        seen_in_sync = [observed[k] - seen[k][0] for k in seen]
        result.notes.append(
            f"seen by the client's sync: p50 {percentile(seen_in_sync, 0.5) * 1e3:.0f} ms, "
            f"p99 {percentile(seen_in_sync, 0.99) * 1e3:.0f} ms after sending"
        )
        limited = sum(f.rate_limited for f in self.friends.values())
        relogins = sum(f.relogins for f in self.friends.values())
        if limited or relogins:
            result.notes.append(
                f"friends were told 'too fast' (RES=3) {limited} times, had to log in again {relogins} times"
            )
        relayed = value(metrics_after, "qqbridge_messages_total", direction="qq_to_matrix") - value(
            metrics_before, "qqbridge_messages_total", direction="qq_to_matrix"
        )
        result.notes.append(f"qqbridge_messages_total{{qq_to_matrix}} +{relayed:.0f}; {len(self.portals)} portals")
        if stray:
            result.notes.append(f"{len(stray)} q2m texts from non-puppets, e.g. {stray[0]}")
        if timed_out:
            result.notes.append(f"overall timeout ({self.args.timeout:g} s) reached")
        missing = [k for k in range(total) if k not in seen]
        if missing:
            by_friend = Counter(uins[k % len(uins)] for k in missing)
            never_sent = [k for k in missing if k not in send_ts]
            result.notes.append(
                f"MISSING in Matrix: {len(missing)} messages, numbers {compact(missing)}; "
                f"by sender {dict(sorted(by_friend.items()))}; never sent (the bench stopped first): "
                f"{compact(never_sent) or 'none'}"
            )
        doubled = sorted(k for k, ids in events_of.items() if len(ids) > 1)
        if doubled:
            result.notes.append(f"DUPLICATES in Matrix: {len(doubled)} messages, numbers {compact(doubled)}")
        if not backfilled:
            disordered = [room for room, numbers in order.items() if numbers != sorted(numbers)]
            if disordered:
                result.notes.append(f"OUT OF ORDER in Matrix: portals {disordered}")
        return result

    async def settled_scrape(self) -> Samples:
        """The metrics once the last relay has been counted (it is counted after the send)."""
        for _ in range(20):
            samples = await scrape(self.http, self.stack.bridge_url)
            if not value(samples, "qqbridge_queue_size", queue="qq_to_matrix") and not value(
                samples, "qqbridge_queue_size", queue="matrix_to_qq"
            ):
                return samples
            await asyncio.sleep(0.05)
        return samples

    # -- Matrix -> QQ -------------------------------------------------------------------

    async def matrix_to_qq(self) -> PhaseResult:
        assert self.person is not None
        client = self.person.client
        total = self.args.m2q
        target = min(self.portals) if self.portals else OWNER_UIN + 1
        room_id = self.portals.get(target)
        if room_id is None:
            raise BenchFailure(f"no portal to {target} to send into")
        if room_id in self.joining:
            await self.joining[room_id]
        friend = self.friends[target]
        friend.pump_interval = 0.005  # arrival times to within a few ms
        await asyncio.sleep(0.05)
        friend.received.clear()

        metrics_before = await scrape(self.http, self.stack.bridge_url)
        cpu_before = self.cpu()
        send_ts: dict[int, float] = {}
        event_ids: dict[str, int] = {}
        window = asyncio.Semaphore(self.args.m2q_window)

        async def send(k: int) -> None:
            async with window:
                self.check_time("sending Matrix -> QQ messages")
                send_ts[k] = time.time()
                answer = await client.room_send(
                    room_id, "m.room.message", {"msgtype": "m.text", "body": f"m2q {k} {send_ts[k]:.6f}"}
                )
                event_id = getattr(answer, "event_id", None)
                if not event_id:
                    raise BenchFailure(f"Synapse refused Matrix -> QQ message {k}: {answer}")
                event_ids[event_id] = k

        start_wall = time.time()
        await asyncio.gather(*(send(k) for k in range(total)))
        sends_done = time.time()

        def arrived() -> dict[int, float]:
            got: dict[int, float] = {}
            for when, sender, text in friend.received:
                if sender == OWNER_UIN and text.startswith("m2q "):
                    got.setdefault(int(text.split(" ")[1]), when)
            return got

        while len(arrived()) < total:
            if self.remaining() <= 0:
                break
            await asyncio.sleep(0.01)
        got = arrived()
        metrics_after = await self.settled_scrape()
        cpu_after = self.cpu()
        friend.pump_interval = 0.1

        # The order QQ must show: the portal's timeline order (the send order when the window is 1).
        expected = await self.timeline_order(room_id, event_ids, total)
        order = [
            int(text.split(" ")[1])
            for _, sender, text in friend.received
            if sender == OWNER_UIN and text.startswith("m2q ")
        ]
        result = PhaseResult(
            "Matrix -> QQ",
            total,
            len(got),
            (max(got.values()) - start_wall) if got else math.nan,
            sends_done - start_wall,
            [got[k] - send_ts[k] for k in got],
            HistogramDelta.between(
                metrics_before, metrics_after, "qqbridge_relay_latency_seconds", direction="matrix_to_qq"
            ),
            {name: cpu_after[name] - cpu_before[name] for name in cpu_after},
            failures_delta(metrics_before, metrics_after),
        )
        result.notes.append(f"into the portal of {target}, {self.args.m2q_window} send(s) in flight")
        if got:
            last = max(send_ts, key=lambda k: send_ts[k])
            if last in got:
                result.notes.append(
                    f"the last Matrix send reached QQ {ms(got[last] - send_ts[last])} ms later "
                    f"(all were sent {ms(sends_done - start_wall)} ms after the first)"
                )
        duplicates = [k for k, n in Counter(order).items() if n > 1]
        if duplicates:
            result.notes.append(f"DUPLICATES on QQ: {duplicates[:20]}")
        if order != [k for k in expected if k in got] or duplicates:
            first = next((i for i, (a, b) in enumerate(zip(order, expected, strict=False)) if a != b), None)
            result.notes.append(
                f"OUT OF ORDER on QQ (first difference at position {first}: "
                f"got {order[first : first + 5] if first is not None else order[-5:]}, "
                f"expected {expected[first : first + 5] if first is not None else expected[-5:]})"
            )
        if self.remaining() <= 0 and len(got) < total:
            result.notes.append(f"overall timeout ({self.args.timeout:g} s) reached")
        missing = [k for k in range(total) if k not in got]
        if missing:
            result.notes.append(f"MISSING on QQ: {len(missing)} messages, numbers {compact(missing)}")
        return result

    async def timeline_order(self, room_id: str, event_ids: dict[str, int], total: int) -> list[int]:
        """The message numbers in the order Synapse put them in the room (from /messages)."""
        assert self.person is not None
        client = self.person.client
        await client.sync(timeout=0, sync_filter=SYNC_FILTER)
        token: str | None = client.next_batch
        newest_first: list[int] = []
        while token and len(newest_first) < total:
            answer = await client.room_messages(room_id, start=token, limit=1000)
            if not isinstance(answer, RoomMessagesResponse) or not answer.chunk:
                break
            newest_first += [event_ids[e.event_id] for e in answer.chunk if e.event_id in event_ids]
            token = answer.end
        order = newest_first[::-1]
        if len(order) != total:  # should not happen; fall back to the send order
            return list(range(total))
        return order


# ---- main -------------------------------------------------------------------------------
