"""A QQ server that goes out, with scripted QQ clients: one probe a second per server
(not per account), recovery within a probe of the server's return, one notice each
way per outage and none for a flapping server, and the leftovers of a lying server
(a friend sync that fails, RES=20 after every login, replies that are always full)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from qqbridge.bridge.qq_sessions.account_state import AccountState
from qqbridge.bridge.qq_sessions.accounts import DRAIN_ROUNDS
from qqbridge.bridge.qq_sessions.outages import PROBE_UIN, QQServer, duration
from qqbridge.bridge.qq_sessions.registry import Accounts
from qqbridge.bridge.relay.outbox import Outbox
from qqbridge.metrics import Metrics
from qqbridge.qq import errors, model
from qqbridge.store import Store
from tests.bridge.test_accounts import MemoryStore, batch, until


class World:
    """One QQ server that can go out: every request fails while `up` is False."""

    url = "http://qq.test/"

    def __init__(self) -> None:
        self.up = True
        self.garbled = False  # answers, but nothing that parses
        self.probes: list[float] = []
        self.requests: list[tuple[int, str, float]] = []  # (uin, command, when)
        self.queues: dict[int, list[str]] = {}
        self.sent: list[tuple[int, int, str]] = []

    def check(self, uin: int, command: str) -> None:
        self.requests.append((uin, command, time.monotonic()))
        if not self.up:
            raise errors.ServerUnavailable("connection refused")
        if self.garbled:
            raise errors.RemoteProtocolError(f"{command}: no RES")


class Client:
    def __init__(self, world: World, uin: int) -> None:
        self.world, self.uin, self.server_url = world, uin, world.url
        self.logins = 0

    async def login(self, password_md5: str, *, seq: int | None = None) -> model.LoginOk:
        self.world.check(self.uin, "Login")
        self.logins += 1
        return model.LoginOk(60, 300)

    async def logout(self, *, seq: int | None = None) -> None:
        if self.uin == PROBE_UIN:
            self.world.probes.append(time.monotonic())
        self.world.check(self.uin, "Logout")

    async def fetch_messages(self, *, seq: int | None = None) -> model.MessageBatch:
        self.world.check(self.uin, "GetMsgEx")
        texts, self.world.queues[self.uin] = self.world.queues.get(self.uin, []), []
        return batch(*texts)

    async def send_message(self, target: int, text: str, *, seq: int | None = None) -> None:
        self.world.check(self.uin, "CLTMSG")
        self.world.sent.append((self.uin, target, text))

    async def set_status(self, status: model.Status, *, seq: int | None = None) -> None: ...
    async def aclose(self) -> None: ...


def accounts_on(world: World, delivered: list[Any], told: list[tuple[str, str]], **options: Any) -> Accounts:
    async def deliver(mxid: str, seq: int, events: list[model.Event]) -> None:
        delivered.append((mxid, [e.text for e in events], time.monotonic()))

    async def notify(mxid: str, text: str) -> None:
        told.append((mxid, text))

    defaults: dict[str, Any] = {"poll_fast": 0.05, "poll_idle": 0.2, "backoff_cap": 5.0}
    return Accounts(lambda uin: Client(world, uin), MemoryStore(), deliver, notify, **{**defaults, **options})


async def test_many_accounts_share_one_probe_a_second_and_all_resume_within_a_probe() -> None:
    world, delivered, told = World(), [], []
    accounts = accounts_on(world, delivered, told)
    n = 30
    for i in range(n):
        await accounts.resume(f"@u{i}:x", 20000 + i, "0" * 32)
    await until(lambda: all(a.last_poll for a in accounts.running.values()))

    world.up = False
    went_down = time.monotonic()
    await asyncio.sleep(3.5)
    server = accounts.servers[World.url]
    assert server.down
    assert all(a.state is AccountState.UNREACHABLE for a in accounts.running.values())
    probes_while_down = [t for t in world.probes if t >= went_down]
    assert 3 <= len(probes_while_down) <= 5, probes_while_down  # one a second, not one per account
    late = [r for r in world.requests if r[0] != PROBE_UIN and r[2] > went_down + 1.0]
    assert late == [], late[:5]  # after their first failure, the accounts leave the server to the probe

    for i in range(n):
        world.queues[20000 + i] = [f"after the outage {i}"]
    world.up = True
    back = time.monotonic()
    await until(lambda: len({d[0] for d in delivered if d[1]}) == n, timeout=5)
    slowest = max(d[2] for d in delivered if d[1]) - back
    print(f"\n{n} accounts: {len(probes_while_down) / 3.5:.2f} probes/s while down; "
          f"every account polled again {slowest:.2f} s after the server's return")  # fmt: skip
    assert slowest < 1.5
    await accounts.close()


async def test_one_notice_each_way_and_none_for_a_short_or_flapping_outage() -> None:
    world, delivered, told = World(), [], []
    # time_scale 0.02: "a minute" is 1.2 s, "10 minutes" 12 s.
    accounts = accounts_on(world, delivered, told, time_scale=0.02, probe_interval=0.1)
    await accounts.resume("@u:x", 10001, "0" * 32)
    account = accounts.get("@u:x")
    await until(lambda: account.last_poll)

    world.up = False  # shorter than "a minute": not told
    await until(lambda: account.state is AccountState.UNREACHABLE)
    assert account.unreachable_since is not None
    await asyncio.sleep(0.6)
    world.up = True
    await until(lambda: account.state is AccountState.ONLINE)
    await asyncio.sleep(0.3)
    assert told == []

    world.up = False  # longer: told once, then once that it is back
    await asyncio.sleep(2.5)
    assert len(told) == 1 and "out of reach for 10001 since" in told[0][1], told
    assert "the QQ server cannot be reached" in told[0][1] and "will be sent" in told[0][1]
    world.up = True
    await until(lambda: len(told) == 2)
    assert "QQ is back for 10001, after" in told[1][1] and "Nothing was lost" in told[1][1], told[1]

    for _ in range(3):  # flapping within "10 minutes" of the first notice: no new pair
        world.up = False
        await asyncio.sleep(1.5)
        world.up = True
        await until(lambda: account.state is AccountState.ONLINE)
    await asyncio.sleep(0.3)
    assert len(told) == 2, told
    await accounts.close()


async def test_a_garbled_server_is_an_outage_too_and_its_end_is_told() -> None:
    world, delivered, told = World(), [], []
    accounts = accounts_on(world, delivered, told, time_scale=0.02, probe_interval=0.1)
    await accounts.resume("@u:x", 10001, "0" * 32)
    account = accounts.get("@u:x")
    await until(lambda: account.last_poll)
    world.garbled = True
    await until(lambda: len(told) == 1, timeout=5)
    assert "replies make no sense" in told[0][1]
    assert "no RES" in account.last_error
    world.garbled = False
    world.queues[10001] = ["sane again"]
    await until(lambda: any(d[1] == ["sane again"] for d in delivered))
    await until(lambda: len(told) == 2)
    await accounts.close()


async def test_a_failing_friend_sync_does_not_stop_polling_is_retried_and_told_once() -> None:
    world, delivered, told = World(), [], []
    syncs: list[float] = []

    async def lying_sync(account: Any) -> None:
        syncs.append(time.monotonic())
        if len(syncs) < 5:
            raise errors.RemoteProtocolError("List: the QQ server lists more than 10,000 friends")

    accounts = accounts_on(world, delivered, told, on_login=lying_sync, poll_idle=0.1, backoff_cap=0.2)
    world.queues[10001] = ["polled all the same"]
    await accounts.resume("@u:x", 10001, "0" * 32)
    account = accounts.get("@u:x")
    await until(lambda: delivered)
    assert "List: the QQ server lists more than 10,000 friends" in account.last_error  # `ping` shows it
    await until(lambda: len(syncs) == 5, timeout=5)  # tried again, with backoff
    gaps = [b - a for a, b in zip(syncs, syncs[1:], strict=False)]
    assert all(gap >= 0.02 for gap in gaps), gaps
    await until(lambda: account.last_error is None)  # it worked at last
    assert [text for _, text in told if "friend list could not be refreshed" in text] == [told[0][1]]  # once
    assert account.state is AccountState.ONLINE
    await accounts.close()


async def test_res_20_after_every_login_pauses_instead_of_looping() -> None:
    world, delivered, told = World(), [], []
    accounts = accounts_on(world, delivered, told, poll_idle=0.05, backoff_cap=0.4)
    await accounts.resume("@u:x", 10001, "0" * 32)
    account = accounts.get("@u:x")

    async def never_logged_in(*, seq: int | None = None) -> model.MessageBatch:
        world.requests.append((10001, "GetMsgEx", time.monotonic()))
        raise errors.NotLoggedIn("GetMsgEx")

    account.qq.fetch_messages = never_logged_in  # type: ignore[method-assign]
    await asyncio.sleep(2)
    logins = account.qq.logins
    assert 3 <= logins <= 15, logins  # without the pause: thousands
    assert "RES=20" in account.last_error and account.state is AccountState.UNREACHABLE
    await accounts.close()


async def test_a_server_whose_replies_are_always_full_gets_a_pause_after_some_rounds() -> None:
    world, delivered, told = World(), [], []
    accounts = accounts_on(world, delivered, told)
    account = accounts.new("@u:x", 10001, "0" * 32)
    fetches = 0

    async def always_full(*, seq: int | None = None) -> model.MessageBatch:
        nonlocal fetches
        fetches += 1
        return batch("more", full=True)

    account.qq.fetch_messages = always_full  # type: ignore[method-assign]
    assert await asyncio.wait_for(account.poll_once(), 5) is True
    assert fetches == DRAIN_ROUNDS


def test_durations_read_at_a_glance() -> None:
    assert [duration(s) for s in (0.4, 45, 60, 185, 3600, 7620)] == ["0 s", "45 s", "1 min", "3 min 5 s", "1 h", "2 h 7 min"]


# ---- the outbox ----------------------------------------------------------------------

OWNER = "@dan:example.org"


class RecordingMatrix:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], float]] = []
        self.read: list[tuple[str, float]] = []

    async def send(self, room_id: str, content: dict[str, Any], *, txn_id: str, **_: Any) -> str:
        self.sent.append((room_id, content, time.monotonic()))
        return "$notice"

    async def mark_read(self, room_id: str, event_id: str, **_: Any) -> None:
        self.read.append((event_id, time.monotonic()))


async def test_a_waiting_message_gets_one_notice_then_goes_once_within_a_probe_of_the_return(tmp_path) -> None:
    store = await Store.open(str(tmp_path / "bridge.db"))
    await store.users.upsert(OWNER)
    world, matrix = World(), RecordingMatrix()
    outbox = Outbox(store, matrix, Metrics(), time_scale=0.02)  # "30 s" is 0.6 s, floored to 1 s

    async def probe() -> None:
        await Client(world, PROBE_UIN).logout()

    server = QQServer(World.url, probe, interval=0.2)
    account = SimpleNamespace(mxid=OWNER, uin=10001, qq=Client(world, 10001), session_lost=None, server=server,
                              unreachable_since=None)  # fmt: skip
    world.up = False
    sender = asyncio.create_task(outbox.run(account))
    try:
        await outbox.enqueue(OWNER, "!portal:x", "$first", 10002, "typed during the outage")
        await outbox.enqueue(OWNER, "!portal:x", "$second", 10002, "and another")
        await until(lambda: matrix.sent, timeout=3)
        [(room, notice, _)] = matrix.sent
        assert room == "!portal:x" and notice["m.relates_to"]["m.in_reply_to"]["event_id"] == "$first"
        assert "Waiting for QQ" in notice["body"] and "and the 1 after it" in notice["body"]
        await asyncio.sleep(1.5)
        assert len(matrix.sent) == 1  # once, however long it waits
        world.up = True
        back = time.monotonic()
        await until(lambda: len(matrix.read) == 2, timeout=3)
        assert [text for _, _, text in world.sent] == ["typed during the outage", "and another"]  # exactly once
        assert [event for event, _ in matrix.read] == ["$first", "$second"]
        assert matrix.read[0][1] - back < 0.6  # a probe interval, not a backoff
        sends_while_down = [r for r in world.requests if r[1] == "CLTMSG" and r[2] < back]
        assert len(sends_while_down) <= 2, sends_while_down  # the probe watched the server, not the sender
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await server.close()
        await store.close()


async def test_ping_and_accounts_say_the_truth() -> None:
    from qqbridge.bridge.control_room.room import account_state, last_good_poll

    world, delivered, told = World(), [], []
    accounts = accounts_on(world, delivered, told)
    account = accounts.new("@u:x", 10001, "0" * 32)
    assert last_good_poll(account) == "last good poll: none yet"
    await account.login()
    account.status = model.Status.BUSY
    assert account_state(account) == "online, status busy"
    account.last_poll = time.time() - 130
    assert last_good_poll(account).endswith("UTC (2 min 10 s ago)")
    account._out("the QQ server cannot be reached", time.time() - 125)
    assert account_state(account).startswith("unreachable since ") and account_state(account).endswith(" (2 min 5 s)")
    account.state = AccountState.BAD_PASSWORD
    assert account_state(account) == "stopped: bad password; type `login 10001` again"
    await account.stop(logout=False)
    assert told == []
